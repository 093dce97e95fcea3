use super::allocation::*;
use super::*;

fn now() -> OffsetDateTime {
    OffsetDateTime::parse(
        "2026-06-01T12:00:00Z",
        &time::format_description::well_known::Rfc3339,
    )
    .expect("timestamp")
}

fn allocation() -> Allocation {
    Allocation {
        resource: ResourceFacts {
            uuid: "a1916bd53fd04b1ab1a4e700c926607b".into(),
            name: "Sample".into(),
            slug: "sample".into(),
            state: "Creating".into(),
            ..Default::default()
        },
        offering: OfferingFacts {
            name: "LUMI-C".into(),
            ..Default::default()
        },
        project: ProjectFacts {
            name: "Climate".into(),
            slug: "climate".into(),
            end_date: Some("2028-12-31".into()),
            ..Default::default()
        },
        customer: CustomerFacts {
            name: "University of Helsinki".into(),
            country: "FI".into(),
            ..Default::default()
        },
        limits: [("cpu_k_hours".to_owned(), 1000.0)].into_iter().collect(),
        attributes: serde_json::json!({"is_industry": false, "used_ai_tech": ["Deep Learning"]})
            .as_object()
            .cloned()
            .unwrap_or_default(),
        ..Default::default()
    }
}

const POLICY: &str = r#"
[[rule]]
name = "ended"
when = "project.end_date != null && project.end_date < today"
action = "reject"
reason = "{project.name} ended on {project.end_date}"

[[rule]]
name = "small"
when = '''
offering.name == "LUMI-C"
  && customer.country in ["FI", "EE"]
  && limits.cpu_k_hours <= 1000
'''
action = "approve"
backend_id = "{project.slug}_{resource.short_uuid}"
report = [{ header = "Login", body = "ssh {project.slug}@lumi" }]

[default]
action = "hold"
note = "needs a human"
"#;

#[test]
fn first_matching_rule_wins_and_renders_the_backend_id() {
    let policy = Policy::parse(POLICY).expect("valid");
    let verdict = policy.evaluate(&allocation(), now());
    assert_eq!(verdict.rule.as_deref(), Some("small"));
    assert_eq!(
        verdict.action,
        Action::Approve {
            backend_id: "climate_a1916bd5".into(),
            report: vec![ReportSection {
                header: "Login".into(),
                body: "ssh climate@lumi".into()
            }],
        }
    );
    assert!(verdict.policy_version.starts_with("sha256:"));
    assert_eq!(verdict.errors, vec![]);
}

#[test]
fn an_ended_project_is_rejected_with_the_rendered_reason() {
    let policy = Policy::parse(POLICY).expect("valid");
    let mut allocation = allocation();
    allocation.project.end_date = Some("2026-05-31".into());
    let verdict = policy.evaluate(&allocation, now());
    assert_eq!(
        verdict.action,
        Action::Reject {
            reason: "Climate ended on 2026-05-31".into()
        }
    );
}

#[test]
fn the_default_closes_the_list() {
    let policy = Policy::parse(POLICY).expect("valid");
    let mut allocation = allocation();
    allocation.limits.insert("cpu_k_hours".into(), 1000.5);
    let verdict = policy.evaluate(&allocation, now());
    assert_eq!(verdict.rule, None);
    assert_eq!(
        verdict.action,
        Action::Hold {
            note: "needs a human".into()
        }
    );
}

#[test]
fn a_rule_failing_at_run_time_is_recorded_and_skipped() {
    let policy = Policy::parse(
        "[[rule]]\nname = \"industry\"\nwhen = \"attributes.is_commercial\"\naction = \"hold\"\n\n[[rule]]\nname = \"rest\"\naction = \"reject\"\nreason = \"no\"\n",
    )
    .expect("valid");
    let verdict = policy.evaluate(&allocation(), now());
    assert_eq!(verdict.rule.as_deref(), Some("rest"));
    assert_eq!(verdict.errors.len(), 1);
    assert_eq!(verdict.errors[0].rule, "industry");
    assert!(
        verdict.errors[0].message.contains("is_commercial"),
        "{:?}",
        verdict.errors
    );
}

