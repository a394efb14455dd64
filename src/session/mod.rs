//! One client's session: its connection, its own link to the primary (1:1), and the state Redis keeps for it.
//!
//! A session runs as one task. Its loop reads what the client sent, forwards each complete request to the
//! backend as the frame's raw bytes (many frames per write when a pipeline arrives), and streams the backend's
//! replies back in order. It parses only what it must observe: the command name, and the arguments of commands
//! that change the session's state (see [`state`]).

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
use crate::command::Command;
use crate::gate::WriteGate;
use crate::links::{Inbox, LinkFailure, LinkKey, SharedLink};
use crate::net::Stream;
use crate::protocol::reply::ReplyScanner;
use crate::protocol::reply::Scanned;
use crate::protocol::request::{Args, Parsed, RequestParser};
use crate::shared::Shared;
use crate::telemetry::Family;
use state::{Blocked, Core, Effect, Expect};

/// Room made in a read buffer before each read.
const READ_CHUNK: usize = 16 * 1024;
/// Replies waiting for the client beyond this stop the session reading more from its backend.
const OUTPUT_HIGH_WATER: usize = 4 << 20;
/// Requests waiting for the backend beyond this stop the session reading more from its client.
const MAX_BACKEND_OUTPUT: usize = 1 << 20;
/// Requests a session may have unanswered on a shared link: one client's deep pipeline cannot fill the link
/// ahead of everyone else's requests.
const MAX_SHARED_IN_FLIGHT: usize = 1024;

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

/// One client connection and everything the proxy keeps for it.
pub struct Session {
    shared: Arc<Shared>,
    client: Stream,
    client_in: BytesMut,
    client_eof: bool,
    parser: RequestParser,
    link: Option<BackendLink>,
    /// Why the backend link failed, found while polling; handled once the replies read before it are out.
    link_failure: Option<String>,
    core: Core,
    /// Answer what is pending, then close (after a protocol error, QUIT, or a lost backend link that held
    /// state the client relied on).
    closing: bool,
    /// The proxy is shutting down: take no new requests, finish the ones in flight.
    draining: bool,
    /// This session's place at the write gate.
    gate: GateSlot,
    /// WATCH was in force on a server the session has left: the next EXEC must abort (answer null).
    watch_broken: bool,
    /// A blocking call ended by a switch, to issue again on the new primary.
    reissue: Option<Blocked>,
    /// A PING sent on a retired link so that everything the old server sent before it reaches the client.
    barrier_sent: bool,
    /// The generation this session is counted under in the move tracker, if it has state to move.
    mover_counted: Option<u64>,
    /// The generation it last settled on.
    settled_generation: u64,
    /// The backend connection registered as blocked in the move tracker.
    blocked_registered: Option<crate::moves::BlockedConn>,
    /// Limits on clients that go quiet or stop reading; absent when both are off.
    watchdog: Option<Watchdog>,
    /// The client's standing with the proxy's own `requirepass`.
    auth: ProxyAuth,
    /// The client sent SYNC or PSYNC (it is a replica): from then on bytes pass through unparsed both ways,
    /// since the stream carries an RDB payload that is not RESP.
    replication_stream: bool,
    /// The session's requests go to shared links (`backend_links = "shared"`) while it is not pinned to a
    /// connection of its own.
    sharing: Option<Sharing>,
    /// Pinned by a command whose effect the proxy does not follow (CLIENT PAUSE, CLIENT NO-EVICT, MONITOR, ...):
    /// the session keeps its connection for good.
    pinned_for_good: bool,
    /// The session's id in the proxy's directory (see [`crate::clients`]).
    id: u64,
    /// Its entry there, with shared links: its id is the one its client sees.
    handle: Option<Arc<crate::clients::Handle>>,
    /// The server connection id last recorded there.
    published_server_id: Option<i64>,
    /// The session's own connection got state that its key does not describe (CLIENT TRACKING leaves the keys it
    /// tracked in the server's table, CLIENT SETINFO a library name, ...): it is closed, not kept, when the session
    /// returns to the shared links.
    own_link_tainted: bool,
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
    /// Requests gathered in this turn, and how many, appended to the link in one go.
    output: BytesMut,
    count: usize,
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
            output: BytesMut::new(),
            count: 0,
            failure: None,
        }
    }
}

/// Where a request goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    /// Onto the session's shared link.
    Shared,
    /// Onto its own connection, which it has.
    Own,
}

/// The client's standing with the proxy's `requirepass`.
#[derive(Debug)]
struct ProxyAuth {
    /// Whether the client gave the password (always true without one).
    authenticated: bool,
}

/// What the proxy's `requirepass` check makes of one request. A verdict, never a flag kept for later: whatever
/// path the request then takes (answered here, refused, or failed to reach a server), nothing of it outlives it.
#[derive(Debug, PartialEq)]
enum AuthVerdict {
    /// Forward the request as it is.
    Forward,
    /// A HELLO whose AUTH (at this position, with its two arguments) the proxy checked: forward it without
    /// them, and count the client as authenticated once it is forwarded.
    ForwardWithoutAuth(usize),
    /// Answer this here.
    Answer(Bytes),
}

