//! Per-connection bounds: the idle, header-read and response-send clocks of one proxy
//! connection, and the raw request head kept for the framing check.
//!
//! hyper 1.x has one timer for both waits: its `header_read_timeout` starts as soon as hyper
//! waits for a request head, so it also closes keep-alive connections that are merely idle;
//! and hyper-util's protocol detection (`auto`) reads the first bytes with no timer at all. The
//! clock here keeps the two apart, as Go and Envoy do: a connection between requests may stay
//! `idle_timeout` without sending anything, and once the first byte of a request head arrives,
//! the head must be complete within `header_read_timeout`. A new connection, which has no
//! request to be between, must start its first within `header_read_timeout` (as Go's
//! ReadHeaderTimeout runs from accept).
//!
//! A response must be sent whole within `response_send_timeout` of being handed to hyper. A
//! request holds its in-flight permit until then, and a client that does not read (over h2, one
//! that never opens its flow-control window; over HTTP/1, one that leaves the socket full) would
//! otherwise hold it for as long as it keeps the connection open. hyper does not poll a response
//! body that it cannot send, so the clock, not the body, keeps this deadline.
//!
//! A connection is also asked to close (`CloseReason`): when hubgate stops; once the answer
//! to a request whose client certificate no longer verifies is sent (`RequestGuard::
//! then_close`); or when its client keeps resetting the requests it started before they are
//! answered (the HTTP/2 "rapid reset" pattern, paced so that h2's own limit on streams reset
//! before they were accepted never sees it). The task serving it then shuts it down gracefully
//! (an h2 GOAWAY), refuses every request that starts after, and drops it once its requests in
//! progress are answered, whether or not its client acknowledges the GOAWAY.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::framing;

/// The HTTP/2 connection preface (RFC 9113 §3.4): a connection that starts with it is h2.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A request head still incomplete at this length is no longer kept for the framing check:
/// hyper's buffer, past which hyper refuses a head it is still reading. A head that ends within
/// the read that brought it is kept whole whatever its length, as hyper, which checks its limit
/// only between reads, accepts one of up to 128 KiB that arrives in one read (review 54). (At
/// 64 KiB, a head between that and hyper's 96 KiB went unkept, and its repeated Content-Length
/// unseen: review 53.)
const MAX_CAPTURED_HEAD: usize = crate::server::H1_MAX_BUFFER;

/// The bytes read after a captured head before its request starts (and says how long its body
/// is) are kept up to this many. hyper starts the request as soon as it has parsed the head, so
/// this is at most what one read brought (hyper's read buffer is at most `server::H1_MAX_BUFFER`).
const MAX_AFTER_HEAD: usize = 512 * 1024;

/// A connection whose client has reset this many of its requests before they were answered,
/// and more than half of all those it started, is closed. hubgate runs each request in a task
/// of its own that outlives a reset (so that a request it forwarded is still recorded), so
/// h2's limit on concurrent streams does not bound the work of a client that resets each
/// stream once it has been accepted: every one took a slot and its caller's share, was read,
/// and left a 499 record, for as long as the connection lasted. An SDK resets a stream when
/// its own timeout ends; one that times out on more than half of at least this many requests
/// opens a new connection (its next request was refused with REFUSED_STREAM, which clients
/// retry). Envoy's check of premature resets closes such connections the same way.
pub const RESET_BUDGET: u64 = 100;

/// Why the clock closed a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expired {
    /// No request in progress and no byte of a new one for `idle_timeout`.
    Idle,
    /// A request head was started but not finished within `header_read_timeout`.
    Header,
    /// A response was not sent whole within `response_send_timeout`.
    Send,
    /// The connection was asked to close and has no request in progress any more.
    Closed(CloseReason),
}

/// Why a connection was asked to close.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// Its client certificate no longer verifies: every request on it would be refused.
    CertificateLapsed,
    /// Its client reset more of its requests before they were answered than `RESET_BUDGET`
    /// allows.
    StreamResets,
    /// hubgate is stopping: the requests in progress are drained, and no new one is taken up
    /// (an h2 client that ignores the GOAWAY would otherwise go on sending requests, forwarded
    /// until the grace period cut them off, records and all).
    Stopping,
}

