//! No secret in any output: a config file that is malformed right next to a secret (a
//! webhook secret, the Puhuri Core token, the AMQP URL's password) is refused by
//! `config check`, `serve`, `receive`, `work` and `healthcheck` with the file, line,
//! column and key, but stdout and stderr hold neither the secret nor its base64 or hex.

use std::path::Path;
use std::process::{Command, Output};

use base64::Engine as _;

use crate::helpers::temp_dir;

/// A Standard Webhooks secret (24 random bytes).
const WEBHOOK: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// A second one, for lists.
const WEBHOOK_2: &str = "whsec_Q2xvdWRzQXJlV2hpdGVBbmRGbHVmZnkx";
/// A Puhuri Core API token.
const TOKEN: &str = "4f2c9a7e1b3d5f60718293a4b5c6d7e8f9012345";
/// The password in the AMQP URL.
const PASSWORD: &str = "Pw9fK3q2ZxT7vLmRq8";

/// The service binary with no `PUHURI_APPROVER_*` variable of the test's environment.
fn approver() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_puhuri-approver"));
    for (name, _) in std::env::vars() {
        if name.starts_with("PUHURI_APPROVER_") || name.starts_with("OTEL_") {
            command.env_remove(name);
        }
    }
    command.env("RUST_LOG", "debug");
    command
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every form in which a secret must not appear: the text, every 12-character piece of
/// it, its base64 and hex, and for a webhook secret the key bytes in hex and base64.
fn forbidden() -> Vec<String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut forms = Vec::new();
    for secret in [WEBHOOK, WEBHOOK_2, TOKEN, PASSWORD] {
        let chars: Vec<char> = secret.chars().collect();
        for window in chars.windows(12) {
            forms.push(window.iter().collect());
        }
        forms.push(b64.encode(secret));
        forms.push(hex(secret.as_bytes()));
        forms.push(hex(secret.as_bytes()).to_uppercase());
        if let Some(encoded) = secret.strip_prefix("whsec_") {
            let key = b64.decode(encoded).expect("the test secret is base64");
            forms.push(hex(&key));
            forms.push(hex(&key).to_uppercase());
            forms.push(base64::engine::general_purpose::URL_SAFE.encode(&key));
        }
    }
    forms
}

fn assert_no_secret(what: &str, output: &Output) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    crate::helpers::assert_for_people(what, &stdout);
    crate::helpers::assert_for_people(what, &stderr);
    for form in forbidden() {
        assert!(
            !stdout.contains(&form) && !stderr.contains(&form),
            "{what}: `{form}` (a secret or a piece or encoding of one) was printed:\n\
             stdout:\n{stdout}\nstderr:\n{stderr}"
        );
    }
}

/// A malformed config: where it goes wrong and under which key.
struct Case {
    name: &'static str,
    text: String,
    line: usize,
    key: &'static str,
}

/// The first lines of a config with one source (the next line is line 6).
fn source_head() -> String {
    "listen = \"127.0.0.1:{port}\"\n\
     [[sources]]\n\
     name = \"waldur\"\n\
     format = \"waldur-hook\"\n\
     auth = \"standard-webhooks\"\n"
        .to_owned()
}

fn cases() -> Vec<Case> {
    let head = source_head();
    let listen = "listen = \"127.0.0.1:{port}\"\n";
    vec![
        Case {
            name: "a token key with nothing but a comment holding the old token",
            text: format!("{listen}[puhuri]\ntoken = # was \"{TOKEN}\"\n"),
            line: 3,
            key: "puhuri.token",
        },
        Case {
            name: "`secrets =` with nothing, the secret on the next line",
            text: format!("{head}secrets =\n  [\"{WEBHOOK}\"]\n"),
            line: 6,
            key: "sources.secrets",
        },
        Case {
            name: "a string where the list of secrets is expected",
            text: format!("{head}secrets = \"{WEBHOOK}\"\n"),
            line: 6,
            key: "sources.secrets",
        },
        Case {
            name: "a string where the list of offerings is expected, holding the token",
            text: format!("{listen}[puhuri]\nofferings = \"{TOKEN}\"\n"),
            line: 3,
            key: "puhuri.offerings",
        },
        Case {
            name: "a missing comma in a list of secrets",
            text: format!("{head}secrets = [\"{WEBHOOK}\" \"{WEBHOOK_2}\"]\n"),
            line: 6,
            key: "sources.secrets",
        },
        Case {
            name: "a missing comma in a list of secrets over several lines",
            text: format!("{head}secrets = [\n  \"{WEBHOOK}\"\n  \"{WEBHOOK_2}\",\n]\n"),
            line: 8,
            key: "sources.secrets",
        },
        Case {
            name: "an unterminated token",
            text: format!("{listen}[puhuri]\ntoken = \"{TOKEN}\n"),
            line: 3,
            key: "puhuri.token",
        },
        Case {
            name: "an unterminated secret in a list",
            text: format!("{head}secrets = [\"{WEBHOOK}]\n"),
            line: 6,
            key: "sources.secrets",
        },
        Case {
            name: "an unterminated AMQP URL",
            text: format!(
                "{listen}[amqp]\nurl = \"amqp://approver:{PASSWORD}@127.0.0.1:5672/%2f\n"
            ),
            line: 3,
            key: "amqp.url",
        },
        Case {
            name: "an unquoted AMQP URL",
            text: format!("{listen}[amqp]\nurl = amqp://approver:{PASSWORD}@127.0.0.1:5672/%2f\n"),
            line: 3,
            key: "amqp.url",
        },
        Case {
            name: "a second value after the token",
            text: format!("{listen}[puhuri]\ntoken = \"{TOKEN}\" \"{TOKEN}\"\n"),
            line: 3,
            key: "puhuri.token",
        },
        Case {
            name: "a duplicate token",
            text: format!("{listen}[puhuri]\ntoken = \"{TOKEN}\"\ntoken = \"{TOKEN}\"\n"),
            line: 4,
            key: "puhuri.token",
        },
        Case {
            name: "a duplicate list of secrets",
            text: format!("{head}secrets = [\"{WEBHOOK}\"]\nsecrets = [\"{WEBHOOK_2}\"]\n"),
            line: 7,
            key: "sources.secrets",
        },
        Case {
            name: "a bad escape in a secret",
            text: format!("{head}secrets = [\"{WEBHOOK}\\q\"]\n"),
            line: 6,
            key: "sources.secrets",
        },
        Case {
            name: "a bad unicode escape in the token",
            text: format!("{listen}[puhuri]\ntoken = \"{TOKEN}\\u12\"\n"),
            line: 3,
            key: "puhuri.token",
        },
        Case {
            name: "a secret pasted as the payload format",
            text: format!(
                "{listen}[[sources]]\nname = \"waldur\"\nformat = \"{WEBHOOK}\"\nauth = \"github\"\n"
            ),
            line: 4,
            key: "sources.format",
        },
        Case {
            name: "the token pasted as the authentication scheme",
            text: format!(
                "{listen}[[sources]]\nname = \"waldur\"\nformat = \"waldur-hook\"\nauth = \"{TOKEN}\"\n"
            ),
            line: 5,
            key: "sources.auth",
        },
        Case {
            name: "a secret pasted on a line of its own",
            text: format!("{head}{WEBHOOK}\n"),
            line: 6,
            key: "sources",
        },
    ]
}

