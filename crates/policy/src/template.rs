//! `{path}` templates for `backend_id`, reasons, messages, notes and report sections.
//!
//! A template is text with `{dotted.path}` placeholders over the allocation object
//! (`{project.slug}_{resource.short_uuid}`); `{{` and `}}` are literal braces. Every path
//! is resolved against [`SCHEMA`](super::allocation::SCHEMA) when the policy loads.
//!
//! INVARIANT: rendering cannot fail; a value that is missing at run time (an absent
//! attribute, a null date) renders empty and is reported, so the caller can refuse a
//! `backend_id` that came out unusable.

use serde_json::Value;

use super::allocation::{FieldType, lookup, top_level, top_level_names};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Path(String),
}

/// A compiled template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(Vec<Piece>);

impl Template {
    /// A template of fixed text.
    pub fn text(text: &str) -> Template {
        Template(vec![Piece::Text(text.to_owned())])
    }

    /// Parses and checks a template; `components` are the policy's `limits` keys.
    pub fn parse(text: &str, components: &[String]) -> Result<Template, Vec<String>> {
        let mut pieces = Vec::new();
        let mut problems = Vec::new();
        let mut literal = String::new();
        let mut chars = text.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|(_, c)| *c) == Some('{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().map(|(_, c)| *c) == Some('}') => {
                    chars.next();
                    literal.push('}');
                }
                '}' => problems.push(format!("unmatched `}}` in template `{text}`")),
                '{' => {
                    let rest = &text[at + 1..];
                    let Some(close) = rest.find('}') else {
                        problems.push(format!("unclosed `{{` in template `{text}`"));
                        break;
                    };
                    let path = rest[..close].trim();
                    if let Err(problem) = check_path(path, components) {
                        problems.push(format!("template `{text}`: {problem}"));
                    }
                    if !literal.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut literal)));
                    }
                    pieces.push(Piece::Path(path.to_owned()));
                    // Skip the placeholder's characters.
                    let end = at + 1 + close;
                    while chars.peek().is_some_and(|(i, _)| *i <= end) {
                        chars.next();
                    }
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            pieces.push(Piece::Text(literal));
        }
        if problems.is_empty() {
            Ok(Template(pieces))
        } else {
            Err(problems)
        }
    }

    /// The fixed text of the template, without its placeholders.
    pub fn literal_text(&self) -> String {
        self.0
            .iter()
            .filter_map(|p| match p {
                Piece::Text(t) => Some(t.as_str()),
                Piece::Path(_) => None,
            })
            .collect()
    }

    /// The paths the template reads.
    pub fn paths(&self) -> Vec<String> {
        self.0
            .iter()
            .filter_map(|p| match p {
                Piece::Path(path) => Some(path.clone()),
                Piece::Text(_) => None,
            })
            .collect()
    }

    /// Whether the template has any placeholder.
    pub fn has_placeholders(&self) -> bool {
        self.0.iter().any(|p| matches!(p, Piece::Path(_)))
    }

    /// Renders against the allocation view; returns the text and the paths that had no
    /// value.
    pub fn render(&self, view: &Value) -> (String, Vec<String>) {
        let mut out = String::new();
        let mut missing = Vec::new();
        for piece in &self.0 {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Path(path) => match lookup(view, path) {
                    Some(Value::String(s)) if !s.is_empty() => out.push_str(s),
                    Some(Value::Number(n)) => match n.as_f64() {
                        Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => {
                            out.push_str(&format!("{}", f as i64))
                        }
                        _ => out.push_str(&n.to_string()),
                    },
                    Some(Value::Bool(b)) => out.push_str(if *b { "true" } else { "false" }),
                    Some(Value::Array(_) | Value::Object(_)) => {
                        out.push_str(&lookup(view, path).map(Value::to_string).unwrap_or_default())
                    }
                    _ => missing.push(path.clone()),
                },
            }
        }
        (out, missing)
    }
}

/// Why a template path names nothing the allocation has.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("unknown field `{path}`; known: {}", known.join(", "))]
    UnknownTopLevel {
        path: String,
        known: Vec<&'static str>,
    },
    #[error("unknown field `{walked}.{part}`; `{walked}` has {}", fields.join(", "))]
    UnknownField {
        walked: String,
        part: String,
        fields: Vec<&'static str>,
    },
    #[error("unknown component `{walked}.{part}`; the policy's components are {}", components.join(", "))]
    UnknownComponent {
        walked: String,
        part: String,
        components: Vec<String>,
    },
    #[error("`{walked}` is {kind} and has no field `{part}`")]
    NotAnObject {
        walked: String,
        kind: &'static str,
        part: String,
    },
    #[error("`{0}` is an object; name one of its fields")]
    AnObject(String),
}

/// Checks a dotted path against the schema: objects must name a known field, `limits`
/// a policy component, `attributes` any key; the path must end at a value.
pub fn check_path(path: &str, components: &[String]) -> Result<(), PathError> {
    let mut parts = path.split('.');
    let first = parts.next().unwrap_or_default();
    let Some(mut ty) = top_level(first) else {
        return Err(PathError::UnknownTopLevel {
            path: path.to_owned(),
            known: top_level_names(),
        });
    };
    let mut walked = first.to_owned();
    for part in parts {
        match ty {
            FieldType::Object(fields) => match fields.iter().find(|(n, _)| *n == part) {
                Some((_, t)) => ty = *t,
                None => {
                    return Err(PathError::UnknownField {
                        walked,
                        part: part.to_owned(),
                        fields: fields.iter().map(|(n, _)| *n).collect(),
                    });
                }
            },
            FieldType::Limits => {
                if !components.iter().any(|c| c == part) {
                    return Err(PathError::UnknownComponent {
                        walked,
                        part: part.to_owned(),
                        components: components.to_vec(),
                    });
                }
                ty = FieldType::Number;
            }
            FieldType::OpenMap => return Ok(()),
            other => {
                return Err(PathError::NotAnObject {
                    walked,
                    kind: other.describe(),
                    part: part.to_owned(),
                });
            }
        }
        walked = format!("{walked}.{part}");
    }
    match ty {
        FieldType::Object(_) | FieldType::Limits | FieldType::StringList => {
            Err(PathError::AnObject(path.to_owned()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn components() -> Vec<String> {
        vec!["cpu_k_hours".into()]
    }

    #[test]
    fn renders_paths_and_escaped_braces() {
        let template = Template::parse("{{x}} {project.slug}_{limits.cpu_k_hours}", &components())
            .expect("valid");
        let view = json!({"project": {"slug": "climate"}, "limits": {"cpu_k_hours": 500.0}});
        assert_eq!(template.render(&view), ("{x} climate_500".into(), vec![]));
    }

    #[test]
    fn refuses_unknown_fields_with_what_is_known() {
        let problems = Template::parse("{project.slugg}-{nope}-{limits.cpu}", &components())
            .expect_err("invalid");
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("unknown field `project.slugg`"));
        assert!(problems[1].contains("unknown field `nope`"));
        assert!(problems[2].contains("unknown component `limits.cpu`"));
    }

    #[test]
    fn a_missing_value_renders_empty_and_is_reported() {
        let template = Template::parse("{attributes.grant}", &components()).expect("valid");
        assert_eq!(
            template.render(&json!({"attributes": {}})),
            (String::new(), vec!["attributes.grant".to_owned()])
        );
    }

    #[test]
    fn refuses_unbalanced_braces() {
        assert!(Template::parse("{project.slug", &components()).is_err());
        assert!(Template::parse("a}b", &components()).is_err());
    }
}