#[test]
fn reports_every_problem_with_its_line() {
    let text = "[[rule]]\nname = \"a\"\naction = \"approve\"\nbackend_id = \"{nope}\"\n\n[[rule]]\nname = \"b\"\nwhen = '''\ncustomer.country == \"FI\" &&\n  project.slugg == \"x\"'''\naction = \"reject\"\n\n[[rule]]\nname = \"c\"\naction = \"launch\"\ncolour = 1\n\n[[rule]]\nname = \"d\"\nwhen = \"limits.cpu_k_hours >\"\naction = \"hold\"\n";
    let errors = Policy::parse(text).expect_err("invalid").0;
    let summary: Vec<(usize, &str)> = errors.iter().map(|e| (e.line, e.rule.as_str())).collect();
    assert_eq!(
        summary,
        vec![
            (1, "rule `a`"),
            (6, "rule `b`"),
            (10, "rule `b`"),
            (13, "rule #3"),
            (20, "rule `d`"),
        ],
        "{errors:#?}"
    );
    assert!(errors[0].message.contains("unknown field `nope`"));
    assert!(errors[1].message.contains("`reason` is required"));
    assert!(errors[2].message.contains("unknown field `project.slugg`"));
    assert!(errors[3].message.contains("unknown field `colour`"));
    assert!(errors[4].message.contains("column"));
}

#[test]
fn refuses_comparisons_of_different_types_and_non_boolean_conditions() {
    let errors = Policy::parse(
        "[[rule]]\nname = \"a\"\nwhen = \"customer.country == 1 || limits.gpu_k_hours\"\naction = \"hold\"\n\n[[rule]]\nname = \"b\"\nwhen = \"project.name\"\naction = \"hold\"\n\n[[rule]]\nname = \"c\"\nwhen = \"limits.cpu == 1 && colour == 2\"\naction = \"hold\"\n",
    )
    .expect_err("invalid")
    .0;
    let messages: Vec<&str> = errors.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(errors.len(), 5, "{messages:#?}");
    assert!(messages[0].contains("cannot be compared"));
    assert!(messages[1].contains("needs booleans"));
    assert!(messages[2].contains("must be a boolean"));
    assert!(messages[3].contains("unknown component `limits.cpu`"));
    assert!(messages[4].contains("unknown variable `colour`"));
}

#[test]
fn comprehension_variables_are_in_scope() {
    let policy = Policy::parse(
        "[[rule]]\nname = \"ai\"\nwhen = \"has(attributes.used_ai_tech) && attributes.used_ai_tech.exists(t, t == 'Deep Learning')\"\naction = \"hold\"\nnote = \"AI\"\n",
    )
    .expect("valid");
    assert_eq!(
        policy.evaluate(&allocation(), now()).rule.as_deref(),
        Some("ai")
    );
}

#[test]
fn a_backend_id_template_must_vary_and_hold_whitespace_free_text() {
    let errors = Policy::parse(
        "[[rule]]\nname = \"a\"\naction = \"approve\"\nbackend_id = \"fixed\"\n\n[[rule]]\nname = \"b\"\naction = \"approve\"\nbackend_id = \"my {project.slug}\"\n",
    )
    .expect_err("invalid")
    .0;
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(errors[0].message.contains("no placeholder"));
    assert!(errors[1].message.contains("whitespace"));
}

#[test]
fn an_unusable_backend_id_holds_instead_of_writing() {
    let policy = Policy::parse(
        "[[rule]]\nname = \"a\"\naction = \"approve\"\nbackend_id = \"{resource.name}\"\n",
    )
    .expect("valid");
    let mut allocation = allocation();
    allocation.resource.name = "two words".into();
    let verdict = policy.evaluate(&allocation, now());
    assert!(matches!(verdict.action, Action::Hold { .. }), "{verdict:?}");
    allocation.resource.name.clear();
    let verdict = policy.evaluate(&allocation, now());
    assert!(matches!(verdict.action, Action::Hold { .. }), "{verdict:?}");
}

