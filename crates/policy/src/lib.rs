//! Provider policy: ordered rules with CEL conditions that decide what happens to an
//! allocation.
//!
//! The file's serde form is compiled by [`Policy::parse`] into a runtime [`Policy`]: every
//! condition is parsed and checked against the allocation object ([`check`]), every
//! template is resolved ([`template`]), and every problem is reported at once with the
//! rule's name and the file line. [`Policy::evaluate`] cannot fail: it returns a
//! [`Verdict`] with the action, the rule that matched, the reasons, and the rules whose
//! condition failed at run time (recorded and skipped). [`Policy::explain`] evaluates
//! every rule, for `policy explain`.
//!
//! INVARIANT: `allocation`, `check`, `template`, `cases` and this module do no IO and know
//! nothing of HTTP, queues or Puhuri Core's wire format; the caller passes the allocation
//! and the current time. Only [`reload`] reads files.

pub mod allocation;
pub mod cases;
mod check;
pub mod template;
pub mod toml_error;

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use toml::Spanned;

pub use allocation::{Allocation, AllocationIds, DEFAULT_COMPONENTS, GrantedFacts};
use template::Template;

/// A section of the access report submitted after approval (Waldur's `submit_report`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportSection {
    pub header: String,
    pub body: String,
}

/// What to do with an allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Set `backend_id`, approve, then submit the report when it has sections.
    Approve {
        backend_id: String,
        report: Vec<ReportSection>,
    },
    /// Reject; `reason` becomes the provider's rejection comment.
    Reject { reason: String },
    /// Set `backend_id`, then mark the allocation erred with `message`.
    Erred { backend_id: String, message: String },
    /// Write nothing; leave it for a human.
    Hold { note: String },
}

impl Action {
    /// The action's name as used in the policy file, logs and events.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Approve { .. } => "approve",
            Action::Reject { .. } => "reject",
            Action::Erred { .. } => "erred",
            Action::Hold { .. } => "hold",
        }
    }
}

/// A rule whose condition failed at run time; it was skipped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleError {
    pub rule: String,
    pub message: String,
}

/// The result of evaluating a policy against one allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub action: Action,
    /// The rule that matched; `None` when the default applied.
    pub rule: Option<String>,
    /// Why each rule before the match did not match, and why the match did.
    pub reasons: Vec<String>,
    /// Rules skipped because their condition failed at run time.
    pub errors: Vec<RuleError>,
    /// The digest of the policy file that decided (`sha256:...`).
    pub policy_version: Arc<str>,
    /// Which allocation this is about.
    pub allocation: AllocationIds,
}

/// How one rule fared, for `policy explain`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleReport {
    pub rule: String,
    pub line: usize,
    /// `matched`, `not-matched` or `errored`.
    pub result: &'static str,
    /// The run-time error, when `errored`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The value of every field the condition reads.
    pub facts: Vec<(String, Value)>,
}

/// Every rule evaluated, and the verdict (first match wins).
#[derive(Debug, Clone)]
pub struct Explanation {
    pub verdict: Verdict,
    pub rules: Vec<RuleReport>,
}

/// Every problem found while loading a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyErrors(pub Vec<PolicyError>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub line: usize,
    /// The column, for errors of the TOML syntax or types (which point at a character).
    pub column: Option<usize>,
    /// The rule (`rule \`name\``), or the place (`default`, `file`, `components`).
    pub rule: String,
    pub message: String,
}

