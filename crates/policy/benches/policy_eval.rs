//! Prints the cost of one policy evaluation against a policy of 1,000 rules, where the
//! last rule matches (the worst case: every condition runs). `cargo bench -p puhuri-policy --bench policy_eval`.

use std::hint::black_box;
use std::time::Instant;

use puhuri_policy::Policy;
use puhuri_policy::allocation::{Allocation, CustomerFacts, OfferingFacts, ProjectFacts};

fn main() {
    let mut text = String::new();
    for i in 0..999 {
        let threshold = (i + 1) * 1000;
        text.push_str(&format!(
            "[[rule]]\nname = \"rule-{i}\"\nwhen = '''customer.country == \"FI\" && offering.name == \"LUMI-C\" && limits.cpu_k_hours > {threshold}.0 && project.end_date != null'''\naction = \"hold\"\nnote = \"rule {i} for {{project.slug}}\"\n\n"
        ));
    }
    text.push_str("[[rule]]\nname = \"last\"\nwhen = 'customer.country == \"FI\"'\naction = \"approve\"\nbackend_id = \"{project.slug}_{resource.short_uuid}\"\n");
    let started = Instant::now();
    let policy = Policy::parse(&text).expect("the benchmark policy compiles");
    let compile = started.elapsed();
    let allocation = Allocation {
        offering: OfferingFacts {
            name: "LUMI-C".into(),
            ..Default::default()
        },
        project: ProjectFacts {
            slug: "climate".into(),
            end_date: Some("2030-01-01".into()),
            ..Default::default()
        },
        customer: CustomerFacts {
            country: "FI".into(),
            ..Default::default()
        },
        limits: [("cpu_k_hours".to_owned(), 10.0)].into_iter().collect(),
        ..Default::default()
    };
    let now = time::OffsetDateTime::now_utc();
    let verdict = policy.evaluate(&allocation, now);
    assert_eq!(verdict.rule.as_deref(), Some("last"));
    let iterations = 200;
    let started = Instant::now();
    for _ in 0..iterations {
        black_box(policy.evaluate(black_box(&allocation), now));
    }
    let per_evaluation = started.elapsed() / iterations;
    println!(
        "policy of {} rules: compiled in {:.1} ms; one evaluation (all rules run) {:.1} µs ({} ns per rule)",
        policy.rule_count(),
        compile.as_secs_f64() * 1e3,
        per_evaluation.as_secs_f64() * 1e6,
        per_evaluation.as_nanos() / policy.rule_count() as u128
    );
}
