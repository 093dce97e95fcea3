//! Provider policy: ordered rules that decide what happens to an allocation.
//!
//! The file's serde form is compiled by [`Policy::parse`] into a runtime [`Policy`]; every
//! fallible step (unknown keys, bad templates, missing fields) happens there and all
//! problems are reported at once, each with the rule name and line. [`Policy::evaluate`]
//! cannot fail: it returns a [`Verdict`] with the action, the rule that matched and why.
//!
//! INVARIANT: this module does no IO and knows nothing of HTTP, queues or Puhuri Core's
//! wire format; it sees an [`Allocation`] built by the worker.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use toml::Spanned;

/// Everything a rule can look at, taken from the re-fetched order and resource.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Allocation {
    pub resource_uuid: String,
    pub resource_name: String,
    pub resource_slug: String,
    pub order_uuid: String,
    pub offering_uuid: String,
    pub offering_name: String,
    pub offering_type: String,
    pub plan_name: String,
    pub customer_uuid: String,
    pub customer_name: String,
    pub customer_slug: String,
    pub project_uuid: String,
    pub project_name: String,
    pub project_slug: String,
    /// Requested limits per component type (`cpu_k_hours`, `gpu_k_hours`, `gb_k_hours`, ...).
    pub limits: BTreeMap<String, f64>,
}

/// What to do with an allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Set `backend_id`, then approve.
    Approve { backend_id: String },
    /// Reject; `reason` becomes the provider's rejection comment.
    Reject { reason: String },
    /// Set `backend_id`, then mark the allocation erred with `message`.
    Erred { backend_id: String, message: String },
    /// Write nothing; leave it for a human.
    Hold { note: String },
}

impl Action {
    /// The action's name as used in config, logs and events.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Approve { .. } => "approve",
            Action::Reject { .. } => "reject",
            Action::Erred { .. } => "erred",
            Action::Hold { .. } => "hold",
        }
    }
}

/// The result of evaluating a policy against one allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub action: Action,
    /// The rule that matched; `None` when the default applied.
    pub rule: Option<String>,
    /// Why each rule before the match did not match, and why the match did.
    pub reasons: Vec<String>,
}

/// Every problem found while loading a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyErrors(pub Vec<PolicyError>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub line: usize,
    /// The rule's name, or a description of the place (`default`, `file`).
    pub rule: String,
    pub message: String,
}

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "line {}: {}: {}", error.line, error.rule, error.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePolicy {
    #[serde(default, rename = "rule")]
    rules: Vec<Spanned<FileRule>>,
    default: Option<Spanned<FileAction>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRule {
    name: String,
    #[serde(default)]
    offering: Vec<String>,
    #[serde(default)]
    customer: Vec<String>,
    #[serde(default)]
    project: Vec<String>,
    #[serde(default)]
    max_limits: BTreeMap<String, f64>,
    #[serde(flatten)]
    action: FileAction,
}

#[derive(Debug, Deserialize)]
struct FileAction {
    action: String,
    backend_id: Option<String>,
    reason: Option<String>,
    message: Option<String>,
    note: Option<String>,
}

/// A compiled policy.
#[derive(Debug, Clone)]
pub struct Policy {
    rules: Vec<Rule>,
    default: CompiledAction,
}

#[derive(Debug, Clone)]
struct Rule {
    name: String,
    offering: Vec<String>,
    customer: Vec<String>,
    project: Vec<String>,
    max_limits: BTreeMap<String, f64>,
    action: CompiledAction,
}

#[derive(Debug, Clone)]
enum CompiledAction {
    Approve {
        backend_id: Template,
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

/// The default `backend_id` template: unique and stable for an allocation.
pub const DEFAULT_BACKEND_ID: &str = "{resource_uuid}";

/// Names a template may use.
pub const TEMPLATE_FIELDS: &[&str] = &[
    "resource_uuid",
    "resource_short_uuid",
    "resource_name",
    "resource_slug",
    "order_uuid",
    "offering_uuid",
    "offering_name",
    "plan_name",
    "customer_uuid",
    "customer_name",
    "customer_slug",
    "project_uuid",
    "project_name",
    "project_slug",
];

/// The longest `backend_id` Waldur stores.
pub const MAX_BACKEND_ID_LEN: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Field(&'static str),
}

/// A `{field}` template, checked at load time.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Template(Vec<Piece>);

impl Template {
    fn parse(text: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find(['{', '}']) {
            if rest.as_bytes()[open] == b'}' {
                return Err(format!("unmatched `}}` in template `{text}`"));
            }
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .ok_or_else(|| format!("unclosed `{{` in template `{text}`"))?;
            let name = after[..close].trim();
            let field = TEMPLATE_FIELDS
                .iter()
                .find(|f| **f == name)
                .ok_or_else(|| {
                    format!(
                        "unknown field `{name}` in template `{text}`; known: {}",
                        TEMPLATE_FIELDS.join(", ")
                    )
                })?;
            pieces.push(Piece::Field(field));
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_owned()));
        }
        Ok(Template(pieces))
    }

    fn render(&self, allocation: &Allocation) -> String {
        let mut out = String::new();
        for piece in &self.0 {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Field(field) => out.push_str(field_value(allocation, field)),
            }
        }
        out
    }
}

