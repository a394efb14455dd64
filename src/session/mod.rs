//! One client's session: the socket driver around its [`core::SessionCore`].
//!
//! A session runs as one task. Its loop reads what the client sent, hands each complete request to the core, which
//! decides what becomes of it (forwarded as the frame's raw bytes, many frames per write when a pipeline arrives,
//! answered here, held, pinned), moves the core's output to the backend connections, and hands the replies that
//! arrive to the core, which streams them back to the client in order. Every decision is the core's; this module
//! owns the sockets, opens connections, and enforces the client timeouts.

pub mod core;
pub mod state;

use std::future::Future;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncWrite;
use tokio::sync::watch;
use tokio_util::io::poll_read_buf;

use crate::backend::{self, BackendLink};
use crate::links::{Inbox, LinkFailure, LinkKey, SharedLink};
use crate::net::Stream;
use crate::protocol::reply::ReplyScanner;
use crate::protocol::reply::Scanned;
use crate::protocol::request::{Parsed, RequestParser};
use crate::shared::Shared;
use core::{Links, OUTPUT_HIGH_WATER, Request, SessionCore, Start, Verdict};

pub use core::{error_reply, pins, unknown_command_reply};

/// Room made in a read buffer before each read, once reads fill a small one.
const READ_CHUNK: usize = 16 * 1024;
/// Room for a connection's first read.
const FIRST_READ: usize = 512;

