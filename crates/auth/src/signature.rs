//! Authentication schemes of notification sources, over the raw request bytes:
//!
//! - Standard Webhooks v1: HMAC-SHA256 over `{id}.{timestamp}.{raw body}`, several
//!   `v1,<base64>` signatures, a two-sided timestamp tolerance;
//! - GitHub style: `X-Hub-Signature-256: sha256=<hex>` over the raw body; the
//!   `X-GitHub-Delivery` id is required and checked for shape but not signed, so the
//!   receiver keys replays on the body, not on it (no timestamp either);
//! - path secrets ([`PathSecret`]): a high-entropy token in the URL path, for senders that
//!   cannot sign (Waldur's own hooks).
//!
//! INVARIANT: the signed content is the raw request body as received, never a
//! re-serialization, and the body does not need to be UTF-8.
//! INVARIANT: signatures and path secrets are compared in constant time
//! (`Mac::verify_slice`, `subtle`), and every header is bounded in length (and the
//! signature list in count) before any HMAC runs.
//! INVARIANT: no secret type prints its value (`Debug` shows `***`), and no error
//! message contains a secret.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = hmac::Hmac<Sha256>;

/// Header carrying the notification id (same id across retries).
pub const HEADER_ID: &str = "webhook-id";
/// Header carrying the unix time of the attempt, in seconds.
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
/// Header carrying space-separated `v1,<base64>` signatures.
pub const HEADER_SIGNATURE: &str = "webhook-signature";

/// The longest `webhook-signature` header accepted.
pub const MAX_SIGNATURE_HEADER_LEN: usize = 4096;
/// The most signatures one header may carry (key rotation needs two or three).
pub const MAX_SIGNATURES: usize = 8;
/// The longest notification id accepted.
pub const MAX_ID_LEN: usize = 256;

pub(crate) const SECRET_PREFIX: &str = "whsec_";
const MIN_SECRET_BYTES: usize = 24;
const MAX_SECRET_BYTES: usize = 64;

/// A Standard Webhooks signing secret (`whsec_` + base64 of 24..64 bytes).
#[derive(Clone)]
pub struct WebhookSecret {
    /// The keyed HMAC state, cloned for each message.
    keyed: HmacSha256,
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(\"***\")")
    }
}

/// Why a configured secret was refused. Never contains the secret itself.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("the secret is empty")]
    Empty,
    #[error("the secret is not valid base64 (expected `whsec_` followed by base64)")]
    NotBase64,
    #[error("the secret decodes to {0} bytes; between 24 and 64 are required")]
    BadLength(usize),
    #[error("the secret is {len} bytes long; between {min} and {max} are required")]
    TooShortOrLong { len: usize, min: usize, max: usize },
    #[error("the secret may only contain letters, digits, `-` and `_`")]
    NotUrlSafe,
}

impl WebhookSecret {
    /// Parses `whsec_<base64>` (the prefix is optional).
    pub fn parse(value: &str) -> Result<Self, SecretError> {
        let encoded = value.strip_prefix(SECRET_PREFIX).unwrap_or(value);
        if encoded.is_empty() {
            return Err(SecretError::Empty);
        }
        let key = STANDARD
            .decode(encoded)
            .map_err(|_| SecretError::NotBase64)?;
        if !(MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&key.len()) {
            return Err(SecretError::BadLength(key.len()));
        }
        let keyed =
            HmacSha256::new_from_slice(&key).map_err(|_| SecretError::BadLength(key.len()))?;
        Ok(Self { keyed })
    }

    fn mac(&self, id: &str, timestamp: &str, body: &[u8]) -> HmacSha256 {
        let mut mac = self.keyed.clone();
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// A fresh random secret (32 bytes) in its `whsec_` text form, for demos and benches
    /// that sign their own notifications.
    pub fn generate_text() -> String {
        let mut key = uuid::Uuid::new_v4().into_bytes().to_vec();
        key.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
        format!("{SECRET_PREFIX}{}", STANDARD.encode(key))
    }

    /// The `v1,<base64>` signature of a body.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let tag = self
            .mac(id, &timestamp.to_string(), body)
            .finalize()
            .into_bytes();
        format!("v1,{}", STANDARD.encode(tag))
    }
}

/// The three Standard Webhooks headers of one request, as received.
#[derive(Debug, Clone, Copy)]
pub struct SignedHeaders<'a> {
    pub id: Option<&'a str>,
    pub timestamp: Option<&'a str>,
    pub signature: Option<&'a str>,
}

