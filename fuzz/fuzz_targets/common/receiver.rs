//! What the receiver fuzz targets share: the sources they configure and their secrets.
//! Included by each target with `#[path]` (fuzz targets are separate binaries).

pub const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub const GITHUB_SECRET: &str = "It's a Secret to Everybody";
pub const PATH_SECRET: &str = "fuzz-path-secret-0123456789abcdefghij";

pub const CONFIG: &str = r#"
[receiver]
replay_cache_entries = 1000

[[sources]]
name = "sw"
format = "allocation"
auth = "standard-webhooks"
secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
rate_limit_per_sec = 100000
rate_limit_burst = 1000000

[[sources]]
name = "gh"
format = "allocation"
auth = "github"
secrets = ["It's a Secret to Everybody"]
rate_limit_per_sec = 100000
rate_limit_burst = 1000000

[[sources]]
name = "hook"
format = "waldur-hook"
auth = "path-secret"
secrets = ["fuzz-path-secret-0123456789abcdefghij"]
rate_limit_per_sec = 100000
rate_limit_burst = 1000000

[[sources]]
name = "open"
format = "waldur-hook"
auth = "none"
insecure_no_auth = true
rate_limit_per_sec = 100000
rate_limit_burst = 1000000

[[sources]]
name = "lan"
format = "allocation"
auth = "none"
insecure_no_auth = true
allowed_networks = ["192.0.2.0/24"]
rate_limit_per_sec = 100000
rate_limit_burst = 1000000
"#;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use puhuri_approver::config::Config;
use puhuri_approver::receiver::{self, MemoryPublisher, ReceiverStats};

/// The router over the shared sources, publishing into memory, and a current-thread runtime
/// (its clock paused when `paused`, so timeouts pass as soon as nothing else can happen).
pub struct Harness {
    pub runtime: tokio::runtime::Runtime,
    pub router: Router,
    pub publisher: Arc<MemoryPublisher>,
}

impl Harness {
    pub fn new(paused: bool) -> Harness {
        let config = Config::parse(CONFIG, "fuzz.toml", &HashMap::<String, String>::new())
            .expect("fuzz config");
        let publisher = Arc::new(MemoryPublisher::default());
        let router = receiver::router_with(
            &config.receiver,
            &config.sources,
            publisher.clone(),
            Arc::new(ReceiverStats::default()),
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(paused)
            .build()
            .expect("runtime");
        Harness {
            runtime,
            router,
            publisher,
        }
    }
}