fn field_value<'a>(allocation: &'a Allocation, field: &str) -> &'a str {
    match field {
        "resource_uuid" => &allocation.resource_uuid,
        "resource_short_uuid" => allocation
            .resource_uuid
            .get(..8)
            .unwrap_or(&allocation.resource_uuid),
        "resource_name" => &allocation.resource_name,
        "resource_slug" => &allocation.resource_slug,
        "order_uuid" => &allocation.order_uuid,
        "offering_uuid" => &allocation.offering_uuid,
        "offering_name" => &allocation.offering_name,
        "plan_name" => &allocation.plan_name,
        "customer_uuid" => &allocation.customer_uuid,
        "customer_name" => &allocation.customer_name,
        "customer_slug" => &allocation.customer_slug,
        "project_uuid" => &allocation.project_uuid,
        "project_name" => &allocation.project_name,
        "project_slug" => &allocation.project_slug,
        _ => "",
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

impl Policy {
    /// A policy with no rules: everything is held.
    pub fn hold_everything() -> Policy {
        Policy {
            rules: Vec::new(),
            default: CompiledAction::Hold {
                note: Template(vec![Piece::Text("no policy rule matched".into())]),
            },
        }
    }

    /// Number of rules, for logs.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// Compiles policy text, reporting every problem found.
    pub fn parse(text: &str) -> Result<Policy, PolicyErrors> {
        let file: FilePolicy = toml::from_str(text).map_err(|error| {
            let line = error.span().map(|s| line_of(text, s.start)).unwrap_or(1);
            PolicyErrors(vec![PolicyError {
                line,
                rule: "file".into(),
                message: error.message().trim_end().to_owned(),
            }])
        })?;
        let mut errors = Vec::new();
        let mut rules = Vec::new();
        let mut names: Vec<String> = Vec::new();
        for rule in &file.rules {
            let line = line_of(text, rule.span().start);
            let rule = rule.get_ref();
            let mut fail = |message: String| {
                errors.push(PolicyError {
                    line,
                    rule: format!("rule `{}`", rule.name),
                    message,
                })
            };
            if rule.name.trim().is_empty() {
                fail("the rule name is empty".into());
            }
            if names.contains(&rule.name) {
                fail("another rule has the same name".into());
            }
            names.push(rule.name.clone());
            for (component, ceiling) in &rule.max_limits {
                if !ceiling.is_finite() || *ceiling < 0.0 {
                    fail(format!(
                        "`max_limits.{component}` must be a non-negative number"
                    ));
                }
            }
            match compile_action(&rule.action) {
                Ok(action) => rules.push(Rule {
                    name: rule.name.clone(),
                    offering: rule.offering.clone(),
                    customer: rule.customer.clone(),
                    project: rule.project.clone(),
                    max_limits: rule.max_limits.clone(),
                    action,
                }),
                Err(problems) => problems.into_iter().for_each(&mut fail),
            }
        }
        let default = match &file.default {
            None => Policy::hold_everything().default,
            Some(action) => match compile_action(action.get_ref()) {
                Ok(action) => action,
                Err(problems) => {
                    let line = line_of(text, action.span().start);
                    for message in problems {
                        errors.push(PolicyError {
                            line,
                            rule: "default".into(),
                            message,
                        });
                    }
                    Policy::hold_everything().default
                }
            },
        };
        if errors.is_empty() {
            Ok(Policy { rules, default })
        } else {
            Err(PolicyErrors(errors))
        }
    }

    /// Decides what to do with an allocation. First matching rule wins.
    pub fn evaluate(&self, allocation: &Allocation) -> Verdict {
        let mut reasons = Vec::new();
        for rule in &self.rules {
            match rule.mismatch(allocation) {
                Some(why) => reasons.push(format!("rule `{}` did not match: {why}", rule.name)),
                None => {
                    reasons.push(format!("rule `{}` matched", rule.name));
                    let action = render_action(&rule.action, allocation, &mut reasons);
                    return Verdict {
                        action,
                        rule: Some(rule.name.clone()),
                        reasons,
                    };
                }
            }
        }
        reasons.push("no rule matched: the default applies".into());
        let action = render_action(&self.default, allocation, &mut reasons);
        Verdict {
            action,
            rule: None,
            reasons,
        }
    }
}

impl Rule {
    /// Why the rule does not match, or `None` when it does.
    fn mismatch(&self, allocation: &Allocation) -> Option<String> {
        if !self.offering.is_empty()
            && !self
                .offering
                .iter()
                .any(|o| o == &allocation.offering_uuid || o == &allocation.offering_name)
        {
            return Some(format!(
                "offering `{}` is not listed",
                allocation.offering_name
            ));
        }
        if !self.customer.is_empty()
            && !self.customer.iter().any(|c| {
                c == &allocation.customer_uuid
                    || c == &allocation.customer_name
                    || c == &allocation.customer_slug
            })
        {
            return Some(format!(
                "customer `{}` is not listed",
                allocation.customer_name
            ));
        }
        if !self.project.is_empty()
            && !self.project.iter().any(|p| {
                p == &allocation.project_uuid
                    || p == &allocation.project_name
                    || p == &allocation.project_slug
            })
        {
            return Some(format!(
                "project `{}` is not listed",
                allocation.project_name
            ));
        }
        for (component, ceiling) in &self.max_limits {
            let requested = allocation.limits.get(component).copied().unwrap_or(0.0);
            if requested > *ceiling {
                return Some(format!("`{component}` {requested} exceeds {ceiling}"));
            }
        }
        None
    }
}

fn compile_action(action: &FileAction) -> Result<CompiledAction, Vec<String>> {
    let mut problems = Vec::new();
    let mut template = |key: &str, value: Option<&String>, default: Option<&str>| -> Template {
        match value.map(String::as_str).or(default) {
            Some(text) => Template::parse(text).unwrap_or_else(|e| {
                problems.push(format!("`{key}`: {e}"));
                Template(Vec::new())
            }),
            None => {
                problems.push(format!(
                    "`{key}` is required for `action = \"{}\"`",
                    action.action
                ));
                Template(Vec::new())
            }
        }
    };
    let unexpected = |key: &str, value: &Option<String>| {
        value
            .as_ref()
            .map(|_| format!("`{key}` has no meaning here"))
    };
    let compiled = match action.action.as_str() {
        "approve" => {
            let backend_id = template(
                "backend_id",
                action.backend_id.as_ref(),
                Some(DEFAULT_BACKEND_ID),
            );
            problems.extend(unexpected("reason", &action.reason));
            problems.extend(unexpected("message", &action.message));
            problems.extend(unexpected("note", &action.note));
            CompiledAction::Approve { backend_id }
        }
        "reject" => {
            let reason = template("reason", action.reason.as_ref(), None);
            problems.extend(unexpected("backend_id", &action.backend_id));
            problems.extend(unexpected("message", &action.message));
            problems.extend(unexpected("note", &action.note));
            CompiledAction::Reject { reason }
        }
        "erred" => {
            let backend_id = template(
                "backend_id",
                action.backend_id.as_ref(),
                Some(DEFAULT_BACKEND_ID),
            );
            let message = template("message", action.message.as_ref(), None);
            problems.extend(unexpected("reason", &action.reason));
            problems.extend(unexpected("note", &action.note));
            CompiledAction::Erred {
                backend_id,
                message,
            }
        }
        "hold" => {
            let note = template("note", action.note.as_ref(), Some("held for review"));
            problems.extend(unexpected("backend_id", &action.backend_id));
            problems.extend(unexpected("reason", &action.reason));
            problems.extend(unexpected("message", &action.message));
            CompiledAction::Hold { note }
        }
        other => {
            problems.push(format!(
                "unknown action `{other}`; expected `approve`, `reject`, `erred` or `hold`"
            ));
            CompiledAction::Hold {
                note: Template(Vec::new()),
            }
        }
    };
    if problems.is_empty() {
        Ok(compiled)
    } else {
        Err(problems)
    }
}

/// Renders an action's templates. A `backend_id` Waldur would refuse turns the decision
/// into a hold, so a human sees it instead of a write that cannot succeed.
fn render_action(
    action: &CompiledAction,
    allocation: &Allocation,
    reasons: &mut Vec<String>,
) -> Action {
    let checked_backend_id = |template: &Template, reasons: &mut Vec<String>| -> Option<String> {
        let value = template.render(allocation);
        if value.trim().is_empty() || value.len() > MAX_BACKEND_ID_LEN {
            reasons.push(format!(
                "the backend_id template produced an unusable value ({} characters; 1 to {MAX_BACKEND_ID_LEN} required)",
                value.len()
            ));
            None
        } else {
            Some(value)
        }
    };
    match action {
        CompiledAction::Approve { backend_id } => match checked_backend_id(backend_id, reasons) {
            Some(backend_id) => Action::Approve { backend_id },
            None => Action::Hold {
                note: "backend_id template produced an unusable value".into(),
            },
        },
        CompiledAction::Reject { reason } => Action::Reject {
            reason: reason.render(allocation),
        },
        CompiledAction::Erred {
            backend_id,
            message,
        } => match checked_backend_id(backend_id, reasons) {
            Some(backend_id) => Action::Erred {
                backend_id,
                message: message.render(allocation),
            },
            None => Action::Hold {
                note: "backend_id template produced an unusable value".into(),
            },
        },
        CompiledAction::Hold { note } => Action::Hold {
            note: note.render(allocation),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allocation() -> Allocation {
        Allocation {
            resource_uuid: "a1916bd53fd04b1ab1a4e700c926607b".into(),
            resource_name: "Sample".into(),
            resource_slug: "sample".into(),
            order_uuid: "0bd3a4ee3c0a4b4d8f0c6b2f6f1e2a11".into(),
            offering_uuid: "cf4eb9c29fc74af4ade667fcb53633d5".into(),
            offering_name: "LUMI-C".into(),
            offering_type: "Marketplace.Basic".into(),
            plan_name: "Default".into(),
            customer_uuid: "11111111111111111111111111111111".into(),
            customer_name: "University of Tartu".into(),
            customer_slug: "ut".into(),
            project_uuid: "8a158ebf1abf4c74a431b9c65a0d7829".into(),
            project_name: "Climate".into(),
            project_slug: "climate".into(),
            limits: [
                ("cpu_k_hours".to_owned(), 1000.0),
                ("gb_k_hours".to_owned(), 3000.0),
            ]
            .into_iter()
            .collect(),
        }
    }

    const POLICY: &str = r#"
[[rule]]
name = "small"
offering = ["LUMI-C"]
customer = ["ut"]
max_limits = { cpu_k_hours = 1000 }
action = "approve"
backend_id = "{project_slug}_{resource_short_uuid}"

[[rule]]
name = "other-lumi-c"
offering = ["cf4eb9c29fc74af4ade667fcb53633d5"]
action = "reject"
reason = "{project_name}: more than 1000 k-hours needs a panel"

[default]
action = "hold"
note = "needs a human"
"#;

    #[test]
    fn first_matching_rule_wins_and_renders_the_backend_id() {
        let policy = Policy::parse(POLICY).expect("valid");
        let verdict = policy.evaluate(&allocation());
        assert_eq!(verdict.rule.as_deref(), Some("small"));
        assert_eq!(
            verdict.action,
            Action::Approve {
                backend_id: "climate_a1916bd5".into()
            }
        );
    }

    #[test]
    fn a_request_above_the_ceiling_falls_through_to_the_next_rule() {
        let policy = Policy::parse(POLICY).expect("valid");
        let mut allocation = allocation();
        allocation.limits.insert("cpu_k_hours".into(), 1000.5);
        let verdict = policy.evaluate(&allocation);
        assert_eq!(verdict.rule.as_deref(), Some("other-lumi-c"));
        assert_eq!(
            verdict.action,
            Action::Reject {
                reason: "Climate: more than 1000 k-hours needs a panel".into()
            }
        );
        assert!(
            verdict.reasons[0].contains("1000.5 exceeds 1000"),
            "{:?}",
            verdict.reasons
        );
    }

    #[test]
    fn the_default_closes_the_list() {
        let policy = Policy::parse(POLICY).expect("valid");
        let mut allocation = allocation();
        allocation.offering_name = "LUMI-G".into();
        allocation.offering_uuid = "22222222222222222222222222222222".into();
        let verdict = policy.evaluate(&allocation);
        assert_eq!(verdict.rule, None);
        assert_eq!(
            verdict.action,
            Action::Hold {
                note: "needs a human".into()
            }
        );
    }

    #[test]
    fn reports_every_problem_with_its_line() {
        let text = "[[rule]]\nname = \"a\"\naction = \"approve\"\nbackend_id = \"{nope}\"\n\n[[rule]]\nname = \"b\"\naction = \"reject\"\n\n[[rule]]\nname = \"c\"\naction = \"launch\"\n";
        let errors = Policy::parse(text).expect_err("invalid").0;
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert_eq!((errors[0].line, errors[0].rule.as_str()), (1, "rule `a`"));
        assert!(errors[0].message.contains("unknown field `nope`"));
        assert_eq!(errors[1].line, 6);
        assert!(errors[1].message.contains("`reason` is required"));
        assert_eq!(errors[2].line, 10);
        assert!(errors[2].message.contains("unknown action `launch`"));
    }

    #[test]
    fn an_empty_backend_id_holds_instead_of_writing() {
        let policy = Policy::parse(
            "[[rule]]\nname = \"a\"\naction = \"approve\"\nbackend_id = \"{project_slug}\"\n",
        )
        .expect("valid");
        let mut allocation = allocation();
        allocation.project_slug.clear();
        let verdict = policy.evaluate(&allocation);
        assert!(matches!(verdict.action, Action::Hold { .. }), "{verdict:?}");
    }

    #[test]
    fn no_policy_holds_everything() {
        let verdict = Policy::hold_everything().evaluate(&allocation());
        assert!(matches!(verdict.action, Action::Hold { .. }));
        assert_eq!(verdict.rule, None);
    }
}