/// Why a signature check failed. Each variant is a distinct cause a sender can fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("the `{0}` header is missing")]
    MissingHeader(&'static str),
    #[error("the `webhook-id` header is empty, longer than 256 bytes or not printable ASCII")]
    MalformedId,
    #[error("the `webhook-timestamp` header is not a plain number of seconds")]
    MalformedTimestamp,
    #[error("the timestamp is {0} s old, more than the tolerance")]
    TimestampTooOld(i64),
    #[error("the timestamp is {0} s in the future, more than the tolerance")]
    TimestampTooNew(i64),
    #[error("the `webhook-signature` header is too long or carries too many signatures")]
    SignatureHeaderTooLarge,
    #[error("no signature matches any configured secret")]
    NoMatchingSignature,
    #[error("the signature header is not `sha256=` followed by 64 hex digits")]
    MalformedSignature,
    #[error("the path carries no secret")]
    MissingPathSecret,
    #[error("the path secret does not match")]
    BadPathSecret,
}

/// Checks a request against every secret (rotation: any match is enough).
///
/// `now` is unix seconds; `tolerance_secs` applies on both sides. Returns the
/// verified notification id.
pub fn verify<'a>(
    secrets: &[WebhookSecret],
    headers: SignedHeaders<'a>,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Result<&'a str, VerifyError> {
    let id = headers.id.ok_or(VerifyError::MissingHeader(HEADER_ID))?;
    let timestamp = headers
        .timestamp
        .ok_or(VerifyError::MissingHeader(HEADER_TIMESTAMP))?;
    let signature = headers
        .signature
        .ok_or(VerifyError::MissingHeader(HEADER_SIGNATURE))?;

    if !is_valid_id(id) {
        return Err(VerifyError::MalformedId);
    }
    let sent_at = parse_timestamp(timestamp)?;
    let age = now.saturating_sub(sent_at);
    if age > tolerance_secs {
        return Err(VerifyError::TimestampTooOld(age));
    }
    if -age > tolerance_secs {
        return Err(VerifyError::TimestampTooNew(-age));
    }
    if signature.len() > MAX_SIGNATURE_HEADER_LEN {
        return Err(VerifyError::SignatureHeaderTooLarge);
    }
    let candidates: Vec<&str> = signature.split(' ').filter(|s| !s.is_empty()).collect();
    if candidates.len() > MAX_SIGNATURES {
        return Err(VerifyError::SignatureHeaderTooLarge);
    }
    for candidate in candidates {
        let Some(encoded) = candidate.strip_prefix("v1,") else {
            continue; // another version: skipped, as the spec says
        };
        let Ok(tag) = STANDARD.decode(encoded) else {
            continue;
        };
        for secret in secrets {
            if secret.mac(id, timestamp, body).verify_slice(&tag).is_ok() {
                return Ok(id);
            }
        }
    }
    Err(VerifyError::NoMatchingSignature)
}

/// Whether an id is acceptable: 1..=256 bytes of printable ASCII.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_LEN && id.bytes().all(|b| b.is_ascii_graphic())
}

fn parse_timestamp(value: &str) -> Result<i64, VerifyError> {
    // Strictly `^[0-9]{1,19}$`: no sign, no spaces, no fraction.
    if value.is_empty() || value.len() > 19 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(VerifyError::MalformedTimestamp);
    }
    value
        .parse::<i64>()
        .map_err(|_| VerifyError::MalformedTimestamp)
}

/// Header carrying `sha256=<hex>` (GitHub style).
pub const HEADER_GITHUB_SIGNATURE: &str = "x-hub-signature-256";
/// Header carrying the delivery id (GitHub style; same id on redelivery).
pub const HEADER_GITHUB_DELIVERY: &str = "x-github-delivery";

/// The shortest GitHub-style secret accepted, in bytes.
pub const MIN_GITHUB_SECRET_BYTES: usize = 20;
/// The longest GitHub-style secret accepted, in bytes.
pub const MAX_GITHUB_SECRET_BYTES: usize = 256;
/// `sha256=` and 64 hex digits.
const GITHUB_SIGNATURE_LEN: usize = 7 + 64;

/// A GitHub-style signing secret: the secret string's bytes are the HMAC key.
#[derive(Clone)]
pub struct GithubSecret {
    keyed: HmacSha256,
}

impl fmt::Debug for GithubSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GithubSecret(\"***\")")
    }
}