impl PolicyError {
    /// `line` or `line:column`, for `file:position: place: message`.
    pub fn position(&self) -> String {
        match self.column {
            Some(column) => format!("{}:{column}", self.line),
            None => self.line.to_string(),
        }
    }
}

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(
                f,
                "line {}: {}: {}",
                error.position(),
                error.rule,
                error.message
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePolicy {
    components: Option<Spanned<Vec<String>>>,
    #[serde(default, rename = "rule")]
    rules: Vec<Spanned<toml::Table>>,
    default: Option<Spanned<toml::Table>>,
    /// What an operator's approval from the review queue writes.
    manual: Option<Spanned<toml::Table>>,
}

/// `[manual]`: the `backend_id` template and access report of approvals an operator
/// makes from the review queue (the rejection comment is the operator's reason).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileManual {
    backend_id: Option<String>,
    report: Option<Vec<ReportSection>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRule {
    name: String,
    when: Option<String>,
    action: String,
    backend_id: Option<String>,
    reason: Option<String>,
    message: Option<String>,
    note: Option<String>,
    report: Option<Vec<ReportSection>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDefault {
    action: String,
    backend_id: Option<String>,
    reason: Option<String>,
    message: Option<String>,
    note: Option<String>,
    report: Option<Vec<ReportSection>>,
}

struct ActionSpec<'a> {
    action: &'a str,
    backend_id: Option<&'a String>,
    reason: Option<&'a String>,
    message: Option<&'a String>,
    note: Option<&'a String>,
    report: Option<&'a Vec<ReportSection>>,
}

/// A compiled policy. Cheap to share behind an `Arc`; evaluation takes `&self`.
pub struct Policy {
    rules: Vec<Rule>,
    default: CompiledAction,
    /// `[manual]`, compiled as an approval.
    manual: CompiledAction,
    components: Vec<String>,
    version: Arc<str>,
    env: Arc<cel::Env>,
    needs_customer_details: bool,
    needs_granted: bool,
    /// Every documented field a condition or template reads.
    paths: Vec<String>,
    /// The top-level variables the conditions read: only these are converted to CEL
    /// values for an evaluation (templates read the JSON view).
    cel_variables: Vec<String>,
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("version", &self.version)
            .field("rules", &self.rules.len())
            .finish()
    }
}

struct Rule {
    name: String,
    line: usize,
    /// `None`: the rule always matches.
    when: Option<Condition>,
    action: CompiledAction,
}

struct Condition {
    /// The condition as written.
    source: String,
    program: cel::Program,
    /// The documented fields the condition reads.
    paths: Vec<String>,
}

#[derive(Debug, Clone)]
enum CompiledAction {
    Approve {
        backend_id: Template,
        report: Vec<(Template, Template)>,
    },
    Reject {
        reason: Template,
    },
    Erred {
        backend_id: Template,
        message: Template,
    },
    Hold {
        note: Template,
    },
}

/// What an operator decided for an allocation in the review queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManualDecision {
    /// Approve as `[manual]` says.
    Approve,
    /// Reject; `reason` becomes the provider's rejection comment.
    Reject { reason: String },
}

/// `[manual]` when the policy has none: the default `backend_id`, no report.
fn manual_default(components: &[String]) -> CompiledAction {
    CompiledAction::Approve {
        backend_id: Template::parse(DEFAULT_BACKEND_ID, components)
            .unwrap_or_else(|_| Template::text("")),
        report: Vec::new(),
    }
}

/// The default `backend_id` template: unique and stable for an allocation.
pub const DEFAULT_BACKEND_ID: &str = "{resource.uuid}";

/// The longest `backend_id` Waldur stores.
pub const MAX_BACKEND_ID_LEN: usize = 255;

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset.min(text.len()))
        .unwrap_or(text)
        .matches('\n')
        .count()
        + 1
}

/// Where a rule's `when` expression starts: the file line of its first character. The
/// rule's keys run from its `[[rule]]` header to the next table header.
fn when_line(text: &str, rule_span: std::ops::Range<usize>) -> usize {
    let start = rule_span.start.min(text.len());
    let body = text.get(start..).unwrap_or("");
    let mut offset = start;
    for (index, line) in body.split_inclusive('\n').enumerate() {
        let trimmed = line.trim_start();
        if index > 0 && trimmed.starts_with('[') {
            break;
        }
        if let Some(rest) = trimmed.strip_prefix("when")
            && rest.trim_start().starts_with('=')
        {
            let value = rest.trim_start()[1..].trim_start();
            // A multi-line string drops the newline right after its opening quotes.
            let skips_newline = (value.starts_with("\"\"\"") || value.starts_with("'''"))
                && value[3..]
                    .trim_start_matches([' ', '\t'])
                    .starts_with(['\n', '\r']);
            return line_of(text, offset) + usize::from(skips_newline);
        }
        offset += line.len();
    }
    line_of(text, start)
}

/// The version of a policy text: a digest of its bytes, as [`Policy::version`] reports it.
pub fn version_of(text: &str) -> Arc<str> {
    let digest = Sha256::digest(text.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}").into()
}

fn cel_env() -> Arc<cel::Env> {
    Arc::new(cel::Env::stdlib().with_optional_support(true))
}

