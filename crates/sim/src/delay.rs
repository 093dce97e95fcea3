//! Added latency, to the tenth of a millisecond.
//!
//! A tokio sleep ends on the runtime's next millisecond tick at the earliest, and later when the
//! driver parks in whole milliseconds: a 50 ms sleep took about 51.5 ms here, so three calls at
//! "+50 ms" added 4–5 ms the caller never asked for. The benchmark reads latency figures to the
//! millisecond, so the simulator keeps its own timer thread: one thread, a heap of deadlines, and
//! a condition-variable wait with a deadline (the kernel's high-resolution timer, within its 50 µs
//! slack). The thread starts on the first delay and serves every simulator in the process.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

struct Due {
    at: Instant,
    seq: u64,
    wake: oneshot::Sender<()>,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

#[derive(Default)]
struct Timers {
    queue: Mutex<(BinaryHeap<Reverse<Due>>, u64)>,
    changed: Condvar,
}

static TIMERS: OnceLock<Option<&'static Timers>> = OnceLock::new();

fn timers() -> Option<&'static Timers> {
    *TIMERS.get_or_init(|| {
        let timers: &'static Timers = Box::leak(Box::default());
        std::thread::Builder::new()
            .name("sim-delay".into())
            .spawn(move || run(timers))
            .ok()
            .map(|_| timers)
    })
}

fn run(timers: &Timers) {
    let Ok(mut queue) = timers.queue.lock() else {
        return;
    };
    loop {
        let now = Instant::now();
        while queue.0.peek().is_some_and(|Reverse(due)| due.at <= now) {
            if let Some(Reverse(due)) = queue.0.pop() {
                // The caller may have gone (a client timeout): nothing to wake.
                let _ = due.wake.send(());
            }
        }
        let next = queue.0.peek().map(|Reverse(due)| due.at);
        queue = match next {
            Some(at) => match timers
                .changed
                .wait_timeout(queue, at.saturating_duration_since(now))
            {
                Ok((queue, _)) => queue,
                Err(_) => return,
            },
            None => match timers.changed.wait(queue) {
                Ok(queue) => queue,
                Err(_) => return,
            },
        };
    }
}

/// Waits `delay` from now, to within the kernel's timer slack.
pub(crate) async fn sleep(delay: Duration) {
    let at = Instant::now() + delay;
    let (wake, woken) = oneshot::channel();
    let queued = timers().and_then(|timers| {
        let mut queue = timers.queue.lock().ok()?;
        queue.1 += 1;
        let seq = queue.1;
        queue.0.push(Reverse(Due { at, seq, wake }));
        drop(queue);
        timers.changed.notify_one();
        Some(())
    });
    match queued {
        Some(()) if woken.await.is_ok() => {}
        // No timer thread (it could not start, or a lock was poisoned): tokio's sleep.
        _ => tokio::time::sleep_until(at.into()).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn delays_end_in_deadline_order_and_never_early() {
        let start = Instant::now();
        let mut order = Vec::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for (i, ms) in [30u64, 10, 20].into_iter().enumerate() {
            let tx = tx.clone();
            tokio::spawn(async move {
                let begun = Instant::now();
                sleep(Duration::from_millis(ms)).await;
                let _ = tx.send((i, begun.elapsed() >= Duration::from_millis(ms)));
            });
        }
        drop(tx);
        while let Some(done) = rx.recv().await {
            order.push(done);
        }
        assert_eq!(order, vec![(1, true), (2, true), (0, true)]);
        assert!(start.elapsed() >= Duration::from_millis(30));
    }
}
