//! Secret values (API tokens, webhook secrets, path secrets).
//!
//! INVARIANT: a [`Secret`] never prints its value: `Debug` and `Display` show a fixed
//! placeholder, so a secret that ends up in a log line, an error or a config dump is
//! still hidden. The value is reachable only through [`Secret::expose`], which callers
//! use at the one place they need the bytes (an HTTP header, an HMAC key).

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

/// A string that must not be printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself; use it only where the bytes are sent or keyed on.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(\"***\")")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

/// Why a secret could not be read from its file.
#[derive(Debug, thiserror::Error)]
pub enum ReadSecretError {
    #[error("{}: cannot read", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: the file is empty", path.display())]
    Empty { path: PathBuf },
}

/// Reads a secret from `file` (surrounding whitespace ignored) or else from the
/// environment variable `var`. `None` when neither is set. Secrets never come from argv.
pub fn read_secret(file: Option<&Path>, var: &str) -> Result<Option<Secret>, ReadSecretError> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|source| ReadSecretError::Read {
            path: path.to_owned(),
            source,
        })?;
        let value = text.trim();
        if value.is_empty() {
            return Err(ReadSecretError::Empty {
                path: path.to_owned(),
            });
        }
        return Ok(Some(Secret::new(value)));
    }
    Ok(std::env::var(var)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .map(Secret::new))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_hide_the_value() {
        let secret = Secret::new("hunter2-token");
        assert!(!format!("{secret:?}").contains("hunter2"));
        assert!(!format!("{secret}").contains("hunter2"));
        assert_eq!(secret.expose(), "hunter2-token");
    }
}
