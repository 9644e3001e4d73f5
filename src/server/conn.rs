//! Per-connection bounds: the idle, header-read and response-send clocks of one proxy
//! connection, and the raw request head kept for the framing check.
//!
//! hyper 1.x has one timer for both waits: its `header_read_timeout` starts as soon as hyper
//! waits for a request head, so it also closes keep-alive connections that are merely idle;
//! and hyper-util's protocol detection (`auto`) reads the first bytes with no timer at all. The
//! clock here keeps the two apart, as Go and Envoy do: a connection with no request in progress
//! may stay `idle_timeout` without sending anything, and once the first byte of a request head
//! arrives, the head must be complete within `header_read_timeout`.
//!
//! A response must be sent whole within `response_send_timeout` of being handed to hyper. A
//! request holds its in-flight permit until then, and a client that does not read (over h2, one
//! that never opens its flow-control window; over HTTP/1, one that leaves the socket full) would
//! otherwise hold it for as long as it keeps the connection open. hyper does not poll a response
//! body that it cannot send, so the clock, not the body, keeps this deadline.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::framing;

/// The HTTP/2 connection preface (RFC 9113 §3.4): a connection that starts with it is h2.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A request head kept for the framing check is at most this long; a longer one is not kept
/// (and a chunked request with it is refused as unverifiable).
const MAX_CAPTURED_HEAD: usize = 64 * 1024;

/// Why the clock closed a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expired {
    /// No request in progress and no byte of a new one for `idle_timeout`.
    Idle,
    /// A request head was started but not finished within `header_read_timeout`.
    Header,
    /// A response was not sent whole within `response_send_timeout`.
    Send,
}

