//! New secrets in the form each scheme expects, from random bytes the caller supplies
//! (the `secret generate` command reads them from the operating system), so this crate
//! stays free of IO and the encodings are testable with fixed bytes.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

/// How many random bytes a new secret carries: 256 bits for every scheme.
pub const SECRET_BYTES: usize = 32;

/// The scheme a new secret is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretKind {
    /// 43 characters of `A-Z a-z 0-9 - _` (base64url without padding), for a source's
    /// `path-secret` and the URL registered in Waldur.
    PathSecret,
    /// `whsec_` and the base64 of the key, as Standard Webhooks senders expect.
    StandardWebhooks,
    /// 64 hexadecimal digits; the string's bytes are the HMAC key, as GitHub uses it.
    Github,
}

impl SecretKind {
    /// The name used in configuration files (`auth = "..."`).
    pub fn name(self) -> &'static str {
        match self {
            SecretKind::PathSecret => "path-secret",
            SecretKind::StandardWebhooks => "standard-webhooks",
            SecretKind::Github => "github",
        }
    }
}

/// Encodes `random` as a secret of `kind`.
pub fn encode(kind: SecretKind, random: &[u8; SECRET_BYTES]) -> String {
    match kind {
        SecretKind::PathSecret => URL_SAFE_NO_PAD.encode(random),
        SecretKind::StandardWebhooks => {
            format!(
                "{}{}",
                crate::signature::SECRET_PREFIX,
                STANDARD.encode(random)
            )
        }
        SecretKind::Github => random.iter().map(|b| format!("{b:02x}")).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::{GithubSecret, PathSecret, WebhookSecret};

    fn bytes(seed: u8) -> [u8; SECRET_BYTES] {
        std::array::from_fn(|i| seed.wrapping_mul(31).wrapping_add(i as u8 * 7))
    }

    #[test]
    fn every_kind_is_accepted_by_its_parser() {
        for seed in [0u8, 1, 0xfe, 0xff] {
            let random = bytes(seed);
            assert!(PathSecret::parse(&encode(SecretKind::PathSecret, &random)).is_ok());
            assert!(WebhookSecret::parse(&encode(SecretKind::StandardWebhooks, &random)).is_ok());
            assert!(GithubSecret::parse(&encode(SecretKind::Github, &random)).is_ok());
        }
    }

    #[test]
    fn encodings_have_the_documented_shape() {
        let random = [0xffu8; SECRET_BYTES];
        let path = encode(SecretKind::PathSecret, &random);
        assert_eq!(path.len(), 43);
        assert!(
            path.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        let webhook = encode(SecretKind::StandardWebhooks, &random);
        assert!(webhook.starts_with("whsec_"));
        assert_eq!(STANDARD.decode(&webhook[6..]).ok(), Some(random.to_vec()));
        assert_eq!(encode(SecretKind::Github, &random), "ff".repeat(32));
    }
}
