//! One HTTP/1 connection of a listener: hyper's server, plus the one thing hyper cannot be
//! told to do — answer the requests it refuses itself in the receiver's problem shape.
//!
//! hyper refuses a request head it cannot parse without calling the service: a malformed
//! request line or header, bad framing headers (an invalid or twice-different
//! `Content-Length`, `Transfer-Encoding` on HTTP/1.0), more than [`MAX_HEADER_LINES`]
//! header lines, a head over [`MAX_HEAD_BYTES`], a request target over [`MAX_URI_BYTES`].
//! It writes a bare `400`/`431`/`414` with no body and closes the connection, and
//! `http1::Builder` has no hook for that answer. So [`serve_connection`] gives hyper a
//! wrapped IO (`Guarded`) and a wrapped service that share a `Gate`:
//!
//! - the service sets the gate to `Serving` when hyper hands it a request (before any byte
//!   of its answer is written), and to `Draining` when hyper drops the answer's body (all
//!   of the answer is then in hyper's write buffer or already written);
//! - the IO sets it back to `Idle` when a flush completes while `Draining` (hyper writes its
//!   whole buffer before it flushes the IO, so the answer has been written).
//!
//! Between answers hyper writes nothing but such an automatic refusal (a `100 Continue` is
//! written only while a request is being served), so a write while the gate is `Idle` is
//! one. Its status line is read, its bytes are dropped, and a problem answer
//! (`application/problem+json`, `urn:puhuri-approver:problem:<cause>`, `connection: close`)
//! is written in their place; hyper closes the connection after it. What is written is the
//! caller's (`Refuse`): the receiver writes its `Problem` for the status, so this module
//! knows neither axum nor the receiver.
//!
//! Refusals the handler can make are left to it: hyper's limits are set above the
//! handler's (at most 64 headers and 16 KiB of names and values, `receiver::MAX_HEADERS`
//! and `receiver::MAX_HEADER_BYTES`), so only what hyper must refuse on its own is answered
//! here. A broken chunked body is found after the handler was called: it reads the body and
//! answers `400 unreadable-body` itself.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::{Request, Response};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most header lines hyper parses (hyper's default); more are refused here with `431`.
/// The handler itself refuses more than 64.
pub const MAX_HEADER_LINES: usize = 100;
/// The longest request target hyper accepts (fixed in hyper: `u16::MAX - 1`); longer ones
/// are refused here with `414`.
pub const MAX_URI_BYTES: usize = 65_534;
/// The most bytes of request line and headers together: room for the longest request
/// target (64 KiB) plus the handler's 16 KiB of header names and values. Longer heads are
/// refused here with `431`.
pub const MAX_HEAD_BYTES: usize = 80 * 1024;
/// The largest read buffer of a connection (the head and the start of the body).
const MAX_BUFFER_BYTES: usize = MAX_HEAD_BYTES + 8 * 1024;

/// The whole answer (status line, headers, body) written in place of hyper's own refusal
/// with the given status; it should close the connection (`connection: close`). Called
/// once per refusal, so it may count and log it.
pub type Refuse = Arc<dyn Fn(u16) -> Vec<u8> + Send + Sync>;