impl Expired {
    /// The `kind` label of `hubgate_connection_errors_total`.
    pub fn kind(self) -> &'static str {
        match self {
            Expired::Idle => "idle_timeout",
            Expired::Header => "header_timeout",
            Expired::Send => "send_timeout",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for the first byte of a request head, since then.
    Idle(Instant),
    /// Reading a request head whose first byte came then.
    Head(Instant),
    /// At least one request is being handled or answered.
    Busy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    Unknown,
    Http1,
    Http2,
}

enum Capture {
    /// Keeping the bytes of the next request head as they arrive.
    Reading(Vec<u8>),
    /// A whole head, waiting for its request to start.
    Complete(Bytes),
    /// Not keeping: a request is in progress, the head was too long, or the connection is h2.
    Off,
}

struct State {
    phase: Phase,
    protocol: Protocol,
    in_flight: usize,
    /// The responses handed to hyper and not yet sent whole: request id, and since when.
    sending: Vec<(u64, Instant)>,
    /// The id of the next request.
    next_request: u64,
    capture: Capture,
    /// Bumped on every phase change, so a waiting clock knows its deadline moved.
    version: u64,
}

/// The clock of one connection, shared by its IO (bytes read), its service (requests started
/// and answered) and the task that serves it (which closes the connection when it expires).
pub struct Clock {
    state: Mutex<State>,
    changed: Notify,
    header_timeout: Duration,
    idle_timeout: Duration,
    send_timeout: Duration,
}

impl Clock {
    pub fn new(
        header_timeout: Duration,
        idle_timeout: Duration,
        send_timeout: Duration,
    ) -> Arc<Clock> {
        Arc::new(Clock {
            state: Mutex::new(State {
                phase: Phase::Idle(Instant::now()),
                protocol: Protocol::Unknown,
                in_flight: 0,
                sending: Vec::new(),
                next_request: 0,
                capture: Capture::Reading(Vec::new()),
                version: 0,
            }),
            changed: Notify::new(),
            header_timeout,
            idle_timeout,
            send_timeout,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent between statements; a panic elsewhere cannot break it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_phase(&self, state: &mut State, phase: Phase) {
        state.phase = phase;
        self.moved(state);
    }

    /// A deadline may have moved: a waiting clock must look again.
    fn moved(&self, state: &mut State) {
        state.version += 1;
        self.changed.notify_one();
    }

    /// Bytes came off the socket.
    fn received(&self, bytes: &[u8]) {
        let mut guard = self.lock();
        let s = &mut *guard;
        // Where the search for the end of the head resumes: the bytes kept before this read.
        let mut searched = 0;
        if let Capture::Reading(buf) = &mut s.capture {
            searched = buf.len();
            let room = MAX_CAPTURED_HEAD.saturating_sub(buf.len());
            buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
            if s.protocol == Protocol::Unknown {
                let n = buf.len().min(H2_PREFACE.len());
                if buf[..n] != H2_PREFACE[..n] {
                    s.protocol = Protocol::Http1;
                } else if n == H2_PREFACE.len() {
                    s.protocol = Protocol::Http2;
                }
            }
        }
        if s.protocol == Protocol::Http2 {
            // h2 frames (settings, pings, window updates) are not request heads, and hyper
            // reads h2 headers whole: only the idle clock applies.
            s.capture = Capture::Off;
            if let Phase::Head(_) = s.phase {
                self.set_phase(s, Phase::Idle(Instant::now()));
            }
            return;
        }
        // A request head has begun (or may have: the bytes so far could still be the h2
        // preface, which is bounded the same way).
        if let Phase::Idle(_) = s.phase {
            self.set_phase(s, Phase::Head(Instant::now()));
        }
        if let Capture::Reading(buf) = &mut s.capture {
            if let Some(end) = framing::head_end(buf, searched) {
                buf.truncate(end);
                s.capture = Capture::Complete(Bytes::from(std::mem::take(buf)));
            } else if buf.len() >= MAX_CAPTURED_HEAD {
                s.capture = Capture::Off;
            }
        }
    }

    /// A request head was parsed and its request starts: returns the guard to hold until its
    /// response is sent, and the raw head if it was captured whole.
    pub fn request_started(self: &Arc<Self>) -> (RequestGuard, Option<Bytes>) {
        let mut s = self.lock();
        s.in_flight += 1;
        let id = s.next_request;
        s.next_request += 1;
        let head = match std::mem::replace(&mut s.capture, Capture::Off) {
            Capture::Complete(head) => Some(head),
            _ => None,
        };
        self.set_phase(&mut s, Phase::Busy);
        (
            RequestGuard {
                clock: self.clone(),
                id,
            },
            head,
        )
    }

    fn response_handed_over(&self, id: u64) {
        let mut s = self.lock();
        s.sending.push((id, Instant::now()));
        self.moved(&mut s);
    }

    fn request_finished(&self, id: u64) {
        let mut s = self.lock();
        let before = s.sending.len();
        s.sending.retain(|(request, _)| *request != id);
        if s.sending.len() != before {
            self.moved(&mut s);
        }
        s.in_flight = s.in_flight.saturating_sub(1);
        if s.in_flight == 0 {
            // The next bytes start the next request head (hyper reads requests in order).
            s.capture = if s.protocol == Protocol::Http2 {
                Capture::Off
            } else {
                Capture::Reading(Vec::new())
            };
            self.set_phase(&mut s, Phase::Idle(Instant::now()));
        }
    }

    /// Resolves when the connection has been idle for `idle_timeout`, has been reading one
    /// request head for `header_timeout`, or has been sending one response for
    /// `send_timeout`; never while a request is only being handled.
    pub async fn expired(&self) -> Expired {
        loop {
            let (deadline, version) = {
                let s = self.lock();
                let phase = match s.phase {
                    Phase::Idle(since) => Some((since + self.idle_timeout, Expired::Idle)),
                    Phase::Head(since) => Some((since + self.header_timeout, Expired::Header)),
                    Phase::Busy => None,
                };
                let send = s
                    .sending
                    .iter()
                    .map(|(_, since)| *since)
                    .min()
                    .map(|since| (since + self.send_timeout, Expired::Send));
                let deadline = match (phase, send) {
                    (Some(a), Some(b)) => Some(if b.0 < a.0 { b } else { a }),
                    (a, b) => a.or(b),
                };
                (deadline, s.version)
            };
            match deadline {
                // notify_one keeps a permit, so a change made since the lock is not missed.
                None => self.changed.notified().await,
                Some((at, why)) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {
                            if self.lock().version == version {
                                return why;
                            }
                        }
                        _ = self.changed.notified() => {}
                    }
                }
            }
        }
    }
}

/// Held while a request is in progress (its handler runs, then its response body is sent);
/// dropping it tells the clock.
pub struct RequestGuard {
    clock: Arc<Clock>,
    id: u64,
}

impl RequestGuard {
    /// The response is handed to hyper: from now on it must be sent within the send timeout.
    pub fn sending(&self) {
        self.clock.response_handed_over(self.id);
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.clock.request_finished(self.id);
    }
}

/// The connection's IO, telling the clock about every byte read.
pub struct ClockedIo<I> {
    inner: I,
    clock: Arc<Clock>,
}

impl<I> ClockedIo<I> {
    pub fn new(inner: I, clock: Arc<Clock>) -> Self {
        ClockedIo { inner, clock }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for ClockedIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            let new = &buf.filled()[before..];
            if !new.is_empty() {
                this.clock.received(new);
            }
        }
        result
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for ClockedIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The `kind` label of `hubgate_connection_errors_total` for an error a connection ended with.
pub fn error_kind(error: &(dyn std::error::Error + 'static)) -> &'static str {
    if let Some(e) = error.downcast_ref::<hyper::Error>() {
        if e.is_timeout() {
            return "header_timeout";
        }
        if e.is_parse_too_large() {
            // hyper answered 431, or 414 for a target over its limit; only the message tells
            // the two apart.
            return if e.to_string().starts_with("URI too long") {
                "uri_too_long"
            } else {
                "header_too_large"
            };
        }
        if e.is_parse() {
            // hyper answered 400 and closed.
            return "bad_request";
        }
        if e.is_incomplete_message() {
            return "incomplete";
        }
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            if s.is::<io::Error>() {
                return "io";
            }
            source = s.source();
        }
        return "other";
    }
    if error.is::<io::Error>() {
        return "io";
    }
    "other"
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &[u8] = b"PATCH /findings/batchupdate HTTP/1.1\r\nHost: h\r\n\r\n";

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_expires_after_the_idle_timeout() {
        let clock = Clock::new(
            Duration::from_secs(1),
            Duration::from_secs(5),
            Duration::from_secs(3),
        );
        let started = Instant::now();
        assert_eq!(clock.expired().await, Expired::Idle);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_started_head_must_finish_within_the_header_timeout() {
        let clock = Clock::new(
            Duration::from_secs(1),
            Duration::from_secs(5),
            Duration::from_secs(3),
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
        clock.received(b"PAT");
        let started = Instant::now();
        assert_eq!(clock.expired().await, Expired::Header);
        assert_eq!(started.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_progress_never_expires_and_idle_restarts_after_it() {
        let clock = Clock::new(
            Duration::from_secs(1),
            Duration::from_secs(5),
            Duration::from_secs(3),
        );
        clock.received(HEAD);
        let (guard, head) = clock.request_started();
        assert_eq!(head.as_deref(), Some(HEAD));
        let waiter = {
            let clock = clock.clone();
            tokio::spawn(async move { (clock.expired().await, Instant::now()) })
        };
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!waiter.is_finished());
        let answered = Instant::now();
        drop(guard);
        let (why, at) = waiter.await.unwrap();
        assert_eq!(why, Expired::Idle);
        assert_eq!(at - answered, Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_response_not_sent_within_the_send_timeout_expires() {
        let clock = Clock::new(
            Duration::from_secs(1),
            Duration::from_secs(5),
            Duration::from_secs(3),
        );
        clock.received(HEAD);
        let (slow, _) = clock.request_started();
        let waiter = {
            let clock = clock.clone();
            tokio::spawn(async move { (clock.expired().await, Instant::now()) })
        };
        // Handling the request takes as long as it takes (its stages have their own limits).
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!waiter.is_finished());
        let handed = Instant::now();
        slow.sending();
        // Another response, handed over later and sent at once, does not move the deadline.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (quick, _) = clock.request_started();
        quick.sending();
        drop(quick);
        let (why, at) = waiter.await.unwrap();
        assert_eq!(why, Expired::Send);
        assert_eq!(at - handed, Duration::from_secs(3));
        assert_eq!(Expired::Send.kind(), "send_timeout");
    }

    #[tokio::test(start_paused = true)]
    async fn a_response_sent_in_time_ends_the_send_deadline() {
        let clock = Clock::new(
            Duration::from_secs(1),
            Duration::from_secs(5),
            Duration::from_secs(3),
        );
        clock.received(HEAD);
        let (guard, _) = clock.request_started();
        guard.sending();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let sent = Instant::now();
        drop(guard);
        // Then only the idle clock runs.
        assert_eq!(clock.expired().await, Expired::Idle);
        assert_eq!(sent.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test]
    async fn the_head_is_captured_across_reads_and_only_once() {
        let clock = Clock::new(
            Duration::from_secs(1),
            Duration::from_secs(5),
            Duration::from_secs(3),
        );
        clock.received(&HEAD[..10]);
        clock.received(&HEAD[10..HEAD.len() - 1]);
        let mut with_body = HEAD[HEAD.len() - 1..].to_vec();
        with_body.extend_from_slice(b"{\"a\":1}");
        clock.received(&with_body);
        let (guard, head) = clock.request_started();
        assert_eq!(head.as_deref(), Some(HEAD));
        // Bytes read during the request (body, a pipelined request) are not a head.
        clock.received(HEAD);
        let (second, head) = clock.request_started();
        assert_eq!(head, None);
        drop(second);
        drop(guard);
        // After the answer, the next head is captured again.
        clock.received(HEAD);
        assert_eq!(clock.request_started().1.as_deref(), Some(HEAD));
    }

    #[tokio::test(start_paused = true)]
    async fn h2_connections_only_have_the_idle_clock() {
        let clock = Clock::new(
            Duration::from_secs(1),
            Duration::from_secs(5),
            Duration::from_secs(3),
        );
        clock.received(H2_PREFACE);
        clock.received(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00");
        let started = Instant::now();
        assert_eq!(clock.expired().await, Expired::Idle);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert_eq!(clock.request_started().1, None);
    }

    #[test]
    fn a_head_longer_than_the_cap_is_not_kept() {
        let clock = Clock::new(
            Duration::from_secs(1),
            Duration::from_secs(5),
            Duration::from_secs(3),
        );
        clock.received(b"PATCH / HTTP/1.1\r\n");
        clock.received(&vec![b'a'; MAX_CAPTURED_HEAD]);
        clock.received(b"\r\n\r\n");
        assert_eq!(clock.request_started().1, None);
    }
}
