//! Who is at the review page: operators log in with a token (only its SHA-256 is
//! configured) and get a signed session cookie, or a reverse proxy names them in a
//! trusted header (believed only from configured proxy addresses).
//!
//! INVARIANT: a session cookie is `HMAC-SHA256(key, payload)` over its whole payload
//! (version, expiry, CSRF token, operator); a cookie that does not verify, has expired or
//! is malformed is no session. Tokens and MACs are compared in constant time.
//! INVARIANT: every form carries a CSRF token bound to the session (or, behind a
//! trusted proxy, to the operator's name under the key); the login form's is bound to
//! a short-lived login cookie of its own.
//! INVARIANT: no token, key or cookie value is ever logged or shown.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::ReviewConfig;

type HmacSha256 = hmac::Hmac<Sha256>;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "puhuri_review_session";
/// The login form's cookie (its CSRF token, before there is a session).
pub const LOGIN_COOKIE: &str = "puhuri_review_login";
/// How long a login form may be submitted after it was shown.
const LOGIN_FORM_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// The session key's environment variable (else `review.session_key_file`).
pub const SESSION_KEY_ENV: &str = "PUHURI_APPROVER_REVIEW_SESSION_KEY";
/// The shortest session key accepted.
const MIN_KEY_BYTES: usize = 32;

/// How an operator was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The session cookie of a token login.
    Session,
    /// A trusted proxy's header.
    Proxy,
}

/// An authenticated operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    pub name: String,
    /// The CSRF token every form of this operator carries.
    pub csrf: String,
    pub via: Via,
}

/// Why the session key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Read(#[from] puhuri_auth::secret::ReadSecretError),
    #[error(
        "the review session key has {0} bytes; at least {MIN_KEY_BYTES} are needed (`secret generate --kind path-secret` makes one)"
    )]
    Short(usize),
    #[error("the operating system gave no random bytes: {0}")]
    Random(String),
}

/// The review page's authentication: the configuration and the session key.
pub struct Auth {
    /// HMAC-SHA256 keyed with the session key, cloned per use.
    keyed: HmacSha256,
    config: ReviewConfig,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").finish_non_exhaustive()
    }
}

/// The SHA-256 of an operator's token, as `review.operators.token_sha256` holds it.
pub fn token_sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.trim().as_bytes()).into()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn random_hex(bytes: usize) -> Result<String, KeyError> {
    let mut random = vec![0u8; bytes];
    getrandom::fill(&mut random).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(random.iter().map(|b| format!("{b:02x}")).collect())
}

impl Auth {
    /// The key from `PUHURI_APPROVER_REVIEW_SESSION_KEY` or `review.session_key_file`;
    /// without either, a random key (sessions end with the process).
    pub fn new(config: &ReviewConfig) -> Result<Auth, KeyError> {
        let key =
            puhuri_auth::secret::read_secret(config.session_key_file.as_deref(), SESSION_KEY_ENV)?;
        let key = match key {
            Some(secret) => {
                let bytes = secret.expose().as_bytes().to_vec();
                if bytes.len() < MIN_KEY_BYTES {
                    return Err(KeyError::Short(bytes.len()));
                }
                bytes
            }
            None => random_hex(32)?.into_bytes(),
        };
        Auth::with_key(config, &key)
    }

    /// An `Auth` over a given key.
    pub fn with_key(config: &ReviewConfig, key: &[u8]) -> Result<Auth, KeyError> {
        let keyed = HmacSha256::new_from_slice(key).map_err(|_| KeyError::Short(key.len()))?;
        Ok(Auth {
            keyed,
            config: config.clone(),
        })
    }

    pub fn config(&self) -> &ReviewConfig {
        &self.config
    }

    fn mac(&self, payload: &[u8]) -> HmacSha256 {
        let mut mac = self.keyed.clone();
        mac.update(payload);
        mac
    }

