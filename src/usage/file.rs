//! Reading usage records from a file for `usage push`: JSON lines (one record per line,
//! the schema's form) or CSV with a header row. Every problem names the file, the line
//! and the field.
//!
//! CSV columns (any order; `component`, `amount`, `month` and one of `resource_uuid` or
//! `backend_id` are required): `id`, `resource_uuid`, `backend_id`, `component`,
//! `amount`, `month`, `measured_at`, `description`, `users`. `users` is the per-user
//! split as `alice=6;bob=4.5`.
//!
//! The csv crate reads the CSV (comma-separated, RFC 4180 with the crate's leniency):
//! - a UTF-8 BOM at the start is ignored; column names are matched ignoring ASCII case;
//! - records end at `\n`, `\r\n` or a lone `\r`; empty lines and lines of spaces are
//!   skipped; spaces around column names and values are trimmed, inside quotes too;
//! - fields may be quoted (`"..."`, `""` for a quote, commas kept). A quote inside an
//!   unquoted field is kept as text (`5" disk`), and text after a closing quote is
//!   joined to the field (`"a"b` reads as `ab`);
//! - a quoted field is read across lines, but a value holding a line break is refused:
//!   no usage field takes one, and it is what a missing closing quote looks like (the
//!   field then runs on over the next lines, which are not reported apart);
//! - a record is numbered by the line it starts on, lines counted at `\n` (records ended
//!   by a lone `\r` share a number).

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

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Auto => "format guessed",
            Format::Csv => "CSV",
            Format::Jsonl => "JSON lines",
        })
    }
}

/// One problem in the file.
#[derive(Debug)]
pub struct LineError {
    pub line: usize,
    /// The field or column, or `record` or `header` for the line as a whole.
    pub field: String,
    pub message: Problem,
}

/// What is wrong on a line. The message names neither line nor field: [`LineError`] does.
#[derive(Debug, thiserror::Error)]
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
    /// The csv crate cannot read the record (it reads any UTF-8 text, so this is not
    /// expected from [`parse`]). Its error, the source, names the line itself.
    #[error("the record cannot be read as CSV")]
    Csv(#[from] csv::Error),
    /// A CSV value holds a line break: a quoted field spans lines, as when its closing
    /// quote is missing and the field runs on over the records after it.
    #[error("the value spans lines (is a closing quote missing?)")]
    LineBreak,
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
    /// Puhuri Core has no allocation of the provider by that name that takes usage.
    #[error(
        "`{0}` names no allocation of this provider that takes usage (state OK, Updating or Terminating)"
    )]
    UnknownAllocation(String),
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

/// Every problem of the line is listed, not only the first.
fn validate(line: usize, raw: RawRecord, parsed: &mut Parsed) {
    match raw.validate_all() {
        Ok(record) => parsed.records.push((line, record)),
        Err(problems) => {
            for e in problems {
                parsed.errors.push(error(line, e.field, e.invalid));
            }
        }
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

/// The records of a CSV file as the csv crate reads them, each with the line it starts
/// on; records that hold nothing (lines of spaces) are left out. A record that cannot be
/// read comes as its error.
struct Records<'a> {
    reader: csv::Reader<&'a [u8]>,
    bytes: &'a [u8],
}

impl<'a> Records<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        // A BOM before the header is no part of the first column's name.
        let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
        let reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .trim(csv::Trim::All)
            .from_reader(bytes);
        Records { reader, bytes }
    }

    /// The line of the record read at `position`. The crate's position is where it began
    /// to look for the record, so the empty lines it skipped on the way are added.
    fn line(&self, position: Option<&csv::Position>) -> usize {
        let position = position.unwrap_or(self.reader.position());
        let start =
            usize::try_from(position.byte()).map_or(self.bytes.len(), |b| b.min(self.bytes.len()));
        let skipped = self.bytes[start..]
            .iter()
            .take_while(|b| matches!(b, b'\r' | b'\n'))
            .filter(|&&b| b == b'\n')
            .count();
        usize::try_from(position.line())
            .unwrap_or(usize::MAX)
            .saturating_add(skipped)
    }
}

impl Iterator for Records<'_> {
    type Item = (usize, Result<csv::StringRecord, csv::Error>);

    fn next(&mut self) -> Option<Self::Item> {
        let mut record = csv::StringRecord::new();
        loop {
            return match self.reader.read_record(&mut record) {
                Ok(false) => None,
                Ok(true) if record.len() == 1 && record[0].is_empty() => continue,
                Ok(true) => Some((self.line(record.position()), Ok(record))),
                Err(e) => Some((self.line(e.position()), Err(e))),
            };
        }
    }
}

fn parse_csv(text: &str, parsed: &mut Parsed) {
    read_csv(text.as_bytes(), parsed);
}

