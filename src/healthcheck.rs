//! `healthcheck`: one GET of a service's `/readyz`, for container health checks and
//! compose files (distroless images have no curl).
//!
//! The one place outside the Puhuri Core client that names reqwest: the binary carries it
//! anyway, and a health check is a plain HTTP client of our own endpoint.

use std::fmt;
use std::time::Duration;

/// What the endpoint answered: its status and the start of its body on one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, self.body)
    }
}

/// Why the service is not ready.
#[derive(Debug)]
pub enum NotReady {
    /// It answered, but not `200`.
    Answered(Answer),
    /// No answer (connection refused, timeout); the URL is left out of the error.
    Unreachable(Box<dyn std::error::Error + Send + Sync>),
}

/// GETs `url` within `timeout`, without following redirects.
pub async fn probe(url: &str, timeout: Duration) -> Result<Answer, NotReady> {
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|error| NotReady::Unreachable(Box::new(error)))?;
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|error| NotReady::Unreachable(Box::new(error.without_url())))?;
    let status = response.status().as_u16();
    let body = response.text().await.unwrap_or_default();
    let body: String = body
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(300)
        .collect();
    let answer = Answer { status, body };
    if status == 200 {
        Ok(answer)
    } else {
        Err(NotReady::Answered(answer))
    }
}