    fn sign(&self, payload: &str) -> String {
        let tag = self.mac(payload.as_bytes()).finalize().into_bytes();
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(payload),
            URL_SAFE_NO_PAD.encode(tag)
        )
    }

    /// The payload of a signed value, when its MAC verifies.
    fn verify(&self, value: &str) -> Option<String> {
        let (payload, tag) = value.split_once('.')?;
        let payload = URL_SAFE_NO_PAD.decode(payload).ok()?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        self.mac(&payload).verify_slice(&tag).ok()?;
        String::from_utf8(payload).ok()
    }

    /// The operator whose token this is (every configured hash is compared).
    pub fn operator_of_token(&self, token: &str) -> Option<String> {
        let digest = token_sha256(token);
        let mut found = None;
        for operator in &self.config.operators {
            if bool::from(operator.token_sha256.ct_eq(&digest)) && found.is_none() {
                found = Some(operator.name.clone());
            }
        }
        found.filter(|_| !token.trim().is_empty())
    }

    /// A new session for `name`: the cookie's value and the operator.
    pub fn new_session(&self, name: &str) -> Result<(String, Operator), KeyError> {
        let csrf = random_hex(16)?;
        let expires = now_secs() + self.config.session.as_secs();
        let value = self.sign(&format!("v1|{expires}|{csrf}|{name}"));
        Ok((
            value,
            Operator {
                name: name.to_owned(),
                csrf,
                via: Via::Session,
            },
        ))
    }

    /// The operator of a session cookie's value, when it verifies and has not expired.
    pub fn session(&self, value: &str) -> Option<Operator> {
        let payload = self.verify(value)?;
        let mut parts = payload.splitn(4, '|');
        let (version, expires, csrf, name) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let expires: u64 = expires.parse().ok()?;
        if version != "v1" || expires <= now_secs() || name.is_empty() {
            return None;
        }
        // The operator must still be configured: removing one ends their sessions.
        if !self.config.operators.iter().any(|o| o.name == name) {
            return None;
        }
        Some(Operator {
            name: name.to_owned(),
            csrf: csrf.to_owned(),
            via: Via::Session,
        })
    }

    /// A login form's cookie value and its CSRF token.
    pub fn new_login_form(&self) -> Result<(String, String), KeyError> {
        let csrf = random_hex(16)?;
        let expires = now_secs() + LOGIN_FORM_LIFETIME.as_secs();
        Ok((self.sign(&format!("login|{expires}|{csrf}")), csrf))
    }

    /// The CSRF token a login form's cookie was issued with, while it is valid (a page
    /// shown again, or another request of the browser, keeps the form it has).
    pub fn login_form_csrf(&self, cookie: &str) -> Option<String> {
        let payload = self.verify(cookie)?;
        let mut parts = payload.splitn(3, '|');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("login"), Some(expires), Some(issued))
                // A minute of slack: a form kept is still usable for a while.
                if expires.parse::<u64>().is_ok_and(|e| e > now_secs() + 60) =>
            {
                Some(issued.to_owned())
            }
            _ => None,
        }
    }

    /// Whether a login form's CSRF token is the one its cookie was issued with.
    pub fn login_form_matches(&self, cookie: &str, csrf: &str) -> bool {
        let Some(payload) = self.verify(cookie) else {
            return false;
        };
        let mut parts = payload.splitn(3, '|');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("login"), Some(expires), Some(issued)) => {
                expires.parse::<u64>().is_ok_and(|e| e > now_secs()) && same(issued, csrf)
            }
            _ => false,
        }
    }

    /// The operator a trusted proxy names, when the request came from one.
    pub fn proxy_operator(&self, peer: IpAddr, header: Option<&str>) -> Option<Operator> {
        let header_name = self.config.trusted_header.as_ref()?;
        if !self.is_trusted_proxy(peer) {
            return None;
        }
        let name = header?.trim();
        if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
            return None;
        }
        let tag = self
            .mac(format!("proxy-csrf|{header_name}|{name}").as_bytes())
            .finalize()
            .into_bytes();
        let csrf = tag[..16].iter().map(|b| format!("{b:02x}")).collect();
        Some(Operator {
            name: name.to_owned(),
            csrf,
            via: Via::Proxy,
        })
    }

    /// The `Set-Cookie` value of a cookie; `None` as the value clears it.
    pub fn set_cookie(&self, name: &str, value: Option<&str>, lifetime: Duration) -> String {
        let secure = if self.config.secure_cookie {
            "; Secure"
        } else {
            ""
        };
        match value {
            Some(value) => format!(
                "{name}={value}; Path=/; Max-Age={}; HttpOnly; SameSite=Strict{secure}",
                lifetime.as_secs()
            ),
            None => format!("{name}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict{secure}"),
        }
    }

    pub fn login_form_lifetime(&self) -> Duration {
        LOGIN_FORM_LIFETIME
    }
}