#[test]
fn explain_reports_every_rule_with_the_facts_it_read() {
    let policy = Policy::parse(POLICY).expect("valid");
    let explanation = policy.explain(&allocation(), now());
    let results: Vec<(&str, &str)> = explanation
        .rules
        .iter()
        .map(|r| (r.rule.as_str(), r.result))
        .collect();
    assert_eq!(
        results,
        vec![("ended", "not-matched"), ("small", "matched")]
    );
    assert!(
        explanation.rules[1]
            .facts
            .contains(&("customer.country".into(), serde_json::json!("FI"))),
        "{:?}",
        explanation.rules[1].facts
    );
}

#[test]
fn only_a_policy_reading_the_abbreviation_needs_the_customers_list() {
    let country = Policy::parse(POLICY).expect("valid");
    assert!(!country.needs_customer_details());
    assert!(country.reads("customer.country"));
    let policy = Policy::parse(
        "[[rule]]\nname = \"a\"\nwhen = \"customer.abbreviation == 'UT'\"\naction = \"hold\"\n",
    )
    .expect("valid");
    assert!(policy.needs_customer_details());
    let policy = Policy::parse(
        "[[rule]]\nname = \"a\"\nwhen = \"customer.slug == 'ut'\"\naction = \"hold\"\n",
    )
    .expect("valid");
    assert!(!policy.needs_customer_details());
}

#[test]
fn no_policy_holds_everything() {
    let verdict = Policy::hold_everything().evaluate(&allocation(), now());
    assert!(matches!(verdict.action, Action::Hold { .. }));
    assert_eq!(verdict.rule, None);
}

mod parser_properties {
    use super::super::Policy;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn parse_never_panics_on_any_text(text in "\\PC{0,200}") {
            let _ = Policy::parse(&text);
        }

        #[test]
        fn parse_never_panics_on_any_condition(when in "[ -~\\n]{0,80}") {
            let text = format!("[[rule]]\nname = \"r\"\nwhen = '''{}'''\naction = \"hold\"\n", when.replace('\'', ""));
            let _ = Policy::parse(&text);
        }

        #[test]
        fn parse_never_panics_on_any_template(template in "[ -~]{0,60}") {
            let text = format!(
                "[[rule]]\nname = \"r\"\naction = \"approve\"\nbackend_id = '''{}'''\n",
                template.replace('\'', "")
            );
            let _ = Policy::parse(&text);
        }
    }
}

#[test]
fn reads_names_the_fields_conditions_and_templates_use() {
    let policy = Policy::parse(
        "[[rule]]\nname = \"a\"\nwhen = 'customer.abbreviation == \"UH\"'\naction = \"approve\"\nbackend_id = \"{customer.abbreviation}_{resource.short_uuid}\"\n\n[default]\naction = \"reject\"\nreason = \"x {created_by.username}\"\n",
    )
    .unwrap();
    assert!(policy.reads("customer.abbreviation"), "{:?}", policy);
    assert!(policy.reads("created_by"));
    assert!(policy.reads("created_by.username"));
    assert!(!policy.reads("customer.country"));
    assert!(!policy.reads("customer.tags"));
    assert!(policy.needs_customer_details());
    let policy = Policy::parse(
        "[[rule]]\nname = \"a\"\nwhen = '\"nordic\" in customer.tags'\naction = \"hold\"\n",
    )
    .unwrap();
    assert!(policy.reads("customer.tags"));
    assert!(!policy.needs_customer_details());
}

