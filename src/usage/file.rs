//! Reading usage records from a file for `usage push`: JSON lines (one record per line,
//! the schema's form) or CSV with a header row. Every problem names the file, the line
//! and the field.
//!
//! CSV columns (any order; `component`, `amount`, `month` and one of `resource_uuid` or
//! `backend_id` are required): `id`, `resource_uuid`, `backend_id`, `component`,
//! `amount`, `month`, `measured_at`, `description`, `users`. `users` is the per-user
//! split as `alice=6;bob=4.5`. Fields may be quoted (`"..."`, `""` for a quote); a
//! quoted field cannot span lines.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use super::{Invalid, MonthNotOpen, RawRecord, UsageRecord};

/// The file's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// By extension (`.csv`; `.jsonl`, `.ndjson`, `.json`), else by the first character.
    Auto,
    /// A header row, then one record per line (columns in the module docs and README).
    Csv,
    /// One JSON record per line (`schemas/usage-record.v1.schema.json`).
    Jsonl,
}

/// One problem in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    pub line: usize,
    /// The field or column, or `record` or `header` for the line as a whole.
    pub field: String,
    pub message: Problem,
}

/// What is wrong on a line. The message names neither line nor field: [`LineError`] does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// A field of the record is invalid.
    #[error(transparent)]
    Record(#[from] Invalid),
    /// The record's month cannot be reported now.
    #[error(transparent)]
    Month(#[from] MonthNotOpen),
    /// A JSON line is not a record (serde's message).
    #[error("{0}")]
    Json(String),
    /// A CSV line cannot be split into fields.
    #[error(transparent)]
    Csv(#[from] CsvError),
    /// The CSV `users` column is not `name=amount;...`.
    #[error(transparent)]
    Users(#[from] UsersError),
    #[error("unknown column (expected some of: {})", COLUMNS.join(", "))]
    UnknownColumn,
    #[error("the column appears twice")]
    DuplicateColumn,
    #[error("required column missing")]
    MissingColumn,
    #[error("{found} fields, but the header has {expected}")]
    FieldCount { found: usize, expected: usize },
}

/// Why a CSV line cannot be split into fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CsvError {
    #[error("a quote inside an unquoted field")]
    QuoteInUnquoted,
    #[error("text after a closing quote")]
    TextAfterQuote,
    #[error("a quoted field is not closed on this line")]
    Unclosed,
}

/// Why a CSV `users` column is not `alice=6;bob=4.5`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsersError {
    #[error("`{0}` is not username=amount")]
    NotAPair(String),
    #[error("user `{0}` appears twice")]
    Twice(String),
}

/// A parsed file: the records with their line numbers, and every problem.
#[derive(Debug, Default)]
pub struct Parsed {
    pub format: Option<Format>,
    pub records: Vec<(usize, UsageRecord)>,
    pub errors: Vec<LineError>,
}

const COLUMNS: &[&str] = &[
    "id",
    "resource_uuid",
    "backend_id",
    "component",
    "amount",
    "month",
    "measured_at",
    "description",
    "users",
];

fn error(line: usize, field: &str, message: impl Into<Problem>) -> LineError {
    LineError {
        line,
        field: field.to_owned(),
        message: message.into(),
    }
}

/// Picks the format of `path` with content `text`.
pub fn detect(path: &Path, text: &str, format: Format) -> Format {
    if format != Format::Auto {
        return format;
    }
    match path.extension().and_then(|e| e.to_str()) {
        Some("csv") => Format::Csv,
        Some("jsonl" | "ndjson" | "json") => Format::Jsonl,
        _ => {
            if text.trim_start().starts_with('{') {
                Format::Jsonl
            } else {
                Format::Csv
            }
        }
    }
}

/// Parses the whole text; records and errors are both kept so that every error can be
/// shown at once.
pub fn parse(text: &str, format: Format) -> Parsed {
    let mut parsed = Parsed {
        format: Some(format),
        ..Parsed::default()
    };
    match format {
        Format::Csv => parse_csv(text, &mut parsed),
        Format::Jsonl | Format::Auto => parse_jsonl(text, &mut parsed),
    }
    parsed
}

fn validate(line: usize, raw: RawRecord, parsed: &mut Parsed) {
    match raw.validate() {
        Ok(record) => parsed.records.push((line, record)),
        Err(e) => parsed.errors.push(error(line, e.field, e.invalid)),
    }
}

fn parse_jsonl(text: &str, parsed: &mut Parsed) {
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<RawRecord>(line) {
            Ok(raw) => validate(number, raw, parsed),
            Err(e) => {
                let message = e.to_string();
                // serde names the field in "missing field `x`" / "unknown field `x`".
                let field = message
                    .split('`')
                    .nth(1)
                    .filter(|_| message.contains("field"))
                    .unwrap_or("record")
                    .to_owned();
                parsed
                    .errors
                    .push(error(number, &field, Problem::Json(message)));
            }
        }
    }
}

/// Splits one CSV line into fields.
fn split_csv(line: &str) -> Result<Vec<String>, CsvError> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    let mut was_quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') if field.is_empty() && !was_quoted => {
                quoted = true;
                was_quoted = true;
            }
            (false, ',') => {
                fields.push(std::mem::take(&mut field));
                was_quoted = false;
            }
            (false, '"') => return Err(CsvError::QuoteInUnquoted),
            (false, c) => {
                if was_quoted {
                    return Err(CsvError::TextAfterQuote);
                }
                field.push(c);
            }
        }
    }
    if quoted {
        return Err(CsvError::Unclosed);
    }
    fields.push(field);
    Ok(fields)
}