/// Whether two CSRF tokens are equal, in constant time.
pub fn same(expected: &str, given: &str) -> bool {
    !expected.is_empty()
        && expected.len() == given.len()
        && bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
}

/// An IPv4 address mapped into IPv6 as its IPv4 form.
impl Auth {
    /// Whether `ip` is one of `review.trusted_proxies`.
    pub fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.config
            .trusted_proxies
            .iter()
            .any(|net| net.contains(&ip))
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        (key == name).then_some(value)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ReviewOperator;

    fn config() -> ReviewConfig {
        ReviewConfig {
            session: Duration::from_secs(3600),
            operators: vec![ReviewOperator {
                name: "alice".into(),
                token_sha256: token_sha256("alice-token"),
            }],
            trusted_header: Some("x-forwarded-user".into()),
            trusted_proxies: vec!["10.0.0.0/8".parse().expect("net")],
            ..Default::default()
        }
    }

    #[test]
    fn a_session_verifies_only_as_issued() {
        let auth = Auth::with_key(&config(), &[7u8; 32]).expect("key");
        assert_eq!(
            auth.operator_of_token("alice-token").as_deref(),
            Some("alice")
        );
        assert_eq!(auth.operator_of_token("mallory"), None);
        assert_eq!(auth.operator_of_token(""), None);
        let (cookie, operator) = auth.new_session("alice").expect("session");
        assert_eq!(auth.session(&cookie), Some(operator.clone()));
        // Another key, a changed payload or tag: no session.
        assert_eq!(
            Auth::with_key(&config(), &[8u8; 32])
                .expect("key")
                .session(&cookie),
            None
        );
        let (payload, tag) = cookie.split_once('.').expect("signed");
        let forged = URL_SAFE_NO_PAD.encode(format!("v1|99999999999|{}|alice", operator.csrf));
        assert_eq!(auth.session(&format!("{forged}.{tag}")), None);
        assert_eq!(auth.session(payload), None);
        assert_eq!(auth.session("garbage"), None);
        // An operator removed from the configuration loses their sessions.
        let without = ReviewConfig {
            operators: Vec::new(),
            ..config()
        };
        assert_eq!(
            Auth::with_key(&without, &[7u8; 32])
                .expect("key")
                .session(&cookie),
            None
        );
    }

    #[test]
    fn login_forms_and_proxies() {
        let auth = Auth::with_key(&config(), &[7u8; 32]).expect("key");
        let (cookie, csrf) = auth.new_login_form().expect("form");
        assert!(auth.login_form_matches(&cookie, &csrf));
        assert!(!auth.login_form_matches(&cookie, "00"));
        let (session, _) = auth.new_session("alice").expect("session");
        assert!(!auth.login_form_matches(&session, &csrf));
        let inside: IpAddr = "10.1.2.3".parse().expect("ip");
        let outside: IpAddr = "192.0.2.1".parse().expect("ip");
        let bob = auth.proxy_operator(inside, Some("bob")).expect("bob");
        assert_eq!((bob.name.as_str(), bob.via), ("bob", Via::Proxy));
        assert_eq!(auth.proxy_operator(outside, Some("bob")), None);
        assert_eq!(auth.proxy_operator(inside, None), None);
        assert_eq!(auth.proxy_operator(inside, Some("  ")), None);
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().expect("ip");
        assert!(auth.proxy_operator(mapped, Some("bob")).is_some());
    }

    #[test]
    fn cookies_are_read_by_name() {
        assert_eq!(cookie("a=1; b=2", "b"), Some("2"));
        assert_eq!(cookie("a=1", "b"), None);
        let auth = Auth::with_key(&config(), &[7u8; 32]).expect("key");
        let set = auth.set_cookie(SESSION_COOKIE, Some("v"), Duration::from_secs(60));
        assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"));
    }
}