impl Policy {
    /// A policy with no rules: everything is held.
    pub fn hold_everything() -> Policy {
        let components: Vec<String> = DEFAULT_COMPONENTS.iter().map(|c| c.to_string()).collect();
        Policy {
            rules: Vec::new(),
            default: CompiledAction::Hold {
                note: Template::text("no policy is configured"),
            },
            manual: manual_default(&components),
            components,
            version: "none".into(),
            env: cel_env(),
            needs_customer_details: false,
            needs_granted: false,
            paths: Vec::new(),
            cel_variables: Vec::new(),
        }
    }

    /// Number of rules, for logs.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// The digest of the policy text (`sha256:<hex>`), or `none` for [`Policy::hold_everything`].
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The components `limits` always has (0 when not requested).
    pub fn components(&self) -> &[String] {
        &self.components
    }

    /// Whether a condition or template reads `customer.abbreviation`, which the caller
    /// looks up in the provider's customers list.
    pub fn needs_customer_details(&self) -> bool {
        self.needs_customer_details
    }

    /// Whether a condition or template reads `path` (`customer.country`) or a field
    /// under it.
    pub fn reads(&self, path: &str) -> bool {
        self.paths.iter().any(|p| {
            p == path
                || p.strip_prefix(path)
                    .is_some_and(|rest| rest.starts_with('.'))
        })
    }

    /// The rules (and the default, as `default`) whose action is `erred` and whose
    /// condition does not restrict `offering.type` to `only_type`: where the server allows
    /// `erred` only for that type, they can match offerings where it is written otherwise.
    /// Each as (rule name, line).
    pub fn erred_rules_beyond(&self, only_type: &str) -> Vec<(String, usize)> {
        let mut out: Vec<(String, usize)> = self
            .rules
            .iter()
            .filter(|rule| matches!(rule.action, CompiledAction::Erred { .. }))
            .filter(|rule| {
                !rule.when.as_ref().is_some_and(|when| {
                    when.paths.iter().any(|p| p == "offering.type")
                        && (when.source.contains(&format!("\"{only_type}\""))
                            || when.source.contains(&format!("'{only_type}'")))
                })
            })
            .map(|rule| (rule.name.clone(), rule.line))
            .collect();
        if matches!(self.default, CompiledAction::Erred { .. }) {
            out.push(("default".into(), 0));
        }
        out
    }

    /// Whether a condition or template reads `granted`, so the caller must sum what the
    /// provider granted the organisation and project already.
    pub fn needs_granted(&self) -> bool {
        self.needs_granted
    }