fn parse_users(text: &str) -> Result<BTreeMap<String, Value>, UsersError> {
    let mut users = BTreeMap::new();
    for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, amount) = part
            .split_once('=')
            .ok_or_else(|| UsersError::NotAPair(part.to_owned()))?;
        let name = name.trim();
        if users
            .insert(name.to_owned(), Value::String(amount.trim().to_owned()))
            .is_some()
        {
            return Err(UsersError::Twice(name.to_owned()));
        }
    }
    Ok(users)
}

fn parse_csv(text: &str, parsed: &mut Parsed) {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let Some((header_index, header)) = lines.next() else {
        return;
    };
    let header_line = header_index + 1;
    let columns = match split_csv(header.trim_start_matches('\u{feff}')) {
        Ok(columns) => columns
            .into_iter()
            .map(|c| c.trim().to_ascii_lowercase())
            .collect::<Vec<_>>(),
        Err(message) => {
            parsed.errors.push(error(header_line, "header", message));
            return;
        }
    };
    let mut bad_header = false;
    for (i, column) in columns.iter().enumerate() {
        if !COLUMNS.contains(&column.as_str()) {
            parsed
                .errors
                .push(error(header_line, column, Problem::UnknownColumn));
            bad_header = true;
        } else if columns[..i].contains(column) {
            parsed
                .errors
                .push(error(header_line, column, Problem::DuplicateColumn));
            bad_header = true;
        }
    }
    for required in ["component", "amount", "month"] {
        if !columns.iter().any(|c| c == required) {
            parsed
                .errors
                .push(error(header_line, required, Problem::MissingColumn));
            bad_header = true;
        }
    }
    if bad_header {
        return;
    }
    for (index, line) in lines {
        let number = index + 1;
        let fields = match split_csv(line) {
            Ok(fields) => fields,
            Err(message) => {
                parsed.errors.push(error(number, "record", message));
                continue;
            }
        };
        if fields.len() != columns.len() {
            parsed.errors.push(error(
                number,
                "record",
                Problem::FieldCount {
                    found: fields.len(),
                    expected: columns.len(),
                },
            ));
            continue;
        }
        let mut raw = RawRecord::default();
        let mut ok = true;
        for (column, value) in columns.iter().zip(fields) {
            let value = value.trim().to_owned();
            let present = (!value.is_empty()).then(|| value.clone());
            match column.as_str() {
                "id" => raw.id = present,
                "resource_uuid" => raw.resource_uuid = present,
                "backend_id" => raw.backend_id = present,
                "component" => raw.component = value,
                "amount" => raw.amount = Value::String(value),
                "month" => raw.month = value,
                "measured_at" => raw.measured_at = present,
                "description" => raw.description = present,
                "users" => match parse_users(&value) {
                    Ok(users) if users.is_empty() => {}
                    Ok(users) => raw.users = Some(users),
                    Err(message) => {
                        parsed.errors.push(error(number, "users", message));
                        ok = false;
                    }
                },
                _ => {}
            }
        }
        if ok {
            validate(number, raw, parsed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_with_quotes_users_and_errors_naming_lines_and_fields() {
        let text = "backend_id,component,amount,month,users,description\n\
            proj_a,cpu_k_hours,10.5,2026-11,alice=6;bob=4.5,\"Slurm, nightly \"\"run\"\"\"\n\
            \n\
            proj_b,cpu_k_hours,-1,2026-11,,\n\
            proj_c,cpu_k_hours,1,2026-13,,\n\
            proj_d,cpu_k_hours,1,2026-11,alice,\n\
            proj_e,cpu_k_hours,1\n";
        let parsed = parse(text, Format::Csv);
        assert_eq!(parsed.records.len(), 1);
        let (line, record) = &parsed.records[0];
        assert_eq!(*line, 2);
        assert_eq!(record.description, "Slurm, nightly \"run\"");
        assert_eq!(record.users.len(), 2);
        let errors: Vec<(usize, &str)> = parsed
            .errors
            .iter()
            .map(|e| (e.line, e.field.as_str()))
            .collect();
        assert_eq!(
            errors,
            [(4, "amount"), (5, "month"), (6, "users"), (7, "record")]
        );
    }

    #[test]
    fn a_bad_header_is_reported_before_any_line() {
        let parsed = parse(
            "backend_id,component,amount,colour\nb,c,1,red\n",
            Format::Csv,
        );
        assert!(parsed.records.is_empty());
        let fields: Vec<&str> = parsed.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["colour", "month"]);
        assert!(parsed.errors.iter().all(|e| e.line == 1));
    }

    #[test]
    fn json_lines_name_the_line_and_field() {
        let text = r#"{"backend_id":"a","component":"cpu","amount":"1","month":"2026-11"}
{"backend_id":"a","component":"cpu","amount":"1"}
not json
{"backend_id":"a","component":"cpu","amount":"1.1234567891","month":"2026-11"}
"#;
        let parsed = parse(text, Format::Jsonl);
        assert_eq!(parsed.records.len(), 1);
        let errors: Vec<(usize, &str)> = parsed
            .errors
            .iter()
            .map(|e| (e.line, e.field.as_str()))
            .collect();
        assert_eq!(errors, [(2, "month"), (3, "record"), (4, "amount")]);
    }

    #[test]
    fn the_format_follows_the_extension_then_the_content() {
        let p = |s: &str| Path::new(s).to_path_buf();
        assert_eq!(detect(&p("u.csv"), "{", Format::Auto), Format::Csv);
        assert_eq!(detect(&p("u.jsonl"), "a,b", Format::Auto), Format::Jsonl);
        assert_eq!(
            detect(&p("u.txt"), " {\"a\":1}", Format::Auto),
            Format::Jsonl
        );
        assert_eq!(detect(&p("u.txt"), "a,b", Format::Auto), Format::Csv);
        assert_eq!(detect(&p("u.csv"), "{", Format::Jsonl), Format::Jsonl);
    }
}