/// Why a session ended other than by its client closing the connection cleanly.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("client connection error: {0}")]
    Client(#[from] std::io::Error),
    #[error("client stopped accepting data")]
    ClientGone,
    #[error("client dropped: {0}")]
    Dropped(&'static str),
}

/// What the loop does after handling the client's input.
enum Next {
    /// Wait for the sockets.
    Wait,
    /// A request needs a backend link first.
    Connect,
    /// Drop the client at once (an HTTP request sent to the Redis port).
    CloseNow,
}

/// One client connection, its backend connections, and its core.
pub struct Session {
    shared: Arc<Shared>,
    client: Stream,
    client_in: BytesMut,
    client_eof: bool,
    parser: RequestParser,
    /// The session's own connection, when it is pinned (or when links are dedicated).
    link: Option<BackendLink>,
    /// Why the own connection failed, found while polling; handled once the replies read before it are out.
    link_failure: Option<String>,
    /// Its use of shared links, while it is on them.
    sharing: Option<Sharing>,
    core: SessionCore,
    /// Limits on clients that go quiet or stop reading; absent when both are off.
    watchdog: Option<Watchdog>,
    /// The session's id in the proxy's directory (see [`crate::clients`]).
    id: u64,
    /// The server connection id last recorded there.
    published_server_id: Option<i64>,
    /// The protocol and name last recorded on its card there.
    published_identity: (u8, Option<Bytes>),
}

/// A session's use of shared links (see [`crate::links`]).
struct Sharing {
    /// The link its requests go to now, if it has sent any.
    link: Option<Arc<SharedLink>>,
    /// Where its replies arrive.
    inbox: Arc<Inbox>,
    /// Replies taken from the inbox and not yet handled.
    input: BytesMut,
    scanner: ReplyScanner,
    /// Why the link stopped serving the session, found while polling.
    failure: Option<LinkFailure>,
}

impl Sharing {
    fn new() -> Self {
        Sharing {
            link: None,
            inbox: Arc::default(),
            input: BytesMut::new(),
            scanner: ReplyScanner::new(),
            failure: None,
        }
    }
}

/// Enforces `client_idle_timeout_s` and `client_output_timeout_s` with one timer per session, registered once per
/// period rather than once per command.
struct Watchdog {
    timer: Pin<Box<tokio::time::Sleep>>,
    period: Duration,
    idle_timeout: Option<Duration>,
    output_timeout: Option<Duration>,
    /// When the client last sent bytes (as of the last tick).
    last_read: Instant,
    /// Whether the client sent bytes, or took bytes of its replies, since the last tick: progress is noted
    /// without reading the clock, and dated at the next tick (the limits are checked at that granularity).
    read_since_tick: bool,
    wrote_since_tick: bool,
    /// When the request still incomplete in the buffer began to arrive.
    partial_since: Option<Instant>,
    /// When the client last accepted bytes of its replies.
    last_write: Instant,
}

impl Watchdog {
    fn new(config: &crate::config::Config) -> Option<Watchdog> {
        let seconds = |s: u64| (s > 0).then(|| Duration::from_secs(s));
        let (idle_timeout, output_timeout) = (
            seconds(config.client_idle_timeout_s),
            seconds(config.client_output_timeout_s),
        );
        let shortest = [idle_timeout, output_timeout].into_iter().flatten().min()?;
        let period = (shortest / 4).max(Duration::from_millis(100));
        let now = Instant::now();
        let timer = Box::pin(tokio::time::sleep(period));
        Some(Watchdog {
            timer,
            period,
            idle_timeout,
            output_timeout,
            last_read: now,
            read_since_tick: false,
            wrote_since_tick: false,
            partial_since: None,
            last_write: now,
        })
    }
}

impl Session {
    /// A session for `client`, known as `id` (its `CLIENT ID` with shared links).
    pub fn new(client: Stream, shared: Arc<Shared>, id: u64) -> Self {
        let core = SessionCore::new(&shared, id);
        let shares = core.on_shared;
        Session {
            watchdog: Watchdog::new(&shared.config),
            sharing: shares.then(Sharing::new),
            core,
            shared,
            client,
            client_in: BytesMut::new(),
            client_eof: false,
            parser: RequestParser::new(),
            link: None,
            link_failure: None,
            id,
            published_server_id: None,
            published_identity: (2, None),
        }
    }

    /// Serves the client (from `peer`) until it leaves, breaks the protocol, or the proxy shuts down.
    pub async fn run(mut self, peer: std::net::SocketAddr) {
        let id = self.id;
        self.core.handle.set_addr(peer);
        match self.serve().await {
            Ok(()) => tracing::debug!(id, %peer, "session closed"),
            Err(error @ SessionError::Dropped(_)) => tracing::info!(id, %peer, %error, "session ended"),
            Err(error) => tracing::debug!(id, %peer, %error, "session ended"),
        }
    }

    async fn serve(&mut self) -> Result<(), SessionError> {
        let shutdown = self.shared.shutdown.clone();
        let mut control: watch::Receiver<u64> = self.shared.gate.subscribe();
        loop {
            if let Some(resend) = self.core.settle_parked(&self.shared) {
                // Sent again, to the new primary, before anything the client sent after them.
                let mut input = BytesMut::with_capacity(resend.len() + self.client_in.len());
                input.extend_from_slice(&resend);
                input.extend_from_slice(&self.client_in);
                self.client_in = input;
            }
            match self.step() {
                Next::Wait => {}
                Next::Connect => {
                    self.connect().await;
                    continue;
                }
                Next::CloseNow => return Ok(()),
            }
            self.reconcile();
            // The turn's metrics, before the client can see the replies they count.
            self.core.ledger.tally.flush(&self.shared.telemetry);
            if !self.core.ledger.shadowed.is_empty() {
                self.shared.shadow.send(self.core.ledger.shadowed.drain(..));
            }
            if self.core.finished(self.client_eof) {
                return Ok(());
            }
            // A session holding a write, or with state to move, must hear the gate open and the primary switch;
            // the others notice a switch at their next command.
            let park_deadline = self.core.park_deadline();
            let listening = self.core.holds_write() || self.core.must_move_actively() || park_deadline.is_some();
            let park_timer = tokio::time::sleep_until(park_deadline.unwrap_or_else(Instant::now).into());
            tokio::select! {
                biased;
                polled = poll_fn(|cx| self.poll_io(cx)) => polled?,
                _ = control.changed(), if listening => {}
                () = park_timer, if park_deadline.is_some() => {}
                () = shutdown.cancelled(), if !self.core.draining => self.core.draining = true,
            }
            // The clock is read once per turn: the replies handled now and the requests sent next share it.
            self.core.ledger.now = Instant::now();
            self.handle_replies();
            // Checked once the replies are in, never between a pinning request and its being sent.
            let own_idle = self.link.as_ref().is_none_or(|l| l.input.is_empty());
            if self.core.may_unpin(own_idle) {
                self.unpin();
            }
        }
    }

    /// The core's start of a turn (a switch to follow, a blocking call to issue again), then the requests.
    fn step(&mut self) -> Next {
        let (leave, start) = self
            .core
            .on_turn(&self.shared, self.link.as_ref().map(|l| l.generation));
        if leave && let Some(link) = self.link.take() {
            tracing::debug!(backend = %link.server.addr, "leaving the replaced primary");
        }
        let next = match start {
            Start::Requests => self.handle_requests(),
            Start::Wait => Next::Wait,
            Start::Connect => Next::Connect,
        };
        self.flush_shared();
        next
    }

    /// Returns a pinned session to the shared links; its connection is kept ready for another session when the
    /// core says it can be.
    fn unpin(&mut self) {
        let own = self.link.as_ref().map(|l| l.generation);
        let kept = self.core.unpin(&self.shared, own);
        if let (Some(link), Some((key, id))) = (self.link.take(), kept) {
            self.shared.links.spares.give_back(key, link, id);
        }
        self.sharing = Some(Sharing::new());
    }

    /// Appends the requests the core gathered for the shared link in this turn to it, in one go.
    fn flush_shared(&mut self) {
        let Some(sharing) = self.sharing.as_mut().filter(|_| self.core.shared_count > 0) else {
            return;
        };
        let (requests, count) = (&self.core.shared_out, self.core.shared_count);
        let link = sharing.link.as_ref().expect("requests are gathered for a link");
        if !link.send(&sharing.inbox, requests, count) {
            // The link failed or was retired since the requests were gathered: they go to a fresh one.
            let fresh = self
                .shared
                .links
                .get(&link.key, &self.shared.primary.current(), &self.shared.link_context);
            if !fresh.send(&sharing.inbox, requests, count) {
                // It failed at once too (the server refuses connections): the requests get its reason.
                let reason = fresh.failure().unwrap_or_else(|| "backend link closed".into());
                sharing.failure = Some(LinkFailure::NotSent(reason));
            }
            link.detach(&sharing.inbox);
            fresh.attach(&sharing.inbox);
            sharing.link = Some(fresh);
        }
        self.core.shared_out.clear();
        self.core.shared_count = 0;
    }

    /// Moves the session to the shared link of `key` (a new one, replacing its current link, if that `stalled`).
    fn move_to(&mut self, key: &LinkKey, stalled: bool) {
        let sharing = self.sharing.as_mut().expect("the session shares links");
        let primary = self.shared.primary.current();
        let avoid = sharing.link.as_ref().filter(|_| stalled);
        let link = self
            .shared
            .links
            .get_avoiding(key, &primary, &self.shared.link_context, avoid);
        if let Some(old) = sharing.link.replace(link.clone()) {
            old.detach(&sharing.inbox);
        }
        link.attach(&sharing.inbox);
    }

    /// Brings the shared accounting in line with the session (see [`SessionCore::reconcile`]), and publishes its
    /// server connection's id in the directory.
    fn reconcile(&mut self) {
        let own = self.link.as_ref().map(|l| (l.generation, l.local_addr));
        self.core.reconcile(&self.shared, own);
        if self.core.ledger.virtual_id.is_some() {
            let server_id = self.core.server_id(self.link.is_some());
            if server_id != self.published_server_id {
                self.core.handle.set_server_id(server_id);
                self.published_server_id = server_id;
            }
        }
        let state = &self.core.ledger.state;
        if (state.protocol, &state.name) != (self.published_identity.0, &self.published_identity.1) {
            self.core.handle.set_identity(state.protocol, state.name.as_deref());
            self.published_identity = (state.protocol, state.name.clone());
        }
    }

    /// Hands every complete request in the client's input to the core, and does what it says.
    fn handle_requests(&mut self) -> Next {
        if self.core.closing || self.core.draining {
            return Next::Wait;
        }
        loop {
            if self.core.replication_stream {
                match self.link.as_ref() {
                    Some(_) => self.core.own_out.extend_from_slice(&self.client_in),
                    None => self.core.closing = true,
                }
                self.client_in.clear();
                return Next::Wait;
            }
            if !self.core.has_room() {
                return Next::Wait;
            }
            let n = match self.parser.parse(&self.client_in) {
                Parsed::Incomplete => {
                    if let Some(dog) = self.watchdog.as_mut() {
                        let partial = !self.client_in.is_empty();
                        dog.partial_since = partial.then(|| dog.partial_since.unwrap_or(self.core.ledger.now));
                    }
                    return Next::Wait;
                }
                Parsed::Empty(n) => {
                    self.client_in.advance(n);
                    continue;
                }
                Parsed::Error(error) => {
                    tracing::info!(%error, "protocol error from client; closing it after the reply");
                    let mut reply = BytesMut::new();
                    error.write_reply(&mut reply);
                    self.core.on_protocol_error(reply.freeze());
                    self.client_in.clear();
                    return Next::Wait;
                }
                Parsed::Request(n) => n,
            };
            let links = Links {
                own: self.link.as_ref().map(|l| l.generation),
                shared: self
                    .sharing
                    .as_ref()
                    .and_then(|s| s.link.as_ref())
                    .map(|l| (&l.key, l.stalled(self.core.ledger.now))),
            };
            let request = Request {
                args: self.parser.args(&self.client_in),
                raw: &self.client_in[..n],
            };
            let verdict = self.core.on_request(&self.shared, links, request);
            if !self.core.on_shared && self.sharing.is_some() {
                // The request pinned the session.
                self.sharing = None;
            }
            match verdict {
                Verdict::Taken => self.client_in.advance(n),
                Verdict::Moved { key, stalled } => {
                    self.move_to(&key, stalled);
                    self.client_in.advance(n);
                }
                Verdict::Wait => return Next::Wait,
                Verdict::Connect => return Next::Connect,
                Verdict::Close => {
                    self.client_in.clear();
                    return Next::Wait;
                }
                Verdict::CloseNow => return Next::CloseNow,
            }
        }
    }

    /// Opens a connection of the session's own to the current primary, and the core restores the session's state on
    /// it. If the primary cannot be reached, every complete request received so far is answered with an error
    /// naming it; the next request tries again.
    async fn connect(&mut self) {
        let primary = self.shared.primary.current();
        let side = primary.server.side;
        if self.shared.config.backend_links == crate::config::BackendLinks::Shared {
            // A session pinning off the shared links takes a connection kept ready, in this same turn.
            let key = self.core.link_key(&self.shared);
            let context = &self.shared.link_context;
            if let Some((link, in_place, id)) = self.shared.links.spares.take(&key, &primary, context) {
                self.core.on_own_link(&self.shared, side, Some((in_place, id)));
                self.link = Some(link);
                return;
            }
        }
        let timeout = Duration::from_millis(self.shared.config.connect_timeout_ms);
        match backend::connect(&primary.server, timeout, self.shared.backend_tls.as_ref()).await {
            Ok(stream) => {
                let telemetry = self.shared.telemetry.clone();
                let link = BackendLink::new(stream, primary.server.clone(), primary.generation, telemetry);
                self.core.on_own_link(&self.shared, side, None);
                tracing::debug!(backend = %primary.server.addr, "backend link open");
                self.link = Some(link);
            }
            Err(error) => {
                tracing::warn!(%error, "backend connect failed");
                let reply = error_reply(&error.to_string());
                self.core.on_connect_failed(&reply);
                loop {
                    match self.parser.parse(&self.client_in) {
                        Parsed::Request(n) => {
                            let request = Request {
                                args: self.parser.args(&self.client_in),
                                raw: &self.client_in[..n],
                            };
                            self.core.refuse(&self.shared, request, reply.clone());
                            self.client_in.advance(n);
                        }
                        Parsed::Empty(n) => self.client_in.advance(n),
                        Parsed::Incomplete | Parsed::Error(_) => break,
                    }
                }
            }
        }
    }

    /// Hands every complete reply from the backend to the core, then deals with a failed connection.
    fn handle_replies(&mut self) {
        if self.core.replication_stream {
            if let Some(link) = self.link.as_mut() {
                self.core.ledger.client_out.extend_from_slice(&link.input);
                link.input.clear();
            }
        } else if let Some(link) = self.link.as_mut() {
            let retired = link.generation != self.shared.primary.generation();
            self.core.ledger.frame_generation = link.generation;
            loop {
                match link.scanner.scan(&link.input) {
                    Scanned::Incomplete => break,
                    Scanned::Invalid => {
                        self.link_failure = Some("sent bytes that are not RESP".into());
                        break;
                    }
                    Scanned::Frame { len, push } => {
                        self.core.on_own_frame(&link.input[..len], push, retired);
                        link.input.advance(len);
                    }
                }
            }
        }
        if let Some(reason) = self.link_failure.take()
            && let Some(link) = self.link.take()
        {
            let message = format!("backend {} {} {reason}", link.server.side.name(), link.server.addr);
            let killed = self.shared.link_context.kills.recent();
            self.core.on_own_link_lost(&message, killed);
        }
        self.handle_shared_replies();
    }

    /// Hands the replies that arrived from the session's shared link to the core, then its failure, if it failed.
    fn handle_shared_replies(&mut self) {
        let Some(sharing) = self.sharing.as_mut() else { return };
        if let Some(link) = &sharing.link {
            self.core.ledger.frame_generation = link.key.generation;
        }
        loop {
            match sharing.scanner.scan(&sharing.input) {
                Scanned::Frame { len, push } => {
                    self.core.ledger.on_frame(&sharing.input[..len], push, false);
                    sharing.input.advance(len);
                }
                Scanned::Incomplete => break,
                Scanned::Invalid => {
                    sharing.failure = Some(LinkFailure::Lost("sent bytes that are not RESP".into()));
                    sharing.input.clear();
                    break;
                }
            }
        }
        if let Some(failure) = sharing.failure.take() {
            sharing.link = None;
            self.core.on_shared_link_failure(failure);
        }
    }

    fn wants_client_input(&self) -> bool {
        !self.client_eof && self.core.wants_input()
    }

    /// Why the client must be dropped now, if it must: silent for too long while nothing is owed to it, a request
    /// left incomplete for too long (also when it trickles in, a byte at a time), or replies it stopped reading.
    fn watchdog_verdict(&self, now: Instant) -> Option<&'static str> {
        let dog = self.watchdog.as_ref()?;
        let ledger = &self.core.ledger;
        if let Some(limit) = dog.idle_timeout {
            let waiting_legitimately = !ledger.pending.is_empty() || ledger.state.subscribed() || ledger.state.monitor;
            if dog.partial_since.is_some_and(|since| now - since > limit) {
                return Some("a request stayed incomplete longer than client_idle_timeout_s");
            }
            if !waiting_legitimately && now - dog.last_read > limit {
                return Some("idle longer than client_idle_timeout_s");
            }
        }
        if let Some(limit) = dog.output_timeout
            && ledger.client_out.len() >= OUTPUT_HIGH_WATER
            && now - dog.last_write > limit
        {
            return Some("it stopped reading its replies for client_output_timeout_s");
        }
        None
    }

    /// Moves bytes on both connections as far as they will go without waiting; ready once anything moved.
    fn poll_io(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SessionError>> {
        let mut progress = false;
        let client_out = &mut self.core.ledger.client_out;
        while !client_out.is_empty() {
            match Pin::new(&mut self.client).poll_write(cx, client_out) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(SessionError::ClientGone)),
                Poll::Ready(Ok(n)) => {
                    client_out.advance(n);
                    self.shared.telemetry.bytes_to_clients.increment(n as u64);
                    if let Some(dog) = self.watchdog.as_mut() {
                        dog.wrote_since_tick = true;
                    }
                    progress = true;
                }
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error.into())),
                Poll::Pending => break,
            }
        }
        if let Some(link) = self.link.as_mut().filter(|_| self.link_failure.is_none()) {
            let output = &mut self.core.own_out;
            while !output.is_empty() {
                match Pin::new(&mut link.stream).poll_write(cx, output) {
                    Poll::Ready(Ok(n)) if n > 0 => {
                        output.advance(n);
                        progress = true;
                    }
                    Poll::Ready(Ok(_)) => {
                        self.link_failure = Some("closed the connection".into());
                        progress = true;
                        break;
                    }
                    Poll::Ready(Err(error)) => {
                        self.link_failure = Some(format!("connection error: {error}"));
                        progress = true;
                        break;
                    }
                    Poll::Pending => break,
                }
            }
            // Backpressure: replies the client has not taken yet stay in Redis's buffer, not the proxy's.
            if self.link_failure.is_none() && self.core.ledger.client_out.len() < OUTPUT_HIGH_WATER {
                make_room(&mut link.input);
                match poll_read_buf(Pin::new(&mut link.stream), cx, &mut link.input) {
                    Poll::Ready(Ok(0)) => {
                        self.link_failure = Some("closed the connection".into());
                        progress = true;
                    }
                    Poll::Ready(Ok(_)) => progress = true,
                    Poll::Ready(Err(error)) => {
                        self.link_failure = Some(format!("connection error: {error}"));
                        progress = true;
                    }
                    Poll::Pending => {}
                }
            }
        }
        // Only the proxy's own ids can be killed (shared links).
        if self.core.ledger.virtual_id.is_some() && self.core.handle.poll_killed(cx.waker()) {
            return Poll::Ready(Err(SessionError::Dropped("killed by CLIENT KILL")));
        }
        if let Some(sharing) = self.sharing.as_mut() {
            sharing.inbox.register(cx.waker());
            let (got, failure) = sharing.inbox.take(&mut sharing.input);
            sharing.failure = sharing.failure.take().or(failure);
            // A failure found while sending (the link failed before the requests could be appended) is handled
            // now too: nothing will wake the session for it.
            if got || sharing.failure.is_some() {
                progress = true;
            }
        }
        if self.wants_client_input() {
            make_room(&mut self.client_in);
            match poll_read_buf(Pin::new(&mut self.client), cx, &mut self.client_in) {
                Poll::Ready(Ok(0)) => {
                    self.client_eof = true;
                    progress = true;
                }
                Poll::Ready(Ok(n)) => {
                    self.shared.telemetry.bytes_from_clients.increment(n as u64);
                    if let Some(dog) = self.watchdog.as_mut() {
                        dog.read_since_tick = true;
                    }
                    progress = true;
                }
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error.into())),
                Poll::Pending => {}
            }
        }
        if let Some(dog) = self.watchdog.as_mut()
            && dog.timer.as_mut().poll(cx).is_ready()
        {
            let now = Instant::now();
            let next = tokio::time::Instant::from_std(now + dog.period);
            dog.timer.as_mut().reset(next);
            if std::mem::take(&mut dog.read_since_tick) {
                dog.last_read = now;
            }
            if std::mem::take(&mut dog.wrote_since_tick) {
                dog.last_write = now;
            }
            if let Some(reason) = self.watchdog_verdict(now) {
                return Poll::Ready(Err(SessionError::Dropped(reason)));
            }
            // Poll once more so that the timer's waker is registered for the next period.
            if let Some(dog) = self.watchdog.as_mut() {
                let _ = dog.timer.as_mut().poll(cx);
            }
        }
        if progress { Poll::Ready(Ok(())) } else { Poll::Pending }
    }
}

/// Makes sure a read has room for a useful amount of data: a connection's first reads get a small buffer (most
/// clients send small commands, and a silent one costs little), which grows to [`READ_CHUNK`] once a read fills it.
fn make_room(buf: &mut BytesMut) {
    let spare = buf.capacity() - buf.len();
    if buf.capacity() == 0 {
        buf.reserve(FIRST_READ);
    } else if spare < buf.capacity().min(READ_CHUNK) / 4 {
        buf.reserve(READ_CHUNK);
    }
}

impl Drop for Session {
    // Gives back whatever the session holds in the shared accounting, however the session ends.
    fn drop(&mut self) {
        self.core.ledger.tally.flush(&self.shared.telemetry);
        self.core.release(&self.shared);
        self.shared.directory.leave(self.id);
    }
}

/// Decrements the client count when a session task ends, however it ends.
pub struct ClientSlot(pub Arc<Shared>);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::Relaxed);
    }
}