#[test]
fn erred_rules_beyond_a_type_skip_the_ones_pinned_to_it() {
    let policy = Policy::parse(
        "[[rule]]\nname = \"slurm\"\nwhen = 'offering.type == \"Marketplace.Slurm\" && limits.cpu_k_hours > 1.0'\naction = \"erred\"\nbackend_id = \"x_{resource.short_uuid}\"\nmessage = \"m\"\n\n[[rule]]\nname = \"any\"\nwhen = 'limits.cpu_k_hours > 1.0'\naction = \"erred\"\nbackend_id = \"x_{resource.short_uuid}\"\nmessage = \"m\"\n\n[default]\naction = \"hold\"\nnote = \"n\"\n",
    )
    .unwrap();
    assert_eq!(
        policy.erred_rules_beyond("Marketplace.Slurm"),
        vec![("any".to_owned(), 8)]
    );
}

#[test]
fn manual_approvals_render_the_manual_section() {
    let policy = Policy::parse(
        r#"
[default]
action = "hold"
note = "for the committee"

[manual]
backend_id = "m_{resource.slug}"
report = [{ header = "Access", body = "Log in as {project.slug}" }]
"#,
    )
    .expect("policy");
    let verdict = policy.decide_manually(&allocation(), now(), &ManualDecision::Approve);
    assert_eq!(verdict.rule, None);
    assert_eq!(
        verdict.action,
        Action::Approve {
            backend_id: "m_sample".into(),
            report: vec![ReportSection {
                header: "Access".into(),
                body: "Log in as climate".into()
            }]
        }
    );
    let rejected = policy.decide_manually(
        &allocation(),
        now(),
        &ManualDecision::Reject {
            reason: "no budget left".into(),
        },
    );
    assert_eq!(
        rejected.action,
        Action::Reject {
            reason: "no budget left".into()
        }
    );
    // Without `[manual]`: the default backend_id and no report.
    let plain = Policy::parse("[default]\naction = \"hold\"\n").expect("policy");
    assert_eq!(
        plain
            .decide_manually(&allocation(), now(), &ManualDecision::Approve)
            .action,
        Action::Approve {
            backend_id: "a1916bd53fd04b1ab1a4e700c926607b".into(),
            report: Vec::new()
        }
    );
}

#[test]
fn the_manual_section_is_checked_like_a_rule() {
    for (text, wanted) in [
        ("[manual]\nbackend_id = \"fixed\"\n", "has no placeholder"),
        ("[manual]\nreason = \"x\"\n", "unknown field `reason`"),
        (
            "[manual]\nbackend_id = \"{resource.nope}\"\n",
            "`backend_id`",
        ),
    ] {
        let errors = Policy::parse(text).expect_err(text);
        assert!(
            errors
                .0
                .iter()
                .any(|e| e.rule == "manual" && e.line == 1 && e.message.contains(wanted)),
            "{text}: {errors}"
        );
    }
}

#[test]
fn only_the_variables_conditions_read_become_cel_values_and_templates_read_every_field() {
    let policy = Policy::parse(
        r#"
[[rule]]
name = "industry"
when = 'has(attributes.is_industry) && attributes.is_industry'
action = "hold"
note = "industry"

[[rule]]
name = "small"
when = 'limits.cpu_k_hours <= 1000.0 && today > "2000-01-01"'
action = "approve"
backend_id = "{project.slug}_{resource.short_uuid}"
report = [{ header = "For {customer.name}", body = "{offering.name}" }]

[default]
action = "hold"
note = "other"
"#,
    )
    .expect("policy");
    assert_eq!(policy.cel_variables, ["attributes", "limits", "today"]);
    let verdict = policy.evaluate(&allocation(), now());
    assert_eq!(verdict.rule.as_deref(), Some("small"));
    assert!(verdict.errors.is_empty(), "{:?}", verdict.errors);
    let Action::Approve { backend_id, report } = verdict.action else {
        panic!("approved");
    };
    assert_eq!(backend_id, "climate_a1916bd5");
    assert_eq!(report[0].header, "For University of Helsinki");
    assert_eq!(report[0].body, "LUMI-C");
}
