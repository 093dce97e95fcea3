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

/// The local RabbitMQ node's process, when exactly one runs on this machine (with more,
/// whose CPU is whose cannot be told, and the broker's share is not reported).
fn local_broker_pid() -> Option<String> {
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
