//! Standard Webhooks v1 signatures: HMAC-SHA256 over `{id}.{timestamp}.{raw body}`.
//!
//! INVARIANT: the signed content is the raw request body as received, never a
//! re-serialization, and the body does not need to be UTF-8.
//! INVARIANT: signatures are compared in constant time (`Mac::verify_slice`), and the
//! header is bounded in length and in the number of signatures before any HMAC runs.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{KeyInit, Mac};
use sha2::Sha256;

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

const SECRET_PREFIX: &str = "whsec_";
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
}
