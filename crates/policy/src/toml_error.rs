//! TOML errors located without quoting the file.
//!
//! The `Display` of `toml::de::Error` prints the offending source line, and serde's
//! messages quote the value they refused (`invalid type: string "…"`, `unknown variant
//! `…``). A file that holds secrets (the service's config) must not have them printed
//! because a character next to them is wrong, so every TOML error is turned into text
//! here: the line and column (computed from the span), the key the error is under (read
//! from the file's table headers and assignments, and limited to known names when the
//! caller gives them), and the parser's message with every quoted value taken out.
//!
//! INVARIANT: nothing in a [`Located`] is taken from the file's text except key names,
//! and with `known` given only names from that list.

use std::fmt;

/// Where a TOML error is, and what it is, without any of the file's values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    /// The dotted key the error is under (`puhuri.token`, `sources.secrets`), or the
    /// table (`sources`) when no key of it could be named.
    pub key: Option<String>,
    /// The parser's message with quoted values removed.
    pub message: String,
}

impl fmt::Display for Located {
    /// `line:column: `key`: message` (the caller puts the file in front).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: ", self.line, self.column)?;
        if let Some(key) = &self.key {
            write!(f, "`{key}`: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Locates `error`, raised while deserializing `text`. With `known`, a key segment not in
/// the list ends the key (so an unknown key, which might be a pasted secret, is not named).
pub fn locate(text: &str, error: &toml::de::Error, known: Option<&[&str]>) -> Located {
    let offset = error.span().map(|s| s.start).unwrap_or(0);
    let (line, column) = line_column(text, offset);
    Located {
        line,
        column,
        key: key_at(text, offset, known),
        message: scrub_message(error.message()),
    }
}

/// The 1-based line and column (in characters) of a byte offset.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    (line, before[line_start..].chars().count() + 1)
}

/// A bare key segment: ASCII letters, digits, `_` and `-`.
fn bare(segment: &str) -> bool {
    !segment.is_empty()
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `a.b . c` as segments, or `None` when any segment is not a bare key.
fn dotted(text: &str) -> Option<Vec<&str>> {
    let segments: Vec<&str> = text.split('.').map(str::trim).collect();
    segments.iter().all(|s| bare(s)).then_some(segments)
}

/// Whether a line without `=` begins like a bare key rather than an array element.
fn starts_a_key(line: &str) -> bool {
    let token = line
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        .next()
        .unwrap_or_default();
    token.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && !matches!(token, "true" | "false" | "inf" | "nan")
}

/// The key whose assignment (or the table whose header) is the last one at or before
/// `offset`: the table header's name joined with the assignment's dotted key.
pub fn key_at(text: &str, offset: usize, known: Option<&[&str]>) -> Option<String> {
    let mut table: Vec<&str> = Vec::new();
    let mut key: Vec<&str> = Vec::new();
    let mut in_multiline = false;
    let mut line_start = 0;
    for line in text.split_inclusive('\n') {
        if line_start > offset {
            break;
        }
        line_start += line.len();
        let delimiters = line.matches("\"\"\"").count() + line.matches("'''").count();
        let was_multiline = in_multiline;
        if delimiters % 2 == 1 {
            in_multiline = !in_multiline;
        }
        if was_multiline {
            continue;
        }
        let trimmed = line.trim_start();
        if let Some(header) = trimmed.strip_prefix('[') {
            let header = header.strip_prefix('[').unwrap_or(header);
            let name = header.split(']').next().unwrap_or_default();
            table = dotted(name).unwrap_or_default();
            key.clear();
        } else if let Some((name, _)) = trimmed.split_once('=') {
            // (A line of a multi-line array may hold `=`, as base64 does: its key stays.)
            if let Some(segments) = dotted(name) {
                key = segments;
            }
        } else if starts_a_key(trimmed) {
            // A key without `=` (or a value pasted on a line of its own): no key to name.
            key.clear();
        }
    }
    let mut path = Vec::new();
    for segment in table.into_iter().chain(key) {
        if known.is_some_and(|known| !known.contains(&segment)) {
            break;
        }
        path.push(segment);
    }
    (!path.is_empty()).then(|| path.join("."))
}

/// The message without the values it quotes.
///
/// The TOML parser's own messages (`missing comma between array elements, expected `,``)
/// quote only the grammar. serde's quote what was found before `, expected`: `string
/// "…"`, `integer `…``, `unknown variant `…``, `unknown field `…``. Everything quoted before
/// `, expected` is dropped, except the field named by `missing field` and `duplicate
/// field` (a name from the schema); what follows `, expected` comes from the schema.
pub fn scrub_message(message: &str) -> String {
    let message = message.trim_end();
    let (head, tail) = match message.find(", expected") {
        Some(at) => message.split_at(at),
        None => (message, ""),
    };
    if head.starts_with("missing field `") || head.starts_with("duplicate field `") {
        return message.to_owned();
    }
    let mut out = String::new();
    let mut chars = head.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                // A Debug-escaped string: up to the first `"` not escaped.
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        _ => {}
                    }
                }
                while out.ends_with(' ') {
                    out.pop();
                }
            }
            '`' => {
                for c in chars.by_ref() {
                    if c == '`' {
                        break;
                    }
                }
                while out.ends_with(' ') {
                    out.pop();
                }
            }
            c => out.push(c),
        }
    }
    out.push_str(tail);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubs_quoted_values_but_keeps_the_grammar_and_the_schema() {
        assert_eq!(
            scrub_message("invalid type: string \"whsec_a\\\"b\", expected a sequence"),
            "invalid type: string, expected a sequence"
        );
        assert_eq!(
            scrub_message("invalid type: integer `12345`, expected a string"),
            "invalid type: integer, expected a string"
        );
        assert_eq!(
            scrub_message("unknown variant `whsec_x`, expected `waldur-hook` or `allocation`"),
            "unknown variant, expected `waldur-hook` or `allocation`"
        );
        assert_eq!(
            scrub_message("unknown field `whsec_x`, expected one of `url`, `token`"),
            "unknown field, expected one of `url`, `token`"
        );
        assert_eq!(
            scrub_message("missing comma between array elements, expected `,`"),
            "missing comma between array elements, expected `,`"
        );
        assert_eq!(
            scrub_message("missing field `name`"),
            "missing field `name`"
        );
        assert_eq!(scrub_message("duplicate key\n"), "duplicate key");
    }

    #[test]
    fn lines_and_columns_count_characters() {
        let text = "a = 1\nbé = \"x\"\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 6), (2, 1));
        assert_eq!(line_column(text, 10), (2, 4));
        assert_eq!(line_column(text, 1000), (3, 1));
    }

    #[test]
    fn keys_come_from_headers_and_assignments() {
        let text = "top = 1\n[puhuri]\ntoken = \"t\"\n[[sources]]\nname = \"w\"\nsecrets = [\n  \"a\"\n  \"b\"\n]\nwhsec_pasted\n";
        let at = |needle: &str| text.find(needle).expect("needle");
        assert_eq!(key_at(text, at("1"), None).as_deref(), Some("top"));
        assert_eq!(
            key_at(text, at("\"t\""), None).as_deref(),
            Some("puhuri.token")
        );
        assert_eq!(
            key_at(text, at("\"b\""), None).as_deref(),
            Some("sources.secrets")
        );
        let known = ["sources", "secrets", "name"];
        assert_eq!(
            key_at(text, at("whsec_pasted"), Some(&known)).as_deref(),
            Some("sources")
        );
        assert_eq!(key_at(text, at("\"t\""), Some(&known)), None);
        let unknown = "[sources]\nwhsec_abc = 1\n";
        assert_eq!(
            key_at(unknown, unknown.find("whsec").expect("key"), Some(&known)).as_deref(),
            Some("sources")
        );
        let multiline = "[puhuri]\ntoken = \"\"\"\nfake = 1\n\"\"\"\nurl = 2";
        assert_eq!(
            key_at(multiline, multiline.find("1").expect("1"), None).as_deref(),
            Some("puhuri.token")
        );
    }

    #[test]
    fn located_errors_never_quote_the_line() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct File {
            secrets: Vec<String>,
        }
        let text = "secrets = \"whsec_hidden\"\n";
        let error = toml::from_str::<File>(text).expect_err("a string is not a list");
        let located = locate(text, &error, Some(&["secrets"]));
        assert_eq!(located.line, 1);
        assert_eq!(located.column, 11);
        assert_eq!(located.key.as_deref(), Some("secrets"));
        assert!(!located.to_string().contains("hidden"), "{located}");
        assert_eq!(
            located.to_string(),
            "1:11: `secrets`: invalid type: string, expected a sequence"
        );
    }
}