    /// Compiles policy text, reporting every problem found.
    pub fn parse(text: &str) -> Result<Policy, PolicyErrors> {
        // Never the parser's `Display`: it quotes the offending line.
        let file: FilePolicy = toml::from_str(text).map_err(|error| {
            let located = toml_error::locate(text, &error, None);
            PolicyErrors(vec![PolicyError {
                line: located.line,
                column: Some(located.column),
                rule: located
                    .key
                    .map(|key| format!("`{key}`"))
                    .unwrap_or_else(|| "file".into()),
                message: located.message,
            }])
        })?;
        let mut errors = Vec::new();
        let components: Vec<String> = match &file.components {
            None => DEFAULT_COMPONENTS.iter().map(|c| c.to_string()).collect(),
            Some(list) => {
                for component in list.get_ref() {
                    if !is_identifier(component) {
                        errors.push(PolicyError {
                            line: line_of(text, list.span().start),
                            column: None,
                            rule: "components".into(),
                            message: format!(
                                "`{component}` is not a component name (letters, digits and `_`)"
                            ),
                        });
                    }
                }
                list.get_ref().clone()
            }
        };
        let env = cel_env();
        let mut rules = Vec::new();
        let mut names: Vec<String> = Vec::new();
        let mut all_paths: Vec<String> = Vec::new();
        for (index, table) in file.rules.iter().enumerate() {
            let line = line_of(text, table.span().start);
            let rule: FileRule = match table.get_ref().clone().try_into() {
                Ok(rule) => rule,
                Err(error) => {
                    errors.push(PolicyError {
                        line,
                        column: None,
                        rule: format!("rule #{}", index + 1),
                        message: error.message().trim_end().to_owned(),
                    });
                    continue;
                }
            };
            let place = format!("rule `{}`", rule.name);
            let mut fail = |line: usize, message: String| {
                errors.push(PolicyError {
                    line,
                    column: None,
                    rule: place.clone(),
                    message,
                })
            };
            if rule.name.trim().is_empty() {
                fail(line, "the rule name is empty".into());
            }
            if rule.name == "default" {
                fail(
                    line,
                    "`default` names the closing action; choose another rule name".into(),
                );
            }
            if names.contains(&rule.name) {
                fail(line, "another rule has the same name".into());
            }
            names.push(rule.name.clone());
            let when = match &rule.when {
                None => None,
                Some(source) => {
                    let first = when_line(text, table.span());
                    match compile_condition(&env, source, &components) {
                        Ok(condition) => {
                            all_paths.extend(condition.paths.iter().cloned());
                            Some(condition)
                        }
                        Err(problems) => {
                            for (expr_line, message) in problems {
                                fail(first + expr_line - 1, format!("`when`: {message}"));
                            }
                            None
                        }
                    }
                }
            };
            let spec = ActionSpec {
                action: &rule.action,
                backend_id: rule.backend_id.as_ref(),
                reason: rule.reason.as_ref(),
                message: rule.message.as_ref(),
                note: rule.note.as_ref(),
                report: rule.report.as_ref(),
            };
            match compile_action(&spec, &components, &mut all_paths) {
                Ok(action) => rules.push(Rule {
                    name: rule.name.clone(),
                    line,
                    when,
                    action,
                }),
                Err(problems) => problems.into_iter().for_each(|p| fail(line, p)),
            }
        }
        let default = match &file.default {
            None => Policy::hold_everything().default,
            Some(table) => {
                let line = line_of(text, table.span().start);
                let compiled = table
                    .get_ref()
                    .clone()
                    .try_into::<FileDefault>()
                    .map_err(|e| vec![e.message().trim_end().to_owned()])
                    .and_then(|d| {
                        let spec = ActionSpec {
                            action: &d.action,
                            backend_id: d.backend_id.as_ref(),
                            reason: d.reason.as_ref(),
                            message: d.message.as_ref(),
                            note: d.note.as_ref(),
                            report: d.report.as_ref(),
                        };
                        compile_action(&spec, &components, &mut all_paths)
                    });
                match compiled {
                    Ok(action) => action,
                    Err(problems) => {
                        for message in problems {
                            errors.push(PolicyError {
                                line,
                                column: None,
                                rule: "default".into(),
                                message,
                            });
                        }
                        Policy::hold_everything().default
                    }
                }
            }
        };
        let manual = match &file.manual {
            None => manual_default(&components),
            Some(table) => {
                let line = line_of(text, table.span().start);
                let compiled = table
                    .get_ref()
                    .clone()
                    .try_into::<FileManual>()
                    .map_err(|e| vec![e.message().trim_end().to_owned()])
                    .and_then(|m| {
                        let spec = ActionSpec {
                            action: "approve",
                            backend_id: m.backend_id.as_ref(),
                            reason: None,
                            message: None,
                            note: None,
                            report: m.report.as_ref(),
                        };
                        compile_action(&spec, &components, &mut all_paths)
                    });
                match compiled {
                    Ok(action) => action,
                    Err(problems) => {
                        for message in problems {
                            errors.push(PolicyError {
                                line,
                                column: None,
                                rule: "manual".into(),
                                message,
                            });
                        }
                        manual_default(&components)
                    }
                }
            }
        };
        if !errors.is_empty() {
            errors.sort_by_key(|e| e.line);
            return Err(PolicyErrors(errors));
        }
        let needs_customer_details = all_paths.iter().any(|p| p == "customer.abbreviation");
        let needs_granted = all_paths
            .iter()
            .any(|p| p == "granted" || p.starts_with("granted."));
        let mut cel_variables: Vec<String> = rules
            .iter()
            .filter_map(|rule| rule.when.as_ref())
            .flat_map(|condition| condition.paths.iter())
            .map(|path| path.split('.').next().unwrap_or(path).to_owned())
            .collect();
        cel_variables.sort_unstable();
        cel_variables.dedup();
        Ok(Policy {
            rules,
            default,
            manual,
            components,
            version: version_of(text),
            env,
            needs_customer_details,
            needs_granted,
            paths: all_paths,
            cel_variables,
        })
    }