impl Expired {
    /// The `kind` label of `hubgate_connection_errors_total`.
    pub fn kind(self) -> &'static str {
        match self {
            Expired::Idle => "idle_timeout",
            Expired::Header => "header_timeout",
            Expired::Send => "send_timeout",
            Expired::Closed(CloseReason::CertificateLapsed) => "certificate_lapsed",
            Expired::Closed(CloseReason::StreamResets) => "stream_resets",
            // Not an error: the connection ended because hubgate stopped.
            Expired::Closed(CloseReason::Stopping) => "stopping",
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

/// Where the connection's bytes are, as a sequence of HTTP/1 messages: the capture follows every
/// byte read, so the head it keeps is the one that starts where the previous request's body
/// ended, however the bytes were split across reads or pipelined (not the bytes that happen
/// to arrive after an answer, which can be the tail of a head begun earlier).
enum Capture {
    /// Keeping the bytes of the next request head, from its first byte; `blanks` empty-line
    /// bytes before it were skipped (hyper's buffer holds them, and counts them to its limit),
    /// the last of them a CR whose LF has not come yet when `cr`.
    Reading {
        head: Vec<u8>,
        blanks: usize,
        cr: bool,
    },
    /// A whole head, waiting for its request to start; and the bytes read after it (its body,
    /// maybe more) until the request says how long its body is. `None`: more than
    /// MAX_AFTER_HEAD of them.
    Complete { head: Bytes, after: Option<Vec<u8>> },
    /// In the body of the request in progress, this many bytes before its end; the next head
    /// starts right after.
    Body(u64),
    /// A head (with the empty lines before it) reached hyper's buffer limit before its end:
    /// hyper refuses it. Nothing of it, or after it, is kept.
    TooLong,
    /// Where the next head starts is not known (the connection is h2, a body's length on the
    /// wire was not known): no later head on this connection is kept.
    Lost,
}

impl Capture {
    fn reading() -> Capture {
        Capture::Reading {
            head: Vec::new(),
            blanks: 0,
            cr: false,
        }
    }

    /// Follows `bytes`, read from the socket, through the connection's messages.
    fn follow(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match self {
                Capture::Reading {
                    head: buf,
                    blanks,
                    cr,
                } => {
                    if buf.is_empty() {
                        // Empty lines before a request line are ignored (RFC 9112 §2.2) as
                        // httparse ignores them, each a CRLF or a bare LF. A CR followed by
                        // anything else starts the head: httparse refuses it, and so hyper
                        // does (skipped, it left a head hyper refused looking whole, review
                        // 57c).
                        let mut blank = 0;
                        while let Some(&b) = bytes.get(blank) {
                            match (b, *cr) {
                                (b'\n', _) => *cr = false,
                                (_, true) => {
                                    buf.push(b'\r');
                                    *cr = false;
                                    break;
                                }
                                (b'\r', false) => *cr = true,
                                _ => break,
                            }
                            blank += 1;
                        }
                        bytes = &bytes[blank..];
                        *blanks += blank;
                        if *blanks >= MAX_CAPTURED_HEAD {
                            *self = Capture::TooLong;
                            return;
                        }
                        if bytes.is_empty() {
                            return;
                        }
                    }
                    let searched = buf.len();
                    buf.extend_from_slice(bytes);
                    bytes = &[];
                    if let Some(end) = framing::head_end(buf, searched) {
                        let after = buf.split_off(end);
                        let after = (after.len() <= MAX_AFTER_HEAD).then_some(after);
                        let head = Bytes::from(std::mem::take(buf));
                        *self = Capture::Complete { head, after };
                    } else if buf.len() + *blanks >= MAX_CAPTURED_HEAD {
                        *self = Capture::TooLong;
                    }
                }
                Capture::Complete { after, .. } => {
                    if let Some(kept) = after {
                        if kept.len() + bytes.len() <= MAX_AFTER_HEAD {
                            kept.extend_from_slice(bytes);
                        } else {
                            *after = None;
                        }
                    }
                    return;
                }
                Capture::Body(left) => {
                    let n = bytes
                        .len()
                        .min(usize::try_from(*left).unwrap_or(usize::MAX));
                    *left -= n as u64;
                    bytes = &bytes[n..];
                    if *left == 0 {
                        *self = Capture::reading();
                    }
                }
                Capture::TooLong | Capture::Lost => return,
            }
        }
    }

    /// hyper parsed a head and starts its request, whose body is `body_len` bytes on the wire
    /// (None: not known, as for a chunked body). Returns the head, if it was captured whole.
    fn request_started(&mut self, body_len: Option<u64>) -> Option<Bytes> {
        match std::mem::replace(self, Capture::Lost) {
            Capture::Complete { head, after } => {
                if let (Some(len), Some(after)) = (body_len, after) {
                    *self = if len == 0 {
                        Capture::reading()
                    } else {
                        Capture::Body(len)
                    };
                    self.follow(&after);
                }
                Some(head)
            }
            // A request whose head the capture did not see end where hyper did: whatever is
            // kept from here on could be out of step with hyper, so nothing is.
            _ => None,
        }
    }
}

struct State {
    phase: Phase,
    protocol: Protocol,
    /// The connection's first bytes, while they may still be the h2 preface.
    preface: Vec<u8>,
    in_flight: usize,
    /// The responses handed to hyper and not yet sent whole: request id, and since when.
    sending: Vec<(u64, Instant)>,
    /// The id of the next request.
    next_request: u64,
    capture: Capture,
    /// Requests ended before their response was handed over: the client reset them (or the
    /// connection went away under them).
    abandoned: u64,
    /// The connection was asked to close, and why.
    closing: Option<CloseReason>,
    /// Bumped on every phase change, so a waiting clock knows its deadline moved.
    version: u64,
}

/// The clock of one connection, shared by its IO (bytes read), its service (requests started
/// and answered) and the task that serves it (which closes the connection when it expires).
pub struct Clock {
    state: Mutex<State>,
    changed: Notify,
    /// Wakes the task serving the connection when it is asked to close.
    asked: Notify,
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
                preface: Vec::new(),
                in_flight: 0,
                sending: Vec::new(),
                next_request: 0,
                capture: Capture::reading(),
                abandoned: 0,
                closing: None,
                version: 0,
            }),
            changed: Notify::new(),
            asked: Notify::new(),
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
        if state.closing.is_some() {
            self.asked.notify_waiters();
        }
    }

    /// Bytes came off the socket.
    fn received(&self, bytes: &[u8]) {
        let mut guard = self.lock();
        let s = &mut *guard;
        s.capture.follow(bytes);
        if s.protocol == Protocol::Unknown {
            let room = H2_PREFACE.len() - s.preface.len();
            s.preface.extend_from_slice(&bytes[..bytes.len().min(room)]);
            let n = s.preface.len();
            if s.preface[..] != H2_PREFACE[..n] {
                s.protocol = Protocol::Http1;
            } else if n == H2_PREFACE.len() {
                s.protocol = Protocol::Http2;
            }
        }
        if s.protocol == Protocol::Http2 {
            // h2 frames (settings, pings, window updates) are not request heads, and hyper
            // reads h2 headers whole: only the idle clock applies.
            s.capture = Capture::Lost;
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
    }

    /// A request head was parsed and its request starts; `body_len` is its body's length on
    /// the wire, if hyper knows it (a Content-Length, or no body). Returns the guard to hold
    /// until its response is sent, the raw head if it was captured whole, and whether the
    /// heads of later requests on this HTTP/1 connection can no longer be captured (the
    /// response should close the connection, so that the client's next request is checked
    /// on a new one).
    pub fn request_started(
        self: &Arc<Self>,
        body_len: Option<u64>,
    ) -> (RequestGuard, Option<Bytes>, bool) {
        let mut s = self.lock();
        s.in_flight += 1;
        let id = s.next_request;
        s.next_request += 1;
        let head = s.capture.request_started(body_len);
        let lost = s.protocol != Protocol::Http2 && matches!(s.capture, Capture::Lost);
        self.set_phase(&mut s, Phase::Busy);
        (
            RequestGuard {
                clock: self.clone(),
                id,
                then_close: None,
            },
            head,
            lost,
        )
    }

    fn response_handed_over(&self, id: u64) {
        let mut s = self.lock();
        s.sending.push((id, Instant::now()));
        self.moved(&mut s);
    }

    fn request_finished(&self, id: u64, then_close: Option<CloseReason>) {
        let mut s = self.lock();
        if let (None, Some(why)) = (s.closing, then_close) {
            s.closing = Some(why);
            self.moved(&mut s);
        }
        let before = s.sending.len();
        s.sending.retain(|(request, _)| *request != id);
        if s.sending.len() != before {
            self.moved(&mut s);
        } else {
            // Never answered: hyper dropped the request (its stream was reset, or the
            // connection is going away), or the client left while its body was read.
            s.abandoned += 1;
            if s.closing.is_none()
                && s.abandoned >= RESET_BUDGET
                && s.abandoned * 2 > s.next_request
            {
                s.closing = Some(CloseReason::StreamResets);
                self.moved(&mut s);
            }
        }
        s.in_flight = s.in_flight.saturating_sub(1);
        if s.in_flight == 0 {
            self.set_phase(&mut s, Phase::Idle(Instant::now()));
        }
    }

    /// The head hyper is reading on an HTTP/1 connection with no request in progress, as far
    /// as it was kept (None inside: not kept, it was too long); None when no head is begun
    /// that hyper could be refusing. Bytes shaped like hyper's refusal written at any other
    /// time are not one: the tail of a response streamed after its request ended, say, which
    /// an upstream chooses (review 57a).
    fn refused_head(&self) -> Option<Option<Vec<u8>>> {
        let s = self.lock();
        // Still Unknown (every byte so far the h2 preface's): hyper reads a cut-off preface
        // as HTTP/1, when the client stops sending, and refuses it (review 57c).
        if s.protocol == Protocol::Http2 || s.in_flight > 0 {
            return None;
        }
        match &s.capture {
            // Only for a fault in what was read (its size is TooLong's): a head that parses so
            // far is still coming, and a whole one without fault is a pipelined request that
            // starts once the answer before it is written (review 57b).
            Capture::Reading { head, .. } if framing::refusable(head) => Some(Some(head.clone())),
            Capture::Complete { head, .. } if framing::refusable(head) => Some(Some(head.to_vec())),
            Capture::TooLong => Some(None),
            _ => None,
        }
    }

    /// Asks for the connection to be closed (once its requests in progress are answered), as
    /// `RequestGuard::then_close` does once its own request is.
    pub fn close(&self, why: CloseReason) {
        let mut s = self.lock();
        if s.closing.is_none() {
            s.closing = Some(why);
            self.moved(&mut s);
        }
    }

    /// Whether the connection was asked to close: a request that starts now is refused.
    pub fn is_closing(&self) -> bool {
        self.close_reason().is_some()
    }

    /// Why the connection was asked to close, if it was.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.lock().closing
    }

    /// Resolves once the connection has been asked to close.
    pub async fn closing(&self) {
        loop {
            let notified = self.asked.notified();
            if self.is_closing() {
                return;
            }
            notified.await;
        }
    }

    /// Resolves when the connection has been idle for `idle_timeout`, has been reading one
    /// request head for `header_timeout`, or has been sending one response for
    /// `send_timeout`, or was asked to close and has no request in progress; never while a
    /// request is only being handled.
    pub async fn expired(&self) -> Expired {
        loop {
            let (deadline, version) = {
                let s = self.lock();
                if let (Some(why), 0) = (s.closing, s.in_flight) {
                    return Expired::Closed(why);
                }
                let phase = match s.phase {
                    // A connection that has not started a request is not a keep-alive one
                    // between requests: its first request must begin within the header timeout
                    // (as Go's ReadHeaderTimeout runs from accept). Given idle_timeout, a client
                    // without keys held a max_connections slot for 60 s with a socket that sent
                    // nothing, and so kept every other caller at 503 for as long as it
                    // reopened its sockets once a minute.
                    Phase::Idle(since) if s.next_request == 0 => Some((
                        since + self.header_timeout.min(self.idle_timeout),
                        Expired::Idle,
                    )),
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
    /// Close the connection once this request is done (its answer sent).
    then_close: Option<CloseReason>,
}

impl RequestGuard {
    /// The response is handed to hyper: from now on it must be sent within the send timeout.
    pub fn sending(&self) {
        self.clock.response_handed_over(self.id);
    }

    /// Once this request's answer has been sent, the connection is asked to close: the answer
    /// goes out before the GOAWAY.
    pub fn then_close(&mut self, why: CloseReason) {
        self.then_close = Some(why);
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.clock.request_finished(self.id, self.then_close);
    }
}

/// Answers a request head hyper refused, in hyper's place: the raw response (the envelope),
/// ready once its record is written (`proxy::refuse_head`). Given the refusal and the Date of
/// hyper's own answer.
pub type HeadAnswerer =
    Arc<dyn Fn(framing::HeadRefused, Bytes) -> BoxFuture<'static, Bytes> + Send + Sync>;

/// hyper's own answer to a head it refused, taken over (`ClockedIo::answering`).
enum Refusal {
    /// None seen.
    None,
    /// Seen: hyper is told its answer was written once hubgate's own is.
    Recording(BoxFuture<'static, Bytes>),
    Writing {
        answer: Bytes,
        at: usize,
    },
    /// hubgate's answer is sent. hyper closes the connection after its refusal: anything else
    /// it writes (its refusal included) is reported written and not sent.
    Answered,
}

/// The connection's IO, telling the clock about every byte read.
pub struct ClockedIo<I> {
    inner: I,
    clock: Arc<Clock>,
    answerer: Option<HeadAnswerer>,
    refusal: Refusal,
}

impl<I> ClockedIo<I> {
    pub fn new(inner: I, clock: Arc<Clock>) -> Self {
        ClockedIo {
            inner,
            clock,
            answerer: None,
            refusal: Refusal::None,
        }
    }

    /// hyper answers an HTTP/1 head it cannot parse (or one over its limits) itself, with a
    /// bare 400, 414 or 431 and no record. On this connection such an answer is replaced by
    /// `answerer`'s: the envelope, after its record.
    pub fn answering(mut self, answerer: HeadAnswerer) -> Self {
        self.answerer = Some(answerer);
        self
    }
}

impl<I: AsyncWrite + Unpin> ClockedIo<I> {
    /// Whether `written` (all hyper is writing now) is hyper's own refusal of a head; if so,
    /// hubgate's answer is made in its place.
    fn take_over(&mut self, written: &[u8]) {
        let (Refusal::None, Some(answerer)) = (&self.refusal, &self.answerer) else {
            return;
        };
        let Some((status, date)) = framing::hyper_refusal(written) else {
            return;
        };
        let Some(head) = self.clock.refused_head() else {
            return;
        };
        let refused = framing::head_refused(status, head.as_deref());
        self.refusal = Refusal::Recording(answerer(refused, Bytes::copy_from_slice(date)));
    }

    /// Sends hubgate's answer in place of hyper's, once it is made. Ready(true): it is sent,
    /// and what hyper writes is not; Ready(false): no answer was taken over.
    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        loop {
            match &mut self.refusal {
                Refusal::None => return Poll::Ready(Ok(false)),
                Refusal::Recording(answer) => {
                    let answer = std::task::ready!(answer.as_mut().poll(cx));
                    self.refusal = Refusal::Writing { answer, at: 0 };
                }
                Refusal::Writing { answer, at } => {
                    while *at < answer.len() {
                        let n = std::task::ready!(
                            Pin::new(&mut self.inner).poll_write(cx, &answer[*at..])
                        )?;
                        if n == 0 {
                            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                        }
                        *at += n;
                    }
                    self.refusal = Refusal::Answered;
                }
                Refusal::Answered => return Poll::Ready(Ok(true)),
            }
        }
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
        let this = self.get_mut();
        this.take_over(buf);
        match std::task::ready!(this.poll_answer(cx))? {
            true => Poll::Ready(Ok(buf.len())),
            false => {
                // The bytes before a refusal go first; hyper writes the rest again.
                let before = framing::refusal_after(buf).unwrap_or(buf.len());
                Pin::new(&mut this.inner).poll_write(cx, &buf[..before])
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        // hyper's refusal is one buffer: a head with no body.
        let Some(last) = bufs.iter().rposition(|b| !b.is_empty()) else {
            return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        };
        if bufs[last].len() == total {
            this.take_over(&bufs[last]);
        }
        if std::task::ready!(this.poll_answer(cx))? {
            return Poll::Ready(Ok(total));
        }
        // The bytes before a refusal go first (as in poll_write); hyper writes the rest again,
        // the refusal then a write of its own.
        let before = if bufs[last].len() == total {
            None
        } else if framing::hyper_refusal(&bufs[last]).is_some() {
            Some(0)
        } else {
            framing::refusal_after(&bufs[last])
        };
        match before {
            None => Pin::new(&mut this.inner).poll_write_vectored(cx, bufs),
            Some(at) => {
                let mut first: Vec<io::IoSlice<'_>> = bufs[..last].to_vec();
                first.push(io::IoSlice::new(&bufs[last][..at]));
                Pin::new(&mut this.inner).poll_write_vectored(cx, &first)
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_answer(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_answer(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
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
        clock.received(HEAD);
        drop(clock.request_started(Some(0)).0);
        let started = Instant::now();
        assert_eq!(clock.expired().await, Expired::Idle);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_connection_must_start_its_first_request_within_the_header_timeout() {
        let started = Instant::now();
        assert_eq!(clock().expired().await, Expired::Idle);
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        // Over h2 too: the preface and SETTINGS are no request.
        let h2 = clock();
        h2.received(H2_PREFACE);
        let started = Instant::now();
        assert_eq!(h2.expired().await, Expired::Idle);
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        // Never longer than the idle timeout, when that is the shorter.
        let short_idle = Clock::new(
            Duration::from_secs(10),
            Duration::from_secs(2),
            Duration::from_secs(3),
        );
        let started = Instant::now();
        assert_eq!(short_idle.expired().await, Expired::Idle);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
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
        let (guard, head, _) = clock.request_started(Some(0));
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
        let (slow, _, _) = clock.request_started(Some(0));
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
        let (quick, _, _) = clock.request_started(Some(0));
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
        let (guard, _, _) = clock.request_started(Some(0));
        guard.sending();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let sent = Instant::now();
        drop(guard);
        // Then only the idle clock runs.
        assert_eq!(clock.expired().await, Expired::Idle);
        assert_eq!(sent.elapsed(), Duration::from_secs(5));
    }

    fn clock() -> Arc<Clock> {
        Clock::new(
            Duration::from_secs(1),
            Duration::from_secs(5),
            Duration::from_secs(3),
        )
    }

    #[tokio::test]
    async fn the_head_is_captured_across_reads() {
        let clock = clock();
        clock.received(&HEAD[..10]);
        clock.received(&HEAD[10..HEAD.len() - 1]);
        let mut with_body = HEAD[HEAD.len() - 1..].to_vec();
        with_body.extend_from_slice(b"{\"a\":1}");
        clock.received(&with_body);
        let (guard, head, lost) = clock.request_started(Some(7));
        assert_eq!(head.as_deref(), Some(HEAD));
        assert!(!lost);
        drop(guard);
        // After the answer, the next head is captured too.
        clock.received(HEAD);
        assert_eq!(clock.request_started(Some(0)).1.as_deref(), Some(HEAD));
    }

    #[tokio::test]
    async fn a_pipelined_head_is_the_one_that_starts_where_the_body_ends() {
        let clock = clock();
        let second = b"PATCH /findings/batchupdate HTTP/1.1\r\nContent-Length: 3\r\n\
                       Transfer-Encoding: chunked\r\nX-Pad: PATCH /findings/batchupdate HTTP/1.1\r\n\r\n";
        // Request 1 (head and 7-byte body) and the start of request 2's head in one read...
        let split = second.windows(7).position(|w| w == b"X-Pad: ").unwrap() + 7;
        let mut first_read = HEAD.to_vec();
        first_read.extend_from_slice(b"{\"a\":1}");
        first_read.extend_from_slice(&second[..split]);
        clock.received(&first_read);
        let (guard, head, _) = clock.request_started(Some(7));
        assert_eq!(head.as_deref(), Some(HEAD));
        drop(guard);
        // ...and, after the answer, the rest of it, which starts like a request line.
        assert!(second[split..].starts_with(b"PATCH /findings/batchupdate HTTP/1.1"));
        clock.received(&second[split..]);
        let (_guard, head, _) = clock.request_started(None);
        assert_eq!(head.as_deref(), Some(&second[..]));
        // Pipelined while the first request is still in progress: the same.
        let clock = self::clock();
        let mut all = HEAD.to_vec();
        all.extend_from_slice(b"{\"a\":1}\r\n");
        all.extend_from_slice(second);
        clock.received(&all[..HEAD.len() + 3]);
        let (_first, _, _) = clock.request_started(Some(9));
        clock.received(&all[HEAD.len() + 3..]);
        assert_eq!(clock.request_started(None).1.as_deref(), Some(&second[..]));
    }

    #[tokio::test]
    async fn empty_lines_before_a_request_line_are_not_part_of_the_head() {
        let clock = clock();
        clock.received(b"\r\n");
        clock.received(b"\r\n");
        clock.received(HEAD);
        assert_eq!(clock.request_started(Some(0)).1.as_deref(), Some(HEAD));
    }

    #[tokio::test]
    async fn after_a_body_of_unknown_length_no_head_is_kept_and_the_connection_should_close() {
        let clock = clock();
        let mut read = HEAD.to_vec();
        read.extend_from_slice(b"2\r\n{}\r\n0\r\n\r\n");
        read.extend_from_slice(HEAD);
        clock.received(&read);
        let (guard, head, lost) = clock.request_started(None);
        assert_eq!(head.as_deref(), Some(HEAD));
        assert!(lost, "the response should close the connection");
        drop(guard);
        clock.received(HEAD);
        let (_, head, lost) = clock.request_started(Some(0));
        assert_eq!(head, None);
        assert!(lost);
    }

    #[tokio::test]
    async fn a_request_the_capture_did_not_see_end_loses_the_capture() {
        // hyper parsed a head whose end the capture has not seen: out of step, nothing kept.
        let clock = clock();
        clock.received(&HEAD[..HEAD.len() - 2]);
        let (_, head, lost) = clock.request_started(Some(0));
        assert_eq!(head, None);
        assert!(lost);
        clock.received(HEAD);
        assert_eq!(clock.request_started(Some(0)).1, None);
    }

    #[tokio::test(start_paused = true)]
    async fn h2_connections_only_have_the_idle_clock() {
        let clock = Clock::new(
            Duration::from_secs(1),
            Duration::from_secs(5),
            Duration::from_secs(3),
        );
        clock.received(H2_PREFACE);
        // Between requests (a new connection's first must start within the header timeout),
        // frames that are no request do not start the header clock.
        drop(clock.request_started(None).0);
        clock.received(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00");
        let started = Instant::now();
        assert_eq!(clock.expired().await, Expired::Idle);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        let (_, head, lost) = clock.request_started(None);
        assert_eq!(head, None);
        // An h2 connection never needs closing for it: its heads are not checked raw.
        assert!(!lost);
    }

    /// Starts an h2 request and ends it, answered or not.
    fn h2_request(clock: &Arc<Clock>, answered: bool) {
        let (guard, _, _) = clock.request_started(None);
        if answered {
            guard.sending();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_whose_client_resets_most_of_its_requests_is_closed() {
        let clock = clock();
        clock.received(H2_PREFACE);
        for _ in 0..RESET_BUDGET - 1 {
            h2_request(&clock, false);
        }
        assert!(!clock.is_closing());
        // Requests in progress are left to finish; the next one that starts is refused.
        let (in_progress, _, _) = clock.request_started(None);
        h2_request(&clock, false);
        assert!(clock.is_closing());
        assert_eq!(clock.close_reason(), Some(CloseReason::StreamResets));
        clock.closing().await;
        let waiter = {
            let clock = clock.clone();
            tokio::spawn(async move { clock.expired().await })
        };
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!waiter.is_finished(), "closed under a request in progress");
        in_progress.sending();
        drop(in_progress);
        let expired = waiter.await.unwrap();
        assert_eq!(expired, Expired::Closed(CloseReason::StreamResets));
        assert_eq!(expired.kind(), "stream_resets");
    }

    #[test]
    fn resets_of_no_more_than_half_the_requests_keep_the_connection() {
        let clock = clock();
        clock.received(H2_PREFACE);
        for _ in 0..RESET_BUDGET {
            h2_request(&clock, true);
        }
        for _ in 0..RESET_BUDGET {
            h2_request(&clock, false);
        }
        assert!(
            !clock.is_closing(),
            "{} resets of {} requests",
            RESET_BUDGET,
            2 * RESET_BUDGET
        );
        h2_request(&clock, false);
        assert!(clock.is_closing());
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_closes_its_connection_does_so_once_answered() {
        let clock = clock();
        clock.received(HEAD);
        let (mut lapsed, _, _) = clock.request_started(Some(0));
        lapsed.then_close(CloseReason::CertificateLapsed);
        lapsed.sending();
        // Its answer is still being sent: nothing is closing yet.
        assert!(!clock.is_closing());
        drop(lapsed);
        assert_eq!(clock.close_reason(), Some(CloseReason::CertificateLapsed));
        let expired = clock.expired().await;
        assert_eq!(expired, Expired::Closed(CloseReason::CertificateLapsed));
        assert_eq!(expired.kind(), "certificate_lapsed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_lets_the_request_under_way_finish_and_takes_up_no_other() {
        let clock = clock();
        clock.received(H2_PREFACE);
        let (under_way, _, _) = clock.request_started(None);
        clock.close(CloseReason::Stopping);
        // Asked once: a later reason does not replace it.
        clock.close(CloseReason::StreamResets);
        assert!(clock.is_closing());
        let waiter = {
            let clock = clock.clone();
            tokio::spawn(async move { clock.expired().await })
        };
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!waiter.is_finished());
        under_way.sending();
        drop(under_way);
        assert_eq!(
            waiter.await.unwrap(),
            Expired::Closed(CloseReason::Stopping)
        );
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
        let (_, head, lost) = clock.request_started(Some(0));
        assert_eq!(head, None);
        assert!(lost);
    }

    const REFUSAL: &[u8] = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: Mon, 07 Dec 2026 18:50:54 GMT\r\n\r\n";

    /// What the answerer was called with, each time.
    type Seen = Arc<Mutex<Vec<framing::HeadRefused>>>;

    /// A ClockedIo over one end of a pipe whose answerer answers `ours` (and keeps what it
    /// was given), with `read` already read off the connection; and the pipe's other end.
    fn answering_io(
        read: &[u8],
        ours: &'static [u8],
    ) -> (
        ClockedIo<tokio::io::DuplexStream>,
        tokio::io::DuplexStream,
        Seen,
    ) {
        let clock = Clock::new(
            Duration::from_secs(5),
            Duration::from_secs(5),
            Duration::from_secs(5),
        );
        clock.received(read);
        let (ours_end, peer) = tokio::io::duplex(4096);
        let seen: Seen = Arc::default();
        let kept = seen.clone();
        let answerer: HeadAnswerer = Arc::new(move |refused, date| {
            assert_eq!(&date[..], b"Mon, 07 Dec 2026 18:50:54 GMT");
            kept.lock().unwrap().push(refused);
            Box::pin(async move {
                tokio::task::yield_now().await;
                Bytes::from_static(ours)
            })
        });
        let io = ClockedIo::new(ours_end, clock).answering(answerer);
        (io, peer, seen)
    }

    async fn written_to(peer: &mut tokio::io::DuplexStream) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        got
    }

    #[tokio::test]
    async fn hypers_refusal_of_a_head_is_replaced_by_hubgates_answer() {
        use tokio::io::AsyncWriteExt;
        let (mut io, mut peer, seen) =
            answering_io(b"PATCH /f HTTP/1.1\r\nBad Header: x\r\n", b"OUR ANSWER");
        // hyper is told its bytes were written, in one write
        assert_eq!(io.write(REFUSAL).await.unwrap(), REFUSAL.len());
        // and whatever it writes after is not sent
        io.write_all(b"more").await.unwrap();
        io.shutdown().await.unwrap();
        drop(io);
        assert_eq!(written_to(&mut peer).await, b"OUR ANSWER");
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        let refused = &seen[0];
        assert_eq!(refused.status, 400);
        assert!(
            refused.to_string().contains("header field name"),
            "{refused}"
        );
    }

    #[tokio::test]
    async fn a_refusal_written_vectored_is_replaced_too() {
        use tokio::io::AsyncWriteExt;
        let (mut io, mut peer, seen) = answering_io(b"PATCH /f HTTP/3.7\r\n\r\n", b"OUR ANSWER");
        let bufs = [io::IoSlice::new(b""), io::IoSlice::new(REFUSAL)];
        assert_eq!(io.write_vectored(&bufs).await.unwrap(), REFUSAL.len());
        io.shutdown().await.unwrap();
        drop(io);
        assert_eq!(written_to(&mut peer).await, b"OUR ANSWER");
        assert_eq!(seen.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn answers_of_requests_pass_through_untouched() {
        use tokio::io::AsyncWriteExt;
        // A request in progress: whatever its answer looks like, it is not a refused head's.
        let (mut io, mut peer, seen) = answering_io(HEAD, b"OUR ANSWER");
        let (guard, _, _) = io.clock.request_started(Some(0));
        io.write_all(REFUSAL).await.unwrap();
        drop(guard);
        // Another answer, with no request in progress (its last bytes, sent after the
        // request's guard is gone): not hyper's refusal either.
        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        io.write_all(answer).await.unwrap();
        // Nor is the tail of a streamed answer shaped like one, written after its request's
        // guard is gone, with no head begun or with a head begun that parses so far (review
        // 57a: an upstream's body spliced hubgate's envelope into the answer, and every later
        // answer on the connection was swallowed).
        io.write_all(REFUSAL).await.unwrap();
        io.clock.received(b"GET /standards HT");
        io.write_all(REFUSAL).await.unwrap();
        // Nor with a whole head without fault pipelined behind (review 57b), whether the
        // refusal-shaped bytes are a write of their own or end a longer one.
        io.clock.received(b"TP/1.1\r\nHost: h\r\n\r\n");
        io.write_all(REFUSAL).await.unwrap();
        io.write_all(&[b"tail", REFUSAL].concat()).await.unwrap();
        io.shutdown().await.unwrap();
        drop(io);
        assert_eq!(
            written_to(&mut peer).await,
            [
                REFUSAL,
                &answer[..],
                REFUSAL,
                REFUSAL,
                REFUSAL,
                b"tail",
                REFUSAL
            ]
            .concat()
        );
        assert!(seen.lock().unwrap().is_empty());
    }

    #[test]
    fn empty_lines_are_skipped_as_httparse_skips_them_and_a_cut_preface_can_be_refused() {
        let refusable = |reads: &[&[u8]]| {
            let clock = Clock::new(
                Duration::from_secs(5),
                Duration::from_secs(5),
                Duration::from_secs(5),
            );
            for read in reads {
                clock.received(read);
            }
            clock.refused_head().is_some()
        };
        let valid: &[u8] = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n";
        // CRLF and bare LF lines, in one read or split between the CR and its LF: no fault.
        assert!(!refusable(&[b"\r\n\n\r\n", valid]));
        assert!(!refusable(&[b"\r", b"\n", valid]));
        // A CR not followed by LF is where the head starts, and httparse refuses it (review
        // 57c: it was skipped, and the head left looked whole and sound).
        assert!(refusable(&[&[b"\r", valid].concat()]));
        assert!(refusable(&[b"\r\n\n\r", valid]));
        assert!(refusable(&[b"\r", valid]));
        assert!(refusable(&[b"\r", b"\r\n", valid]));
        // The h2 preface cut off before its end: hyper reads it as HTTP/1 once the client
        // stops, and refuses it.
        assert!(refusable(&[b"PRI * HTTP/2.0\r\n\r\n"]));
        assert!(!refusable(&[H2_PREFACE]));
    }

    #[tokio::test]
    async fn a_refusal_written_after_an_answers_tail_is_taken_over_after_it() {
        use tokio::io::AsyncWriteExt;
        // hyper queued the end of an answer the client had not read yet, then its refusal of
        // the bad head behind it, and writes both at once: the tail goes out as it is, and
        // the refusal is replaced.
        let tail: &[u8] = b"{\"ProcessedFindings\":[]}";
        for vectored in [false, true] {
            let (mut io, mut peer, seen) =
                answering_io(b"PATCH /f HTTP/1.1\r\nBad Header: x\r\n", b"OUR ANSWER");
            let both = [tail, REFUSAL].concat();
            let mut at = 0;
            while at < both.len() {
                at += if vectored {
                    let bufs = [
                        io::IoSlice::new(&both[at..tail.len().max(at)]),
                        io::IoSlice::new(&both[tail.len().max(at)..]),
                    ];
                    io.write_vectored(&bufs).await.unwrap()
                } else {
                    io.write(&both[at..]).await.unwrap()
                };
            }
            io.shutdown().await.unwrap();
            drop(io);
            assert_eq!(
                written_to(&mut peer).await,
                [tail, b"OUR ANSWER"].concat(),
                "vectored: {vectored}"
            );
            assert_eq!(seen.lock().unwrap().len(), 1);
        }
    }

    #[tokio::test]
    async fn a_head_over_the_limit_and_an_http10_refusal_are_taken_over() {
        use tokio::io::AsyncWriteExt;
        // Empty lines before it count to hyper's limit, as in hyper's buffer.
        let mut long = vec![b'\n'; 1024];
        long.extend_from_slice(b"PATCH / HTTP/1.1\r\nX: ");
        long.resize(MAX_CAPTURED_HEAD, b'a');
        const REFUSAL_10: &[u8] = b"HTTP/1.0 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Mon, 07 Dec 2026 18:50:54 GMT\r\n\r\n";
        let (mut io, mut peer, seen) = answering_io(&long, b"OUR ANSWER");
        assert_eq!(io.write(REFUSAL_10).await.unwrap(), REFUSAL_10.len());
        io.shutdown().await.unwrap();
        drop(io);
        assert_eq!(written_to(&mut peer).await, b"OUR ANSWER");
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].status, 431);
    }

    #[tokio::test]
    async fn h2_connections_are_never_taken_over() {
        use tokio::io::AsyncWriteExt;
        let (mut io, mut peer, seen) = answering_io(H2_PREFACE, b"OUR ANSWER");
        io.write_all(REFUSAL).await.unwrap();
        io.shutdown().await.unwrap();
        drop(io);
        assert_eq!(written_to(&mut peer).await, REFUSAL);
        assert!(seen.lock().unwrap().is_empty());
    }
}
