//! The architecture's rules, checked on the source itself: crate dependencies point down
//! the layers, boundary libraries stay in the crates that own them, and no module of the
//! service imports one that imports it back (ARCHITECTURE.md, "Codemap").

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every workspace package with the workspace packages it depends on, by kind
/// (`normal`, `dev`) and whether the dependency is optional.
fn workspace_dependencies() -> BTreeMap<String, Vec<(String, String, bool)>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(root())
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: Value = serde_json::from_slice(&output.stdout).expect("metadata is JSON");
    let packages = metadata["packages"].as_array().expect("packages");
    let ours: BTreeSet<String> = packages
        .iter()
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect();
    packages
        .iter()
        .map(|package| {
            let name = package["name"].as_str().unwrap_or_default().to_owned();
            let deps = package["dependencies"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|d| {
                    let dep = d["name"].as_str()?.to_owned();
                    ours.contains(&dep).then(|| {
                        let kind = d["kind"].as_str().unwrap_or("normal").to_owned();
                        (dep, kind, d["optional"].as_bool().unwrap_or(false))
                    })
                })
                .collect();
            (name, deps)
        })
        .collect()
}

#[test]
fn crate_dependencies_point_down_the_layers() {
    let deps = workspace_dependencies();
    // What each crate may depend on among ours (normal dependencies).
    let allowed: BTreeMap<&str, &[&str]> = BTreeMap::from([
        ("puhuri-client", &[][..]),
        ("puhuri-policy", &[][..]),
        ("puhuri-auth", &[][..]),
        ("puhuri-stomp", &[][..]),
        ("puhuri-queue", &["puhuri-auth"][..]),
        ("puhuri-sim", &["puhuri-auth"][..]),
        (
            "puhuri-approver",
            &[
                "puhuri-auth",
                "puhuri-client",
                "puhuri-policy",
                "puhuri-queue",
                "puhuri-sim",
                "puhuri-stomp",
            ][..],
        ),
    ]);
    for (package, package_deps) in &deps {
        let Some(allowed) = allowed.get(package.as_str()) else {
            // Tools (the bench) may use every layer; nothing depends on them.
            assert!(
                deps.values()
                    .flatten()
                    .all(|(dep, kind, _)| dep != package || kind == "dev"),
                "{package} is a tool; no crate may depend on it"
            );
            continue;
        };
        for (dep, kind, optional) in package_deps {
            if kind == "dev" {
                continue;
            }
            assert!(
                allowed.contains(&dep.as_str()),
                "{package} must not depend on {dep}"
            );
            // The production build leaves the simulator out: only the `tools` feature
            // (on by default, for `demo`) brings it in.
            if dep == "puhuri-sim" {
                assert!(
                    optional,
                    "{package} may use the simulator only as an optional dependency"
                );
            }
        }
    }
    assert!(
        allowed
            .keys()
            .all(|crate_name| deps.contains_key(*crate_name)),
        "every layer is a workspace member: {:?}",
        deps.keys().collect::<Vec<_>>()
    );
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

#[test]
fn boundary_libraries_stay_in_the_crates_that_own_them() {
    // library -> the source folders that may name it (relative to the workspace root).
    let owners: [(&str, &[&str]); 7] = [
        // The simulator publishes Waldur's order events to a real RabbitMQ, as Waldur does.
        (
            "lapin::",
            &["crates/queue/src", "crates/bench/src", "crates/sim/src"],
        ),
        ("tokio_tungstenite::", &["src/events.rs"]),
        ("rusqlite::", &["crates/queue/src"]),
        ("cel::", &["crates/policy/src"]),
        (
            "reqwest::",
            &[
                "crates/client/src",
                "crates/sim/src",
                "crates/bench/src",
                // `healthcheck`: a GET of our own `/readyz` (its module says why).
                "src/healthcheck.rs",
            ],
        ),
        (
            "axum::",
            &["src/receiver.rs", "src/review/web.rs", "crates/sim/src"],
        ),
        ("maud::", &["src/review/web.rs"]),
    ];
    let root = root();
    let mut offenders = Vec::new();
    for dir in ["src", "crates"] {
        for file in rust_files(&root.join(dir)) {
            let relative = file
                .strip_prefix(&root)
                .unwrap_or(&file)
                .to_string_lossy()
                .into_owned();
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            // Unit tests come last in a file (clippy's `items_after_test_module`); what
            // they name is not part of the build.
            let text = text.split("#[cfg(test)]").next().unwrap_or_default();
            for (library, allowed) in &owners {
                let named = text
                    .lines()
                    .any(|line| !line.trim_start().starts_with("//") && line.contains(library));
                if named && !allowed.iter().any(|a| relative.starts_with(a)) {
                    offenders.push(format!("{relative} names {library}"));
                }
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "boundary libraries leak: {offenders:#?}"
    );
}

#[test]
fn no_module_of_the_service_imports_one_that_imports_it_back() {
    let src = root().join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in rust_files(&src) {
        let relative = file
            .strip_prefix(&src)
            .unwrap_or(&file)
            .to_string_lossy()
            .into_owned();
        let module = relative
            .trim_end_matches(".rs")
            .split('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        if module == "lib" || module == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let entry = graph.entry(module.clone()).or_default();
        for (i, _) in text.match_indices("crate::") {
            let name: String = text[i + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if !name.is_empty() && name != module {
                entry.insert(name);
            }
        }
    }
    assert!(graph.len() > 10, "the modules were found: {graph:?}");
    // A module reaches itself only through a cycle.
    for start in graph.keys() {
        let mut seen = BTreeSet::new();
        let mut stack = vec![start.clone()];
        while let Some(module) = stack.pop() {
            for next in graph.get(&module).into_iter().flatten() {
                assert!(
                    next != start,
                    "import cycle: {start} reaches itself through {module}"
                );
                if seen.insert(next.clone()) {
                    stack.push(next.clone());
                }
            }
        }
    }
}