impl GithubSecret {
    /// Accepts 20 to 256 bytes; the value is used as it is (no decoding).
    pub fn parse(value: &str) -> Result<Self, SecretError> {
        if value.is_empty() {
            return Err(SecretError::Empty);
        }
        if !(MIN_GITHUB_SECRET_BYTES..=MAX_GITHUB_SECRET_BYTES).contains(&value.len()) {
            return Err(SecretError::TooShortOrLong {
                len: value.len(),
                min: MIN_GITHUB_SECRET_BYTES,
                max: MAX_GITHUB_SECRET_BYTES,
            });
        }
        let keyed = HmacSha256::new_from_slice(value.as_bytes())
            .map_err(|_| SecretError::BadLength(value.len()))?;
        Ok(Self { keyed })
    }

    /// The `sha256=<hex>` signature of a body.
    pub fn sign(&self, body: &[u8]) -> String {
        let mut mac = self.keyed.clone();
        mac.update(body);
        let tag = mac.finalize().into_bytes();
        let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
        format!("sha256={hex}")
    }
}

/// The two GitHub-style headers of one request, as received.
#[derive(Debug, Clone, Copy)]
pub struct GithubHeaders<'a> {
    pub delivery: Option<&'a str>,
    pub signature: Option<&'a str>,
}

/// Decodes the `sha256=<64 hex digits>` header value (lowercase or uppercase hex).
pub fn parse_github_signature(value: &str) -> Result<[u8; 32], VerifyError> {
    if value.len() != GITHUB_SIGNATURE_LEN {
        return Err(VerifyError::MalformedSignature);
    }
    let hex = value
        .strip_prefix("sha256=")
        .ok_or(VerifyError::MalformedSignature)?;
    let mut tag = [0u8; 32];
    for (i, pair) in hex.as_bytes().chunks_exact(2).enumerate() {
        let high = hex_digit(pair[0]).ok_or(VerifyError::MalformedSignature)?;
        let low = hex_digit(pair[1]).ok_or(VerifyError::MalformedSignature)?;
        tag[i] = (high << 4) | low;
    }
    Ok(tag)
}

fn hex_digit(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// Checks a GitHub-style request against every secret. Returns the delivery id, checked
/// for shape only: the signature does not cover it.
pub fn verify_github<'a>(
    secrets: &[GithubSecret],
    headers: GithubHeaders<'a>,
    body: &[u8],
) -> Result<&'a str, VerifyError> {
    let delivery = headers
        .delivery
        .ok_or(VerifyError::MissingHeader(HEADER_GITHUB_DELIVERY))?;
    let signature = headers
        .signature
        .ok_or(VerifyError::MissingHeader(HEADER_GITHUB_SIGNATURE))?;
    if !is_valid_id(delivery) {
        return Err(VerifyError::MalformedId);
    }
    let tag = parse_github_signature(signature)?;
    for secret in secrets {
        let mut mac = secret.keyed.clone();
        mac.update(body);
        if mac.verify_slice(&tag).is_ok() {
            return Ok(delivery);
        }
    }
    Err(VerifyError::NoMatchingSignature)
}

/// The shortest path secret accepted, in characters (of `A-Z a-z 0-9 - _`: ≥ 190 bits).
pub const MIN_PATH_SECRET_LEN: usize = 32;
/// The longest path secret accepted, in characters.
pub const MAX_PATH_SECRET_LEN: usize = 128;

/// A secret carried in the URL path, for senders that cannot sign (Waldur's hooks).
///
/// Only its SHA-256 digest is kept; candidates are hashed and compared in constant time,
/// so neither the content nor the length of the secret leaks through timing.
#[derive(Clone)]
pub struct PathSecret {
    digest: [u8; 32],
}

impl fmt::Debug for PathSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PathSecret(\"***\")")
    }
}

impl PathSecret {
    /// Accepts 32 to 128 characters of `A-Z a-z 0-9 - _` (URL-safe without encoding).
    pub fn parse(value: &str) -> Result<Self, SecretError> {
        if value.is_empty() {
            return Err(SecretError::Empty);
        }
        if !(MIN_PATH_SECRET_LEN..=MAX_PATH_SECRET_LEN).contains(&value.len()) {
            return Err(SecretError::TooShortOrLong {
                len: value.len(),
                min: MIN_PATH_SECRET_LEN,
                max: MAX_PATH_SECRET_LEN,
            });
        }
        if !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(SecretError::NotUrlSafe);
        }
        Ok(Self {
            digest: Sha256::digest(value.as_bytes()).into(),
        })
    }

    /// Whether a candidate from the path is this secret (constant time).
    pub fn matches(&self, candidate: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(candidate.as_bytes()).into();
        bool::from(self.digest.ct_eq(&digest))
    }

    /// Whether two configured secrets are the same value.
    pub fn same_as(&self, other: &PathSecret) -> bool {
        bool::from(self.digest.ct_eq(&other.digest))
    }
}