/// `{file}:{line}:{column}: `{key}``, with any column.
fn names_the_place(output: &str, file: &str, line: usize, key: &str) -> bool {
    let start = format!("{file}:{line}:");
    output.match_indices(&start).any(|(at, _)| {
        let rest = &output[at + start.len()..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        digits > 0 && rest[digits..].starts_with(&format!(": `{key}`: "))
    })
}

fn run(command: &mut Command) -> Output {
    command.output().expect("run the binary")
}

fn write_case(dir: &Path, index: usize, case: &Case, port: u16) -> std::path::PathBuf {
    let path = dir.join(format!("case-{index}.toml"));
    std::fs::write(&path, case.text.replace("{port}", &port.to_string())).expect("write");
    path
}

#[test]
fn malformed_configs_name_the_place_but_never_print_a_secret() {
    let dir = temp_dir("secrets");
    // Nobody listens here, so a `healthcheck` that gets past the file is refused at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    for (index, case) in cases().iter().enumerate() {
        let path = write_case(&dir, index, case, port);
        let file = path.display().to_string();
        let mut commands: Vec<(&str, Command)> = Vec::new();
        let mut check = approver();
        check.arg("config").arg("check").arg(&path);
        commands.push(("config check", check));
        for role in ["serve", "receive", "work"] {
            // No policy file is named, so even a file that parsed could not start a role.
            let mut command = approver();
            command
                .arg(role)
                .arg("--config")
                .arg(&path)
                .current_dir(&dir);
            commands.push((role, command));
        }
        for (command_name, mut command) in commands {
            let output = run(&mut command);
            let what = format!("{} ({command_name})", case.name);
            assert_no_secret(&what, &output);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(1), "{what}: {stderr}");
            assert!(
                names_the_place(&stderr, &file, case.line, case.key),
                "{what}: expected `{file}:{}:<column>: `{}`: …`, got:\n{stderr}",
                case.line,
                case.key
            );
        }
        // `healthcheck` reads only the addresses, so it refuses only what does not parse.
        let output = run(approver()
            .arg("healthcheck")
            .arg("--config")
            .arg(&path)
            .arg("--timeout")
            .arg("1"));
        let what = format!("{} (healthcheck)", case.name);
        assert_no_secret(&what, &output);
        assert_eq!(output.status.code(), Some(1), "{what}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains(&file) {
            assert!(
                stderr.contains(&format!("{file}:{}:", case.line)),
                "{what}: {stderr}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_valid_config_with_secrets_is_checked_without_printing_them() {
    let dir = temp_dir("secrets-ok");
    let path = dir.join("ok.toml");
    std::fs::write(
        &path,
        format!(
            "[amqp]\nurl = \"amqp://approver:{PASSWORD}@127.0.0.1:5672/%2f\"\n\
             [puhuri]\nurl = \"https://puhuri.example.org/api/\"\ntoken = \"{TOKEN}\"\n\
             [[sources]]\nname = \"waldur\"\nformat = \"waldur-hook\"\n\
             auth = \"standard-webhooks\"\nsecrets = [\"{WEBHOOK}\", \"{WEBHOOK_2}\"]\n"
        ),
    )
    .expect("write");
    let output = run(approver()
        .args(["config", "check", "--role", "receive"])
        .arg(&path));
    assert_no_secret("config check of a valid file", &output);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let _ = std::fs::remove_dir_all(dir);
}