/// Serves `service` on one connection until it ends, or until `stop` fires (then the
/// request in flight is finished and no further one accepted).
///
/// INVARIANT: a client gets at most `header_timeout` to send the request line and headers
/// (slow-header clients cannot hold connections open), at most [`MAX_HEAD_BYTES`] of them;
/// the handler's own timeout then covers the body. hyper's own refusals are answered by
/// `refuse`, never with hyper's bare status.
pub async fn serve<I, S, B>(
    io: I,
    service: S,
    refuse: Refuse,
    header_timeout: Duration,
    stop: tokio_util::sync::CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    use hyper_util::rt::{TokioIo, TokioTimer};

    let gate = Arc::new(Gate::default());
    let service = {
        let gate = gate.clone();
        hyper::service::service_fn(move |request| {
            gate.set(SERVING);
            let call = service.call(request);
            let gate = gate.clone();
            async move {
                let response = call.await?;
                Ok::<_, Infallible>(response.map(|inner| GatedBody { inner, gate }))
            }
        })
    };
    let io = Guarded {
        io,
        gate,
        answer: Answer::Pass,
        refuse,
    };
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_headers(MAX_HEADER_LINES)
        .max_header_size(MAX_HEAD_BYTES)
        .max_buf_size(MAX_BUFFER_BYTES)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(error = %error, "connection ended with an error");
            }
        }
        () = stop.cancelled() => {
            // Finish the request in flight, accept no further ones on this connection.
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

/// No request is being answered: whatever hyper writes now is its own refusal.
const IDLE: u8 = 0;
/// hyper handed the service a request; its answer is being produced or written.
const SERVING: u8 = 1;
/// The answer's body was dropped by hyper; the answer is written by the next flush.
const DRAINING: u8 = 2;

/// Whether a request is being answered on the connection (see the module docs).
#[derive(Debug, Default)]
struct Gate(AtomicU8);

impl Gate {
    fn set(&self, phase: u8) {
        self.0.store(phase, Ordering::SeqCst);
    }

    fn advance(&self, from: u8, to: u8) {
        let _ = self
            .0
            .compare_exchange(from, to, Ordering::SeqCst, Ordering::SeqCst);
    }

    fn is_idle(&self) -> bool {
        self.0.load(Ordering::SeqCst) == IDLE
    }
}

/// An answer's body, which tells the gate when hyper is done with it.
struct GatedBody<B> {
    inner: B,
    gate: Arc<Gate>,
}

impl<B> Drop for GatedBody<B> {
    fn drop(&mut self) {
        self.gate.advance(SERVING, DRAINING);
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for GatedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What becomes of hyper's writes.
enum Answer {
    /// Written as they come (an answer of the service's).
    Pass,
    /// hyper's own refusal, held until its status line is complete.
    Collecting(Vec<u8>),
    /// What is written instead, and how much of it is. `append`: hyper's further writes
    /// are added (the bytes were not a refusal after all, and pass unchanged).
    Writing {
        bytes: Vec<u8>,
        written: usize,
        append: bool,
    },
}

/// The connection's IO, replacing hyper's own refusals (see the module docs).
struct Guarded<I> {
    io: I,
    gate: Arc<Gate>,
    answer: Answer,
    refuse: Refuse,
}

/// The status of a response head, once its status line is complete; `Err` when the bytes
/// are not a response head.
fn status_of(head: &[u8]) -> Option<Result<u16, ()>> {
    const PREFIX: &[u8] = b"HTTP/1.";
    let known = head.len().min(PREFIX.len());
    if head[..known] != PREFIX[..known] {
        return Some(Err(()));
    }
    // `HTTP/1.1 431 ` (13 bytes)
    if head.len() < 13 {
        return None;
    }
    let code = std::str::from_utf8(&head[9..12]).ok();
    Some(code.and_then(|code| code.parse().ok()).ok_or(()))
}

impl<I> Guarded<I> {
    /// Whether hyper's writes are to be taken over rather than written.
    fn intercepting(&self) -> bool {
        !matches!(self.answer, Answer::Pass) || self.gate.is_idle()
    }

    /// Takes hyper's bytes in (its refusal), deciding what to write once the status line
    /// is complete.
    fn take(&mut self, bytes: &[u8]) {
        match &mut self.answer {
            Answer::Pass => self.answer = Answer::Collecting(bytes.to_vec()),
            Answer::Collecting(head) => head.extend_from_slice(bytes),
            Answer::Writing {
                bytes: out,
                append: true,
                ..
            } => {
                out.extend_from_slice(bytes);
                return;
            }
            Answer::Writing { append: false, .. } => return,
        }
        let Answer::Collecting(head) = &mut self.answer else {
            return;
        };
        match status_of(head) {
            None => {}
            Some(Ok(status)) => {
                self.answer = Answer::Writing {
                    bytes: (self.refuse)(status),
                    written: 0,
                    append: false,
                };
            }
            Some(Err(())) => {
                self.answer = Answer::Writing {
                    bytes: std::mem::take(head),
                    written: 0,
                    append: true,
                };
            }
        }
    }
}

impl<I: AsyncWrite + Unpin> Guarded<I> {
    /// Writes what was decided in place of hyper's refusal.
    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Answer::Collecting(head) = &mut self.answer {
            // The status line never completed: the bytes pass unchanged.
            self.answer = Answer::Writing {
                bytes: std::mem::take(head),
                written: 0,
                append: true,
            };
        }
        if let Answer::Writing {
            bytes,
            written,
            append,
        } = &mut self.answer
        {
            while *written < bytes.len() {
                let n = ready!(Pin::new(&mut self.io).poll_write(cx, &bytes[*written..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                *written += n;
            }
            if *append {
                // Bytes that passed unchanged are written: back to passing.
                self.answer = Answer::Pass;
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// The most bytes of a refused request read and dropped before the connection closes.
const MAX_DRAIN_BYTES: usize = 1024 * 1024;

impl<I: AsyncRead + Unpin> Guarded<I> {
    /// Reads and drops what already arrived of a refused request, so that closing the
    /// connection sends a FIN after the answer rather than a reset, which could destroy the
    /// answer before the client reads it. Never waits for more.
    fn drain(&mut self, cx: &mut Context<'_>) {
        let mut buffer = [0u8; 8192];
        let mut drained = 0;
        while drained < MAX_DRAIN_BYTES {
            let mut read = ReadBuf::new(&mut buffer);
            match Pin::new(&mut self.io).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) if !read.filled().is_empty() => drained += read.filled().len(),
                _ => break,
            }
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Guarded<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Guarded<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !this.intercepting() {
            return Pin::new(&mut this.io).poll_write(cx, buf);
        }
        this.take(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !this.intercepting() {
            return Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        }
        let mut taken = 0;
        for buf in bufs {
            this.take(buf);
            taken += buf.len();
        }
        Poll::Ready(Ok(taken))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_answer(cx))?;
        ready!(Pin::new(&mut this.io).poll_flush(cx))?;
        // hyper flushes the IO only once its own buffer is written: an answer whose body
        // it already dropped is now complete.
        this.gate.advance(DRAINING, IDLE);
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_answer(cx))?;
        if matches!(this.answer, Answer::Writing { append: false, .. }) {
            this.drain(cx);
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Serves a `200 ok` service on one end of a pipe; returns the other end and the count
    /// of refusals answered.
    fn served() -> (tokio::io::DuplexStream, Arc<AtomicUsize>) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let refusals = Arc::new(AtomicUsize::new(0));
        let counted = refusals.clone();
        let refuse: Refuse = Arc::new(move |status| {
            counted.fetch_add(1, Ordering::SeqCst);
            format!(
                "HTTP/1.1 {status} Refused\r\ncontent-length: 7\r\nconnection: close\r\n\r\nrefused"
            )
            .into_bytes()
        });
        let service = hyper::service::service_fn(|_request| async {
            Ok::<_, Infallible>(Response::new(axum::body::Body::from("ok")))
        });
        tokio::spawn(serve(
            server,
            service,
            refuse,
            Duration::from_secs(5),
            tokio_util::sync::CancellationToken::new(),
        ));
        (client, refusals)
    }

    async fn read_until(client: &mut tokio::io::DuplexStream, end: &[u8]) -> String {
        let mut bytes = Vec::new();
        let mut buffer = [0u8; 1024];
        while !bytes.ends_with(end) {
            let n = client.read(&mut buffer).await.expect("read");
            assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&bytes));
            bytes.extend_from_slice(&buffer[..n]);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[tokio::test]
    async fn hypers_own_refusal_is_replaced() {
        let (mut client, refusals) = served();
        client
            .write_all(b"GET / HTTP/1.1 and more\r\n\r\n")
            .await
            .expect("write");
        let answer = read_until(&mut client, b"refused").await;
        assert!(answer.starts_with("HTTP/1.1 400 Refused\r\n"), "{answer}");
        assert_eq!(refusals.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn answers_pass_and_a_later_refusal_on_the_connection_is_replaced() {
        let (mut client, refusals) = served();
        for _ in 0..2 {
            client
                .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .expect("write");
            let answer = read_until(&mut client, b"ok").await;
            assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        }
        let extra: String = (0..MAX_HEADER_LINES + 1)
            .map(|i| format!("x-{i}: 1\r\n"))
            .collect();
        client
            .write_all(format!("GET / HTTP/1.1\r\n{extra}\r\n").as_bytes())
            .await
            .expect("write");
        let answer = read_until(&mut client, b"refused").await;
        assert!(answer.starts_with("HTTP/1.1 431 Refused\r\n"), "{answer}");
        assert_eq!(refusals.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn reads_the_status_of_hypers_refusals() {
        assert_eq!(status_of(b"HTTP/1.1 431 Request Header"), Some(Ok(431)));
        assert_eq!(status_of(b"HTTP/1.1 4"), None);
        assert_eq!(status_of(b"HT"), None);
        assert_eq!(status_of(b"{\"x\""), Some(Err(())));
        assert_eq!(status_of(b"HTTP/1.1 abc Nope"), Some(Err(())));
    }
}