/// Checks a path segment against every configured path secret (rotation: any match).
/// Every secret is compared, so the time does not depend on which one matched.
pub fn verify_path_secret(
    secrets: &[PathSecret],
    candidate: Option<&str>,
) -> Result<(), VerifyError> {
    let candidate = candidate.ok_or(VerifyError::MissingPathSecret)?;
    if candidate.len() > MAX_PATH_SECRET_LEN {
        return Err(VerifyError::BadPathSecret);
    }
    let mut matched = subtle::Choice::from(0);
    let digest: [u8; 32] = Sha256::digest(candidate.as_bytes()).into();
    for secret in secrets {
        matched |= secret.digest.ct_eq(&digest);
    }
    if bool::from(matched) {
        Ok(())
    } else {
        Err(VerifyError::BadPathSecret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET_A: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID_A: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS_A: i64 = 1614265330;
    const BODY_A: &[u8] = br#"{"test": 2432232314}"#;
    const SIG_A: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn secret_a() -> Vec<WebhookSecret> {
        vec![WebhookSecret::parse(SECRET_A).expect("vector secret")]
    }

    fn check(
        signature: Option<&str>,
        timestamp: Option<&str>,
        now: i64,
    ) -> Result<(), VerifyError> {
        let headers = SignedHeaders {
            id: Some(ID_A),
            timestamp,
            signature,
        };
        verify(&secret_a(), headers, BODY_A, now, 300).map(|_| ())
    }

    #[test]
    fn signs_vector_a() {
        assert_eq!(secret_a()[0].sign(ID_A, TS_A, BODY_A), SIG_A);
    }

    #[test]
    fn signs_vector_b() {
        let secret =
            WebhookSecret::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").expect("secret");
        let body = br#"{"email":"test@example.com","username":"test_user"}"#;
        assert_eq!(
            secret.sign("msg_27UH4WbU6Z5A5EzD8u03UvzRbpk", 1649367553, body),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
    }

    #[test]
    fn accepts_vector_a_among_other_signatures() {
        let ts = TS_A.to_string();
        let header = format!("v2,abc v1,dawfeoifkpqwoekfpqoekf {SIG_A}");
        assert_eq!(check(Some(&header), Some(&ts), TS_A), Ok(()));
        assert_eq!(check(Some(SIG_A), Some(&ts), TS_A + 300), Ok(()));
        assert_eq!(check(Some(SIG_A), Some(&ts), TS_A - 300), Ok(()));
    }

    #[test]
    fn refuses_the_vectors_that_must_fail() {
        let ts = TS_A.to_string();
        for bad in [
            "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA=",
            "v1,dawfeoifkpqwoekfpqoekf",
            "v1,",
        ] {
            assert_eq!(
                check(Some(bad), Some(&ts), TS_A),
                Err(VerifyError::NoMatchingSignature),
                "{bad}"
            );
        }
        assert_eq!(
            check(None, Some(&ts), TS_A),
            Err(VerifyError::MissingHeader(HEADER_SIGNATURE))
        );
        assert_eq!(
            check(Some(SIG_A), Some("hello"), TS_A),
            Err(VerifyError::MalformedTimestamp)
        );
        assert_eq!(
            check(Some(SIG_A), Some("+1614265330"), TS_A),
            Err(VerifyError::MalformedTimestamp)
        );
        assert_eq!(
            check(Some(SIG_A), Some(&ts), TS_A + 301),
            Err(VerifyError::TimestampTooOld(301))
        );
        assert_eq!(
            check(Some(SIG_A), Some(&ts), TS_A - 301),
            Err(VerifyError::TimestampTooNew(301))
        );
    }

    #[test]
    fn caps_the_number_of_signatures() {
        let ts = TS_A.to_string();
        let header = [SIG_A; MAX_SIGNATURES + 1].join(" ");
        assert_eq!(
            check(Some(&header), Some(&ts), TS_A),
            Err(VerifyError::SignatureHeaderTooLarge)
        );
    }

    #[test]
    fn refuses_empty_and_short_secrets() {
        assert_eq!(WebhookSecret::parse("").err(), Some(SecretError::Empty));
        assert_eq!(
            WebhookSecret::parse("whsec_").err(),
            Some(SecretError::Empty)
        );
        assert_eq!(
            WebhookSecret::parse("whsec_c2hvcnQ=").err(),
            Some(SecretError::BadLength(5))
        );
        assert!(format!("{:?}", secret_a()[0]).contains("***"));
    }

    #[test]
    fn generated_secrets_parse_and_differ() {
        let (a, b) = (
            WebhookSecret::generate_text(),
            WebhookSecret::generate_text(),
        );
        assert_ne!(a, b);
        assert!(WebhookSecret::parse(&a).is_ok(), "{a}");
    }

    #[test]
    fn signs_non_utf8_bodies() {
        let secret = &secret_a()[0];
        let body = [0xff, 0xfe, 0x00];
        let sig = secret.sign(ID_A, TS_A, &body);
        let headers = SignedHeaders {
            id: Some(ID_A),
            timestamp: Some("1614265330"),
            signature: Some(&sig),
        };
        assert_eq!(verify(&secret_a(), headers, &body, TS_A, 300), Ok(ID_A));
    }

    const GITHUB_SECRET: &str = "It's a Secret to Everybody";
    const GITHUB_BODY: &[u8] = b"Hello, World!";
    const GITHUB_SIG: &str =
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    fn github(signature: Option<&str>, delivery: Option<&str>) -> Result<String, VerifyError> {
        let secrets = vec![GithubSecret::parse(GITHUB_SECRET).expect("vector secret")];
        verify_github(
            &secrets,
            GithubHeaders {
                delivery,
                signature,
            },
            GITHUB_BODY,
        )
        .map(str::to_owned)
    }

    #[test]
    fn signs_and_accepts_the_github_vector() {
        let secret = GithubSecret::parse(GITHUB_SECRET).expect("vector secret");
        assert_eq!(secret.sign(GITHUB_BODY), GITHUB_SIG);
        assert_eq!(github(Some(GITHUB_SIG), Some("d-1")), Ok("d-1".to_owned()));
        let upper = format!("sha256={}", GITHUB_SIG[7..].to_ascii_uppercase());
        assert_eq!(github(Some(&upper), Some("d-1")), Ok("d-1".to_owned()));
    }

    #[test]
    fn refuses_github_signatures_that_must_fail() {
        let flipped = format!("{}f", &GITHUB_SIG[..GITHUB_SIG.len() - 1]);
        assert_eq!(
            github(Some(&flipped), Some("d-1")),
            Err(VerifyError::NoMatchingSignature)
        );
        for malformed in [
            "",
            "sha256=",
            "sha1=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e1",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e1g",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17 ",
        ] {
            assert_eq!(
                github(Some(malformed), Some("d-1")),
                Err(VerifyError::MalformedSignature),
                "{malformed}"
            );
        }
        assert_eq!(
            github(None, Some("d-1")),
            Err(VerifyError::MissingHeader(HEADER_GITHUB_SIGNATURE))
        );
        assert_eq!(
            github(Some(GITHUB_SIG), None),
            Err(VerifyError::MissingHeader(HEADER_GITHUB_DELIVERY))
        );
        assert_eq!(
            github(Some(GITHUB_SIG), Some("has space")),
            Err(VerifyError::MalformedId)
        );
        let other = GithubSecret::parse("another secret of enough length").expect("secret");
        assert_eq!(
            verify_github(
                &[other],
                GithubHeaders {
                    delivery: Some("d-1"),
                    signature: Some(GITHUB_SIG)
                },
                GITHUB_BODY
            ),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn refuses_short_github_secrets() {
        assert_eq!(GithubSecret::parse("").err(), Some(SecretError::Empty));
        assert!(matches!(
            GithubSecret::parse("short"),
            Err(SecretError::TooShortOrLong { len: 5, .. })
        ));
    }

    #[test]
    fn path_secrets_match_exactly_and_refuse_weak_values() {
        let value = "p4th-s3cret_0123456789abcdefghijklmnop";
        let secret = PathSecret::parse(value).expect("valid");
        let rotated = PathSecret::parse("another-path-secret-0123456789abcdef").expect("valid");
        let both = [rotated, secret.clone()];
        assert_eq!(verify_path_secret(&both, Some(value)), Ok(()));
        assert!(secret.matches(value));
        assert_eq!(
            verify_path_secret(&both, Some(&value[1..])),
            Err(VerifyError::BadPathSecret)
        );
        assert_eq!(
            verify_path_secret(&both, None),
            Err(VerifyError::MissingPathSecret)
        );
        assert_eq!(PathSecret::parse("").err(), Some(SecretError::Empty));
        assert!(matches!(
            PathSecret::parse("too-short"),
            Err(SecretError::TooShortOrLong { .. })
        ));
        assert_eq!(
            PathSecret::parse("has/a/slash/0123456789abcdefghijklmnop").err(),
            Some(SecretError::NotUrlSafe)
        );
        assert!(!format!("{secret:?}").contains("p4th"));
    }
}
