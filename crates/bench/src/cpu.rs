//! CPU time of processes from `/proc`: the service's, the local broker's and the bench's own.

/// Kernel clock ticks per second of `/proc/<pid>/stat` (USER_HZ, 100 on Linux).
const CLOCK_TICKS: f64 = 100.0;

/// User plus system CPU time so far of a process (`self` for the bench's own), from
/// `/proc/<pid>/stat`: the kernel's work on its behalf (network, wake-ups) included.
pub(crate) fn cpu_secs_of(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name: state is the first, utime the 12th.
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some((ticks(11)? + ticks(12)?) as f64 / CLOCK_TICKS)
}

/// Whether the broker the bench talks to is on this machine (set once from its URL).
static BROKER_IS_LOCAL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// Tells whether the broker's URL names this machine (`localhost` or a loopback address).
pub(crate) fn set_broker_url(url: &str) {
    let _ = BROKER_IS_LOCAL.set(is_local(url));
}

fn is_local(url: &str) -> bool {
    let host = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .split(['/', '?'])
        .next()
        .unwrap_or_default();
    let host = host.rsplit_once('@').map_or(host, |(_, host)| host);
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.split(':').next().unwrap_or_default(),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The local RabbitMQ node's process, when the bench's broker is on this machine and exactly
/// one node runs here (with more, whose CPU is whose cannot be told, and the broker's share is
/// not reported).
fn local_broker_pid() -> Option<String> {
    if !BROKER_IS_LOCAL.get().copied().unwrap_or(false) {
        return None;
    }
    let mut found = std::fs::read_dir("/proc").ok()?.filter_map(|entry| {
        let pid = entry.ok()?.file_name().into_string().ok()?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        (pid.bytes().all(|b| b.is_ascii_digit()) && comm.trim_end() == "beam.smp").then_some(pid)
    });
    let first = found.next()?;
    found.next().is_none().then_some(first)
}

/// CPU used by the broker and by the bench itself (its load generator, and the simulator
/// it hosts) between `start` and `per`.
#[derive(Debug, Clone)]
pub(crate) struct SideCpu {
    broker_pid: Option<String>,
    broker: Option<f64>,
    bench: Option<f64>,
}

impl SideCpu {
    pub(crate) fn start() -> Self {
        let broker_pid = local_broker_pid();
        let broker = broker_pid.as_deref().and_then(cpu_secs_of);
        SideCpu {
            broker_pid,
            broker,
            bench: cpu_secs_of("self"),
        }
    }

    /// µs of broker and bench CPU per item since `start`.
    pub(crate) fn per(&self, items: usize) -> (Option<f64>, Option<f64>) {
        if items == 0 {
            return (None, None);
        }
        let since = |before: Option<f64>, now: Option<f64>| {
            Some((now? - before?).max(0.0) * 1e6 / items as f64)
        };
        (
            since(
                self.broker,
                self.broker_pid.as_deref().and_then(cpu_secs_of),
            ),
            since(self.bench, cpu_secs_of("self")),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_and_refuses_what_is_not_one() {
        let before = cpu_secs_of("self").expect("/proc/self/stat is readable");
        let mut spun = 0u64;
        let started = std::time::Instant::now();
        while started.elapsed() < std::time::Duration::from_millis(50) {
            spun = spun.wrapping_add(std::hint::black_box(1));
        }
        assert!(spun > 0);
        let after = cpu_secs_of("self").expect("/proc/self/stat is readable");
        assert!(after >= before);
        assert_eq!(cpu_secs_of("no-such-process"), None);
        let side = SideCpu::start();
        assert_eq!(side.per(0), (None, None));
        let (_, bench) = side.per(1);
        assert!(bench.is_some_and(|us| us >= 0.0));
    }

    #[test]
    fn only_a_loopback_broker_counts_as_local() {
        assert!(is_local("amqp://guest:guest@127.0.0.1:5672/%2f"));
        assert!(is_local("amqp://localhost/%2f"));
        assert!(is_local("amqp://u:p@[::1]:5672/%2f"));
        assert!(!is_local("amqp://u:p@mq-1.example.org:5672/%2f"));
        assert!(!is_local("amqps://u:p@10.0.0.5/%2f?heartbeat=5"));
    }
}
