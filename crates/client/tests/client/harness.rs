//! `TestSim`: a seeded simulator serving on port 0 until it is dropped, and clients for it.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use puhuri_auth::Secret;
use puhuri_client::{
    AllocationHint, ApiGeneration, CallObserver, ClientConfig, OrderUuid, PuhuriClient,
    ResourceUuid,
};
use puhuri_sim::{CreatedAllocation, NewAllocation, Sim, SimConfig, WaldurVersion};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const TOKEN: &str = "client-test-token";
/// Long enough for any single call on a loaded 2-core machine.
const TIMEOUT: Duration = Duration::from_secs(20);

/// Runs an `async fn(ApiGeneration)` test once per API generation, as `<name>::orders`
/// and `<name>::resources`.
#[macro_export]
macro_rules! on_both_apis {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn orders() {
                    super::$name(puhuri_client::ApiGeneration::Orders).await
                }
                #[tokio::test]
                async fn resources() {
                    super::$name(puhuri_client::ApiGeneration::Resources).await
                }
            }
        )+
    };
}

/// A simulator serving on a port of its own; stops serving when dropped.
pub struct TestSim {
    pub sim: Sim,
    /// The API base, ending in `/api/`.
    pub url: String,
    stop: CancellationToken,
    serving: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestSim {
    /// The seeded catalogue, serving already: the listener is bound before this returns,
    /// so a call made at once waits in the backlog rather than failing.
    pub async fn start() -> TestSim {
        TestSim::start_as(WaldurVersion::V7_0).await
    }

    /// A simulator of the Waldur release that serves `api`: 7.0 for the current API,
    /// the 2021 release for the 2021 one.
    pub async fn start_for(api: ApiGeneration) -> TestSim {
        TestSim::start_as(match api {
            ApiGeneration::Orders => WaldurVersion::V7_0,
            ApiGeneration::Resources => WaldurVersion::V2021,
        })
        .await
    }

    /// A simulator of one Waldur release.
    pub async fn start_as(waldur: WaldurVersion) -> TestSim {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind sim");
        let addr = listener.local_addr().expect("sim addr");
        let sim = Sim::new(SimConfig {
            tokens: vec![Secret::new(TOKEN)],
            hook: None,
            seed: true,
            public_url: Some(format!("http://{addr}")),
            waldur,
        });
        let stop = CancellationToken::new();
        let serving = tokio::spawn(sim.clone().serve(listener, stop.clone()));
        TestSim {
            sim,
            url: format!("http://{addr}/api/"),
            stop,
            serving: Some(serving),
        }
    }

    /// Stops serving and waits until the port is closed.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(serving) = self.serving.take() {
            serving
                .await
                .expect("the simulator task ends")
                .expect("the simulator served");
        }
    }

    pub fn client(&self, api: ApiGeneration) -> PuhuriClient {
        self.client_with_token(api, TOKEN)
    }

    pub fn client_with_token(&self, api: ApiGeneration, token: &str) -> PuhuriClient {
        let config = ClientConfig {
            url: self.url.clone(),
            api,
            timeout: TIMEOUT,
        };
        PuhuriClient::new(&config, token).expect("client builds")
    }

    /// A new allocation waiting for the provider, on the default offering and project.
    pub async fn allocation(&self) -> CreatedAllocation {
        self.sim
            .create_allocation(NewAllocation::default())
            .await
            .expect("the simulator creates an allocation")
    }
}

impl Drop for TestSim {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// What a notification naming only the allocation's creation order carries.
pub fn order_hint(created: &CreatedAllocation) -> AllocationHint {
    AllocationHint {
        order_uuid: Some(OrderUuid::parse(&created.order_uuid).expect("order uuid")),
        resource_uuid: None,
    }
}

/// What a notification naming only the allocation's resource carries.
pub fn resource_hint(created: &CreatedAllocation) -> AllocationHint {
    AllocationHint {
        order_uuid: None,
        resource_uuid: Some(ResourceUuid::parse(&created.resource_uuid).expect("resource uuid")),
    }
}

/// What a notification naming both carries.
pub fn full_hint(created: &CreatedAllocation) -> AllocationHint {
    AllocationHint {
        order_uuid: order_hint(created).order_uuid,
        resource_uuid: resource_hint(created).resource_uuid,
    }
}

/// One call as a [`CallObserver`] was told of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub operation: &'static str,
    pub status: Option<u16>,
}

/// Remembers every call it is told of, in order.
#[derive(Default)]
pub struct Recorder {
    calls: Mutex<Vec<Observed>>,
}

impl Recorder {
    pub fn new() -> Arc<Recorder> {
        Arc::new(Recorder::default())
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Observed>> {
        self.calls
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The calls told so far; forgets them.
    pub fn take(&self) -> Vec<Observed> {
        std::mem::take(&mut *self.lock())
    }
}

impl CallObserver for Recorder {
    fn observe(&self, operation: &'static str, status: Option<u16>, _elapsed: Duration) {
        self.lock().push(Observed { operation, status });
    }
}

/// `Observed { operation, status: Some(status) }`, for short.
pub fn answered(operation: &'static str, status: u16) -> Observed {
    Observed {
        operation,
        status: Some(status),
    }
}
