//! The embedded durable queue: one SQLite database in the data folder, for a single
//! machine without RabbitMQ.
//!
//! One writer thread owns the database and applies operations in batches, one
//! transaction per batch (group commit): many concurrent publishes cost one `fsync`.
//!
//! INVARIANT: `publish` returns only after the transaction holding the message has
//! committed with `synchronous = FULL` in WAL mode, i.e. after the write-ahead log was
//! fsync'd: a 202 answered after it survives a crash of the process or the machine.
//! INVARIANT: a claimed message is leased, not removed: a worker that dies leaves a lease
//! that expires, and the message is delivered again (`redelivered`). Settling (ack, retry,
//! dead letter) checks the lease token, so a worker whose lease expired cannot settle a
//! message that has been handed to another.
//! INVARIANT: the queue reports itself unavailable ([`EmbeddedQueue::is_writable`], the
//! backend's `is_connected`) while it cannot commit: after a failed commit or write (disk
//! full, read-only), until a probe write succeeds (tried every second); and for good,
//! refusing every publish, once its files were deleted or replaced under it (the writer
//! compares the files' device and inode with those it opened before every batch and every
//! second): a commit into a file no longer at its path would vanish at the next start.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rusqlite::{Connection, params};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, oneshot};
use tokio_util::sync::CancellationToken;

use super::{
    Backend, Claim, ClaimGuard, Consumer, DeadLetter, Deliveries, Delivery, Destination, Event,
    Kind, Progress, PublishError, QueueError, Select, Settle, Topology,
};

/// Which queue a message is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    Work,
    Dead,
}

impl Lane {
    fn as_str(self) -> &'static str {
        match self {
            Lane::Work => "work",
            Lane::Dead => "dead",
        }
    }
}

/// A storage failure. Never carries message bodies.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    #[error("the embedded queue at `{path}` cannot be opened: {message}")]
    Open { path: String, message: String },
    #[error("the embedded queue failed")]
    Sqlite(#[source] Arc<rusqlite::Error>),
    #[error("the embedded queue is closed")]
    Closed,
    #[error("the lease on this message has expired; it was or will be delivered again")]
    LeaseLost,
    #[error(
        "the embedded queue's files at `{0}` were deleted or replaced while open; restart the process"
    )]
    Replaced(String),
}

impl From<rusqlite::Error> for StorageError {
    fn from(error: rusqlite::Error) -> Self {
        StorageError::Sqlite(Arc::new(error))
    }
}

/// A leased message.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: i64,
    pub token: i64,
    pub message_id: String,
    pub kind: Option<Kind>,
    pub body: Vec<u8>,
    pub attempts: u32,
    pub reasons: Vec<String>,
    pub redelivered: bool,
}

/// A dead letter as stored.
#[derive(Debug, Clone)]
pub struct StoredDeadLetter {
    pub id: i64,
    pub message_id: String,
    pub kind: Option<Kind>,
    pub body: Vec<u8>,
    pub attempts: u32,
    pub reasons: Vec<String>,
}

type Reply<T> = oneshot::Sender<Result<T, StorageError>>;

/// Answers an operation once its batch's commit is known.
type Answer = Box<dyn FnOnce(Option<&StorageError>) + Send>;

enum Op {
    Publish {
        lane: Lane,
        kind: Kind,
        message_id: String,
        body: Vec<u8>,
        attempts: u32,
        reasons: Vec<String>,
        available_at: i64,
        reply: Reply<()>,
    },
    Claim {
        limit: usize,
        reply: Reply<Vec<Claimed>>,
    },
    Ack {
        id: i64,
        token: i64,
        /// An event recorded in the same transaction (routing key, body).
        event: Option<(String, Vec<u8>)>,
        reply: Reply<()>,
    },
    Reschedule {
        id: i64,
        token: i64,
        lane: Lane,
        attempts: u32,
        reasons: Vec<String>,
        available_at: i64,
        reply: Reply<()>,
    },
    NextDue {
        reply: Reply<Option<i64>>,
    },
    Depth {
        lane: Lane,
        reply: Reply<u64>,
    },
    OldestEnqueued {
        reply: Reply<Option<i64>>,
    },
    Dead {
        limit: usize,
        reply: Reply<Vec<StoredDeadLetter>>,
    },
    /// Removes dead letters (by message id, or all when `None`); when `replay`, they go
    /// back to the work lane with a fresh attempt count. Returns how many.
    SettleDead {
        message_id: Option<String>,
        replay: bool,
        reply: Reply<usize>,
    },
    Event {
        routing_key: String,
        body: Vec<u8>,
        reply: Reply<()>,
    },
    Events {
        limit: usize,
        reply: Reply<Vec<(String, Vec<u8>)>>,
    },
    Purge {
        reply: Reply<()>,
    },
    /// Takes `key` unless another token holds it unexpired; the token when taken.
    Lock {
        key: String,
        token: i64,
        until: i64,
        reply: Reply<bool>,
    },
    Unlock {
        key: String,
        token: i64,
        reply: Reply<()>,
    },
}

/// Deliveries that crash or stall workers this many times are moved to the dead lane.
pub const DELIVERY_LIMIT: i64 = 50;
/// Decision events kept for audit in the database (the newest ones).
const EVENTS_KEPT: i64 = 100_000;

struct Inner {
    ops: mpsc::Sender<Op>,
    /// Woken when work may be ready (a publish, a release).
    ready: Notify,
    path: PathBuf,
    health: Arc<Health>,
}

/// Whether the queue can commit, as the writer last found.
#[derive(Debug)]
struct Health {
    /// The last write or probe committed.
    writable: std::sync::atomic::AtomicBool,
    /// The files are no longer those opened.
    replaced: std::sync::atomic::AtomicBool,
}

/// How often the writer checks its files, and probes while writes fail.
const HEALTH_EVERY: Duration = Duration::from_secs(1);

/// The files of the database, by the identity (device, inode) they had when opened.
struct Files {
    paths: [PathBuf; 3],
    opened: [Option<(u64, u64)>; 3],
}

impl Files {
    fn new(db: &Path) -> Files {
        let with = |suffix: &str| {
            let mut name = db.as_os_str().to_owned();
            name.push(suffix);
            PathBuf::from(name)
        };
        let paths = [db.to_path_buf(), with("-wal"), with("-shm")];
        let opened = [
            identity(&paths[0]),
            identity(&paths[1]),
            identity(&paths[2]),
        ];
        Files { paths, opened }
    }

    /// The first file that is gone or another file than the one opened. The
    /// write-ahead log and shared memory files are checked once they were seen.
    fn changed(&mut self) -> Option<&Path> {
        for (index, path) in self.paths.iter().enumerate() {
            let now = identity(path);
            match (self.opened[index], now) {
                (Some(then), Some(now)) if then == now => {}
                (None, Some(now)) if index > 0 => self.opened[index] = Some(now),
                (None, None) if index > 0 => {}
                _ => return Some(path),
            }
        }
        None
    }
}

#[cfg(unix)]
fn identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|_| (0, 0))
}