    /// Decides what to do with an allocation at time `now`. The first matching rule wins;
    /// a rule whose condition fails at run time is recorded in `errors` and skipped.
    pub fn evaluate(&self, allocation: &Allocation, now: OffsetDateTime) -> Verdict {
        self.run(allocation, now, false).verdict
    }

    /// Evaluates every rule (the verdict is still the first match), with the values each
    /// condition read.
    pub fn explain(&self, allocation: &Allocation, now: OffsetDateTime) -> Explanation {
        self.run(allocation, now, true)
    }

    /// The verdict of an operator's decision from the review queue: an approval renders
    /// `[manual]` (its `backend_id` and report; a `backend_id` that renders unusable
    /// turns it into a hold, as for a rule), a rejection carries the operator's reason.
    /// No rule decided it (`rule` is `None`).
    pub fn decide_manually(
        &self,
        allocation: &Allocation,
        now: OffsetDateTime,
        decision: &ManualDecision,
    ) -> Verdict {
        let mut reasons = Vec::new();
        let action = match decision {
            ManualDecision::Approve => {
                reasons.push("approved by an operator: `[manual]` applies".into());
                let view = allocation.view(&self.components, now);
                render_action(&self.manual, &view, &mut reasons)
            }
            ManualDecision::Reject { reason } => {
                reasons.push("rejected by an operator".into());
                Action::Reject {
                    reason: reason.clone(),
                }
            }
        };
        Verdict {
            action,
            rule: None,
            reasons,
            errors: Vec::new(),
            policy_version: self.version.clone(),
            allocation: allocation.ids(),
        }
    }

