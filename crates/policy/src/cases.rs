//! Policy regression cases: allocations with the decision a provider expects, run by
//! `policy test` and by the project's own fixture tests.
//!
//! A cases file is TOML: an optional top-level `now` (RFC 3339; the evaluation time of
//! every case unless the case sets its own), then `[[case]]` tables with `name`, an
//! optional `now`, `allocation` (the allocation object; every part optional) and
//! `expect`: `action` (required), and optionally `rule` (`"default"` when no rule
//! should match), `backend_id`, `reason`, `message`, `note`, and `errors` (the rules
//! expected to fail at run time; none when omitted).

use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use toml::Spanned;

use super::{Action, Allocation, Policy};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CasesFile {
    now: Option<String>,
    #[serde(default, rename = "case")]
    cases: Vec<Spanned<Case>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    now: Option<String>,
    #[serde(default)]
    allocation: Allocation,
    expect: Expect,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    action: String,
    rule: Option<String>,
    backend_id: Option<String>,
    reason: Option<String>,
    message: Option<String>,
    note: Option<String>,
    #[serde(default)]
    errors: Vec<String>,
}

/// The result of one case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseResult {
    pub name: String,
    pub line: usize,
    /// Empty when the case passed.
    pub failures: Vec<String>,
}

/// Parsed cases, ready to run against any policy.
#[derive(Debug)]
pub struct Cases {
    cases: Vec<(usize, Case, OffsetDateTime)>,
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).unwrap_or(text).matches('\n').count() + 1
}

/// Why a cases file cannot be read, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CasesError {
    /// The TOML syntax or a type: the place and the parser's message, never the line's text.
    #[error("line {line}:{column}: {}{message}", key.as_ref().map(|k| format!("`{k}`: ")).unwrap_or_default())]
    Syntax {
        line: usize,
        column: usize,
        key: Option<String>,
        message: String,
    },
    #[error("line {line}: `now`: `{value}` is not an RFC 3339 timestamp")]
    BadNow { line: usize, value: String },
    #[error(
        "line {line}: case `{case}` has no `now`; set it in the case or at the top of the file"
    )]
    NoNow { line: usize, case: String },
    #[error("the file has no `[[case]]`")]
    NoCases,
}

fn parse_now(text: &str, line: usize) -> Result<OffsetDateTime, CasesError> {
    OffsetDateTime::parse(text, &Rfc3339).map_err(|_| CasesError::BadNow {
        line,
        value: text.to_owned(),
    })
}

impl Cases {
    /// Parses a cases file; errors carry the line.
    pub fn parse(text: &str) -> Result<Cases, CasesError> {
        let file: CasesFile = toml::from_str(text).map_err(|error| {
            let located = crate::toml_error::locate(text, &error, None);
            CasesError::Syntax {
                line: located.line,
                column: located.column,
                key: located.key,
                message: located.message,
            }
        })?;
        let default_now = match &file.now {
            Some(now) => Some(parse_now(now, 1)?),
            None => None,
        };
        let mut cases = Vec::new();
        for case in file.cases {
            let line = line_of(text, case.span().start);
            let case = case.into_inner();
            let now = match (&case.now, default_now) {
                (Some(now), _) => parse_now(now, line)?,
                (None, Some(now)) => now,
                (None, None) => {
                    return Err(CasesError::NoNow {
                        line,
                        case: case.name,
                    });
                }
            };
            cases.push((line, case, now));
        }
        if cases.is_empty() {
            return Err(CasesError::NoCases);
        }
        Ok(Cases { cases })
    }

    pub fn len(&self) -> usize {
        self.cases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cases.is_empty()
    }

    /// Runs every case against the policy.
    pub fn run(&self, policy: &Policy) -> Vec<CaseResult> {
        self.cases
            .iter()
            .map(|(line, case, now)| CaseResult {
                name: case.name.clone(),
                line: *line,
                failures: check(policy, case, *now),
            })
            .collect()
    }
}

fn check(policy: &Policy, case: &Case, now: OffsetDateTime) -> Vec<String> {
    let verdict = policy.evaluate(&case.allocation, now);
    let expect = &case.expect;
    let mut failures = Vec::new();
    let mut compare = |what: &str, expected: Option<&String>, actual: Option<&str>| {
        if let Some(expected) = expected
            && Some(expected.as_str()) != actual
        {
            failures.push(format!(
                "{what}: expected `{expected}`, got {}",
                actual
                    .map(|a| format!("`{a}`"))
                    .unwrap_or_else(|| "none".into())
            ));
        }
    };
    compare("action", Some(&expect.action), Some(verdict.action.name()));
    compare(
        "rule",
        expect.rule.as_ref(),
        Some(verdict.rule.as_deref().unwrap_or("default")),
    );
    let (backend_id, reason, message, note) = match &verdict.action {
        Action::Approve { backend_id, .. } => (Some(backend_id.as_str()), None, None, None),
        Action::Reject { reason } => (None, Some(reason.as_str()), None, None),
        Action::Erred {
            backend_id,
            message,
        } => (
            Some(backend_id.as_str()),
            None,
            Some(message.as_str()),
            None,
        ),
        Action::Hold { note } => (None, None, None, Some(note.as_str())),
    };
    compare("backend_id", expect.backend_id.as_ref(), backend_id);
    compare("reason", expect.reason.as_ref(), reason);
    compare("message", expect.message.as_ref(), message);
    compare("note", expect.note.as_ref(), note);
    let errored: Vec<&str> = verdict.errors.iter().map(|e| e.rule.as_str()).collect();
    if errored != expect.errors.iter().map(String::as_str).collect::<Vec<_>>() {
        failures.push(format!(
            "rules that failed at run time: expected {:?}, got {:?} ({})",
            expect.errors,
            errored,
            verdict
                .errors
                .iter()
                .map(|e| format!("`{}`: {}", e.rule, e.message))
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    if !failures.is_empty() {
        failures.push(format!("reasons: {}", verdict.reasons.join("; ")));
    }
    failures
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_syntax_error_gives_line_column_and_key_but_not_the_line() {
        let error =
            Cases::parse("[[case]]\nname = \"unterminated-case-name\n").expect_err("syntax");
        assert_eq!(
            error.to_string(),
            "line 2:31: `case.name`: invalid basic string, expected `\"`"
        );
    }
}