impl ProxyAuth {
    /// Answers AUTH and checks HELLO ... AUTH against `password`, and refuses anything else before the client
    /// authenticated, with Redis's own replies.
    fn check(&mut self, password: &[u8], command: Command, args: crate::protocol::request::Args<'_>) -> AuthVerdict {
        let default_user_with = |user: Option<&[u8]>, given: Option<&[u8]>| {
            user.is_none_or(|u| u == b"default") && given.is_some_and(|g| crate::config::secret_matches(g, password))
        };
        let wrong = Bytes::from_static(b"-WRONGPASS invalid username-password pair or user is disabled.\r\n");
        match command {
            Command::Auth => {
                let ok = match args.len() {
                    2 => default_user_with(None, args.get(1)),
                    3 => default_user_with(args.get(1), args.get(2)),
                    _ => {
                        return AuthVerdict::Answer(Bytes::from_static(
                            b"-ERR wrong number of arguments for 'auth' command\r\n",
                        ));
                    }
                };
                self.authenticated |= ok;
                AuthVerdict::Answer(if ok { Bytes::from_static(b"+OK\r\n") } else { wrong })
            }
            Command::Hello => match (1..args.len()).find(|&i| args.is(i, "AUTH")) {
                Some(at) if args.len() > at + 2 => {
                    if default_user_with(args.get(at + 1), args.get(at + 2)) {
                        AuthVerdict::ForwardWithoutAuth(at)
                    } else {
                        AuthVerdict::Answer(wrong)
                    }
                }
                Some(_) => AuthVerdict::Forward,
                None if self.authenticated => AuthVerdict::Forward,
                None => AuthVerdict::Answer(Bytes::from_static(
                    b"-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> \
                      AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol \
                      version at the same time\r\n",
                )),
            },
            _ if self.authenticated => AuthVerdict::Forward,
            _ => AuthVerdict::Answer(Bytes::from_static(b"-NOAUTH Authentication required.\r\n")),
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
        let watchdog = Watchdog::new(&shared.config);
        let auth = ProxyAuth {
            authenticated: shared.config.requirepass.is_none(),
        };
        let shares = shared.config.backend_links == crate::config::BackendLinks::Shared;
        let sharing = shares.then(Sharing::new);
        let handle = shares.then(|| shared.directory.enter(id));
        let mut core = Core::new(shared.telemetry.clone());
        if shares {
            core.virtual_id = Some(id);
            core.local_reply_mode = true;
        }
        Session {
            core,
            shared,
            client,
            client_in: BytesMut::new(),
            client_eof: false,
            parser: RequestParser::new(),
            link: None,
            link_failure: None,

            closing: false,
            draining: false,
            gate: GateSlot::default(),
            watch_broken: false,
            reissue: None,
            barrier_sent: false,
            mover_counted: None,
            settled_generation: 0,
            blocked_registered: None,
            watchdog,
            auth,
            replication_stream: false,
            sharing,
            pinned_for_good: false,
            id,
            handle,
            published_server_id: None,
            own_link_tainted: false,
        }
    }

    /// Serves the client until it leaves, breaks the protocol, or the proxy shuts down.
    pub async fn run(mut self) {
        match self.serve().await {
            Ok(()) => tracing::debug!("session closed"),
            Err(error @ SessionError::Dropped(_)) => tracing::info!(%error, "session ended"),
            Err(error) => tracing::debug!(%error, "session ended"),
        }
    }

    async fn serve(&mut self) -> Result<(), SessionError> {
        let shutdown = self.shared.shutdown.clone();
        let mut control: watch::Receiver<u64> = self.shared.gate.subscribe();
        loop {
            match self.step() {
                Next::Wait => {}
                Next::Connect => {
                    self.connect().await;
                    continue;
                }
                Next::CloseNow => return Ok(()),
            }
            self.reconcile();
            if self.finished() {
                return Ok(());
            }
            // A session holding a write, or with state to move, must hear the gate open and the primary switch;
            // the others notice a switch at their next command.
            let listening = self.gate.held || self.must_move_actively();
            tokio::select! {
                biased;
                polled = poll_fn(|cx| self.poll_io(cx)) => polled?,
                _ = control.changed(), if listening => {}
                () = shutdown.cancelled(), if !self.draining => self.draining = true,
            }
            // The clock is read once per turn: the replies handled now and the requests sent next share it.
            self.core.now = Instant::now();
            self.handle_replies();
            // Checked once the replies are in, never between a pinning request and its being sent.
            if self.may_unpin() {
                self.unpin();
            }
        }
    }

    /// Leaves a link to a replaced primary when it is safe, issues a blocking call again, then handles requests.
    fn step(&mut self) -> Next {
        if self.replication_stream
            && let Some(link) = &self.link
            && link.generation != self.shared.primary.generation()
        {
            // A replica's stream from the former primary ends; it reconnects, and its PSYNC reaches the new one
            // (which continues OLD's replication history, so the resync is partial).
            tracing::info!(backend = %link.server.addr, "replication stream closed: the primary was replaced");
            self.link = None;
            self.closing = true;
            return Next::Wait;
        }
        if let Some(link) = &self.link
            && link.generation != self.shared.primary.generation()
            && let Some(next) = self.leave_stale_link()
        {
            return next;
        }
        if let Some(blocked) = self.reissue.take() {
            let Some(link) = self.link.as_mut() else {
                self.reissue = Some(blocked);
                return Next::Connect;
            };
            self.core.ask_client_id(&mut link.output);
            let args: Vec<&[u8]> = blocked.args.iter().map(|a| &a[..]).collect();
            crate::protocol::request::write_command(&mut link.output, &args);
            self.core.plan_reissued(blocked);
        }
        let next = self.handle_requests();
        self.flush_shared();
        next
    }

    /// Whether a pinned session's connection state is gone (its transaction answered, its blocking call answered,
    /// its last subscription ended), so that it can return to the shared links.
    fn may_unpin(&self) -> bool {
        let core = &self.core;
        let state = &core.state;
        self.sharing.is_none()
            && !self.pinned_for_good
            && self.shared.config.backend_links == crate::config::BackendLinks::Shared
            && core.pending.is_empty()
            && !core.multi_open
            && self.reissue.is_none()
            && !self.watch_broken
            && !self.replication_stream
            && !self.closing
            && !state.in_multi
            && !state.watching
            && !state.subscribed()
            && !state.monitor
            && !state.readonly
            && state.tracking.is_none()
            && self
                .link
                .as_ref()
                .is_none_or(|l| l.output.is_empty() && l.input.is_empty())
    }

    /// Returns a pinned session to the shared links. Its connection is kept ready for the next session that pins
    /// when its state is exactly a link key's (no name); else it is closed.
    fn unpin(&mut self) {
        tracing::debug!("session back on the shared links");
        if let Some(link) = self.link.take()
            && !std::mem::take(&mut self.own_link_tainted)
            && self.core.state.name.is_none()
            && link.generation == self.shared.primary.generation()
        {
            let key = session_key(&self.shared, &self.core.state);
            self.shared.links.spares.give_back(key, link, self.core.link_client_id);
        }
        self.core.forget_link();
        self.sharing = Some(Sharing::new());
        self.shared.telemetry.unpinned();
    }

    /// Appends the requests gathered for the shared link in this turn to it, in one go.
    fn flush_shared(&mut self) {
        let Some(sharing) = self.sharing.as_mut().filter(|s| s.count > 0) else {
            return;
        };
        let link = sharing.link.as_ref().expect("requests are gathered for a link");
        if !link.send(&sharing.inbox, &sharing.output, sharing.count) {
            // The link failed or was retired since the requests were gathered: they go to a fresh one.
            let fresh = self
                .shared
                .links
                .get(&link.key, &self.shared.primary.current(), &self.shared.link_context);
            if !fresh.send(&sharing.inbox, &sharing.output, sharing.count) {
                // It failed at once too (the server refuses connections): the requests get its reason.
                let reason = fresh.failure().unwrap_or_else(|| "backend link closed".into());
                sharing.failure = Some(LinkFailure::NotSent(reason));
            }
            link.detach(&sharing.inbox);
            fresh.attach(&sharing.inbox);
            sharing.link = Some(fresh);
        }
        sharing.output.clear();
        sharing.count = 0;
    }

    /// The primary was replaced. A session moves at a safe point: no reply owed on the old link and no
    /// transaction open. Subscribers and tracking users first send a PING through the old link, so that every
    /// message the old server sent reaches the client before the link closes. Returns what the loop does now,
    /// or `None` to go on handling requests (which connect to the new primary when they need to).
    fn leave_stale_link(&mut self) -> Option<Next> {
        if self.core.multi_open {
            // A transaction the gate let through finishes where it began.
            return None;
        }
        if !self.core.pending.is_empty() {
            return Some(Next::Wait);
        }
        let state = &self.core.state;
        if (state.subscribed() || state.tracking.is_some()) && !self.barrier_sent {
            if let Some(link) = self.link.as_mut() {
                self.core.push_internal(&mut link.output, &[b"PING"]);
                self.barrier_sent = true;
            }
            return Some(Next::Wait);
        }
        self.retire_link();
        if self.must_move_actively() || self.reissue.is_some() {
            Some(Next::Connect)
        } else {
            None
        }
    }

    /// Closes a link to a replaced primary. WATCH cannot move between servers: the next EXEC will abort.
    fn retire_link(&mut self) {
        if let Some(link) = self.link.take() {
            tracing::debug!(backend = %link.server.addr, "leaving the replaced primary");
        }
        self.barrier_sent = false;
        self.core.forget_link();
        if self.core.state.watching {
            self.core.state.watching = false;
            self.watch_broken = true;
        }
    }

    /// The credentials for a link to `side` when the proxy authenticates clients itself (`requirepass`); `None` when
    /// clients' own AUTH passes through.
    fn proxy_credentials(&self, side: crate::primary::Side) -> Option<state::Credentials> {
        proxy_credentials(&self.shared.config, side)
    }

    /// Whether the session has state that must follow a switch without waiting for a command.
    fn must_move_actively(&self) -> bool {
        let state = &self.core.state;
        state.subscribed() || state.tracking.is_some() || self.core.blocked_call().is_some()
    }

    /// Brings the shared accounting in line with the session: its write ticket, its blocked call, and whether it
    /// still has state to move.
    fn reconcile(&mut self) {
        if self.gate.has_ticket && self.core.pending_writes == 0 && !self.core.multi_open {
            self.shared.gate.return_ticket();
            self.gate.has_ticket = false;
        }
        let blocked = match (&self.link, self.core.blocked_call()) {
            (Some(link), Some(_)) => Some(crate::moves::BlockedConn {
                generation: link.generation,
                id: self.core.link_client_id,
                addr: link.local_addr,
            }),
            _ => None,
        };
        if let Some(handle) = &self.handle {
            let server_id = self.link.as_ref().and(self.core.link_client_id);
            if server_id != self.published_server_id {
                handle.set_server_id(server_id);
                self.published_server_id = server_id;
            }
        }
        if blocked != self.blocked_registered {
            self.shared.moves.set_blocked(self.blocked_registered, blocked);
            self.blocked_registered = blocked;
        }
        let counted = if self.must_move_actively() {
            if let Some(link) = self.link.as_ref().filter(|_| !self.core.awaiting_internal()) {
                self.settled_generation = link.generation;
            }
            Some(self.settled_generation)
        } else {
            None
        };
        if counted != self.mover_counted {
            self.shared.moves.shift(self.mover_counted, counted);
            self.mover_counted = counted;
        }
    }

    /// Forwards every complete request in the client's input, or answers it locally.
    fn handle_requests(&mut self) -> Next {
        if self.closing || self.draining {
            return Next::Wait;
        }
        if self.replication_stream {
            match self.link.as_mut() {
                Some(link) => link.output.extend_from_slice(&self.client_in),
                None => self.closing = true,
            }
            self.client_in.clear();
            return Next::Wait;
        }
        loop {
            if self.link.as_ref().is_some_and(|l| l.output.len() >= MAX_BACKEND_OUTPUT) {
                return Next::Wait;
            }
            if self.sharing.is_some() && self.core.pending.len() >= MAX_SHARED_IN_FLIGHT {
                return Next::Wait;
            }
            match self.parser.parse(&self.client_in) {
                Parsed::Incomplete => {
                    if let Some(dog) = self.watchdog.as_mut() {
                        let partial = !self.client_in.is_empty();
                        dog.partial_since = if partial {
                            Some(dog.partial_since.unwrap_or(self.core.now))
                        } else {
                            None
                        };
                    }
                    return Next::Wait;
                }
                Parsed::Empty(n) => self.client_in.advance(n),
                Parsed::Error(error) => {
                    tracing::info!(%error, "protocol error from client; closing it after the reply");
                    let mut reply = BytesMut::new();
                    error.write_reply(&mut reply);
                    self.core.push_local(reply.freeze());
                    self.client_in.clear();
                    self.closing = true;
                    return Next::Wait;
                }
                Parsed::Request(n) => {
                    let args = self.parser.args(&self.client_in);
                    let command = Command::classify(args.get(0).unwrap_or_default());
                    match command {
                        Command::SecurityWarning => {
                            tracing::warn!("possible SECURITY ATTACK detected: HTTP sent to the Redis port; dropped");
                            return Next::CloseNow;
                        }
                        Command::Quit => {
                            self.client_in.advance(n);
                            self.core.push_local(Bytes::from_static(b"+OK\r\n"));
                            self.closing = true;
                            return Next::Wait;
                        }
                        // Redis checks the protocol version before HELLO's options: a server without RESP3
                        // answers NOPROTO whatever follows the 3, and authenticates nobody.
                        Command::Hello if self.shared.resp3_pinned.load(Ordering::Relaxed) && args.is(1, "3") => {
                            tracing::debug!("HELLO 3 refused: clients are pinned to RESP2");
                            let reply = unknown_command_reply(args);
                            self.client_in.advance(n);
                            self.core.push_local(reply);
                            continue;
                        }
                        _ => {}
                    }
                    let auth = match self.shared.config.requirepass.as_deref() {
                        Some(password) => self.auth.check(password.as_bytes(), command, args),
                        None => AuthVerdict::Forward,
                    };
                    if let AuthVerdict::Answer(reply) = auth {
                        self.client_in.advance(n);
                        self.core.push_local(reply);
                        continue;
                    }
                    let mut rewritten = None;
                    if let Some(id) = self.core.virtual_id.filter(|_| !self.core.multi_open) {
                        match answer_for_session(&self.shared.directory, id, command, args, &mut self.core) {
                            Some(Intercepted::Answered) => {
                                self.client_in.advance(n);
                                continue;
                            }
                            Some(Intercepted::AnsweredThenClose) => {
                                self.client_in.clear();
                                self.closing = true;
                                return Next::Wait;
                            }
                            Some(Intercepted::Rewritten(args)) => rewritten = Some(args),
                            None => {}
                        }
                    }
                    if let Some(sharing) = &self.sharing {
                        if let Some(reply) = answer_on_shared_link(command, args, &mut self.core.state) {
                            self.client_in.advance(n);
                            self.core.push_local(reply);
                            continue;
                        }
                        if pins(command, args) {
                            // The command's effect lives on the connection: the session gets its own, once the
                            // replies owed on the shared link have arrived (so its commands run in order).
                            if !self.core.pending.is_empty() || sharing.count > 0 {
                                return Next::Wait;
                            }
                            tracing::debug!("session pinned to a connection of its own");
                            self.sharing = None;
                            self.shared.telemetry.pinned();
                        }
                    }
                    if self.sharing.is_none() && self.shared.config.backend_links == crate::config::BackendLinks::Shared
                    {
                        // RESET ends every mode a connection can be in.
                        self.pinned_for_good = match command {
                            Command::Reset => false,
                            _ => self.pinned_for_good || pin_lasts(command, args),
                        };
                    }
                    if command == Command::Replication && !self.core.multi_open {
                        // Replies still owed go first; then the connection carries the replication stream.
                        if !self.core.pending.is_empty() {
                            return Next::Wait;
                        }
                        let Some(link) = self.link.as_mut() else {
                            return Next::Connect;
                        };
                        if self.parser.is_inline() {
                            self.parser.encode_multibulk(&self.client_in, &mut link.output);
                        } else {
                            link.output.extend_from_slice(&self.client_in[..n]);
                        }
                        self.client_in.advance(n);
                        self.replication_stream = true;
                        tracing::info!(backend = %link.server.addr, "the client is a replica: passing its stream through");
                        return self.handle_requests();
                    }
                    let in_transaction = self.core.multi_open;
                    let gated = !in_transaction && (command.is_write(args.get(1)) || command == Command::Multi);
                    if gated && !self.gate.pass(&self.shared.gate, command.is_blocking()) {
                        return Next::Wait;
                    }
                    let route = if let Some(sharing) = self.sharing.as_mut() {
                        match shared_route(&self.shared, sharing, &self.core, command, args) {
                            Some(route) => route,
                            None => return Next::Wait,
                        }
                    } else if self.link.is_some() {
                        Route::Own
                    } else {
                        return Next::Connect;
                    };
                    // A HELLO ... SETNAME on a shared link names the link: its own name is given back right after (the
                    // session's name is kept by the proxy).
                    let link_name = match (route, &self.sharing) {
                        (Route::Shared, Some(sharing)) if command == Command::Hello => (2..args.len())
                            .any(|i| args.is(i, "SETNAME"))
                            .then(|| sharing.link.as_ref().map(|l| crate::links::link_name(&l.key)))
                            .flatten(),
                        _ => None,
                    };
                    if route == Route::Own
                        && matches!(command, Command::Client | Command::ReadOnly | Command::ReadWrite)
                    {
                        self.own_link_tainted = true;
                    }
                    let output = match route {
                        Route::Own => &mut self.link.as_mut().expect("the session has its own link").output,
                        Route::Shared => {
                            let sharing = self.sharing.as_mut().expect("the session shares links");
                            sharing.count += 1 + usize::from(link_name.is_some());
                            &mut sharing.output
                        }
                    };
                    match command {
                        Command::Exec if in_transaction && self.watch_broken => {
                            // The keys were WATCHed on the server the session left: the transaction must not
                            // run unguarded here. Discard it and answer as Redis does for a WATCH conflict.
                            self.core
                                .push_hidden(output, &[b"DISCARD"], Effect::Discard, Expect::One);
                            self.core.multi_open = false;
                            let null: &'static [u8] = if self.core.state.protocol >= 3 {
                                b"_\r\n"
                            } else {
                                b"*-1\r\n"
                            };
                            self.core.push_local(Bytes::from_static(null));
                            self.watch_broken = false;
                            self.client_in.advance(n);
                            continue;
                        }
                        Command::Exec | Command::Discard | Command::Unwatch | Command::Reset => {
                            self.watch_broken = false
                        }
                        Command::Eval => {
                            if let Some(body) = args.get(1) {
                                self.shared.scripts.remember(body);
                            }
                        }
                        Command::Script if args.is(1, "LOAD") => {
                            if let Some(body) = args.get(2) {
                                self.shared.scripts.remember(body);
                            }
                        }
                        Command::Script if args.is(1, "FLUSH") => self.shared.scripts.clear(),
                        Command::Client if args.is(1, "KILL") => self.shared.link_context.kills.note(),
                        _ => {}
                    }
                    let blocked = if command.is_blocking() { Blocked::of(args) } else { None };
                    if blocked.is_some() {
                        self.core.ask_client_id(output);
                    }
                    let write = (gated && blocked.is_none()) || (in_transaction && command == Command::Exec);
                    self.core.plan(command, args, write, blocked);
                    let strip_auth = match auth {
                        AuthVerdict::ForwardWithoutAuth(at) => {
                            // The client authenticated with the proxy: the server gets HELLO without that AUTH.
                            self.auth.authenticated = true;
                            Some(at)
                        }
                        _ => None,
                    };
                    if let Some(rewritten) = &rewritten {
                        let args: Vec<&[u8]> = rewritten.iter().map(|a| &a[..]).collect();
                        crate::protocol::request::write_command(output, &args);
                    } else if let Some(at) = strip_auth {
                        let kept: Vec<&[u8]> = (0..args.len())
                            .filter(|i| !(at..at + 3).contains(i))
                            .filter_map(|i| args.get(i))
                            .collect();
                        crate::protocol::request::write_command(output, &kept);
                    } else if self.parser.is_inline() {
                        self.parser.encode_multibulk(&self.client_in, output);
                    } else {
                        output.extend_from_slice(&self.client_in[..n]);
                    }
                    if let Some(name) = link_name {
                        self.core
                            .push_internal(output, &[b"CLIENT", b"SETNAME", name.as_bytes()]);
                    }
                    self.client_in.advance(n);
                }
            }
        }
    }