    fn run(&self, allocation: &Allocation, now: OffsetDateTime, every_rule: bool) -> Explanation {
        let view = allocation.view(&self.components, now);
        let mut context = cel::Context::with_env(self.env.clone());
        // Only what the conditions read becomes a CEL value (a checked condition reads
        // no other variable: an unknown one is refused at load).
        if let Value::Object(variables) = &view {
            for (name, value) in variables {
                if self.cel_variables.binary_search(name).is_ok() {
                    context.add_variable_from_value(name.as_str(), allocation::to_cel(value));
                }
            }
        }
        let mut reasons = Vec::new();
        let mut errors = Vec::new();
        let mut reports = Vec::new();
        let mut matched: Option<&Rule> = None;
        for rule in &self.rules {
            let result = match &rule.when {
                None => Ok(true),
                Some(condition) => match condition.program.execute(&context) {
                    Ok(cel::Value::Bool(b)) => Ok(b),
                    Ok(other) => Err(format!(
                        "the condition gave {}, not a boolean",
                        cel_type_name(&other)
                    )),
                    Err(error) => Err(lowercase_first(&error.to_string())),
                },
            };
            if matched.is_none() {
                match &result {
                    Ok(true) => reasons.push(format!("rule `{}` matched", rule.name)),
                    Ok(false) => reasons.push(format!("rule `{}` did not match", rule.name)),
                    Err(message) => {
                        reasons.push(format!(
                            "rule `{}` skipped: its condition failed: {message}",
                            rule.name
                        ));
                        errors.push(RuleError {
                            rule: rule.name.clone(),
                            message: message.clone(),
                        });
                    }
                }
            }
            if every_rule {
                let facts = rule
                    .when
                    .iter()
                    .flat_map(|c| c.paths.iter())
                    .filter(|p| p.contains('.') || matches!(p.as_str(), "now" | "today"))
                    .map(|p| {
                        (
                            p.clone(),
                            allocation::lookup(&view, p).cloned().unwrap_or(Value::Null),
                        )
                    })
                    .collect();
                reports.push(RuleReport {
                    rule: rule.name.clone(),
                    line: rule.line,
                    result: match &result {
                        Ok(true) => "matched",
                        Ok(false) => "not-matched",
                        Err(_) => "errored",
                    },
                    error: result.as_ref().err().cloned(),
                    facts,
                });
            }
            if matched.is_none() && result == Ok(true) {
                matched = Some(rule);
                if !every_rule {
                    break;
                }
            }
        }
        let action = match matched {
            Some(rule) => render_action(&rule.action, &view, &mut reasons),
            None => {
                reasons.push("no rule matched: the default applies".into());
                render_action(&self.default, &view, &mut reasons)
            }
        };
        Explanation {
            verdict: Verdict {
                action,
                rule: matched.map(|r| r.name.clone()),
                reasons,
                errors,
                policy_version: self.version.clone(),
                allocation: allocation.ids(),
            },
            rules: reports,
        }
    }
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn lowercase_first(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn cel_type_name(value: &cel::Value) -> &'static str {
    match value {
        cel::Value::List(_) => "a list",
        cel::Value::Map(_) => "a map",
        cel::Value::Int(_) | cel::Value::UInt(_) | cel::Value::Float(_) => "a number",
        cel::Value::String(_) => "a string",
        cel::Value::Null => "null",
        _ => "a value",
    }
}

/// Parses and checks a condition. Problems come with their line within the expression.
fn compile_condition(
    env: &cel::Env,
    source: &str,
    components: &[String],
) -> Result<Condition, Vec<(usize, String)>> {
    if source.trim().is_empty() {
        return Err(vec![(1, "the condition is empty".into())]);
    }
    let program = env.compile(source).map_err(|errors| {
        errors
            .errors
            .iter()
            .map(|e| {
                let line = usize::try_from(e.pos.0).unwrap_or(1).max(1);
                let column = usize::try_from(e.pos.1).unwrap_or(0);
                (
                    line,
                    format!(
                        "column {column}: {}",
                        lowercase_first(e.msg.trim_start_matches("Syntax error: "))
                    ),
                )
            })
            .collect::<Vec<_>>()
    })?;
    let offset_of = |id: u64| {
        program
            .source_info()
            .offset_for(id)
            .map(|(start, _)| start as usize)
    };
    let (problems, paths) = check::check_condition(program.expression(), components, &offset_of);
    if !problems.is_empty() {
        return Err(problems
            .into_iter()
            .map(|p| (p.offset.map(|o| line_of(source, o)).unwrap_or(1), p.message))
            .collect());
    }
    Ok(Condition {
        source: source.to_owned(),
        program,
        paths,
    })
}

fn compile_action(
    action: &ActionSpec<'_>,
    components: &[String],
    paths: &mut Vec<String>,
) -> Result<CompiledAction, Vec<String>> {
    let mut problems = Vec::new();
    let mut template = |key: &str, value: Option<&String>, default: Option<&str>| -> Template {
        match value.map(String::as_str).or(default) {
            Some(text) => match Template::parse(text, components) {
                Ok(template) => {
                    paths.extend(template.paths());
                    template
                }
                Err(errors) => {
                    problems.extend(errors.into_iter().map(|e| format!("`{key}`: {e}")));
                    Template::text("")
                }
            },
            None => {
                problems.push(format!(
                    "`{key}` is required for `action = \"{}\"`",
                    action.action
                ));
                Template::text("")
            }
        }
    };
    let compiled = match action.action {
        "approve" => {
            let backend_id = template("backend_id", action.backend_id, Some(DEFAULT_BACKEND_ID));
            let report = action
                .report
                .map(|sections| {
                    sections
                        .iter()
                        .map(|s| {
                            (
                                template("report.header", Some(&s.header), None),
                                template("report.body", Some(&s.body), None),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            CompiledAction::Approve { backend_id, report }
        }
        "reject" => CompiledAction::Reject {
            reason: template("reason", action.reason, None),
        },
        "erred" => CompiledAction::Erred {
            backend_id: template("backend_id", action.backend_id, Some(DEFAULT_BACKEND_ID)),
            message: template("message", action.message, None),
        },
        "hold" => CompiledAction::Hold {
            note: template("note", action.note, Some("held for review")),
        },
        other => {
            problems.push(format!(
                "unknown action `{other}`; expected `approve`, `reject`, `erred` or `hold`"
            ));
            CompiledAction::Hold {
                note: Template::text(""),
            }
        }
    };
    let allowed: &[&str] = match action.action {
        "approve" => &["backend_id", "report"],
        "reject" => &["reason"],
        "erred" => &["backend_id", "message"],
        "hold" => &["note"],
        _ => &["backend_id", "reason", "message", "note", "report"],
    };
    let present = [
        ("backend_id", action.backend_id.is_some()),
        ("reason", action.reason.is_some()),
        ("message", action.message.is_some()),
        ("note", action.note.is_some()),
        ("report", action.report.is_some()),
    ];
    for (key, is_present) in present {
        if is_present && !allowed.contains(&key) {
            problems.push(format!(
                "`{key}` has no meaning for `action = \"{}\"`",
                action.action
            ));
        }
    }
    if let CompiledAction::Approve { backend_id, .. } | CompiledAction::Erred { backend_id, .. } =
        &compiled
        && problems.is_empty()
    {
        problems.extend(check_backend_id_template(backend_id));
    }
    if let CompiledAction::Approve { report, .. } = &compiled
        && action.report.is_some_and(|r| r.is_empty())
        && report.is_empty()
    {
        problems.push("`report` needs at least one section; omit it to submit none".into());
    }
    if let CompiledAction::Reject { reason } = &compiled
        && !reason.has_placeholders()
        && reason.literal_text().trim().is_empty()
        && action.reason.is_some()
        && problems.is_empty()
    {
        problems.push("`reason` is empty; the requester sees it as the rejection comment".into());
    }
    if problems.is_empty() {
        Ok(compiled)
    } else {
        Err(problems)
    }
}

/// What Waldur and HPC account tooling accept as a `backend_id`: 1 to 255 characters,
/// no whitespace or control characters.
fn is_usable_backend_id(value: &str) -> bool {
    !value.is_empty()
        && value.chars().count() <= MAX_BACKEND_ID_LEN
        && !value.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn check_backend_id_template(template: &Template) -> Option<String> {
    let literal = template.literal_text();
    if literal.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some(format!(
            "`backend_id`: `{literal}` has whitespace or control characters, which a backend id may not contain"
        ));
    }
    if literal.chars().count() > MAX_BACKEND_ID_LEN {
        return Some(format!(
            "`backend_id`: the fixed text alone is longer than {MAX_BACKEND_ID_LEN} characters"
        ));
    }
    if !template.has_placeholders() {
        return Some(
            "`backend_id` has no placeholder, so every allocation would get the same id; use e.g. `{resource.short_uuid}`"
                .into(),
        );
    }
    None
}

/// Renders an action's templates. A `backend_id` Waldur would refuse (or one with a
/// missing value) turns the decision into a hold, so a human sees it instead of a write
/// that cannot succeed or that names the wrong account.
fn render_action(action: &CompiledAction, view: &Value, reasons: &mut Vec<String>) -> Action {
    let text = |template: &Template, key: &str, reasons: &mut Vec<String>| -> String {
        let (value, missing) = template.render(view);
        for path in missing {
            reasons.push(format!("`{key}`: `{path}` has no value"));
        }
        value
    };
    let backend_id = |template: &Template, reasons: &mut Vec<String>| -> Result<String, Action> {
        let (value, missing) = template.render(view);
        if !missing.is_empty() {
            reasons.push(format!(
                "`backend_id`: {} has no value",
                missing
                    .iter()
                    .map(|p| format!("`{p}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        } else if is_usable_backend_id(&value) {
            return Ok(value);
        } else {
            reasons.push(format!(
                "`backend_id` rendered as `{value}`, which is not 1 to {MAX_BACKEND_ID_LEN} characters without whitespace"
            ));
        }
        Err(Action::Hold {
            note: "the backend_id template gave an unusable value; decide by hand".into(),
        })
    };
    match action {
        CompiledAction::Approve {
            backend_id: id,
            report,
        } => match backend_id(id, reasons) {
            Ok(backend_id) => Action::Approve {
                backend_id,
                report: report
                    .iter()
                    .map(|(header, body)| ReportSection {
                        header: text(header, "report.header", reasons),
                        body: text(body, "report.body", reasons),
                    })
                    .collect(),
            },
            Err(hold) => hold,
        },
        CompiledAction::Reject { reason } => Action::Reject {
            reason: text(reason, "reason", reasons),
        },
        CompiledAction::Erred {
            backend_id: id,
            message,
        } => match backend_id(id, reasons) {
            Ok(backend_id) => Action::Erred {
                backend_id,
                message: text(message, "message", reasons),
            },
            Err(hold) => hold,
        },
        CompiledAction::Hold { note } => Action::Hold {
            note: text(note, "note", reasons),
        },
    }
}

#[cfg(test)]
mod tests;
