//! `puhuri-approver demo` as a new user runs it: no RabbitMQ, no configuration.

#[test]
fn the_demo_decides_every_request_as_the_example_policy_says() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_puhuri-approver"))
        .args(["demo", "--count", "8", "--rate", "50"])
        .env_remove("PUHURI_APPROVER_AMQP_URL")
        .env_remove("PUHURI_APPROVER_CONFIG")
        .env("RUST_LOG", "error")
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("queue                  embedded"),
        "{stdout}"
    );
    // The mix of eight requests and what the example policy does with each.
    assert!(
        stdout.contains("8 allocations decided: 3 approved, 4 held, 1 rejected"),
        "{stdout}"
    );
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.ends_with(" ms") && l.chars().take(8).all(|c| c.is_ascii_hexdigit()))
        .collect();
    assert_eq!(rows.len(), 8, "{stdout}");
    let row = |organisation: &str, requested: &str| {
        rows.iter()
            .find(|r| r.contains(organisation) && r.contains(requested))
            .copied()
            .unwrap_or_else(|| panic!("no row for {organisation} {requested}:\n{stdout}"))
    };
    assert!(row("Norwegian University", "cpu 200").contains("rejected  project-already-ended"));
    assert!(
        row("University of Helsinki", "cpu 400").contains("approved  domestic-cpu-under-ceiling")
    );
    assert!(row("University of Helsinki", "cpu 2500").contains("held      (default)"));
    assert!(
        row("Technical University of Denmark", "cpu 300").contains("held      industry-to-a-human")
    );
    assert!(row("KTH", "gpu 60").contains("held      gpu-heavy-to-a-human"));
    assert!(stdout.contains("Where to look next"), "{stdout}");
}