    /// Opens a link to the current primary and restores the session's state on it. If the primary cannot be
    /// reached, every complete request received so far is answered with an error naming it; the next request
    /// tries again.
    async fn connect(&mut self) {
        let primary = self.shared.primary.current();
        if self.shared.config.backend_links == crate::config::BackendLinks::Shared {
            // A session pinning off the shared links takes a connection kept ready, in this same turn.
            let key = session_key(&self.shared, &self.core.state);
            let context = &self.shared.link_context;
            if let Some((mut link, in_place, id)) = self.shared.links.spares.take(&key, &primary, context) {
                let proxy_credentials = self.proxy_credentials(primary.server.side);
                self.core
                    .restore_on(&mut link.output, proxy_credentials.as_ref(), in_place);
                // Its id, so that other clients can name this one by the proxy's id (CLIENT UNBLOCK, ...): known
                // already for a connection kept ready, else asked.
                match id {
                    Some(id) => {
                        self.core.link_client_id = Some(id);
                        self.core.link_client_id_asked = true;
                    }
                    None => self.core.ask_client_id(&mut link.output),
                }
                self.own_link_tainted = false;
                self.link = Some(link);
                return;
            }
        }
        let timeout = Duration::from_millis(self.shared.config.connect_timeout_ms);
        match backend::connect(&primary.server, timeout, self.shared.backend_tls.as_ref()).await {
            Ok(stream) => {
                let telemetry = self.shared.telemetry.clone();
                let mut link = BackendLink::new(stream, primary.server.clone(), primary.generation, telemetry);
                let proxy_credentials = self.proxy_credentials(primary.server.side);
                self.core
                    .restore_on(&mut link.output, proxy_credentials.as_ref(), false);
                if self.core.virtual_id.is_some() {
                    self.core.ask_client_id(&mut link.output);
                }
                tracing::debug!(backend = %primary.server.addr, "backend link open");
                self.own_link_tainted = false;
                self.link = Some(link);
            }
            Err(error) => {
                tracing::warn!(%error, "backend connect failed");
                let reply = error_reply(&error.to_string());
                if self.core.backend_lost(&reply) || self.reissue.take().is_some() {
                    // Subscriptions, tracking or a blocked call could not be carried over: end the session as a
                    // lost server connection would.
                    self.closing = true;
                }
                loop {
                    match self.parser.parse(&self.client_in) {
                        Parsed::Request(n) => {
                            let family = Family::of(Command::classify(self.parser.arg(&self.client_in, 0)));
                            self.shared.telemetry.command(family);
                            self.shared.telemetry.local_error(family);
                            self.client_in.advance(n);
                            self.core.push_local(reply.clone());
                        }
                        Parsed::Empty(n) => self.client_in.advance(n),
                        Parsed::Incomplete | Parsed::Error(_) => break,
                    }
                }
            }
        }
    }