/// [`parse_csv`] on bytes, so that the tests can hand it a record that is not UTF-8.
fn read_csv(bytes: &[u8], parsed: &mut Parsed) {
    let mut records = Records::new(bytes);
    let Some((header_line, header)) = records.next() else {
        return;
    };
    let columns = match header {
        Ok(header) => header
            .iter()
            .map(str::to_ascii_lowercase)
            .collect::<Vec<_>>(),
        Err(e) => {
            parsed.errors.push(error(header_line, "header", e));
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
    for (number, fields) in records {
        let fields = match fields {
            Ok(fields) => fields,
            Err(e) => {
                parsed.errors.push(error(number, "record", e));
                continue;
            }
        };
        if let Some(i) = fields.iter().position(|f| f.contains(['\n', '\r'])) {
            let field = columns.get(i).map_or("record", String::as_str);
            parsed.errors.push(error(number, field, Problem::LineBreak));
            continue;
        }
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
        for (column, value) in columns.iter().zip(&fields) {
            let value = value.to_owned();
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
    fn every_problem_of_a_line_is_listed() {
        let text = "backend_id,component,amount,month\n\
            proj_a,cpu k,1.5.0,2026-13\n\
            proj_b,cpu_k_hours,1,2026-11\n";
        let parsed = parse(text, Format::Csv);
        let fields: Vec<(usize, &str)> = parsed
            .errors
            .iter()
            .map(|e| (e.line, e.field.as_str()))
            .collect();
        assert_eq!(
            fields,
            vec![(2, "component"), (2, "amount"), (2, "month")],
            "{:?}",
            parsed.errors
        );
        assert_eq!(parsed.records.len(), 1);
    }

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
    fn csv_with_a_bom_crlf_spaces_blank_lines_and_lenient_quotes() {
        let text = "\u{feff}Backend_ID , component,amount,month,description\r\n\
            \r\n\
            \x20  \r\n\
            \x20proj_a , cpu , 1 ,2026-11, 5\" disk \r\n\
            \r\n\
            proj_b,cpu,2,2026-11,\"a\"b\r\n\
            proj_c,cpu,x,2026-11,\r\n";
        let parsed = parse(text, Format::Csv);
        let records: Vec<(usize, &str, &str)> = parsed
            .records
            .iter()
            .map(|(line, r)| (*line, r.component.as_str(), r.description.as_str()))
            .collect();
        assert_eq!(records, [(4, "cpu", "5\" disk"), (6, "cpu", "ab")]);
        let errors: Vec<(usize, &str)> = parsed
            .errors
            .iter()
            .map(|e| (e.line, e.field.as_str()))
            .collect();
        assert_eq!(errors, [(7, "amount")]);
    }

    #[test]
    fn a_quoted_field_is_read_across_lines_but_a_value_may_not_hold_a_line_break() {
        let text = "backend_id,component,amount,month,description\n\
            a,cpu,1,2026-11,\"two\n\
            lines\"\n\
            b,cpu,1,2026-11,\"fine, quoted\"\n\
            c,cpu,x,2026-11,bad amount\n\
            d,cpu,1,2026-11,\"unclosed\n\
            e,cpu,1,2026-11,swallowed\n\
            f,cpu,1,2026-11,swallowed too\n";
        let parsed = parse(text, Format::Csv);
        let records: Vec<(usize, &str)> = parsed
            .records
            .iter()
            .map(|(line, r)| (*line, r.description.as_str()))
            .collect();
        assert_eq!(records, [(4, "fine, quoted")]);
        let errors: Vec<(usize, &str, String)> = parsed
            .errors
            .iter()
            .map(|e| (e.line, e.field.as_str(), e.message.to_string()))
            .collect();
        let spans = Problem::LineBreak.to_string();
        assert_eq!(
            errors,
            [
                (2, "description", spans.clone()),
                (5, "amount", parsed.errors[1].message.to_string()),
                (6, "description", spans),
            ]
        );
        assert!(matches!(parsed.errors[1].message, Problem::Record(_)));
    }

    #[test]
    fn a_record_the_csv_reader_cannot_read_is_listed_and_the_rest_still_read() {
        let mut parsed = Parsed::default();
        read_csv(
            b"backend_id,component,amount,month\na,cpu,1,2026-11\n\nb,cpu,\xff,2026-11\nc,cpu,x,2026-11\n",
            &mut parsed,
        );
        assert_eq!(parsed.records.len(), 1);
        assert_eq!(parsed.records[0].0, 2);
        let errors: Vec<(usize, &str)> = parsed
            .errors
            .iter()
            .map(|e| (e.line, e.field.as_str()))
            .collect();
        assert_eq!(errors, [(4, "record"), (5, "amount")]);
        let Problem::Csv(e) = &parsed.errors[0].message else {
            panic!("{:?}", parsed.errors[0]);
        };
        assert!(matches!(e.kind(), csv::ErrorKind::Utf8 { .. }), "{e}");
        let source = std::error::Error::source(&parsed.errors[0].message);
        assert_eq!(source.map(ToString::to_string), Some(e.to_string()));
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