/// Whether a failure means the database cannot be written (rather than one statement
/// failing).
fn is_unwritable(error: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode::*;
    matches!(
        error.sqlite_error_code(),
        Some(
            DiskFull
                | ReadOnly
                | SystemIoFailure
                | CannotOpen
                | DatabaseCorrupt
                | NotADatabase
                | PermissionDenied
                | FileLockingProtocolFailed
        )
    )
}

/// A handle on the embedded queue. Cheap to clone.
#[derive(Clone)]
pub struct EmbeddedQueue {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EmbeddedQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedQueue")
            .field("path", &self.inner.path)
            .finish()
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl EmbeddedQueue {
    /// Opens (creating when needed) `queue.sqlite3` in `dir`. `lease` is how long a claimed
    /// message stays invisible before it is delivered again.
    pub fn open(dir: &Path, lease: Duration) -> Result<EmbeddedQueue, StorageError> {
        let open_error = |message: String| StorageError::Open {
            path: dir.display().to_string(),
            message,
        };
        std::fs::create_dir_all(dir).map_err(|e| open_error(e.to_string()))?;
        let path = dir.join("queue.sqlite3");
        let connection = open_initialized(&path).map_err(|e| open_error(e.to_string()))?;
        let files = Files::new(&path);
        let (ops, receiver) = mpsc::channel();
        let lease_ms = lease.as_millis() as i64;
        let health = Arc::new(Health {
            writable: std::sync::atomic::AtomicBool::new(true),
            replaced: std::sync::atomic::AtomicBool::new(false),
        });
        let writer = Writer {
            health: health.clone(),
            files,
            lease_ms,
        };
        std::thread::Builder::new()
            .name("embedded-queue".into())
            .spawn(move || writer.run(connection, receiver))
            .map_err(|e| open_error(e.to_string()))?;
        Ok(EmbeddedQueue {
            inner: Arc::new(Inner {
                ops,
                ready: Notify::new(),
                path,
                health,
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Whether the queue can commit: its last write or probe committed, and its files
    /// are those it opened.
    pub fn is_writable(&self) -> bool {
        use std::sync::atomic::Ordering;
        self.inner.health.writable.load(Ordering::Acquire)
            && !self.inner.health.replaced.load(Ordering::Acquire)
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Op) -> Result<T, StorageError> {
        let (reply, receive) = oneshot::channel();
        self.inner
            .ops
            .send(make(reply))
            .map_err(|_| StorageError::Closed)?;
        receive.await.map_err(|_| StorageError::Closed)?
    }

    /// Stores a message durably; visible to consumers after `delay`.
    #[allow(clippy::too_many_arguments)] // one row's columns, named at every call
    pub async fn publish(
        &self,
        lane: Lane,
        kind: Kind,
        message_id: &str,
        body: &[u8],
        attempts: u32,
        reasons: &[String],
        delay: Duration,
    ) -> Result<(), StorageError> {
        let available_at = now_ms() + delay.as_millis() as i64;
        self.call(|reply| Op::Publish {
            lane,
            kind,
            message_id: message_id.to_owned(),
            body: body.to_vec(),
            attempts,
            reasons: reasons.to_vec(),
            available_at,
            reply,
        })
        .await?;
        if lane == Lane::Work && delay.is_zero() {
            self.inner.ready.notify_waiters();
        }
        Ok(())
    }

    /// Leases up to `limit` ready messages of the work lane.
    pub async fn claim(&self, limit: usize) -> Result<Vec<Claimed>, StorageError> {
        self.call(|reply| Op::Claim { limit, reply }).await
    }

    /// Removes a leased message.
    pub async fn ack(&self, id: i64, token: i64) -> Result<(), StorageError> {
        self.call(|reply| Op::Ack {
            id,
            token,
            event: None,
            reply,
        })
        .await
    }

    /// Removes a leased message and records an event in the same transaction: both or
    /// neither are committed.
    pub async fn ack_with_event(
        &self,
        id: i64,
        token: i64,
        routing_key: &str,
        body: &[u8],
    ) -> Result<(), StorageError> {
        self.call(|reply| Op::Ack {
            id,
            token,
            event: Some((routing_key.to_owned(), body.to_vec())),
            reply,
        })
        .await
    }

    /// Moves a leased message to `lane`, visible after `delay`, with its history.
    pub async fn reschedule(
        &self,
        claimed: &Claimed,
        lane: Lane,
        attempts: u32,
        reasons: &[String],
        delay: Duration,
    ) -> Result<(), StorageError> {
        let available_at = now_ms() + delay.as_millis() as i64;
        self.call(|reply| Op::Reschedule {
            id: claimed.id,
            token: claimed.token,
            lane,
            attempts,
            reasons: reasons.to_vec(),
            available_at,
            reply,
        })
        .await?;
        if lane == Lane::Work && delay.is_zero() {
            self.inner.ready.notify_waiters();
        }
        Ok(())
    }

    /// Waits until work may be ready: a local publish, the next delayed message or lease
    /// expiry, or `poll` (other processes may publish into the same file).
    pub async fn wait_for_work(&self, poll: Duration) {
        let due = self
            .call(|reply| Op::NextDue { reply })
            .await
            .ok()
            .flatten();
        let wait = match due {
            Some(at) => Duration::from_millis((at - now_ms()).max(0) as u64).min(poll),
            None => poll,
        };
        if wait.is_zero() {
            return;
        }
        let notified = self.inner.ready.notified();
        let _ = tokio::time::timeout(wait, notified).await;
    }

    pub async fn depth(&self, lane: Lane) -> Result<u64, StorageError> {
        self.call(|reply| Op::Depth { lane, reply }).await
    }

    /// `enqueued_at` (Unix ms) of the oldest message of the work lane, retries included.
    pub async fn oldest_enqueued_ms(&self) -> Result<Option<i64>, StorageError> {
        self.call(|reply| Op::OldestEnqueued { reply }).await
    }

    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<StoredDeadLetter>, StorageError> {
        self.call(|reply| Op::Dead { limit, reply }).await
    }

    pub async fn settle_dead(
        &self,
        message_id: Option<&str>,
        replay: bool,
    ) -> Result<usize, StorageError> {
        let done = self
            .call(|reply| Op::SettleDead {
                message_id: message_id.map(str::to_owned),
                replay,
                reply,
            })
            .await?;
        if replay && done > 0 {
            self.inner.ready.notify_waiters();
        }
        Ok(done)
    }

    /// Appends a decision event to the audit table.
    pub async fn record_event(&self, routing_key: &str, body: &[u8]) -> Result<(), StorageError> {
        self.call(|reply| Op::Event {
            routing_key: routing_key.to_owned(),
            body: body.to_vec(),
            reply,
        })
        .await
    }

    /// The oldest `limit` recorded events kept, as (routing key, body) (tests and tooling).
    pub async fn events(&self, limit: usize) -> Result<Vec<(String, Vec<u8>)>, StorageError> {
        self.call(|reply| Op::Events { limit, reply }).await
    }

    /// Claims `key` for `ttl` against every process sharing the folder; the claim's
    /// token when taken, `None` while another holds it unexpired.
    pub async fn lock(&self, key: &str, ttl: Duration) -> Result<Option<i64>, StorageError> {
        let bytes = uuid::Uuid::new_v4().into_bytes();
        let token = i64::from_le_bytes([
            bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7],
        ]);
        let until = now_ms() + ttl.as_millis() as i64;
        let taken = self
            .call(|reply| Op::Lock {
                key: key.to_owned(),
                token,
                until,
                reply,
            })
            .await?;
        Ok(taken.then_some(token))
    }

    /// Gives up a claim taken with `token`.
    pub async fn unlock(&self, key: &str, token: i64) -> Result<(), StorageError> {
        self.call(|reply| Op::Unlock {
            key: key.to_owned(),
            token,
            reply,
        })
        .await
    }

    /// Deletes every message and event (tests and tooling).
    pub async fn purge_everything(&self) -> Result<(), StorageError> {
        self.call(|reply| Op::Purge { reply }).await
    }
}

/// Opens and sets up the database, retrying with a bounded backoff (about 10 s in all)
/// while another process holds the lock: processes started together on a new folder race
/// for `journal_mode = WAL`, which does not always wait for `busy_timeout`.
fn open_initialized(path: &Path) -> rusqlite::Result<Connection> {
    const BUDGET: Duration = Duration::from_secs(10);
    let started = std::time::Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        let attempt = Connection::open(path).and_then(|connection| {
            initialize(&connection)?;
            Ok(connection)
        });
        match attempt {
            Err(error) if is_busy(&error) && started.elapsed() + pause < BUDGET => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(500));
            }
            other => return other,
        }
    }
}

/// Runs one statement compiled once per connection (from its statement cache), not at
/// every call: these run for every message.
fn run(
    connection: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> rusqlite::Result<usize> {
    connection.prepare_cached(sql)?.execute(params)
}

fn is_busy(error: &rusqlite::Error) -> bool {
    matches!(
        error.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

fn initialize(connection: &Connection) -> rusqlite::Result<()> {
    connection.busy_timeout(Duration::from_secs(10))?;
    // Room for every statement of the message path at once.
    connection.set_prepared_statement_cache_capacity(32);
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(None, "synchronous", "FULL")?;
    let created = connection.execute_batch(
        "CREATE TABLE IF NOT EXISTS messages (
             id INTEGER PRIMARY KEY AUTOINCREMENT,
             lane TEXT NOT NULL,
             message_id TEXT NOT NULL,
             body BLOB NOT NULL,
             attempts INTEGER NOT NULL DEFAULT 0,
             reasons TEXT NOT NULL DEFAULT '[]',
             available_at INTEGER NOT NULL,
             lease_until INTEGER,
             lease_token INTEGER,
             deliveries INTEGER NOT NULL DEFAULT 0,
             enqueued_at INTEGER NOT NULL,
             kind TEXT NOT NULL DEFAULT 'allocation'
         );
         CREATE INDEX IF NOT EXISTS messages_ready ON messages (lane, available_at, id);
         CREATE TABLE IF NOT EXISTS claims (
             key TEXT PRIMARY KEY,
             token INTEGER NOT NULL,
             until INTEGER NOT NULL
         );
         CREATE TABLE IF NOT EXISTS events (
             id INTEGER PRIMARY KEY AUTOINCREMENT,
             routing_key TEXT NOT NULL,
             body BLOB NOT NULL,
             recorded_at INTEGER NOT NULL
         );
         CREATE TABLE IF NOT EXISTS health (
             id INTEGER PRIMARY KEY,
             checked_at INTEGER NOT NULL
         );",
    );
    created?;
    add_kind_column(connection)
}

/// A database written before messages carried their kind gets the column, filled from
/// each body once: work envelopes carry a version tag `v`, usage records never do.
fn add_kind_column(connection: &Connection) -> rusqlite::Result<()> {
    // Inside one immediate transaction, so that processes opening the folder together
    // add it once.
    let transaction =
        rusqlite::Transaction::new_unchecked(connection, rusqlite::TransactionBehavior::Immediate)?;
    let has_kind: bool = transaction.query_row(
        "SELECT COUNT(*) FROM pragma_table_info('messages') WHERE name = 'kind'",
        [],
        |row| row.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if !has_kind {
        transaction.execute_batch(
            "ALTER TABLE messages ADD COLUMN kind TEXT NOT NULL DEFAULT 'allocation';
             UPDATE messages SET kind = 'usage'
               WHERE json_valid(CAST(body AS TEXT)) AND json_type(CAST(body AS TEXT), '$.v') IS NULL;",
        )?;
    }
    transaction.commit()
}

/// The writer thread: applies operations in batches and watches whether it can commit.
struct Writer {
    health: Arc<Health>,
    files: Files,
    lease_ms: i64,
}

impl Writer {
    fn run(mut self, mut connection: Connection, ops: mpsc::Receiver<Op>) {
        let mut next_token: i64 = now_ms();
        let mut checked = std::time::Instant::now();
        loop {
            let first = match ops.recv_timeout(HEALTH_EVERY) {
                Ok(op) => op,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.check(&connection);
                    checked = std::time::Instant::now();
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            };
            let mut batch = vec![first];
            while batch.len() < 512 {
                match ops.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            if checked.elapsed() >= HEALTH_EVERY {
                self.check(&connection);
                checked = std::time::Instant::now();
            } else {
                self.check_files();
            }
            self.apply_batch(&mut connection, batch, &mut next_token);
        }
    }

    fn replaced(&self) -> bool {
        self.health
            .replaced
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Marks the queue replaced when its files changed.
    fn check_files(&mut self) {
        if self.replaced() {
            return;
        }
        if let Some(path) = self.files.changed() {
            tracing::error!(
                path = %path.display(),
                "the embedded queue's file was deleted or replaced while open: nothing more is accepted; restart the process"
            );
            self.health
                .replaced
                .store(true, std::sync::atomic::Ordering::Release);
        }
    }

    /// Checks the files and, while writes fail, probes with a write of its own.
    fn check(&mut self, connection: &Connection) {
        self.check_files();
        if self.replaced()
            || self
                .health
                .writable
                .load(std::sync::atomic::Ordering::Acquire)
        {
            return;
        }
        let probe = connection
            .execute(
                "INSERT INTO health (id, checked_at) VALUES (1, ?1)
                 ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at",
                params![now_ms()],
            )
            .map(drop);
        self.set_writable(probe.err().map(|e| e.to_string()));
    }

    fn set_writable(&self, failure: Option<String>) {
        let writable = failure.is_none();
        let was = self
            .health
            .writable
            .swap(writable, std::sync::atomic::Ordering::AcqRel);
        match (was, failure) {
            (true, Some(error)) => tracing::error!(
                error = %error,
                "the embedded queue cannot commit: unavailable until a write succeeds"
            ),
            (false, None) => tracing::info!("the embedded queue commits again"),
            _ => {}
        }
    }

    fn apply_batch(&mut self, connection: &mut Connection, batch: Vec<Op>, next_token: &mut i64) {
        let transaction =
            match connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
                Ok(tx) => tx,
                Err(error) => {
                    if is_unwritable(&error) {
                        self.set_writable(Some(error.to_string()));
                    }
                    let error = StorageError::from(error);
                    for op in batch {
                        fail(op, error.clone());
                    }
                    return;
                }
            };
        let replaced = self.replaced();
        let mut replies: Vec<Answer> = Vec::with_capacity(batch.len());
        let mut wrote = false;
        let mut unwritable: Option<String> = None;
        for op in batch {
            let writes = matches!(op, Op::Publish { .. } | Op::Event { .. });
            if writes && replaced {
                fail(
                    op,
                    StorageError::Replaced(self.files.paths[0].display().to_string()),
                );
                continue;
            }
            wrote |= writes;
            replies.push(apply(
                &transaction,
                op,
                self.lease_ms,
                next_token,
                &mut unwritable,
            ));
        }
        let committed = transaction.commit();
        match (&committed, unwritable) {
            (Err(error), _) => self.set_writable(Some(error.to_string())),
            (Ok(()), Some(error)) => self.set_writable(Some(error)),
            (Ok(()), None) if wrote => self.set_writable(None),
            (Ok(()), None) => {}
        }
        let committed = committed.map_err(StorageError::from);
        for reply in replies {
            reply(committed.as_ref().err());
        }
    }
}

fn fail(op: Op, error: StorageError) {
    match op {
        Op::Publish { reply, .. }
        | Op::Ack { reply, .. }
        | Op::Reschedule { reply, .. }
        | Op::Event { reply, .. }
        | Op::Purge { reply }
        | Op::Unlock { reply, .. } => drop(reply.send(Err(error))),
        Op::Lock { reply, .. } => drop(reply.send(Err(error))),
        Op::Claim { reply, .. } => drop(reply.send(Err(error))),
        Op::Events { reply, .. } => drop(reply.send(Err(error))),
        Op::NextDue { reply } => drop(reply.send(Err(error))),
        Op::Depth { reply, .. } => drop(reply.send(Err(error))),
        Op::OldestEnqueued { reply } => drop(reply.send(Err(error))),
        Op::Dead { reply, .. } => drop(reply.send(Err(error))),
        Op::SettleDead { reply, .. } => drop(reply.send(Err(error))),
    }
}

/// Runs one operation inside the batch's transaction and returns how to answer it once
/// the commit is known: a failed commit fails every operation of the batch.
fn apply(
    tx: &rusqlite::Transaction<'_>,
    op: Op,
    lease_ms: i64,
    next_token: &mut i64,
    unwritable: &mut Option<String>,
) -> Answer {
    fn answer<T: Send + 'static>(reply: Reply<T>, result: Result<T, StorageError>) -> Answer {
        Box::new(move |commit_error| {
            let result = match commit_error {
                Some(error) => Err(error.clone()),
                None => result,
            };
            let _ = reply.send(result);
        })
    }
    let now = now_ms();
    match op {
        Op::Publish {
            lane,
            kind,
            message_id,
            body,
            attempts,
            reasons,
            available_at,
            reply,
        } => {
            let result = run(
                    tx,
                    "INSERT INTO messages (lane, kind, message_id, body, attempts, reasons, available_at, enqueued_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![lane.as_str(), kind.as_str(), message_id, body, attempts, encode_reasons(&reasons), available_at, now],
                )
                .map(drop)
                .map_err(|error| {
                    if is_unwritable(&error) {
                        unwritable.get_or_insert_with(|| error.to_string());
                    }
                    StorageError::from(error)
                });
            answer(reply, result)
        }
        Op::Claim { limit, reply } => {
            let result = claim(tx, limit, now, lease_ms, next_token);
            answer(reply, result)
        }
        Op::Ack {
            id,
            token,
            event,
            reply,
        } => {
            let result = ack(tx, id, token, event, now);
            answer(reply, result)
        }
        Op::Reschedule {
            id,
            token,
            lane,
            attempts,
            reasons,
            available_at,
            reply,
        } => {
            let result = run(
                tx,
                "UPDATE messages SET lane = ?1, attempts = ?2, reasons = ?3, available_at = ?4,
                         lease_until = NULL, lease_token = NULL, deliveries = 0
                     WHERE id = ?5 AND lease_token = ?6 AND lease_until > ?7",
                params![
                    lane.as_str(),
                    attempts,
                    encode_reasons(&reasons),
                    available_at,
                    id,
                    token,
                    now
                ],
            )
            .map_err(StorageError::from)
            .and_then(|n| {
                if n == 1 {
                    Ok(())
                } else {
                    Err(StorageError::LeaseLost)
                }
            });
            answer(reply, result)
        }
        Op::NextDue { reply } => {
            let result = tx
                .query_row(
                    "SELECT MIN(CASE WHEN lease_until IS NULL THEN available_at ELSE MAX(available_at, lease_until) END)
                     FROM messages WHERE lane = 'work'",
                    [],
                    |row| row.get::<_, Option<i64>>(0),
                )
                .map_err(StorageError::from);
            answer(reply, result)
        }
        Op::Depth { lane, reply } => {
            let result = tx
                .query_row(
                    "SELECT COUNT(*) FROM messages WHERE lane = ?1",
                    params![lane.as_str()],
                    |row| row.get::<_, i64>(0),
                )
                .map(|n| n.max(0) as u64)
                .map_err(StorageError::from);
            answer(reply, result)
        }
        Op::OldestEnqueued { reply } => {
            let result = tx
                .query_row(
                    "SELECT MIN(enqueued_at) FROM messages WHERE lane = 'work'",
                    [],
                    |row| row.get::<_, Option<i64>>(0),
                )
                .map_err(StorageError::from);
            answer(reply, result)
        }
        Op::Dead { limit, reply } => {
            let result = dead_letters(tx, limit);
            answer(reply, result)
        }
        Op::SettleDead {
            message_id,
            replay,
            reply,
        } => {
            let result = settle_dead(tx, message_id.as_deref(), replay, now);
            answer(reply, result)
        }
        Op::Event {
            routing_key,
            body,
            reply,
        } => {
            let result = record_event(tx, &routing_key, &body, now);
            answer(reply, result)
        }
        Op::Events { limit, reply } => {
            let result = events(tx, limit);
            answer(reply, result)
        }
        Op::Lock {
            key,
            token,
            until,
            reply,
        } => {
            let result = run(
                tx,
                "INSERT INTO claims (key, token, until) VALUES (?1, ?2, ?3)
                     ON CONFLICT (key) DO UPDATE SET token = excluded.token, until = excluded.until
                     WHERE claims.until <= ?4",
                params![key, token, until, now],
            )
            .map(|n| n == 1)
            .map_err(StorageError::from);
            answer(reply, result)
        }
        Op::Unlock { key, token, reply } => {
            let result = run(
                tx,
                "DELETE FROM claims WHERE key = ?1 AND token = ?2",
                params![key, token],
            )
            .map(drop)
            .map_err(StorageError::from);
            answer(reply, result)
        }
        Op::Purge { reply } => {
            let result = tx
                .execute_batch("DELETE FROM messages; DELETE FROM events;")
                .map_err(StorageError::from);
            answer(reply, result)
        }
    }
}

/// Removes a leased message, with its event when it has one. The lease is checked
/// before anything is written, so a lost lease records no event; an event that cannot
/// be recorded leaves the message in place.
fn ack(
    tx: &rusqlite::Transaction<'_>,
    id: i64,
    token: i64,
    event: Option<(String, Vec<u8>)>,
    now: i64,
) -> Result<(), StorageError> {
    let leased: i64 = tx
        .prepare_cached(
            "SELECT COUNT(*) FROM messages WHERE id = ?1 AND lease_token = ?2 AND lease_until > ?3",
        )?
        .query_row(params![id, token, now], |row| row.get(0))?;
    if leased != 1 {
        return Err(StorageError::LeaseLost);
    }
    if let Some((routing_key, body)) = event {
        record_event(tx, &routing_key, &body, now)?;
    }
    run(tx, "DELETE FROM messages WHERE id = ?1", params![id])?;
    Ok(())
}

/// Appends an event, keeping the newest [`EVENTS_KEPT`].
fn record_event(
    tx: &rusqlite::Transaction<'_>,
    routing_key: &str,
    body: &[u8],
    now: i64,
) -> Result<(), StorageError> {
    run(
        tx,
        "INSERT INTO events (routing_key, body, recorded_at) VALUES (?1, ?2, ?3)",
        params![routing_key, body, now],
    )?;
    run(
        tx,
        "DELETE FROM events WHERE id <= (SELECT MAX(id) FROM events) - ?1",
        params![EVENTS_KEPT],
    )?;
    Ok(())
}

fn events(
    tx: &rusqlite::Transaction<'_>,
    limit: usize,
) -> Result<Vec<(String, Vec<u8>)>, StorageError> {
    let mut statement =
        tx.prepare_cached("SELECT routing_key, body FROM events ORDER BY id LIMIT ?1")?;
    let rows = statement.query_map(params![limit.min(i64::MAX as usize) as i64], |row| {
        Ok((row.get(0)?, row.get(1)?))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn claim(
    tx: &rusqlite::Transaction<'_>,
    limit: usize,
    now: i64,
    lease_ms: i64,
    next_token: &mut i64,
) -> Result<Vec<Claimed>, StorageError> {
    *next_token += 1;
    let token = *next_token;
    // The next ready messages in order: by the index on (lane, available_at, id), a claim
    // reads the leased messages ahead of them and its own, whatever the backlog behind.
    let mut statement = tx.prepare_cached(
        "UPDATE messages SET lease_until = ?1, lease_token = ?2, deliveries = deliveries + 1
         WHERE id IN (
             SELECT id FROM messages
             WHERE lane = 'work' AND available_at <= ?3 AND (lease_until IS NULL OR lease_until <= ?3)
             ORDER BY available_at, id LIMIT ?4)
         RETURNING id, message_id, body, attempts, reasons, deliveries, kind",
    )?;
    let rows = statement.query_map(params![now + lease_ms, token, now, limit as i64], |row| {
        let deliveries: i64 = row.get(5)?;
        Ok((
            Claimed {
                id: row.get(0)?,
                token,
                message_id: row.get(1)?,
                body: row.get(2)?,
                attempts: row.get::<_, i64>(3)?.max(0) as u32,
                reasons: decode_reasons(&row.get::<_, String>(4)?),
                redelivered: deliveries > 1,
                kind: Kind::parse(&row.get::<_, String>(6)?),
            },
            deliveries,
        ))
    })?;
    let mut claimed = Vec::with_capacity(limit);
    let mut exhausted = Vec::new();
    for row in rows {
        let (message, deliveries) = row?;
        if deliveries > DELIVERY_LIMIT {
            exhausted.push(message.id);
        } else {
            claimed.push(message);
        }
    }
    drop(statement);
    // A message delivered DELIVERY_LIMIT times without being settled (its workers crashed
    // or stalled past the lease each time) goes to the dead lane instead of out again, as
    // RabbitMQ's delivery limit does. Checked on the messages claimed, not over the lane:
    // a scan of the whole lane at every claim cost milliseconds under a backlog.
    for id in exhausted {
        run(
            tx,
            "UPDATE messages SET lane = 'dead', lease_until = NULL, lease_token = NULL,
                 deliveries = deliveries - 1,
                 reasons = json_insert(reasons, '$[#]',
                     'delivered ' || (deliveries - 1) || ' times without being settled')
             WHERE id = ?1",
            params![id],
        )?;
    }
    claimed.sort_by_key(|c| c.id);
    Ok(claimed)
}

fn dead_letters(
    tx: &rusqlite::Transaction<'_>,
    limit: usize,
) -> Result<Vec<StoredDeadLetter>, StorageError> {
    let mut statement = tx.prepare_cached(
        "SELECT id, message_id, body, attempts, reasons, kind FROM messages WHERE lane = 'dead' ORDER BY id LIMIT ?1",
    )?;
    let rows = statement.query_map(params![limit.min(i64::MAX as usize) as i64], |row| {
        Ok(StoredDeadLetter {
            id: row.get(0)?,
            message_id: row.get(1)?,
            body: row.get(2)?,
            attempts: row.get::<_, i64>(3)?.max(0) as u32,
            reasons: decode_reasons(&row.get::<_, String>(4)?),
            kind: Kind::parse(&row.get::<_, String>(5)?),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn settle_dead(
    tx: &rusqlite::Transaction<'_>,
    message_id: Option<&str>,
    replay: bool,
    now: i64,
) -> Result<usize, StorageError> {
    // One message id: its oldest dead letter; none: every dead letter (LIMIT -1).
    let selected = "SELECT id FROM messages WHERE lane = 'dead' AND (?1 IS NULL OR message_id = ?1)
                    ORDER BY id LIMIT CASE WHEN ?1 IS NULL THEN -1 ELSE 1 END";
    let n = if replay {
        tx.execute(
            &format!(
                "UPDATE messages SET lane = 'work', attempts = 0, available_at = ?2, deliveries = 0,
                     lease_until = NULL, lease_token = NULL
                 WHERE id IN ({selected})"
            ),
            params![message_id, now],
        )?
    } else {
        tx.execute(
            &format!("DELETE FROM messages WHERE id IN ({selected})"),
            params![message_id],
        )?
    };
    Ok(n)
}

fn encode_reasons(reasons: &[String]) -> String {
    serde_json::to_string(reasons).unwrap_or_else(|_| "[]".into())
}

fn decode_reasons(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_default()
}

/// Looks up whether a database exists in `dir` (for start-up messages).
pub fn exists(dir: &Path) -> bool {
    dir.join("queue.sqlite3").exists()
}

/// The embedded backend: the queue and the retry schedule it applies. Cheap to clone.
#[derive(Clone)]
pub struct Embedded {
    queue: EmbeddedQueue,
    topology: Topology,
}

impl Embedded {
    /// The queue itself (tests and tooling read its recorded events).
    pub fn queue(&self) -> &EmbeddedQueue {
        &self.queue
    }

    /// Opens the queue in `dir` (see [`EmbeddedQueue::open`]).
    pub fn open(
        dir: &Path,
        retry_delays: Vec<Duration>,
        lease: Duration,
    ) -> Result<Embedded, StorageError> {
        Ok(Embedded {
            queue: EmbeddedQueue::open(dir, lease)?,
            topology: Topology {
                prefix: "embedded".into(),
                retry_delays,
            },
        })
    }
}

#[async_trait]
impl Backend for Embedded {
    fn describe(&self) -> String {
        format!("embedded queue at `{}`", self.queue.path().display())
    }

    fn topology(&self) -> &Topology {
        &self.topology
    }

    fn is_connected(&self) -> bool {
        self.queue.is_writable()
    }

    fn is_embedded(&self) -> bool {
        true
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    async fn wait_connected(&self, stop: &CancellationToken) -> bool {
        !stop.is_cancelled()
    }

    async fn publish_work(
        &self,
        kind: Kind,
        message_id: &str,
        body: &[u8],
    ) -> Result<(), PublishError> {
        self.queue
            .publish(Lane::Work, kind, message_id, body, 0, &[], Duration::ZERO)
            .await?;
        Ok(())
    }

    async fn publish_event(
        &self,
        routing_key: &str,
        body: &[u8],
        _message_id: &str,
    ) -> Result<(), PublishError> {
        Ok(self.queue.record_event(routing_key, body).await?)
    }

    async fn consume(&self, prefetch: u16, stop: &CancellationToken) -> Option<Deliveries> {
        if stop.is_cancelled() {
            return None;
        }
        Some(Box::new(EmbeddedDeliveries {
            embedded: self.clone(),
            permits: Arc::new(Semaphore::new(usize::from(prefetch.max(1)))),
            buffer: std::collections::VecDeque::new(),
        }))
    }

    async fn work_depth(&self) -> Result<u64, QueueError> {
        Ok(self.queue.depth(Lane::Work).await?)
    }

    async fn dead_depth(&self) -> Result<u64, QueueError> {
        Ok(self.queue.depth(Lane::Dead).await?)
    }

    async fn oldest_pending_ms(&self) -> Result<Option<i64>, QueueError> {
        Ok(self.queue.oldest_enqueued_ms().await?)
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        Ok(self
            .queue
            .dead_letters(limit)
            .await?
            .into_iter()
            .map(|stored| DeadLetter {
                message_id: stored.message_id,
                kind: stored.kind,
                attempts: stored.attempts,
                reasons: stored.reasons,
                body: stored.body,
            })
            .collect())
    }

    async fn settle_dead_letters(
        &self,
        select: Select<'_>,
        replay: bool,
        progress: Progress<'_>,
    ) -> Result<usize, QueueError> {
        let id = match select {
            Select::One(id) => Some(id),
            Select::All => None,
        };
        let done = self.queue.settle_dead(id, replay).await?;
        progress(done, done);
        Ok(done)
    }

    async fn delete_topology(&self) -> Result<(), QueueError> {
        Ok(self.queue.purge_everything().await?)
    }

    async fn claim(&self, key: &str, ttl: Duration) -> Result<Option<ClaimGuard>, QueueError> {
        let token = self.queue.lock(key, ttl).await?;
        Ok(token.map(|token| {
            Box::new(EmbeddedClaim {
                queue: self.queue.clone(),
                key: key.to_owned(),
                token,
            }) as ClaimGuard
        }))
    }
}

/// A claim held as a row of the `claims` table; it expires at its time.
struct EmbeddedClaim {
    queue: EmbeddedQueue,
    key: String,
    token: i64,
}

#[async_trait]
impl Claim for EmbeddedClaim {
    async fn release(self: Box<Self>) {
        if let Err(error) = self.queue.unlock(&self.key, self.token).await {
            tracing::warn!(error = %error, "claim not released; it expires");
        }
    }
}

/// A consumer of the embedded queue: leases messages as prefetch permits allow.
struct EmbeddedDeliveries {
    embedded: Embedded,
    permits: Arc<Semaphore>,
    buffer: std::collections::VecDeque<(Claimed, OwnedSemaphorePermit)>,
}

/// How often an idle embedded consumer looks for work published by other processes.
const EMBEDDED_POLL: Duration = Duration::from_millis(250);

#[async_trait]
impl Consumer for EmbeddedDeliveries {
    async fn next(&mut self) -> Option<Delivery> {
        loop {
            if let Some((claimed, permit)) = self.buffer.pop_front() {
                return Some(EmbeddedSettle::delivery(
                    self.embedded.clone(),
                    claimed,
                    permit,
                ));
            }
            let first = self.permits.clone().acquire_owned().await.ok()?;
            let mut permits = vec![first];
            while permits.len() < 64 {
                match self.permits.clone().try_acquire_owned() {
                    Ok(permit) => permits.push(permit),
                    Err(_) => break,
                }
            }
            match self.embedded.queue.claim(permits.len()).await {
                Ok(claimed) if !claimed.is_empty() => {
                    // Unused permits are released as the rest of `permits` drops.
                    self.buffer.extend(claimed.into_iter().zip(permits));
                }
                Ok(_) => {
                    drop(permits);
                    self.embedded.queue.wait_for_work(EMBEDDED_POLL).await;
                }
                Err(error) => {
                    tracing::warn!(error = %error, "cannot read the embedded queue");
                    drop(permits);
                    tokio::time::sleep(EMBEDDED_POLL).await;
                }
            }
        }
    }
}

/// One leased message, as the embedded queue settles it.
struct EmbeddedSettle {
    embedded: Embedded,
    claimed: Claimed,
    /// Recorded in the ack's transaction.
    event: Option<Event>,
    // Held until settled: it bounds the deliveries in flight.
    _permit: OwnedSemaphorePermit,
}

impl EmbeddedSettle {
    fn delivery(embedded: Embedded, claimed: Claimed, permit: OwnedSemaphorePermit) -> Delivery {
        let topology = embedded.topology.clone();
        Delivery::new(
            claimed.kind,
            claimed.body.clone(),
            claimed.attempts,
            claimed.reasons.clone(),
            claimed.redelivered,
            claimed.message_id.clone(),
            topology,
            Box::new(EmbeddedSettle {
                embedded,
                claimed,
                event: None,
                _permit: permit,
            }),
        )
    }
}

#[async_trait]
impl Settle for EmbeddedSettle {
    /// Kept until the ack, which records it in its own transaction.
    async fn stage_event(&mut self, event: Event) -> Result<(), QueueError> {
        self.event = Some(event);
        Ok(())
    }

    async fn ack(self: Box<Self>) -> Result<(), QueueError> {
        let queue = &self.embedded.queue;
        match &self.event {
            Some(event) => {
                queue
                    .ack_with_event(
                        self.claimed.id,
                        self.claimed.token,
                        &event.routing_key,
                        &event.body,
                    )
                    .await?;
            }
            None => queue.ack(self.claimed.id, self.claimed.token).await?,
        }
        Ok(())
    }

    /// The row goes back to the work lane, visible at once, its history unchanged.
    async fn release(self: Box<Self>, attempts: u32, reasons: &[String]) -> Result<(), QueueError> {
        Ok(self
            .embedded
            .queue
            .reschedule(&self.claimed, Lane::Work, attempts, reasons, Duration::ZERO)
            .await?)
    }

    /// The row itself moves: to the dead lane, or back to the work lane visible after
    /// the wait, in one transaction.
    async fn move_to(
        self: Box<Self>,
        to: Destination,
        attempts: u32,
        reasons: &[String],
    ) -> Result<(), QueueError> {
        let (lane, wait) = match to {
            Destination::Retry { wait, .. } => (Lane::Work, wait),
            Destination::Dead => (Lane::Dead, Duration::ZERO),
        };
        Ok(self
            .embedded
            .queue
            .reschedule(&self.claimed, lane, attempts, reasons, wait)
            .await?)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn many_processes_opening_a_new_folder_at_once_all_succeed() {
        for _round in 0..4 {
            let dir = temp();
            let start = Arc::new(std::sync::Barrier::new(8));
            let openers: Vec<_> = (0..8)
                .map(|_| {
                    let (dir, start) = (dir.clone(), start.clone());
                    std::thread::spawn(move || {
                        start.wait();
                        EmbeddedQueue::open(&dir, Duration::from_secs(5)).map(|_| ())
                    })
                })
                .collect();
            for opener in openers {
                opener.join().expect("join").expect("open");
            }
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    use super::*;

    /// An allocation message with an empty body, ready at once.
    async fn publish_allocation(queue: &EmbeddedQueue, id: &str) -> Result<(), StorageError> {
        queue
            .publish(
                Lane::Work,
                Kind::Allocation,
                id,
                b"{}",
                0,
                &[],
                Duration::ZERO,
            )
            .await
    }

    fn temp() -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("embedded-queue-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[tokio::test]
    async fn a_database_from_before_kinds_gets_each_message_s_kind_once() {
        let dir = temp();
        {
            let old = Connection::open(dir.join("queue.sqlite3")).expect("open");
            old.execute_batch(
                "CREATE TABLE messages (
                     id INTEGER PRIMARY KEY AUTOINCREMENT, lane TEXT NOT NULL,
                     message_id TEXT NOT NULL, body BLOB NOT NULL,
                     attempts INTEGER NOT NULL DEFAULT 0, reasons TEXT NOT NULL DEFAULT '[]',
                     available_at INTEGER NOT NULL, lease_until INTEGER, lease_token INTEGER,
                     deliveries INTEGER NOT NULL DEFAULT 0, enqueued_at INTEGER NOT NULL);
                 INSERT INTO messages (lane, message_id, body, available_at, enqueued_at)
                   VALUES ('work', 'n1', CAST('{\"v\":\"1\",\"id\":\"n1\"}' AS BLOB), 0, 0),
                          ('work', 'u1', CAST('{\"backend_id\":\"b\",\"amount\":\"1\"}' AS BLOB), 0, 0);",
            )
            .expect("old schema");
        }
        for _ in 0..2 {
            // Opening twice migrates once and keeps the kinds.
            let queue = EmbeddedQueue::open(&dir, Duration::from_secs(60)).expect("open");
            let claimed = queue.claim(10).await.expect("claim");
            let kinds: Vec<(String, Option<Kind>)> = claimed
                .iter()
                .map(|c| (c.message_id.clone(), c.kind))
                .collect();
            assert_eq!(
                kinds,
                vec![
                    ("n1".to_owned(), Some(Kind::Allocation)),
                    ("u1".to_owned(), Some(Kind::Usage))
                ]
            );
            for c in &claimed {
                queue
                    .reschedule(c, Lane::Work, 0, &[], Duration::ZERO)
                    .await
                    .expect("release");
            }
        }
    }

    #[tokio::test]
    async fn a_message_delivered_the_limit_times_unsettled_goes_to_the_dead_lane() {
        let dir = temp();
        let queue = EmbeddedQueue::open(&dir, Duration::from_secs(60)).expect("open");
        for id in ["at-limit", "below-limit", "fresh"] {
            publish_allocation(&queue, id).await.expect("publish");
        }
        // As if workers had taken them and died before settling, lease after lease.
        let db = Connection::open(dir.join("queue.sqlite3")).expect("open");
        db.execute(
            "UPDATE messages SET deliveries = ?1, lease_until = 1, lease_token = 7
             WHERE message_id = 'at-limit'",
            params![DELIVERY_LIMIT],
        )
        .expect("update");
        db.execute(
            "UPDATE messages SET deliveries = ?1, lease_until = 1, lease_token = 7
             WHERE message_id = 'below-limit'",
            params![DELIVERY_LIMIT - 1],
        )
        .expect("update");
        let claimed: Vec<(String, bool)> = queue
            .claim(10)
            .await
            .expect("claim")
            .into_iter()
            .map(|c| (c.message_id, c.redelivered))
            .collect();
        assert_eq!(
            claimed,
            vec![
                ("below-limit".to_owned(), true),
                ("fresh".to_owned(), false)
            ]
        );
        assert_eq!(queue.depth(Lane::Dead).await.expect("depth"), 1);
        let dead = queue.dead_letters(10).await.expect("dead letters");
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].message_id, "at-limit");
        assert_eq!(
            dead[0].reasons.last().map(String::as_str),
            Some(format!("delivered {DELIVERY_LIMIT} times without being settled").as_str())
        );
        let deliveries: i64 = db
            .query_row(
                "SELECT deliveries FROM messages WHERE message_id = 'at-limit'",
                [],
                |row| row.get(0),
            )
            .expect("read");
        assert_eq!(deliveries, DELIVERY_LIMIT);
    }

    #[tokio::test]
    async fn a_published_message_is_claimed_once_and_acked() {
        let dir = temp();
        let queue = EmbeddedQueue::open(&dir, Duration::from_secs(60)).expect("open");
        queue
            .publish(
                Lane::Work,
                Kind::Allocation,
                "m1",
                b"body",
                0,
                &[],
                Duration::ZERO,
            )
            .await
            .expect("publish");
        let claimed = queue.claim(10).await.expect("claim");
        assert_eq!(claimed.len(), 1);
        assert_eq!(
            (claimed[0].message_id.as_str(), claimed[0].body.as_slice()),
            ("m1", &b"body"[..])
        );
        assert!(!claimed[0].redelivered);
        assert!(
            queue.claim(10).await.expect("claim").is_empty(),
            "leased messages are invisible"
        );
        queue
            .ack(claimed[0].id, claimed[0].token)
            .await
            .expect("ack");
        assert_eq!(queue.depth(Lane::Work).await.expect("depth"), 0);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn an_event_is_recorded_with_the_ack_or_not_at_all() {
        let dir = temp();
        let queue = EmbeddedQueue::open(&dir, Duration::from_millis(50)).expect("open");
        for id in ["m1", "m2"] {
            queue
                .publish(
                    Lane::Work,
                    Kind::Allocation,
                    id,
                    b"x",
                    0,
                    &[],
                    Duration::ZERO,
                )
                .await
                .expect("publish");
        }
        let claimed = queue.claim(2).await.expect("claim");
        queue
            .ack_with_event(
                claimed[0].id,
                claimed[0].token,
                "allocation.approved",
                b"e1",
            )
            .await
            .expect("ack with event");
        // The second lease runs out: its ack is refused and records nothing.
        let mut again = Vec::new();
        while again.is_empty() {
            queue.wait_for_work(Duration::from_millis(20)).await;
            again = queue.claim(1).await.expect("claim");
        }
        assert!(matches!(
            queue
                .ack_with_event(
                    claimed[1].id,
                    claimed[1].token,
                    "allocation.approved",
                    b"e2"
                )
                .await,
            Err(StorageError::LeaseLost)
        ));
        let events = queue.events(10).await.expect("events");
        assert_eq!(
            events,
            vec![("allocation.approved".to_owned(), b"e1".to_vec())]
        );
        assert_eq!(queue.depth(Lane::Work).await.expect("depth"), 1);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_claim_excludes_other_handles_until_released_or_expired() {
        let dir = temp();
        let one = EmbeddedQueue::open(&dir, Duration::from_secs(60)).expect("open");
        let two = EmbeddedQueue::open(&dir, Duration::from_secs(60)).expect("open again");
        let token = one
            .lock("r", Duration::from_secs(60))
            .await
            .expect("lock")
            .expect("free");
        assert_eq!(
            two.lock("r", Duration::from_secs(60)).await.expect("lock"),
            None
        );
        assert!(
            two.lock("other", Duration::from_secs(60))
                .await
                .expect("lock")
                .is_some()
        );
        one.unlock("r", token).await.expect("unlock");
        let short = two
            .lock("r", Duration::from_millis(1))
            .await
            .expect("lock")
            .expect("released");
        assert_ne!(short, token);
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(
            one.lock("r", Duration::from_secs(60))
                .await
                .expect("lock")
                .is_some(),
            "expired"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn an_expired_lease_redelivers_and_the_old_lease_cannot_settle() {
        let dir = temp();
        let queue = EmbeddedQueue::open(&dir, Duration::from_millis(50)).expect("open");
        queue
            .publish(
                Lane::Work,
                Kind::Allocation,
                "m1",
                b"x",
                0,
                &[],
                Duration::ZERO,
            )
            .await
            .expect("publish");
        let first = queue.claim(1).await.expect("claim").remove(0);
        queue.wait_for_work(Duration::from_secs(2)).await;
        let mut second = queue.claim(1).await.expect("claim");
        while second.is_empty() {
            queue.wait_for_work(Duration::from_millis(20)).await;
            second = queue.claim(1).await.expect("claim");
        }
        let second = second.remove(0);
        assert!(second.redelivered);
        assert!(matches!(
            queue.ack(first.id, first.token).await,
            Err(StorageError::LeaseLost)
        ));
        queue
            .ack(second.id, second.token)
            .await
            .expect("the current lease settles");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn messages_survive_reopening_and_dead_letters_replay() {
        let dir = temp();
        {
            let queue = EmbeddedQueue::open(&dir, Duration::from_secs(60)).expect("open");
            queue
                .publish(
                    Lane::Work,
                    Kind::Allocation,
                    "m1",
                    b"x",
                    0,
                    &[],
                    Duration::ZERO,
                )
                .await
                .expect("publish");
            let claimed = queue.claim(1).await.expect("claim").remove(0);
            queue
                .reschedule(
                    &claimed,
                    Lane::Dead,
                    3,
                    &["a".into(), "b".into(), "c".into()],
                    Duration::ZERO,
                )
                .await
                .expect("bury");
        }
        let queue = EmbeddedQueue::open(&dir, Duration::from_secs(60)).expect("reopen");
        let dead = queue.dead_letters(10).await.expect("dead");
        assert_eq!(dead.len(), 1);
        assert_eq!((dead[0].attempts, dead[0].reasons.len()), (3, 3));
        assert_eq!(
            queue.settle_dead(Some("nope"), true).await.expect("replay"),
            0
        );
        assert_eq!(
            queue.settle_dead(Some("m1"), true).await.expect("replay"),
            1
        );
        let claimed = queue.claim(1).await.expect("claim");
        assert_eq!((claimed.len(), claimed[0].attempts), (1, 0));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_delayed_message_waits_for_its_time() {
        let dir = temp();
        let queue = EmbeddedQueue::open(&dir, Duration::from_secs(60)).expect("open");
        queue
            .publish(
                Lane::Work,
                Kind::Allocation,
                "later",
                b"x",
                1,
                &[],
                Duration::from_millis(80),
            )
            .await
            .expect("publish");
        assert!(queue.claim(1).await.expect("claim").is_empty());
        let started = std::time::Instant::now();
        let mut claimed = Vec::new();
        while claimed.is_empty() {
            queue.wait_for_work(Duration::from_secs(2)).await;
            claimed = queue.claim(1).await.expect("claim");
        }
        assert!(
            started.elapsed() >= Duration::from_millis(60),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(claimed[0].attempts, 1);
        let _ = std::fs::remove_dir_all(dir);
    }

    fn publish_op(
        message_id: &str,
        body: Vec<u8>,
    ) -> (Op, oneshot::Receiver<Result<(), StorageError>>) {
        let (reply, answer) = oneshot::channel();
        let op = Op::Publish {
            lane: Lane::Work,
            kind: Kind::Allocation,
            message_id: message_id.to_owned(),
            body,
            attempts: 0,
            reasons: Vec::new(),
            available_at: 0,
            reply,
        };
        (op, answer)
    }

    #[test]
    fn a_full_database_is_unwritable_until_a_probe_commits() {
        use std::sync::atomic::Ordering;
        let dir = temp();
        let path = dir.join("queue.sqlite3");
        let mut connection = open_initialized(&path).expect("open");
        let health = Arc::new(Health {
            writable: std::sync::atomic::AtomicBool::new(true),
            replaced: std::sync::atomic::AtomicBool::new(false),
        });
        let mut writer = Writer {
            health: health.clone(),
            files: Files::new(&path),
            lease_ms: 1000,
        };
        let mut token = 0;
        // No page more than the database has: a write fails as on a full disk.
        let pages: i64 = connection
            .query_row("PRAGMA page_count", [], |row| row.get(0))
            .expect("page count");
        connection
            .pragma_update(None, "max_page_count", pages)
            .expect("limit");
        let (op, answer) = publish_op("m1", vec![7; 256 * 1024]);
        writer.apply_batch(&mut connection, vec![op], &mut token);
        assert!(answer.blocking_recv().expect("answered").is_err());
        assert!(!health.writable.load(Ordering::Acquire));
        // Space again: the next probe commits.
        connection
            .pragma_update(None, "max_page_count", 1_000_000)
            .expect("limit");
        writer.check(&connection);
        assert!(health.writable.load(Ordering::Acquire));
        let (op, answer) = publish_op("m2", vec![7; 1024]);
        writer.apply_batch(&mut connection, vec![op], &mut token);
        assert!(answer.blocking_recv().expect("answered").is_ok());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_replaced_database_refuses_publishes_for_good() {
        let dir = temp();
        let queue = EmbeddedQueue::open(&dir, Duration::from_secs(5)).expect("open");
        let publish = |id: &'static str| {
            let queue = queue.clone();
            async move { publish_allocation(&queue, id).await }
        };
        publish("m1").await.expect("published");
        assert!(queue.is_writable());
        let path = dir.join("queue.sqlite3");
        std::fs::copy(&path, dir.join("copy")).expect("copy");
        std::fs::rename(dir.join("copy"), &path).expect("replace");
        assert!(matches!(
            publish("m2").await,
            Err(StorageError::Replaced(_))
        ));
        assert!(!queue.is_writable());
        // Reads and settlements of what it holds go on.
        assert_eq!(queue.depth(Lane::Work).await.expect("depth"), 1);
        assert!(publish("m3").await.is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