    /// Passes every complete reply from the backend to the client, then deals with a failed link.
    fn handle_replies(&mut self) {
        if self.replication_stream {
            if let Some(link) = self.link.as_mut() {
                self.core.client_out.extend_from_slice(&link.input);
                link.input.clear();
            }
        } else if let Some(link) = self.link.as_mut() {
            let retired = link.generation != self.shared.primary.generation();
            loop {
                match link.scanner.scan(&link.input) {
                    Scanned::Incomplete => break,
                    Scanned::Invalid => {
                        self.link_failure = Some("sent bytes that are not RESP".into());
                        break;
                    }
                    Scanned::Frame { len, push } => {
                        if let Some(ended) = self.core.on_frame(&link.input[..len], push, retired) {
                            match ended.remaining() {
                                Some(again) => self.reissue = Some(again),
                                None => self.core.client_out.extend_from_slice(&link.input[..len]),
                            }
                        }
                        link.input.advance(len);
                    }
                }
            }
        }
        if let Some(reason) = self.link_failure.take() {
            self.drop_link(&reason);
        }
        self.handle_shared_replies();
    }

    /// Settles the session's pending requests with the replies that arrived from its shared link, then deals with
    /// the link's failure: requests that never reached the server get an error; requests whose outcome is unknown
    /// close the client's connection, as a lost connection closes a direct client's.
    fn handle_shared_replies(&mut self) {
        let Some(sharing) = self.sharing.as_mut() else { return };
        loop {
            match sharing.scanner.scan(&sharing.input) {
                Scanned::Frame { len, push } => {
                    self.core.on_frame(&sharing.input[..len], push, false);
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
        match sharing.failure.take() {
            None => {}
            Some(LinkFailure::NotSent(message)) => {
                tracing::warn!(%message, "shared backend link unusable");
                sharing.link = None;
                self.core.backend_lost(&error_reply(&message));
            }
            Some(LinkFailure::Lost(reason)) => {
                tracing::warn!(%reason, pending = self.core.pending.len(), "shared backend link lost: closing the client");
                sharing.link = None;
                self.core.pending.retain(|p| matches!(p.effect, Effect::Local(_)));
                self.core.pending_writes = 0;
                self.closing = true;
            }
        }
    }

    /// Forgets the backend link: pending requests get an error, and a session whose state lived on that link
    /// (a transaction, subscriptions, ...) is closed after the errors, as a direct connection would have been.
    fn drop_link(&mut self, reason: &str) {
        let Some(link) = self.link.take() else { return };
        let message = format!("backend {} {} {reason}", link.server.side.name(), link.server.addr);
        tracing::warn!(%message, pending = self.core.pending.len(), "backend link lost");
        if self.core.backend_lost(&error_reply(&message)) || self.replication_stream {
            self.closing = true;
        } else if self.shared.link_context.kills.recent() {
            tracing::info!("backend connection closed right after a CLIENT KILL: closing the client's too");
            self.closing = true;
        }
    }

    /// Whether the session has nothing left to do.
    fn finished(&self) -> bool {
        if self.client_eof {
            // Redis drops a client as soon as it reads its EOF; requests read before it still run.
            return self.link.as_ref().is_none_or(|l| l.output.is_empty());
        }
        (self.closing || self.draining) && self.core.pending.is_empty() && self.core.client_out.is_empty()
    }

    fn wants_client_input(&self) -> bool {
        !self.client_eof
            && !self.closing
            && !self.draining
            && self.link.as_ref().is_none_or(|l| l.output.len() < MAX_BACKEND_OUTPUT)
            && (self.sharing.is_none()
                || self.core.pending.len() < MAX_SHARED_IN_FLIGHT && self.core.client_out.len() < OUTPUT_HIGH_WATER)
    }

    /// Why the client must be dropped now, if it must: silent for too long while nothing is owed to it, a request
    /// left incomplete for too long (also when it trickles in, a byte at a time), or replies it stopped reading.
    fn watchdog_verdict(&self, now: Instant) -> Option<&'static str> {
        let dog = self.watchdog.as_ref()?;
        if let Some(limit) = dog.idle_timeout {
            let waiting_legitimately =
                !self.core.pending.is_empty() || self.core.state.subscribed() || self.core.state.monitor;
            if dog.partial_since.is_some_and(|since| now - since > limit) {
                return Some("a request stayed incomplete longer than client_idle_timeout_s");
            }
            if !waiting_legitimately && now - dog.last_read > limit {
                return Some("idle longer than client_idle_timeout_s");
            }
        }
        if let Some(limit) = dog.output_timeout
            && self.core.client_out.len() >= OUTPUT_HIGH_WATER
            && now - dog.last_write > limit
        {
            return Some("it stopped reading its replies for client_output_timeout_s");
        }
        None
    }

    /// Moves bytes on both connections as far as they will go without waiting; ready once anything moved.
    fn poll_io(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SessionError>> {
        let mut progress = false;
        while !self.core.client_out.is_empty() {
            match Pin::new(&mut self.client).poll_write(cx, &self.core.client_out) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(SessionError::ClientGone)),
                Poll::Ready(Ok(n)) => {
                    self.core.client_out.advance(n);
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
            while !link.output.is_empty() {
                match Pin::new(&mut link.stream).poll_write(cx, &link.output) {
                    Poll::Ready(Ok(n)) if n > 0 => {
                        link.output.advance(n);
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
            if self.link_failure.is_none() && self.core.client_out.len() < OUTPUT_HIGH_WATER {
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
        if let Some(handle) = &self.handle
            && handle.poll_killed(cx.waker())
        {
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

/// A session's place at the write gate.
#[derive(Debug, Default)]
struct GateSlot {
    /// Whether the session holds a write ticket (see [`crate::gate`]).
    has_ticket: bool,
    /// Whether the next request is a write held at the closed gate.
    held: bool,
}

impl GateSlot {
    /// Lets a write through the gate, or holds it. The ticket is taken before the gate is looked at; a
    /// blocking call takes none, since the handover cannot wait for it to be answered.
    fn pass(&mut self, gate: &WriteGate, blocking: bool) -> bool {
        if !blocking && !self.has_ticket {
            gate.take_ticket();
            self.has_ticket = true;
        }
        if gate.is_closed() {
            if !self.held {
                self.held = true;
                gate.hold();
            }
            return false;
        }
        if self.held {
            self.held = false;
            gate.release();
        }
        true
    }
}

/// The credentials for a link to `side` when the proxy authenticates clients itself (`requirepass`); `None` when
/// clients' own AUTH passes through.
fn proxy_credentials(config: &crate::config::Config, side: crate::primary::Side) -> Option<state::Credentials> {
    config.requirepass.as_ref()?;
    let (user, password) = match side {
        crate::primary::Side::Old => (&config.old_user, &config.old_password),
        crate::primary::Side::New => (&config.new_user, &config.new_password),
    };
    let password = password.as_ref()?;
    Some(state::Credentials {
        user: user.as_deref().map(|u| Bytes::copy_from_slice(u.as_bytes())),
        password: Bytes::from(password.clone()),
    })
}

/// The shared link a request goes to: the one of the session's connection state, or, for a SELECT, AUTH or HELLO
/// that changes it, the one of the state it asks for. There the command is a no-op that answers as Redis would
/// (the link has that state already), or fails as Redis would (the link could not get it either), and the
/// session's state follows the reply.
fn request_key(shared: &Shared, state: &state::SessionState, command: Command, args: Args<'_>) -> LinkKey {
    let checked_by_proxy = shared.config.requirepass.is_some();
    let mut key = session_key(shared, state);
    match command {
        Command::Select if args.len() == 2 => {
            if let Some(db) = args.get(1).and_then(crate::protocol::request::string_to_i64) {
                key.db = db;
            }
        }
        Command::Auth if !checked_by_proxy => match args.len() {
            2 => key.credentials = Some((None, Bytes::copy_from_slice(args.get(1).unwrap_or_default()))),
            3 => {
                let user = Bytes::copy_from_slice(args.get(1).unwrap_or_default());
                key.credentials = Some((Some(user), Bytes::copy_from_slice(args.get(2).unwrap_or_default())));
            }
            _ => {}
        },
        Command::Hello => {
            if let Some(hello) = state::parse_hello(args) {
                if let Some(protocol) = hello.protocol {
                    key.protocol = protocol;
                }
                if let Some(auth) = hello.auth.filter(|_| !checked_by_proxy) {
                    key.credentials = Some((auth.user, auth.password));
                }
            }
        }
        _ => {}
    }
    key
}

/// The key of a link to the current primary in the connection state of a session in `state`.
fn session_key(shared: &Shared, state: &state::SessionState) -> LinkKey {
    let primary = shared.primary.current();
    let proxy_auth = proxy_credentials(&shared.config, primary.server.side);
    let checked_by_proxy = shared.config.requirepass.is_some();
    LinkKey {
        generation: primary.generation,
        db: state.db,
        protocol: state.protocol,
        credentials: match proxy_auth {
            Some(c) => Some((c.user, c.password)),
            None if checked_by_proxy => None,
            None => state.password.clone().map(|p| (state.user.clone(), p)),
        },
    }
}

/// Whether a link of `key` has the connection state of a session in `state` on the primary of `generation` (when
/// the proxy checks `requirepass`, the credentials are the configured ones of the primary's side, so the
/// generation decides them).
fn serves(key: &LinkKey, state: &state::SessionState, generation: u64, checked_by_proxy: bool) -> bool {
    let credentials = || {
        let theirs = key
            .credentials
            .as_ref()
            .map(|(user, password)| (user.as_ref(), password));
        theirs == state.password.as_ref().map(|password| (state.user.as_ref(), password))
    };
    key.generation == generation
        && key.db == state.db
        && key.protocol == state.protocol
        && (checked_by_proxy || credentials())
}

/// Redis's rule for a client name (networking.c, `validateClientName`): printable ASCII without spaces.
fn valid_client_name(name: &[u8]) -> bool {
    name.iter().all(|b| (b'!'..=b'~').contains(b))
}

/// The route of a request that needs no connection of its own, to the link for its key (see `request_key`), or
/// `None` to wait: the session's link has another key (its state changed, or the primary was replaced) and replies are
/// still owed on it (they come first).
fn shared_route(
    shared: &Shared,
    sharing: &mut Sharing,
    core: &Core,
    command: Command,
    args: Args<'_>,
) -> Option<Route> {
    // A session that owes nothing on its link may leave it: it does when the link has stalled (see
    // `crate::links::STALL`), so that its requests are not held behind another session's.
    let movable = core.pending.is_empty() && sharing.count == 0;
    let stalled = movable && sharing.link.as_ref().is_some_and(|l| l.stalled(core.now));
    // The common case, with no allocation: a command that changes no connection state, and the session's link
    // still has the session's state.
    let changes_state = matches!(command, Command::Select | Command::Auth | Command::Hello);
    if !changes_state
        && !stalled
        && let Some(link) = &sharing.link
        && serves(
            &link.key,
            &core.state,
            shared.primary.generation(),
            shared.config.requirepass.is_some(),
        )
    {
        return Some(Route::Shared);
    }
    let key = request_key(shared, &core.state, command, args);
    match &sharing.link {
        Some(link) if link.key == key && !stalled => return Some(Route::Shared),
        Some(_) if !movable => return None,
        _ => {}
    }
    let primary = shared.primary.current();
    let avoid = sharing.link.as_ref().filter(|_| stalled);
    let link = shared.links.get_avoiding(&key, &primary, &shared.link_context, avoid);
    if let Some(old) = sharing.link.replace(link.clone()) {
        old.detach(&sharing.inbox);
    }
    link.attach(&sharing.inbox);
    Some(Route::Shared)
}

/// Whether a command's effect lives on the backend connection, so that a session sending it needs a connection of
/// its own (it cannot go on a shared link). Everything that changes the connection's state (db, user, protocol,
/// transactions, subscriptions, reply mode, tracking, ...) or blocks it does; commands that only read or change
/// data, or act on the whole server, do not.
pub fn pins(command: Command, args: crate::protocol::request::Args<'_>) -> bool {
    match command {
        Command::Read | Command::Write | Command::Unknown => {
            // WAIT blocks its connection until replicas acknowledge its writes; SHUTDOWN must not wait behind
            // other sessions' requests on a link.
            args.is(0, "WAIT") || args.is(0, "WAITAOF") || args.is(0, "SHUTDOWN")
        }
        // SCRIPT KILL and FUNCTION KILL must reach Redis while a script runs: on a shared link they would wait
        // behind the very script they are meant to stop (its caller may share the link).
        Command::Script | Command::Function => args.is(1, "KILL"),
        Command::Eval | Command::EvalSha | Command::XGroup => false,
        // Without MULTI or WATCH these only answer an error or OK, and change nothing.
        Command::Exec | Command::Discard | Command::Unwatch => false,
        // CLIENT PAUSE pins its sender, whose later commands (UNPAUSE above all) must not queue behind writes
        // that the pause holds on a shared link.
        Command::Client => !["KILL", "LIST", "INFO", "SETINFO", "UNBLOCK", "HELP", "ID", "REPLY"]
            .iter()
            .any(|sub| args.is(1, sub)),
        Command::Quit | Command::SecurityWarning => false,
        // They change the connection's state, which is part of a shared link's key: see `request_key`.
        Command::Auth | Command::Hello | Command::Select => false,
        Command::BlockingRead
        | Command::BlockingWrite
        | Command::Multi
        | Command::Watch
        | Command::Subscribe
        | Command::Unsubscribe
        | Command::Monitor
        | Command::Reset
        | Command::ReadOnly
        | Command::ReadWrite
        | Command::Replication => true,
    }
}

/// What the proxy did with a request about the client's own connection, answered from its own id.
enum Intercepted {
    /// Answered here (or, for CLIENT REPLY OFF and SKIP, given no reply, as Redis gives none).
    Answered,
    /// The session killed itself (`CLIENT KILL ID <own> SKIPME no`): answered, then closed.
    AnsweredThenClose,
    /// Forwarded with these arguments instead (the session id replaced by the server connection's).
    Rewritten(Vec<Bytes>),
}

/// With shared links, the commands that name a client by id use the proxy's ids (see [`crate::clients`]): `CLIENT
/// ID`, `CLIENT KILL ID`, `CLIENT UNBLOCK`, `CLIENT LIST ID` and `CLIENT TRACKING ... REDIRECT` of a session, and
/// `CLIENT REPLY`, which the proxy applies itself (a shared link must keep answering). `None` when the request goes
/// to the server as it is.
fn answer_for_session(
    directory: &crate::clients::Directory,
    own_id: u64,
    command: Command,
    args: Args<'_>,
    core: &mut Core,
) -> Option<Intercepted> {
    if command != Command::Client {
        return None;
    }
    let number = |i: usize| {
        args.get(i)
            .and_then(crate::protocol::request::string_to_i64)
            .and_then(|n| u64::try_from(n).ok())
    };
    let ours = |id: u64| id >= crate::clients::FIRST_ID;
    let integer = |n: u64| Bytes::from(format!(":{n}\r\n"));
    if args.is(1, "ID") && args.len() == 2 {
        core.push_local(integer(own_id));
        return Some(Intercepted::Answered);
    }
    if args.is(1, "REPLY") && args.len() == 3 {
        let mode = if args.is(2, "ON") {
            state::ReplyMode::On
        } else if args.is(2, "OFF") {
            state::ReplyMode::Off
        } else if args.is(2, "SKIP") {
            state::ReplyMode::SkipNext
        } else {
            return None;
        };
        match mode {
            state::ReplyMode::On => {
                core.reply_mode = mode;
                core.push_local(Bytes::from_static(b"+OK\r\n"));
            }
            // SKIP while replies are off changes nothing.
            state::ReplyMode::SkipNext if core.reply_mode == state::ReplyMode::Off => {}
            _ => core.reply_mode = mode,
        }
        return Some(Intercepted::Answered);
    }
    if args.is(1, "KILL") && args.len() >= 4 && args.len().is_multiple_of(2) {
        // The filter form with ID (and SKIPME) only; any other filter goes to the server.
        let (mut id, mut skip_me) = (None, true);
        for i in (2..args.len()).step_by(2) {
            if args.is(i, "ID") {
                id = Some(number(i + 1).filter(|&n| ours(n))?);
            } else if args.is(i, "SKIPME") && args.is(i + 1, "YES") {
                skip_me = true;
            } else if args.is(i, "SKIPME") && args.is(i + 1, "NO") {
                skip_me = false;
            } else {
                return None;
            }
        }
        let id = id?;
        if id == own_id {
            core.push_local(integer(u64::from(!skip_me)));
            return Some(if skip_me {
                Intercepted::Answered
            } else {
                Intercepted::AnsweredThenClose
            });
        }
        let killed = directory.kill(id);
        core.push_local(integer(u64::from(killed)));
        return Some(Intercepted::Answered);
    }
    if args.is(1, "UNBLOCK") && (3..=4).contains(&args.len()) {
        // A session's blocked call waits on a connection of its own (blocking calls pin).
        let id = number(2).filter(|&n| ours(n))?;
        if args.len() == 4 && !args.is(3, "TIMEOUT") && !args.is(3, "ERROR") {
            return None;
        }
        return Some(match directory.server_id(id) {
            Some(server_id) => {
                let mut rewritten = owned_args(args);
                rewritten[2] = Bytes::from(server_id.to_string());
                Intercepted::Rewritten(rewritten)
            }
            None => {
                core.push_local(integer(0));
                Intercepted::Answered
            }
        });
    }
    // CLIENT LIST ID id... and CLIENT TRACKING ... REDIRECT id name connections: a pinned session's own, else none
    // (its id is left as it is, which no server connection has).
    let named_from = if args.is(1, "LIST") && args.is(2, "ID") {
        Some(3)
    } else if args.is(1, "TRACKING") {
        (3..args.len()).find(|&i| args.is(i - 1, "REDIRECT"))
    } else {
        None
    };
    let from = named_from?;
    let until = if args.is(1, "LIST") { args.len() } else { from + 1 };
    let mut rewritten = owned_args(args);
    let mut changed = false;
    for (i, arg) in rewritten.iter_mut().enumerate().take(until).skip(from) {
        if let Some(server_id) = number(i).filter(|&n| ours(n)).and_then(|n| directory.server_id(n)) {
            *arg = Bytes::from(server_id.to_string());
            changed = true;
        }
    }
    changed.then_some(Intercepted::Rewritten(rewritten))
}

/// A request's arguments, owned.
fn owned_args(args: Args<'_>) -> Vec<Bytes> {
    (0..args.len())
        .map(|i| Bytes::copy_from_slice(args.get(i).unwrap_or_default()))
        .collect()
}

/// Whether a pinning command's effect stays on the connection where the proxy cannot see it end, so that its
/// session never returns to the shared links (until a RESET). The others (MULTI, WATCH, blocking calls,
/// subscriptions, tracking, CLIENT REPLY, READONLY) leave state the session follows, and it returns once that state
/// is gone.
fn pin_lasts(command: Command, args: Args<'_>) -> bool {
    match command {
        Command::Monitor | Command::Replication => true,
        Command::Client => ["PAUSE", "UNPAUSE", "NO-EVICT", "NO-TOUCH"]
            .iter()
            .any(|sub| args.is(1, sub)),
        _ => false,
    }
}

/// The reply to a command a session on a shared link gets from the proxy itself, because it concerns the
/// client's connection, which the proxy keeps (its name), or `None` when it goes to the server.
fn answer_on_shared_link(
    command: Command,
    args: crate::protocol::request::Args<'_>,
    state: &mut state::SessionState,
) -> Option<Bytes> {
    if command != Command::Client {
        return None;
    }
    if args.is(1, "SETNAME") && args.len() == 3 {
        let name = args.get(2).unwrap_or_default();
        // A name Redis refuses goes to the server for its error.
        if !valid_client_name(name) {
            return None;
        }
        state.name = (!name.is_empty()).then(|| Bytes::copy_from_slice(name));
        return Some(Bytes::from_static(b"+OK\r\n"));
    }
    if args.is(1, "GETNAME") && args.len() == 2 {
        return Some(match &state.name {
            Some(name) => {
                let mut reply = BytesMut::new();
                reply.extend_from_slice(b"$");
                reply.extend_from_slice(itoa::Buffer::new().format(name.len()).as_bytes());
                reply.extend_from_slice(b"\r\n");
                reply.extend_from_slice(name);
                reply.extend_from_slice(b"\r\n");
                reply.freeze()
            }
            None if state.protocol >= 3 => Bytes::from_static(b"_\r\n"),
            None => Bytes::from_static(b"$-1\r\n"),
        });
    }
    None
}

/// Makes sure a read has room for a useful amount of data.
fn make_room(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
}

/// The reply to `HELLO 3` when clients are pinned to RESP2: exactly what Redis 5.0, which has no HELLO, answers
/// (`networking.c`/`server.c` of 5.0: the name as sent, then each argument in backquotes while the list is under
/// 128 characters). Clients that negotiate RESP3 take it as "stay on RESP2" (README, "Upgrading without the
/// RESP3 surprise"), as they did when OLD was a 5.0.
pub fn unknown_command_reply(args: crate::protocol::request::Args<'_>) -> Bytes {
    let until_nul = |a: &[u8]| a.iter().position(|&b| b == 0).map_or(a, |end| &a[..end]).to_vec();
    let mut listed: Vec<u8> = Vec::new();
    for i in 1..args.len() {
        if listed.len() >= 128 {
            break;
        }
        let arg = until_nul(args.get(i).unwrap_or_default());
        let room = 128 - listed.len();
        listed.push(b'`');
        listed.extend_from_slice(&arg[..arg.len().min(room)]);
        listed.extend_from_slice(b"`, ");
    }
    let mut reply = b"-ERR unknown command `".to_vec();
    reply.extend(until_nul(args.get(0).unwrap_or_default()));
    reply.extend_from_slice(b"`, with args beginning with: ");
    reply.extend(listed);
    for byte in &mut reply[1..] {
        if *byte == b'\r' || *byte == b'\n' {
            *byte = b' ';
        }
    }
    reply.extend_from_slice(b"\r\n");
    Bytes::from(reply)
}

/// An `-ERR` reply with `message`, as Redis writes errors (no CR or LF inside).
pub fn error_reply(message: &str) -> Bytes {
    let clean: String = message
        .chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect();
    Bytes::from(format!("-ERR {clean}\r\n"))
}

impl Drop for Session {
    // Gives back whatever the session holds in the shared accounting, however the session ends.
    fn drop(&mut self) {
        if self.gate.has_ticket {
            self.shared.gate.return_ticket();
        }
        if self.gate.held {
            self.shared.gate.release();
        }
        self.shared.moves.set_blocked(self.blocked_registered, None);
        self.shared.moves.shift(self.mover_counted, None);
        if self.handle.is_some() {
            self.shared.directory.leave(self.id);
        }
    }
}

/// Decrements the client count when a session task ends, however it ends.
pub struct ClientSlot(pub Arc<Shared>);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::Relaxed);
    }
}
