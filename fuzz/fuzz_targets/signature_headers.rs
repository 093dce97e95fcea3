//! Signature-header parsing and verification: Standard Webhooks, GitHub style and path
//! secrets, on arbitrary header values and bodies. Input: `id \n timestamp \n signature
//! \n body...`. Besides not panicking, a header signed with the secret must verify.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use puhuri_auth::signature::{
    self, GithubHeaders, GithubSecret, PathSecret, SignedHeaders, WebhookSecret,
};

struct Secrets {
    webhook: Vec<WebhookSecret>,
    github: Vec<GithubSecret>,
    path: Vec<PathSecret>,
}

fn secrets() -> &'static Secrets {
    static SECRETS: OnceLock<Secrets> = OnceLock::new();
    SECRETS.get_or_init(|| Secrets {
        webhook: vec![
            WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("secret"),
        ],
        github: vec![GithubSecret::parse("It's a Secret to Everybody").expect("secret")],
        path: vec![PathSecret::parse("fuzz-path-secret-0123456789abcdefghij").expect("secret")],
    })
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(4, |b| *b == b'\n');
    let id = parts.next().and_then(|p| std::str::from_utf8(p).ok());
    let timestamp = parts.next().and_then(|p| std::str::from_utf8(p).ok());
    let sig = parts.next().and_then(|p| std::str::from_utf8(p).ok());
    let body = parts.next().unwrap_or_default();
    let secrets = secrets();
    let now = 1_614_265_330;

    let _ = signature::verify(
        &secrets.webhook,
        SignedHeaders {
            id,
            timestamp,
            signature: sig,
        },
        body,
        now,
        300,
    );
    let _ = signature::verify_github(
        &secrets.github,
        GithubHeaders {
            delivery: id,
            signature: sig,
        },
        body,
    );
    if let Some(sig) = sig {
        let _ = signature::parse_github_signature(sig);
    }
    let _ = signature::verify_path_secret(&secrets.path, sig);

    // What the secret signs verifies, whatever the body.
    if let (Some(id), Some(ts)) = (id, timestamp.and_then(|t| t.parse::<i64>().ok())) {
        if signature::is_valid_id(id) && ts >= 0 && (now - ts).abs() <= 300 {
            let signed = secrets.webhook[0].sign(id, ts, body);
            let ts = ts.to_string();
            let headers = SignedHeaders {
                id: Some(id),
                timestamp: Some(&ts),
                signature: Some(&signed),
            };
            assert_eq!(
                signature::verify(&secrets.webhook, headers, body, now, 300),
                Ok(id)
            );
        }
        if signature::is_valid_id(id) {
            let signed = secrets.github[0].sign(body);
            let headers = GithubHeaders {
                delivery: Some(id),
                signature: Some(&signed),
            };
            assert_eq!(
                signature::verify_github(&secrets.github, headers, body),
                Ok(id)
            );
        }
    }
});
