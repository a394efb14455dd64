//! Every decision a session makes for its client, with no I/O: [`SessionCore`] takes parsed requests, reply frames
//! and what happened to its connections, and says what to do (forward on a link, answer here, hold at the gate, pin,
//! connect, close). The requests it forwards are written to its own buffers, which the socket driver
//! ([`super::Session`]) moves to the links.
//!
//! It reads the proxy's shared state ([`Shared`]: the configuration, the primary's generation, the write gate, the
//! directory of sessions, the script cache), and never calls the parts of it that do I/O (the links' registry, the
//! spare connections): a link to open is named by its key, and the driver opens it.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::state::{self, Blocked, Effect, Expect, Ledger};
use crate::command::{Command, CommandId};
use crate::config::BackendLinks;
use crate::gate::WriteGate;
use crate::links::LinkKey;
use crate::primary::Side;
use crate::protocol::request::{Args, write_command};
use crate::shared::Shared;

/// Requests waiting for the session's own connection beyond this stop it taking more from its client.
pub const MAX_BACKEND_OUTPUT: usize = 1 << 20;
/// Requests a session may have unanswered on a shared link: one client's deep pipeline cannot fill the link
/// ahead of everyone else's requests.
pub const MAX_SHARED_IN_FLIGHT: usize = 1024;
/// Replies waiting for the client beyond this stop the session taking more replies (and, on shared links, more
/// requests).
pub const OUTPUT_HIGH_WATER: usize = 4 << 20;

/// One complete request from the client.
#[derive(Clone, Copy)]
pub struct Request<'a> {
    pub args: Args<'a>,
    /// Its bytes as the client sent them.
    pub raw: &'a [u8],
}

/// What the session's connections are now, as the core needs to know them.
#[derive(Clone, Copy, Default)]
pub struct Links<'a> {
    /// The generation of the primary that the session's own connection goes to, if it has one.
    pub own: Option<u64>,
    /// The key of its shared link, if it has one, and whether that link stalled (see [`crate::links::STALL`]).
    pub shared: Option<(&'a LinkKey, bool)>,
}

/// What becomes of one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Forwarded (into [`SessionCore::own_out`] or [`SessionCore::shared_out`]) or answered: on to the next one.
    Taken,
    /// Forwarded into `shared_out`, for the shared link of `key`, which the session moves to first (a new link
    /// replacing its current one, if `stalled`).
    Moved { key: LinkKey, stalled: bool },
    /// Left in the input until replies arrive, the gate opens or there is room.
    Wait,
    /// Left in the input: it needs a connection of the session's own first.
    Connect,
    /// Answered; the client's connection closes once it has its answers (the rest of its input is not read).
    Close,
    /// Drop the client at once (an HTTP request sent to the Redis port).
    CloseNow,
}

/// What a session does at the start of a turn, before its requests.
#[derive(Debug, PartialEq, Eq)]
pub enum Start {
    /// Go on with the requests.
    Requests,
    /// Wait for the sockets.
    Wait,
    /// Open a connection of its own first.
    Connect,
}

/// Every per-client decision of a session, with no I/O.
pub struct SessionCore {
    /// What Redis keeps for the client, and the requests whose replies it still owes.
    pub ledger: Ledger,
    /// While replies are held back (see [`state::Parked`]): the number of the first look at the servers that
    /// started after, whose verdict counts. Counted in [`Shared::parked_sessions`] while set.
    park: Option<u64>,
    /// Requests for the session's own connection, not yet written to it.
    pub own_out: BytesMut,
    /// Requests for its shared link gathered in this turn, and how many: the driver appends them to the link in one
    /// go.
    pub shared_out: BytesMut,
    pub shared_count: usize,
    /// The proxy shares links (`backend_links = "shared"`).
    shares: bool,
    /// The session's requests go to shared links now (it is not pinned to a connection of its own).
    pub on_shared: bool,
    /// The client's standing with the proxy's own `requirepass`.
    auth: ProxyAuth,
    /// Its place at the write gate.
    gate: GateSlot,
    /// WATCH was in force on a server the session has left: the next EXEC must abort (answer null).
    watch_broken: bool,
    /// The proxy refused a command inside the open MULTI: the EXEC must abort (EXECABORT), as Redis aborts a
    /// transaction with a command refused while queueing.
    transaction_refused: bool,
    /// A blocking call ended by a switch, to issue again on the new primary.
    reissue: Option<Blocked>,
    /// A PING sent on a retired connection so that everything the old server sent before it reaches the client.
    barrier_sent: bool,
    /// The client sent SYNC or PSYNC (it is a replica): from then on bytes pass through unparsed both ways, since
    /// the stream carries an RDB payload that is not RESP.
    pub replication_stream: bool,
    /// Pinned by a command whose effect the proxy does not follow (CLIENT PAUSE, CLIENT NO-EVICT, MONITOR, ...):
    /// the session keeps its connection for good.
    pinned_for_good: bool,
    /// The session's own connection got state that its key does not describe (CLIENT TRACKING leaves the keys it
    /// tracked in the server's table, CLIENT SETINFO a library name, ...): it is closed, not kept, when the session
    /// returns to the shared links.
    own_link_tainted: bool,
    /// The last request forwarded was ASKING, which holds for the connection's next command: the session keeps
    /// its connection until that command is sent.
    asking: bool,
    /// Answer what is pending, then close (after a protocol error, QUIT, or a lost connection that held state the
    /// client relied on).
    pub closing: bool,
    /// The proxy is shutting down: take no new requests, finish the ones in flight.
    pub draining: bool,
    /// The session's entry in the directory of clients (its card in the census).
    pub handle: Arc<crate::clients::Handle>,
    /// The generation this session is counted under in the move tracker, if it has state to move.
    mover_counted: Option<u64>,
    /// The generation it last settled on.
    settled_generation: u64,
    /// Counted in [`Shared::transactions_open`] (a MULTI of its is open).
    transaction_counted: bool,
    /// The state of its generator of draws for shadow reads.
    shadow_draws: u64,
    /// Its own connection, registered as blocked in the move tracker.
    blocked_registered: Option<crate::moves::BlockedConn>,
}

impl SessionCore {
    /// The core of a session known as `id` (its `CLIENT ID` with shared links).
    pub fn new(shared: &Shared, id: u64) -> SessionCore {
        let shares = shared.config.backend_links == BackendLinks::Shared;
        let mut ledger = Ledger::new(shared.telemetry.clone());
        if let Some(place) = &shared.cluster {
            ledger.redirects = Some(place.front.clone());
            ledger.cluster_port = place.port;
        }
        if shares {
            ledger.virtual_id = Some(id);
            ledger.local_reply_mode = true;
        }
        SessionCore {
            handle: shared.directory.enter(id),
            ledger,
            own_out: BytesMut::new(),
            shared_out: BytesMut::new(),
            shared_count: 0,
            shares,
            on_shared: shares,
            auth: ProxyAuth {
                authenticated: shared.config.requirepass.is_none(),
            },
            gate: GateSlot::default(),
            park: None,
            watch_broken: false,
            transaction_refused: false,
            reissue: None,
            barrier_sent: false,
            replication_stream: false,
            pinned_for_good: false,
            own_link_tainted: false,
            asking: false,
            closing: false,
            draining: false,
            mover_counted: None,
            settled_generation: 0,
            transaction_counted: false,
            shadow_draws: id.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
            blocked_registered: None,
        }
    }

    /// Whether the session takes another request now: its own connection's output and its requests in flight on a
    /// shared link have room.
    pub fn has_room(&self) -> bool {
        self.own_out.len() < MAX_BACKEND_OUTPUT && (!self.on_shared || self.ledger.pending.len() < MAX_SHARED_IN_FLIGHT)
    }

    /// Whether the session reads more from its client now.
    pub fn wants_input(&self) -> bool {
        !self.closing
            && !self.draining
            && self.own_out.len() < MAX_BACKEND_OUTPUT
            && (!self.on_shared
                || self.ledger.pending.len() < MAX_SHARED_IN_FLIGHT && self.ledger.client_out.len() < OUTPUT_HIGH_WATER)
    }

    /// Whether a write of the session is held at the closed gate (it must hear the gate open).
    pub fn holds_write(&self) -> bool {
        self.gate.held
    }

    /// Answers a request the client sent in breach of the protocol; the client's connection closes after it.
    pub fn on_protocol_error(&mut self, reply: Bytes) {
        self.ledger.push_local(reply);
        self.closing = true;
    }

    /// Decides what becomes of one request, and forwards it or answers it. A request taken (not left to wait) is
    /// counted in the census of commands.
    pub fn on_request(&mut self, env: &Shared, links: Links<'_>, request: Request<'_>) -> Verdict {
        if self.ledger.parked.is_some() {
            // Nothing overtakes requests that may be sent again.
            return Verdict::Wait;
        }
        let name = request.args.get(0).unwrap_or_default();
        let (command, id) = Command::lookup(name);
        let verdict = self.decide(env, links, request, command, id);
        if !matches!(verdict, Verdict::Wait | Verdict::Connect | Verdict::CloseNow) {
            use crate::readiness::census::DetailKey;
            let tally = &mut self.ledger.tally;
            if id == CommandId::UNKNOWN {
                tally.detail(&env.telemetry, DetailKey::new(name, None));
            } else {
                tally.name(&env.telemetry, id);
                if id.has_subcommands()
                    && let Some(sub) = request.args.get(1)
                {
                    tally.detail(&env.telemetry, DetailKey::new(name, Some(sub)));
                }
            }
        }
        verdict
    }

    /// [`SessionCore::on_request`]'s decision.
    fn decide(
        &mut self,
        env: &Shared,
        links: Links<'_>,
        request: Request<'_>,
        command: Command,
        id: CommandId,
    ) -> Verdict {
        let args = request.args;
        match command {
            Command::SecurityWarning => {
                tracing::warn!("possible SECURITY ATTACK detected: HTTP sent to the Redis port; dropped");
                return Verdict::CloseNow;
            }
            Command::Quit => {
                self.ledger.push_local(Bytes::from_static(b"+OK\r\n"));
                self.closing = true;
                return Verdict::Close;
            }
            // Redis checks the protocol version before HELLO's options: a server without RESP3 answers NOPROTO
            // whatever follows the 3, and authenticates nobody.
            Command::Hello if env.resp3_pinned.load(std::sync::atomic::Ordering::Relaxed) && args.is(1, "3") => {
                tracing::debug!("HELLO 3 refused: clients are pinned to RESP2");
                self.handle.asked_protocol(3);
                self.ledger.push_local(unknown_command_reply(args));
                return Verdict::Taken;
            }
            Command::Hello => {
                if let Some(protocol) = args.get(1).and_then(crate::protocol::request::string_to_i64) {
                    self.handle.asked_protocol(u8::try_from(protocol).unwrap_or(u8::MAX));
                }
            }
            _ => {}
        }
        let auth = match env.config.requirepass.as_deref() {
            Some(password) => self.auth.check(password.as_bytes(), command, args),
            None => AuthVerdict::Forward,
        };
        if let AuthVerdict::Answer(reply) = auth {
            self.ledger.push_local(reply);
            return Verdict::Taken;
        }
        if command == Command::Read
            && let Some(place) = &env.cluster
            && args.is(0, "CLUSTER")
            && let Some(reply) = crate::cluster::answers::answer(place, args, self.ledger.state.protocol)
        {
            // The cluster as the proxy presents it: its ports, not the servers' addresses. Inside MULTI the
            // server's answer would come back in EXEC's, naming the servers: refused instead, as a command Redis
            // refuses while queueing, which makes EXEC abort the transaction.
            let reply = if self.ledger.multi_open {
                self.transaction_refused = true;
                Bytes::from_static(
                    b"-ERR the proxy answers CLUSTER SLOTS, SHARDS and NODES itself, not inside MULTI\r\n",
                )
            } else {
                reply
            };
            self.ledger.push_local(reply);
            return Verdict::Taken;
        }
        if command == Command::Client && args.is(1, "SETINFO") && !self.ledger.multi_open {
            // Answered here whatever the server's version (Redis has it from 7.2): the census names the library.
            self.ledger.push_local(self.handle.set_info(args));
            return Verdict::Taken;
        }
        let mut rewritten = None;
        if let Some(id) = self.ledger.virtual_id.filter(|_| !self.ledger.multi_open) {
            match answer_for_session(&env.directory, id, command, args, &mut self.ledger) {
                Some(Intercepted::Answered) => return Verdict::Taken,
                Some(Intercepted::AnsweredThenClose) => {
                    self.closing = true;
                    return Verdict::Close;
                }
                Some(Intercepted::Rewritten(args)) => rewritten = Some(args),
                None => {}
            }
        }
        if self.on_shared {
            if let Some(reply) = answer_on_shared_link(command, args, &mut self.ledger.state) {
                self.ledger.push_local(reply);
                return Verdict::Taken;
            }
            // In front of a cluster, ASKING holds for the connection's next command, which must be the session's.
            if pins(command, args) || env.cluster.is_some() && asking(command, args) {
                // The command's effect lives on the connection: the session gets its own, once the replies owed on
                // the shared link have arrived (so its commands run in order).
                if !self.ledger.pending.is_empty() || self.shared_count > 0 {
                    return Verdict::Wait;
                }
                tracing::debug!("session pinned to a connection of its own");
                self.on_shared = false;
                env.telemetry.pinned();
            }
        }
        if self.shares && !self.on_shared {
            // RESET ends every mode a connection can be in.
            self.pinned_for_good = match command {
                Command::Reset => false,
                _ => self.pinned_for_good || pin_lasts(command, args),
            };
        }
        if command == Command::Replication && !self.ledger.multi_open {
            // Replies still owed go first; then the connection carries the replication stream.
            if !self.ledger.pending.is_empty() {
                return Verdict::Wait;
            }
            if links.own.is_none() {
                return Verdict::Connect;
            }
            copy_request(request, &mut self.own_out);
            self.replication_stream = true;
            tracing::info!("the client is a replica: passing its stream through");
            return Verdict::Taken;
        }
        let in_transaction = self.ledger.multi_open;
        let gated = !in_transaction && (command.is_write(args.get(1)) || command == Command::Multi);
        if gated {
            match self.gate.pass(&env.gate, command.is_blocking()) {
                Passage::Through => {}
                Passage::Held => return Verdict::Wait,
                Passage::Refused(error) => {
                    // Its ticket goes back with the session's next reconcile, when nothing written is unanswered.
                    self.ledger.push_local(error);
                    return Verdict::Taken;
                }
            }
        }
        // Where it goes: the shared link it is on, another shared link, or its own connection.
        let (taken, moved_to) = if self.on_shared {
            match self.shared_route(env, links, command, args) {
                Route::Current => (Verdict::Taken, None),
                Route::Move { key, stalled } => (
                    Verdict::Moved {
                        key: key.clone(),
                        stalled,
                    },
                    Some(key),
                ),
                Route::Wait => return Verdict::Wait,
            }
        } else if links.own.is_some() {
            if matches!(command, Command::Client | Command::ReadOnly | Command::ReadWrite) {
                self.own_link_tainted = true;
            }
            (Verdict::Taken, None)
        } else {
            return Verdict::Connect;
        };
        // A HELLO ... SETNAME on a shared link names the link: its own name is given back right after (the session's
        // name is kept by the proxy).
        let link_name = (self.on_shared && command == Command::Hello && (2..args.len()).any(|i| args.is(i, "SETNAME")))
            .then(|| {
                moved_to
                    .as_ref()
                    .or(links.shared.map(|(key, _)| key))
                    .map(crate::links::link_name)
            })
            .flatten();
        let shadow = command == Command::Read && !in_transaction && self.shadow_sample(env, id, args);
        let output = if self.on_shared {
            self.shared_count += 1 + usize::from(link_name.is_some());
            &mut self.shared_out
        } else {
            &mut self.own_out
        };
        match command {
            Command::Exec if in_transaction && self.watch_broken => {
                // The keys were WATCHed on the server the session left: the transaction must not run unguarded
                // here. Discard it and answer as Redis does for a WATCH conflict.
                self.ledger
                    .push_hidden(output, &[b"DISCARD"], Effect::Discard, Expect::One);
                self.ledger.multi_open = false;
                let null: &'static [u8] = if self.ledger.state.protocol >= 3 {
                    b"_\r\n"
                } else {
                    b"*-1\r\n"
                };
                self.ledger.push_local(Bytes::from_static(null));
                self.watch_broken = false;
                return taken;
            }
            Command::Exec if in_transaction && self.transaction_refused => {
                self.ledger
                    .push_hidden(output, &[b"DISCARD"], Effect::Discard, Expect::One);
                self.ledger.multi_open = false;
                self.transaction_refused = false;
                self.watch_broken = false;
                self.ledger.push_local(Bytes::from_static(
                    b"-EXECABORT Transaction discarded because of previous errors.\r\n",
                ));
                return taken;
            }
            Command::Exec | Command::Discard | Command::Reset => {
                self.watch_broken = false;
                self.transaction_refused = false;
            }
            Command::Unwatch => self.watch_broken = false,
            Command::Eval => {
                if let Some(body) = args.get(1) {
                    env.scripts.remember(body);
                }
            }
            Command::Script if args.is(1, "LOAD") => {
                if let Some(body) = args.get(2) {
                    env.scripts.remember(body);
                }
            }
            Command::Script if args.is(1, "FLUSH") => env.scripts.clear(),
            Command::Client if args.is(1, "KILL") => env.link_context.kills.note(),
            _ => {}
        }
        let after_asking = std::mem::replace(&mut self.asking, env.cluster.is_some() && asking(command, args));
        let blocked = if command.is_blocking() { Blocked::of(args) } else { None };
        // (Not between ASKING and its command: the server would apply ASKING to CLIENT ID.)
        if blocked.is_some() && !after_asking {
            self.ledger.ask_client_id(output);
        }
        let write = (gated && blocked.is_none()) || (in_transaction && command == Command::Exec);
        let queued = self.ledger.pending.len();
        self.ledger.plan(command, args, write, blocked);
        let planned = self.ledger.pending.len() > queued;
        if shadow
            && planned
            && let Some(pending) = self.ledger.pending.back_mut()
        {
            pending.shadow = Some(Box::new(Bytes::copy_from_slice(request.raw)));
        }
        if let Some(rewritten) = &rewritten {
            let args: Vec<&[u8]> = rewritten.iter().map(|a| &a[..]).collect();
            write_command(output, &args);
        } else if let AuthVerdict::ForwardWithoutAuth(at) = auth {
            // The client authenticated with the proxy: the server gets HELLO without that AUTH.
            self.auth.authenticated = true;
            let kept: Vec<&[u8]> = (0..args.len())
                .filter(|i| !(at..at + 3).contains(i))
                .filter_map(|i| args.get(i))
                .collect();
            write_command(output, &kept);
        } else {
            copy_request(request, output);
            if planned {
                self.ledger.log_sent(request.raw);
            }
        }
        if let Some(name) = link_name {
            self.ledger
                .push_internal(output, &[b"CLIENT", b"SETNAME", name.as_bytes()]);
        }
        taken
    }

    /// Whether this read is one of the share sampled for shadow reads (a draw of the session's own generator, made
    /// only while shadow reads are on).
    fn shadow_sample(&mut self, env: &Shared, id: CommandId, args: Args<'_>) -> bool {
        let per_million = env.shadow.per_million();
        if per_million == 0
            || !crate::readiness::shadow::shadowed_request(id, args)
            || self.ledger.reply_mode != state::ReplyMode::On
            || self.ledger.state.subscribed()
        {
            return false;
        }
        // xorshift64: a fair enough draw, with no lock and no system call.
        let mut x = self.shadow_draws;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.shadow_draws = x;
        x % 1_000_000 < u64::from(per_million)
    }

    /// The shared link a request goes to (see [`request_key`]).
    fn shared_route(&self, env: &Shared, links: Links<'_>, command: Command, args: Args<'_>) -> Route {
        // A session that owes nothing on its link may leave it: it does when the link has stalled, so that its
        // requests are not held behind another session's.
        let movable = self.ledger.pending.is_empty() && self.shared_count == 0;
        let stalled = movable && links.shared.is_some_and(|(_, stalled)| stalled);
        // The common case, with no allocation: a command that changes no connection state, and the session's link
        // still has the session's state.
        let changes_state = matches!(command, Command::Select | Command::Auth | Command::Hello);
        if !changes_state
            && !stalled
            && let Some((key, _)) = links.shared
            && serves(
                key,
                &self.ledger.state,
                env.primary.generation(),
                env.config.requirepass.is_some(),
            )
        {
            return Route::Current;
        }
        let key = request_key(env, &self.ledger.state, command, args);
        match links.shared {
            Some((current, _)) if *current == key && !stalled => Route::Current,
            // Replies are still owed on a link with another key (the session's state changed, or the primary was
            // replaced): they come first.
            Some(_) if !movable => Route::Wait,
            _ => Route::Move { key, stalled },
        }
    }

    /// Decides what a session does before its requests in a turn: a replica's stream from a replaced primary ends;
    /// a session on a replaced primary leaves its connection at a safe point; a blocking call ended by a switch is
    /// issued again. `own` is the generation of the session's own connection. Returns, with what to do next,
    /// whether the driver closes that connection now.
    pub fn on_turn(&mut self, env: &Shared, own: Option<u64>) -> (bool, Start) {
        let mut has_own = own.is_some();
        let mut left = false;
        if own.is_some_and(|g| g != env.primary.generation()) {
            if self.replication_stream {
                // A replica's stream from the former primary ends; it reconnects, and its PSYNC reaches the new one
                // (which continues OLD's replication history, so the resync is partial).
                tracing::info!("replication stream closed: the primary was replaced");
                self.own_out.clear();
                self.closing = true;
                return (true, Start::Wait);
            }
            match self.leave_replaced_primary() {
                Leave::Stay => {}
                Leave::Wait => return (false, Start::Wait),
                Leave::Left => {
                    (left, has_own) = (true, false);
                    if self.must_move_actively() || self.reissue.is_some() {
                        return (true, Start::Connect);
                    }
                }
            }
        }
        if let Some(blocked) = self.reissue.take() {
            if !has_own {
                self.reissue = Some(blocked);
                return (left, Start::Connect);
            }
            self.ledger.ask_client_id(&mut self.own_out);
            let args: Vec<&[u8]> = blocked.args.iter().map(|a| &a[..]).collect();
            write_command(&mut self.own_out, &args);
            self.ledger.plan_reissued(blocked);
        }
        (left, Start::Requests)
    }

    /// The primary was replaced. A session moves at a safe point: no reply owed on the old connection and no
    /// transaction open. Subscribers and tracking users first send a PING through the old connection, so that every
    /// message the old server sent reaches the client before it closes.
    fn leave_replaced_primary(&mut self) -> Leave {
        if self.ledger.multi_open {
            // A transaction the gate let through finishes where it began.
            return Leave::Stay;
        }
        if !self.ledger.pending.is_empty() {
            return Leave::Wait;
        }
        let state = &self.ledger.state;
        if (state.subscribed() || state.tracking.is_some()) && !self.barrier_sent {
            self.ledger.push_internal(&mut self.own_out, &[b"PING"]);
            self.barrier_sent = true;
            return Leave::Wait;
        }
        tracing::debug!("leaving the replaced primary");
        self.forget_own_link();
        // WATCH cannot move between servers: the next EXEC will abort.
        if self.ledger.state.watching {
            self.ledger.state.watching = false;
            self.watch_broken = true;
        }
        Leave::Left
    }

    /// Forgets what was known of the session's own connection, which the driver closes.
    fn forget_own_link(&mut self) {
        self.own_out.clear();
        self.barrier_sent = false;
        self.ledger.forget_link();
    }

    /// Whether the session has state that must follow a switch without waiting for a command.
    pub fn must_move_actively(&self) -> bool {
        let state = &self.ledger.state;
        state.subscribed() || state.tracking.is_some() || self.ledger.blocked_call().is_some()
    }

    /// Gives the session's state to a connection of its own, just opened (`spare: None`) or kept ready (see
    /// [`crate::spares`]): `Some((identity_in_place, server_id))`.
    pub fn on_own_link(&mut self, env: &Shared, side: Side, spare: Option<(bool, Option<i64>)>) {
        let credentials = proxy_credentials(&env.config, side);
        let in_place = spare.is_some_and(|(in_place, _)| in_place);
        self.ledger
            .restore_on(&mut self.own_out, credentials.as_ref(), in_place);
        match spare {
            // Its id, so that other clients can name this one by the proxy's id (CLIENT UNBLOCK, ...): known already
            // for a connection kept ready, else asked.
            Some((_, Some(id))) => {
                self.ledger.link_client_id = Some(id);
                self.ledger.link_client_id_asked = true;
            }
            Some((_, None)) => self.ledger.ask_client_id(&mut self.own_out),
            None if self.ledger.virtual_id.is_some() => self.ledger.ask_client_id(&mut self.own_out),
            None => {}
        }
        self.own_link_tainted = false;
    }

    /// No connection could be opened: the requests owed get `reply`, and a session whose state cannot be carried
    /// (subscriptions, tracking, a blocked call) ends as a lost server connection would end it.
    pub fn on_connect_failed(&mut self, reply: &Bytes) {
        if self.ledger.backend_lost(reply) || self.reissue.take().is_some() {
            self.closing = true;
        }
    }

    /// Answers a request that cannot reach the server with `reply` (an error naming why).
    pub fn refuse(&mut self, env: &Shared, request: Request<'_>, reply: Bytes) {
        let family = crate::telemetry::Family::of(Command::classify(request.args.get(0).unwrap_or_default()));
        env.telemetry.commands(family, 1);
        env.telemetry.local_error(family);
        self.ledger.push_local(reply);
    }

    /// Handles one reply frame from the session's own connection (`retired`: to a replaced primary).
    pub fn on_own_frame(&mut self, frame: &[u8], push: bool, retired: bool) {
        if let Some(ended) = self.ledger.on_frame(frame, push, retired) {
            match ended.remaining() {
                Some(again) => self.reissue = Some(again),
                None => self.ledger.client_out.extend_from_slice(frame),
            }
        }
    }

    /// The session's own connection is gone (`message` says why): pending requests get an error, and a session
    /// whose state lived on it (a transaction, subscriptions, ...) closes after the errors, as a direct connection
    /// would have. So does one whose connection closed right after a `CLIENT KILL` (`killed`).
    pub fn on_own_link_lost(&mut self, message: &str, killed: bool) {
        if self.ledger.parked_blocked_alone() {
            // A demoted server closes the connections of the calls it ended with UNBLOCKED: the call waits to be
            // issued again (see `settle_parked`).
            tracing::info!(%message, "backend link closed after UNBLOCKED; the blocking call waits for the servers' word");
            self.forget_own_link();
            self.ledger.forget_link();
            return;
        }
        tracing::warn!(%message, pending = self.ledger.pending.len(), "backend link lost");
        self.forget_own_link();
        if self.ledger.backend_lost(&error_reply(message)) || self.replication_stream {
            self.closing = true;
        } else if killed {
            tracing::info!("backend connection closed right after a CLIENT KILL: closing the client's too");
            self.closing = true;
        }
    }

    /// The session's shared link failed. Requests that never reached the server get an error; requests whose
    /// outcome is unknown close the client's connection, as a lost connection closes a direct client's.
    pub fn on_shared_link_failure(&mut self, failure: crate::links::LinkFailure) {
        match failure {
            crate::links::LinkFailure::NotSent(message) => {
                tracing::warn!(%message, "shared backend link unusable");
                self.ledger.backend_lost(&error_reply(&message));
            }
            crate::links::LinkFailure::Lost(reason) => {
                tracing::warn!(%reason, pending = self.ledger.pending.len(), "shared backend link lost: closing the client");
                self.ledger.pending.retain(|p| matches!(p.effect, Effect::Local(_)));
                self.ledger.pending_writes = 0;
                self.ledger.forget_sent();
                self.closing = true;
            }
        }
    }

    /// Whether a pinned session's connection state is gone (its transaction answered, its blocking call answered,
    /// its last subscription ended), so that it can return to the shared links. `own_idle`: its own connection has
    /// no bytes waiting either way.
    pub fn may_unpin(&self, own_idle: bool) -> bool {
        let ledger = &self.ledger;
        let state = &ledger.state;
        self.shares
            && !self.on_shared
            && !self.pinned_for_good
            && ledger.pending.is_empty()
            && !ledger.multi_open
            && self.reissue.is_none()
            && !self.watch_broken
            && !self.replication_stream
            && !self.asking
            && !self.closing
            && !state.in_multi
            && !state.watching
            && !state.subscribed()
            && !state.monitor
            && !state.readonly
            && state.tracking.is_none()
            && self.own_out.is_empty()
            && own_idle
    }

    /// Returns a pinned session to the shared links. Its own connection (to the primary of generation `own`) may be
    /// kept ready for the next session that pins when its state is exactly a link key's (no name): then the key
    /// and the connection's server id are returned; else the driver closes it.
    pub fn unpin(&mut self, env: &Shared, own: Option<u64>) -> Option<(LinkKey, Option<i64>)> {
        tracing::debug!("session back on the shared links");
        let tainted = std::mem::take(&mut self.own_link_tainted);
        let kept = own.is_some_and(|g| g == env.primary.generation()) && !tainted && self.ledger.state.name.is_none();
        let keep = kept.then(|| (self.link_key(env), self.ledger.link_client_id));
        self.forget_own_link();
        self.on_shared = true;
        env.telemetry.unpinned();
        keep
    }

    /// The key of a link to the current primary in the session's connection state.
    pub fn link_key(&self, env: &Shared) -> LinkKey {
        session_key(env, &self.ledger.state)
    }

    /// The server id of the session's own connection, when it has one and it is known.
    pub fn server_id(&self, has_own: bool) -> Option<i64> {
        self.ledger.link_client_id.filter(|_| has_own)
    }

    /// Settles replies held back after the primary refused a request as not executed, at the start of a turn:
    /// once the primary was replaced, the requests are sent again (their bytes returned, to go before the client's
    /// unread input); once a look at the servers found the primary taking writes, or after `PARK_LIMIT`, the
    /// replies go to the client as they came. Until then, nothing.
    pub fn settle_parked(&mut self, env: &Shared) -> Option<Bytes> {
        use std::sync::atomic::Ordering;
        let parked = self.ledger.parked.as_ref()?;
        let first_look = *self.park.get_or_insert_with(|| {
            env.parked_sessions.fetch_add(1, Ordering::SeqCst);
            env.wake_looks();
            env.looks.started.load(Ordering::SeqCst) + 1
        });
        let replaced = env.primary.generation() != parked.generation;
        let taking_writes = env.looks.unfenced.load(Ordering::SeqCst) >= first_look;
        if !replaced && !taking_writes && parked.since.elapsed() < PARK_LIMIT {
            return None;
        }
        if replaced && let Some(blocked) = self.ledger.take_parked_blocked() {
            match blocked.remaining() {
                // Issued again on the new primary with the time it had left, as after a switch of this proxy's own.
                Some(again) => self.reissue = Some(again),
                // Its time ran out meanwhile: the answer to a timeout (a null array, as Redis gives blocked lists,
                // sorted sets and streams).
                None => self
                    .ledger
                    .push_local(Bytes::from_static(if self.ledger.state.protocol >= 3 {
                        b"_\r\n"
                    } else {
                        b"*-1\r\n"
                    })),
            }
            self.unpark(env);
            return None;
        }
        let resend = if replaced { self.ledger.resend_parked() } else { None };
        if resend.is_none() {
            self.ledger.replay_parked();
        }
        self.unpark(env);
        resend
    }

    /// When replies held back must go to the client at the latest.
    pub fn park_deadline(&self) -> Option<std::time::Instant> {
        self.ledger.parked.as_ref().map(|p| p.since + PARK_LIMIT)
    }

    fn unpark(&mut self, env: &Shared) {
        if self.park.take().is_some() {
            env.parked_sessions.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Brings the shared accounting in line with the session: its write ticket, its blocked call, and whether it
    /// still has state to move. `own`: its own connection's generation and local address.
    pub fn reconcile(&mut self, env: &Shared, own: Option<(u64, Option<std::net::SocketAddr>)>) {
        if self.ledger.parked.is_none() {
            // Its link was lost meanwhile.
            self.unpark(env);
        }
        if std::mem::take(&mut self.ledger.not_executed) {
            // The handover looks at once whether another proxy's handover fenced the primary.
            env.wake_looks();
        }
        if self.gate.has_ticket && self.ledger.pending_writes == 0 && !self.ledger.multi_open {
            env.gate.return_ticket();
            self.gate.has_ticket = false;
        }
        let blocked = match (own, self.ledger.blocked_call()) {
            (Some((generation, addr)), Some(_)) => Some(crate::moves::BlockedConn {
                generation,
                id: self.ledger.link_client_id,
                addr,
            }),
            _ => None,
        };
        if blocked != self.blocked_registered {
            env.moves.set_blocked(self.blocked_registered, blocked);
            self.blocked_registered = blocked;
        }
        let counted = if self.must_move_actively() {
            if let Some((generation, _)) = own.filter(|_| !self.ledger.awaiting_internal()) {
                self.settled_generation = generation;
            }
            Some(self.settled_generation)
        } else {
            None
        };
        if counted != self.mover_counted {
            env.moves.shift(self.mover_counted, counted);
            self.mover_counted = counted;
        }
        if self.ledger.multi_open != self.transaction_counted {
            let open = &env.transactions_open;
            if self.ledger.multi_open {
                open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            } else {
                open.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            }
            self.transaction_counted = self.ledger.multi_open;
        }
    }

    /// Whether the session has nothing left to do. `client_eof`: the client closed its side.
    pub fn finished(&self, client_eof: bool) -> bool {
        if client_eof {
            // Redis drops a client as soon as it reads its EOF; requests read before it still run.
            return self.own_out.is_empty();
        }
        (self.closing || self.draining) && self.ledger.pending.is_empty() && self.ledger.client_out.is_empty()
    }

    /// Gives back whatever the session holds in the shared accounting, however it ends.
    pub fn release(&mut self, env: &Shared) {
        self.unpark(env);
        if std::mem::take(&mut self.gate.has_ticket) {
            env.gate.return_ticket();
        }
        if std::mem::take(&mut self.gate.held) {
            env.gate.release();
        }
        env.moves.set_blocked(self.blocked_registered.take(), None);
        env.moves.shift(self.mover_counted.take(), None);
        if std::mem::take(&mut self.transaction_counted) {
            env.transactions_open.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// What a session on a replaced primary does with its connection to it.
enum Leave {
    /// Keeps it for now (a transaction finishes where it began).
    Stay,
    /// Waits for what it owes, or for the barrier.
    Wait,
    /// Has left it.
    Left,
}

/// Where a request that needs no connection of its own goes.
enum Route {
    /// The session's shared link.
    Current,
    /// The shared link of `key`, which the session moves to.
    Move { key: LinkKey, stalled: bool },
    /// Nowhere yet: replies are owed on the session's link, which has another key.
    Wait,
}

/// Appends a request as the server must receive it: its own bytes, or, for an inline command, RESP.
fn copy_request(request: Request<'_>, out: &mut BytesMut) {
    if request.args.is_inline() {
        request.args.encode(out);
    } else {
        out.extend_from_slice(request.raw);
    }
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

/// The longest replies are held back after a refusal while the servers cannot tell whether the primary was
/// fenced by a handover (a handover's own pause is shorter).
const PARK_LIMIT: std::time::Duration = std::time::Duration::from_secs(3);

/// A session's place at the write gate.
#[derive(Debug, Default)]
struct GateSlot {
    /// Whether the session holds a write ticket (see [`crate::gate`]).
    has_ticket: bool,
    /// Whether the next request is a write held at the closed gate.
    held: bool,
}

/// What the write gate does with a write.
#[derive(Debug)]
enum Passage {
    Through,
    Held,
    /// Answered with this error instead (see [`WriteGate::refuse`]).
    Refused(Bytes),
}

impl GateSlot {
    /// Lets a write through the gate, holds it, or refuses it. The ticket is taken before the gate is looked at;
    /// a blocking call takes none, since the handover cannot wait for it to be answered.
    fn pass(&mut self, gate: &WriteGate, blocking: bool) -> Passage {
        if !blocking && !self.has_ticket {
            gate.take_ticket();
            self.has_ticket = true;
        }
        if gate.is_closed() {
            if let Some(error) = gate.refusal() {
                if std::mem::take(&mut self.held) {
                    gate.release();
                }
                return Passage::Refused(error);
            }
            if !self.held {
                self.held = true;
                gate.hold();
            }
            return Passage::Held;
        }
        if self.held {
            self.held = false;
            gate.release();
        }
        Passage::Through
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

/// Whether a command's effect lives on the backend connection, so that a session sending it needs a connection of
/// its own (it cannot go on a shared link). Everything that changes the connection's state (db, user, protocol,
/// transactions, subscriptions, reply mode, tracking, ...) or blocks it does; commands that only read or change
/// data, or act on the whole server, do not.
pub fn pins(command: Command, args: crate::protocol::request::Args<'_>) -> bool {
    match command {
        Command::Read | Command::Write | Command::Unknown => {
            // WAIT blocks its connection until replicas acknowledge its writes; SHUTDOWN must not wait behind
            // other sessions' requests on a link. (The length first: this runs for every data command.)
            matches!(args.get(0).map(<[u8]>::len), Some(4 | 7 | 8))
                && (args.is(0, "WAIT") || args.is(0, "WAITAOF") || args.is(0, "SHUTDOWN"))
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

/// Whether a request is ASKING (a cluster's redirection to a slot in migration, for the next command only).
fn asking(command: Command, args: Args<'_>) -> bool {
    command == Command::Read && args.len() == 1 && args.is(0, "ASKING")
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
    core: &mut Ledger,
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

#[cfg(test)]
mod tests {
    //! The core driven through each interception, pin and unpin, and the switch, with byte fixtures: what the
    //! client receives and what each connection is sent are the observable outcomes.

    use super::*;
    use crate::config::Config;
    use crate::primary::Server;
    use crate::protocol::request::{Parsed, RequestParser};

    fn env(tune: impl FnOnce(&mut Config)) -> Shared {
        let mut config = Config::default();
        tune(&mut config);
        Shared::new(config).expect("no TLS is configured")
    }

    fn dedicated(config: &mut Config) {
        config.backend_links = BackendLinks::Dedicated;
    }

    /// A command as a client sends it.
    fn resp(words: &[&str]) -> Vec<u8> {
        let mut out = BytesMut::new();
        let args: Vec<&[u8]> = words.iter().map(|w| w.as_bytes()).collect();
        write_command(&mut out, &args);
        out.to_vec()
    }

    /// Hands one request (RESP or inline) to the core.
    fn send_raw(core: &mut SessionCore, env: &Shared, links: Links<'_>, bytes: &[u8]) -> Verdict {
        let mut parser = RequestParser::new();
        let Parsed::Request(n) = parser.parse(bytes) else {
            panic!("not one complete request: {bytes:?}")
        };
        let request = Request {
            args: parser.args(bytes),
            raw: &bytes[..n],
        };
        core.on_request(env, links, request)
    }

    fn send(core: &mut SessionCore, env: &Shared, links: Links<'_>, words: &[&str]) -> Verdict {
        send_raw(core, env, links, &resp(words))
    }

    /// What the client has received since the last look.
    fn client_sees(core: &mut SessionCore) -> String {
        String::from_utf8_lossy(&core.ledger.client_out.split()).into_owned()
    }

    /// What was written for the session's own connection since the last look.
    fn own_sent(core: &mut SessionCore) -> String {
        String::from_utf8_lossy(&core.own_out.split()).into_owned()
    }

    /// What was gathered for the shared link in this turn (which the driver then sends).
    fn shared_sent(core: &mut SessionCore) -> String {
        core.shared_count = 0;
        String::from_utf8_lossy(&core.shared_out.split()).into_owned()
    }

    fn reply(core: &mut SessionCore, frame: &str) {
        core.on_own_frame(frame.as_bytes(), false, false);
    }

    fn key(env: &Shared, db: i64) -> LinkKey {
        LinkKey {
            generation: env.primary.generation(),
            db,
            protocol: 2,
            credentials: None,
        }
    }

    fn on_link(key: &LinkKey) -> Links<'_> {
        Links {
            own: None,
            shared: Some((key, false)),
        }
    }

    fn own(generation: u64) -> Links<'static> {
        Links {
            own: Some(generation),
            shared: None,
        }
    }

    fn switch(env: &Shared) {
        env.primary.switch_to(Server {
            side: Side::New,
            addr: "127.0.0.1:1".into(),
        });
    }

    #[test]
    fn quit_is_answered_and_closes() {
        let env = env(|_| {});
        let mut core = SessionCore::new(&env, 10);
        assert_eq!(send(&mut core, &env, Links::default(), &["QUIT"]), Verdict::Close);
        assert_eq!(client_sees(&mut core), "+OK\r\n");
        assert!(core.finished(false));
    }

    #[test]
    fn http_sent_to_the_redis_port_drops_the_client() {
        let env = env(|_| {});
        let mut core = SessionCore::new(&env, 10);
        let verdict = send_raw(&mut core, &env, Links::default(), b"POST / HTTP/1.1\r\n");
        assert_eq!(verdict, Verdict::CloseNow);
    }

    #[test]
    fn hello_3_is_refused_as_redis_5_refuses_it_when_clients_are_pinned_to_resp2() {
        let env = env(|c| c.resp3 = crate::config::Resp3Mode::PinResp2);
        let mut core = SessionCore::new(&env, 10);
        assert_eq!(send(&mut core, &env, Links::default(), &["HELLO", "3"]), Verdict::Taken);
        assert_eq!(
            client_sees(&mut core),
            "-ERR unknown command `HELLO`, with args beginning with: `3`, \r\n"
        );
        assert!(core.shared_out.is_empty() && core.own_out.is_empty());
    }

    #[test]
    fn a_refused_hello_auth_leaves_nothing_behind_for_the_next_command() {
        // The review's finding A1: the next command lost arguments.
        let env = env(|c| {
            dedicated(c);
            c.requirepass = Some("pw".into());
            c.resp3 = crate::config::Resp3Mode::PinResp2;
        });
        let mut core = SessionCore::new(&env, 10);
        send(&mut core, &env, own(0), &["HELLO", "3", "AUTH", "default", "pw"]);
        assert!(client_sees(&mut core).starts_with("-ERR unknown command `HELLO`"));
        send(&mut core, &env, own(0), &["PING"]);
        assert!(client_sees(&mut core).starts_with("-NOAUTH"));
        send(&mut core, &env, own(0), &["AUTH", "wrong"]);
        assert!(client_sees(&mut core).starts_with("-WRONGPASS"));
        send(&mut core, &env, own(0), &["AUTH", "pw"]);
        assert_eq!(client_sees(&mut core), "+OK\r\n");
        assert_eq!(own_sent(&mut core), "", "nothing reached the server so far");
        let del = ["DEL", "a", "b", "c", "d", "e"];
        assert_eq!(send(&mut core, &env, own(0), &del), Verdict::Taken);
        assert_eq!(own_sent(&mut core).as_bytes(), resp(&del));
    }

    #[test]
    fn a_hello_auth_that_the_proxy_checked_reaches_the_server_without_it() {
        let env = env(|c| {
            dedicated(c);
            c.requirepass = Some("pw".into());
        });
        let mut core = SessionCore::new(&env, 10);
        send(
            &mut core,
            &env,
            own(0),
            &["HELLO", "2", "AUTH", "default", "pw", "SETNAME", "app"],
        );
        assert_eq!(own_sent(&mut core).as_bytes(), resp(&["HELLO", "2", "SETNAME", "app"]));
        // Authenticated from then on.
        assert_eq!(send(&mut core, &env, own(0), &["GET", "k"]), Verdict::Taken);
        assert_eq!(own_sent(&mut core).as_bytes(), resp(&["GET", "k"]));
    }

    #[test]
    fn the_client_name_and_id_are_answered_on_the_shared_links() {
        let env = env(|_| {});
        let mut core = SessionCore::new(&env, 1_000_000_000_007);
        let k = key(&env, 0);
        assert_eq!(
            send(&mut core, &env, on_link(&k), &["CLIENT", "GETNAME"]),
            Verdict::Taken
        );
        assert_eq!(
            send(&mut core, &env, on_link(&k), &["CLIENT", "SETNAME", "app"]),
            Verdict::Taken
        );
        assert_eq!(
            send(&mut core, &env, on_link(&k), &["client", "getname"]),
            Verdict::Taken
        );
        assert_eq!(send(&mut core, &env, on_link(&k), &["CLIENT", "ID"]), Verdict::Taken);
        assert_eq!(client_sees(&mut core), "$-1\r\n+OK\r\n$3\r\napp\r\n:1000000000007\r\n");
        assert_eq!(shared_sent(&mut core), "", "none of them reached a server");
        assert!(core.on_shared, "none of them pinned the session");
        // A name Redis refuses goes to the server for its error, on a connection of the session's own.
        assert_eq!(
            send(&mut core, &env, on_link(&k), &["CLIENT", "SETNAME", "a b"]),
            Verdict::Connect
        );
    }

    #[test]
    fn requests_go_to_the_link_of_the_session_state_and_a_select_waits_for_replies_owed() {
        let env = env(|_| {});
        let mut core = SessionCore::new(&env, 10);
        let k0 = key(&env, 0);
        let first = send(&mut core, &env, Links::default(), &["GET", "a"]);
        assert_eq!(
            first,
            Verdict::Moved {
                key: k0.clone(),
                stalled: false
            }
        );
        assert_eq!(send(&mut core, &env, on_link(&k0), &["GET", "b"]), Verdict::Taken);
        // Another db is another link: the replies owed on this one come first.
        assert_eq!(send(&mut core, &env, on_link(&k0), &["SELECT", "3"]), Verdict::Wait);
        shared_sent(&mut core);
        core.ledger.on_frame(b"$-1\r\n", false, false);
        core.ledger.on_frame(b"$1\r\nx\r\n", false, false);
        let moved = send(&mut core, &env, on_link(&k0), &["SELECT", "3"]);
        assert_eq!(
            moved,
            Verdict::Moved {
                key: key(&env, 3),
                stalled: false
            }
        );
        core.ledger.on_frame(b"+OK\r\n", false, false);
        assert_eq!(core.ledger.state.db, 3);
        assert_eq!(client_sees(&mut core), "$-1\r\n$1\r\nx\r\n+OK\r\n");
    }

    #[test]
    fn a_refusal_from_a_fenced_primary_is_held_back_and_the_requests_are_sent_again_after_the_switch() {
        use std::sync::atomic::Ordering;
        let env = env(|_| {});
        let mut core = SessionCore::new(&env, 10);
        let k0 = key(&env, 0);
        send(&mut core, &env, Links::default(), &["SET", "a", "1"]);
        for words in [&["GET", "a"][..], &["INCR", "n"]] {
            assert_eq!(send(&mut core, &env, on_link(&k0), words), Verdict::Taken);
        }
        shared_sent(&mut core);
        // The primary was fenced by a handover elsewhere: the SET is refused, the GET (pipelined) answered.
        core.ledger
            .on_frame(b"-NOREPLICAS Not enough good replicas to write.\r\n", false, false);
        core.ledger.on_frame(b"$-1\r\n", false, false);
        assert_eq!(client_sees(&mut core), "", "nothing is shown yet");
        assert_eq!(
            send(&mut core, &env, on_link(&k0), &["GET", "b"]),
            Verdict::Wait,
            "nothing overtakes"
        );
        assert_eq!(core.settle_parked(&env), None, "the servers have not told yet");
        assert_eq!(env.parked_sessions.load(Ordering::SeqCst), 1);
        // They say NEW was promoted: the proxy switches; the three requests go again, in order.
        switch(&env);
        let resend = core.settle_parked(&env).expect("sent again");
        let mut expected = resp(&["SET", "a", "1"]);
        expected.extend(resp(&["GET", "a"]));
        expected.extend(resp(&["INCR", "n"]));
        assert_eq!(resend.to_vec(), expected);
        assert_eq!(env.parked_sessions.load(Ordering::SeqCst), 0);
        // The INCR's refusal still comes from the old primary: dropped.
        core.ledger
            .on_frame(b"-NOREPLICAS Not enough good replicas to write.\r\n", false, false);
        assert!(core.ledger.pending.is_empty());
        assert_eq!(core.ledger.pending_writes, 0);
        assert_eq!(client_sees(&mut core), "");
    }

    #[test]
    fn a_refusal_that_is_the_server_s_own_answer_reaches_the_client_after_a_look() {
        use std::sync::atomic::Ordering;
        let env = env(|_| {});
        let mut core = SessionCore::new(&env, 10);
        let k0 = key(&env, 0);
        send(&mut core, &env, Links::default(), &["SET", "a", "1"]);
        send(&mut core, &env, on_link(&k0), &["GET", "a"]);
        shared_sent(&mut core);
        // A look is under way when the refusal comes: it may have read the primary before the fence.
        let under_way = env.looks.started.fetch_add(1, Ordering::SeqCst) + 1;
        core.ledger
            .on_frame(b"-NOREPLICAS Not enough good replicas to write.\r\n", false, false);
        assert_eq!(core.settle_parked(&env), None);
        env.looks.unfenced.store(under_way, Ordering::SeqCst);
        core.ledger.on_frame(b"$1\r\n1\r\n", false, false);
        assert_eq!(core.settle_parked(&env), None, "that look does not count");
        assert_eq!(client_sees(&mut core), "");
        // The next one finds the primary taking writes: the refusal was the server's own answer.
        let next = env.looks.started.fetch_add(1, Ordering::SeqCst) + 1;
        env.looks.unfenced.store(next, Ordering::SeqCst);
        assert_eq!(core.settle_parked(&env), None);
        assert_eq!(
            client_sees(&mut core),
            "-NOREPLICAS Not enough good replicas to write.\r\n$1\r\n1\r\n"
        );
        assert_eq!(send(&mut core, &env, on_link(&k0), &["GET", "b"]), Verdict::Taken);
    }

    #[test]
    fn a_session_that_owes_nothing_leaves_a_stalled_link_and_one_that_owes_stays() {
        let env = env(|_| {});
        let mut core = SessionCore::new(&env, 10);
        let k = key(&env, 0);
        let stalled = Links {
            own: None,
            shared: Some((&k, true)),
        };
        assert_eq!(
            send(&mut core, &env, stalled, &["GET", "a"]),
            Verdict::Moved {
                key: k.clone(),
                stalled: true
            }
        );
        // It owes a reply now: its next request keeps its place behind the first.
        assert_eq!(send(&mut core, &env, stalled, &["GET", "b"]), Verdict::Taken);
    }

    #[test]
    fn a_transaction_pins_after_the_replies_owed_and_unpins_once_answered() {
        let env = env(|_| {});
        let mut core = SessionCore::new(&env, 10);
        let k = key(&env, 0);
        assert_eq!(send(&mut core, &env, on_link(&k), &["SET", "a", "1"]), Verdict::Taken);
        assert_eq!(
            send(&mut core, &env, on_link(&k), &["MULTI"]),
            Verdict::Wait,
            "a reply is owed"
        );
        shared_sent(&mut core);
        core.ledger.on_frame(b"+OK\r\n", false, false);
        assert_eq!(send(&mut core, &env, on_link(&k), &["MULTI"]), Verdict::Connect);
        assert!(!core.on_shared);
        core.on_own_link(&env, Side::Old, None);
        assert_eq!(
            own_sent(&mut core).as_bytes(),
            resp(&["CLIENT", "ID"]),
            "its server id is asked"
        );
        for words in [&["MULTI"][..], &["INCR", "a"], &["EXEC"]] {
            assert_eq!(send(&mut core, &env, own(0), words), Verdict::Taken);
        }
        let mut expected = resp(&["MULTI"]);
        expected.extend(resp(&["INCR", "a"]));
        expected.extend(resp(&["EXEC"]));
        assert_eq!(own_sent(&mut core).as_bytes(), expected);
        for frame in [":42\r\n", "+OK\r\n", "+QUEUED\r\n"] {
            reply(&mut core, frame);
            assert!(!core.may_unpin(true), "state is still on the connection");
        }
        reply(&mut core, "*1\r\n:2\r\n");
        assert_eq!(client_sees(&mut core), "+OK\r\n+OK\r\n+QUEUED\r\n*1\r\n:2\r\n");
        assert!(core.may_unpin(true));
        assert!(!core.may_unpin(false), "not while bytes of the connection are unread");
        let kept = core.unpin(&env, Some(0));
        assert_eq!(kept, Some((k, Some(42))), "the connection is kept ready, with its id");
        assert!(core.on_shared);
    }

    #[test]
    fn monitor_and_client_pause_keep_their_connection_until_reset() {
        for words in [&["MONITOR"][..], &["CLIENT", "PAUSE", "10"]] {
            let env = env(|_| {});
            let mut core = SessionCore::new(&env, 10);
            assert_eq!(send(&mut core, &env, Links::default(), words), Verdict::Connect);
            core.on_own_link(&env, Side::Old, None);
            reply(&mut core, ":42\r\n");
            assert_eq!(send(&mut core, &env, own(0), words), Verdict::Taken);
            reply(&mut core, "+OK\r\n");
            assert!(!core.may_unpin(true), "{words:?} stays on its connection");
            if words[0] == "CLIENT" {
                send(&mut core, &env, own(0), &["RESET"]);
                reply(&mut core, "+RESET\r\n");
                own_sent(&mut core);
                assert!(core.may_unpin(true), "RESET ends it");
            }
        }
    }

    #[test]
    fn a_named_or_tainted_connection_is_not_kept_ready() {
        let env = env(|_| {});
        let mut core = SessionCore::new(&env, 10);
        send(&mut core, &env, Links::default(), &["WATCH", "a"]);
        core.on_own_link(&env, Side::Old, None);
        send(&mut core, &env, own(0), &["WATCH", "a"]);
        send(&mut core, &env, own(0), &["READWRITE"]);
        send(&mut core, &env, own(0), &["UNWATCH"]);
        for frame in [":42\r\n", "+OK\r\n", "+OK\r\n", "+OK\r\n"] {
            reply(&mut core, frame);
        }
        assert!(!core.may_unpin(true), "its requests are not written yet");
        own_sent(&mut core);
        assert!(core.may_unpin(true));
        assert_eq!(core.unpin(&env, Some(0)), None, "READWRITE was sent on it");
    }

    #[test]
    fn shadow_reads_sample_plain_reads_only_and_hand_on_the_reply() {
        let env = env(dedicated);
        let mut core = SessionCore::new(&env, 10);
        core.on_own_link(&env, Side::Old, None);
        send(&mut core, &env, own(0), &["GET", "k"]);
        reply(&mut core, "$1\r\nv\r\n");
        assert!(core.ledger.shadowed.is_empty(), "off: nothing sampled");
        let mut samples = env.shadow.open(1.0);
        send(&mut core, &env, own(0), &["GET", "k"]);
        send(&mut core, &env, own(0), &["SET", "k", "w"]);
        send(&mut core, &env, own(0), &["INFO"]);
        for frame in ["$1\r\nv\r\n", "+OK\r\n", "$2\r\nxx\r\n"] {
            reply(&mut core, frame);
        }
        let sampled: Vec<_> = core.ledger.shadowed.drain(..).collect();
        assert_eq!(sampled.len(), 1, "a write and server information are never shadowed");
        assert_eq!(&sampled[0].request[..], resp(&["GET", "k"]).as_slice());
        assert_eq!(&sampled[0].reply[..], b"$1\r\nv\r\n");
        send(&mut core, &env, own(0), &["MULTI"]);
        send(&mut core, &env, own(0), &["GET", "k"]);
        assert!(
            core.ledger.pending.iter().all(|p| p.shadow.is_none()),
            "not inside a transaction"
        );
        env.shadow.send(sampled.into_iter());
        assert!(samples.try_recv().is_ok(), "handed to the comparing task");
    }

    #[test]
    fn client_setinfo_is_answered_by_the_proxy_and_named_in_the_census() {
        for links in [BackendLinks::Shared, BackendLinks::Dedicated] {
            let env = env(|config| config.backend_links = links);
            let mut core = SessionCore::new(&env, 10);
            let link = key(&env, 0);
            let on = if links == BackendLinks::Shared {
                on_link(&link)
            } else {
                own(0)
            };
            if links == BackendLinks::Dedicated {
                core.on_own_link(&env, Side::Old, None);
            }
            send(&mut core, &env, on, &["CLIENT", "SETINFO", "LIB-NAME", "redis-py"]);
            send(&mut core, &env, on, &["HELLO", "3"]);
            assert_eq!(client_sees(&mut core), "+OK\r\n");
            assert_eq!(
                own_sent(&mut core) + &shared_sent(&mut core),
                "*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n"
            );
            let card = core.handle.card();
            assert_eq!(
                (card.lib_name.as_deref(), card.asked_protocol),
                (Some("redis-py"), Some(3))
            );
            core.ledger.tally.flush(&env.telemetry);
            let counted = env.telemetry.census.counted();
            assert!(
                counted.iter().any(|c| c.command == "CLIENT SETINFO" && c.count == 1),
                "{counted:?}"
            );
            assert!(
                counted.iter().any(|c| c.command == "HELLO" && c.count == 1),
                "{counted:?}"
            );
        }
    }

    #[test]
    fn a_write_is_held_at_the_closed_gate_and_passes_when_it_opens() {
        let env = env(dedicated);
        let mut core = SessionCore::new(&env, 10);
        assert_eq!(
            send(&mut core, &env, own(0), &["GET", "a"]),
            Verdict::Taken,
            "reads pass"
        );
        env.gate.close();
        assert_eq!(send(&mut core, &env, own(0), &["SET", "a", "1"]), Verdict::Wait);
        assert!(core.holds_write());
        assert_eq!(env.gate.held_now(), 1);
        assert_eq!(
            env.gate.writes_in_flight(),
            1,
            "its ticket is taken before the gate is looked at"
        );
        env.gate.open();
        assert_eq!(send(&mut core, &env, own(0), &["SET", "a", "1"]), Verdict::Taken);
        assert!(!core.holds_write());
        assert_eq!(env.gate.held_now(), 0);
        reply(&mut core, "$-1\r\n");
        core.reconcile(&env, Some((0, None)));
        assert_eq!(env.gate.writes_in_flight(), 1, "the write is not answered yet");
        reply(&mut core, "+OK\r\n");
        core.reconcile(&env, Some((0, None)));
        assert_eq!(env.gate.writes_in_flight(), 0);
    }

    #[test]
    fn watch_does_not_survive_a_switch_the_next_exec_aborts() {
        let env = env(dedicated);
        let mut core = SessionCore::new(&env, 10);
        send(&mut core, &env, own(0), &["WATCH", "k"]);
        reply(&mut core, "+OK\r\n");
        switch(&env);
        assert_eq!(core.on_turn(&env, Some(0)), (true, Start::Requests));
        assert_eq!(send(&mut core, &env, Links::default(), &["MULTI"]), Verdict::Connect);
        core.on_own_link(&env, Side::New, None);
        for words in [&["MULTI"][..], &["SET", "k", "1"], &["EXEC"]] {
            assert_eq!(send(&mut core, &env, own(1), words), Verdict::Taken);
        }
        let sent = own_sent(&mut core);
        assert!(
            sent.ends_with("*1\r\n$7\r\nDISCARD\r\n"),
            "the transaction is discarded: {sent:?}"
        );
        for frame in ["+OK\r\n", "+QUEUED\r\n", "+OK\r\n"] {
            reply(&mut core, frame);
        }
        assert_eq!(
            client_sees(&mut core),
            "+OK\r\n+OK\r\n+QUEUED\r\n*-1\r\n",
            "EXEC answers as for a conflict"
        );
    }

    /// Sends the bytes returned for sending again, request by request, as the driver does with its input.
    fn send_again(core: &mut SessionCore, env: &Shared, links: Links<'_>, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let mut parser = RequestParser::new();
            let Parsed::Request(n) = parser.parse(bytes) else {
                panic!("not a request: {bytes:?}")
            };
            assert_eq!(send_raw(core, env, links, &bytes[..n]), Verdict::Taken);
            bytes = &bytes[n..];
        }
    }

    #[test]
    fn a_transaction_refused_by_a_fenced_primary_goes_again_whole_and_the_client_sees_one_answer() {
        for watched in [false, true] {
            let env = env(dedicated);
            let mut core = SessionCore::new(&env, 10);
            core.on_own_link(&env, Side::Old, None);
            if watched {
                send(&mut core, &env, own(0), &["WATCH", "k"]);
                reply(&mut core, "+OK\r\n");
            }
            for words in [&["MULTI"][..], &["INCR", "k"], &["EXEC"]] {
                assert_eq!(send(&mut core, &env, own(0), words), Verdict::Taken);
            }
            own_sent(&mut core);
            reply(&mut core, "+OK\r\n");
            reply(&mut core, "+QUEUED\r\n");
            reply(
                &mut core,
                "-EXECABORT Transaction discarded because of: NOREPLICAS Not enough good replicas to write.\r\n",
            );
            let before = if watched {
                "+OK\r\n+OK\r\n+QUEUED\r\n"
            } else {
                "+OK\r\n+QUEUED\r\n"
            };
            assert_eq!(client_sees(&mut core), before, "the abort is not shown");
            switch(&env);
            let again = core.settle_parked(&env).expect("sent again");
            let mut expected = resp(&["MULTI"]);
            expected.extend(resp(&["INCR", "k"]));
            expected.extend(resp(&["EXEC"]));
            assert_eq!(again.to_vec(), expected, "the whole transaction");
            // The session leaves OLD's connection, gets one to NEW, and sends the transaction there.
            assert_eq!(core.on_turn(&env, Some(0)), (true, Start::Requests));
            assert_eq!(send(&mut core, &env, Links::default(), &["PING"]), Verdict::Connect);
            core.on_own_link(&env, Side::New, None);
            send_again(&mut core, &env, own(1), &again);
            own_sent(&mut core);
            if watched {
                // Its WATCH was on the server it left: EXEC answers as for a conflict.
                for frame in ["+OK\r\n", "+QUEUED\r\n", "+OK\r\n"] {
                    reply(&mut core, frame);
                }
                assert_eq!(client_sees(&mut core), "*-1\r\n");
            } else {
                for frame in ["+OK\r\n", "+QUEUED\r\n", "*1\r\n:1\r\n"] {
                    reply(&mut core, frame);
                }
                assert_eq!(
                    client_sees(&mut core),
                    "*1\r\n:1\r\n",
                    "MULTI and QUEUED are not shown twice"
                );
            }
            assert!(core.ledger.pending.is_empty());
            assert!(core.ledger.sent.is_empty());
        }
    }

    #[test]
    fn a_subscriber_sends_a_barrier_through_the_old_server_then_moves_with_its_channels() {
        let env = env(dedicated);
        let mut core = SessionCore::new(&env, 10);
        send(&mut core, &env, own(0), &["SUBSCRIBE", "ch"]);
        own_sent(&mut core);
        core.ledger
            .on_frame(b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n", false, false);
        switch(&env);
        assert_eq!(core.on_turn(&env, Some(0)), (false, Start::Wait));
        assert_eq!(own_sent(&mut core).as_bytes(), resp(&["PING"]));
        assert_eq!(core.on_turn(&env, Some(0)), (false, Start::Wait), "the barrier is owed");
        // A message the old server sent before the barrier still reaches the client.
        let message = "*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n";
        reply(&mut core, message);
        reply(&mut core, "*2\r\n$4\r\npong\r\n$0\r\n\r\n");
        assert_eq!(core.on_turn(&env, Some(0)), (true, Start::Connect));
        core.on_own_link(&env, Side::New, None);
        assert_eq!(own_sent(&mut core).as_bytes(), resp(&["SUBSCRIBE", "ch"]));
        assert_eq!(
            client_sees(&mut core),
            format!("*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n{message}")
        );
    }

    #[test]
    fn a_blocked_call_ended_by_the_switch_is_issued_again_on_the_new_primary() {
        let env = env(dedicated);
        let mut core = SessionCore::new(&env, 10);
        send(&mut core, &env, own(0), &["BLPOP", "q", "0"]);
        let mut expected = resp(&["CLIENT", "ID"]);
        expected.extend(resp(&["BLPOP", "q", "0"]));
        assert_eq!(
            own_sent(&mut core).as_bytes(),
            expected,
            "its id is asked first, to end it by"
        );
        reply(&mut core, ":7\r\n");
        core.reconcile(&env, Some((0, None)));
        assert_eq!(
            env.moves.blocked_on(0).len(),
            1,
            "the handover knows the blocked connection"
        );
        switch(&env);
        // The handover's CLIENT UNBLOCK makes the old server answer null; the client does not see it.
        core.on_own_frame(b"*-1\r\n", false, true);
        assert_eq!(core.on_turn(&env, Some(0)), (true, Start::Connect));
        core.on_own_link(&env, Side::New, None);
        assert_eq!(core.on_turn(&env, Some(1)), (false, Start::Requests));
        let mut expected = resp(&["CLIENT", "ID"]);
        expected.extend(resp(&["BLPOP", "q", "0"]));
        assert_eq!(own_sent(&mut core).as_bytes(), expected);
        reply(&mut core, ":8\r\n");
        reply(&mut core, "*2\r\n$1\r\nq\r\n$1\r\nv\r\n");
        assert_eq!(client_sees(&mut core), "*2\r\n$1\r\nq\r\n$1\r\nv\r\n");
        core.release(&env);
    }

    #[test]
    fn a_blocked_call_unblocked_by_a_demotion_elsewhere_is_issued_again_after_the_switch() {
        let env = env(dedicated);
        let mut core = SessionCore::new(&env, 10);
        send(&mut core, &env, own(0), &["BLPOP", "q", "0"]);
        own_sent(&mut core);
        reply(&mut core, ":7\r\n");
        // Another proxy's handover made OLD a replica, which ends blocking calls with UNBLOCKED.
        reply(
            &mut core,
            "-UNBLOCKED force unblock from blocking operation, instance state changed (master -> replica?)\r\n",
        );
        assert_eq!(client_sees(&mut core), "", "not shown");
        // The demoted server closes the connection after it: the call still waits.
        core.on_own_link_lost("backend old closed the connection", false);
        assert!(!core.closing);
        assert_eq!(core.settle_parked(&env), None);
        switch(&env);
        assert_eq!(
            core.settle_parked(&env),
            None,
            "nothing to send again: the call is issued again"
        );
        assert_eq!(core.on_turn(&env, None), (false, Start::Connect));
        core.on_own_link(&env, Side::New, None);
        assert_eq!(core.on_turn(&env, Some(1)), (false, Start::Requests));
        let mut expected = resp(&["CLIENT", "ID"]);
        expected.extend(resp(&["BLPOP", "q", "0"]));
        assert_eq!(own_sent(&mut core).as_bytes(), expected);
        reply(&mut core, ":8\r\n");
        reply(&mut core, "*2\r\n$1\r\nq\r\n$1\r\nv\r\n");
        assert_eq!(client_sees(&mut core), "*2\r\n$1\r\nq\r\n$1\r\nv\r\n");
        core.release(&env);
    }

    #[test]
    fn client_kill_of_its_own_id_answers_and_closes_only_without_skipme() {
        let env = env(|_| {});
        let mut core = SessionCore::new(&env, 1_000_000_000_001);
        let k = key(&env, 0);
        let kill = |skip: &'static str| ["CLIENT", "KILL", "ID", "1000000000001", "SKIPME", skip];
        assert_eq!(send(&mut core, &env, on_link(&k), &kill("yes")), Verdict::Taken);
        assert_eq!(client_sees(&mut core), ":0\r\n");
        assert_eq!(send(&mut core, &env, on_link(&k), &kill("no")), Verdict::Close);
        assert_eq!(client_sees(&mut core), ":1\r\n");
        assert!(core.closing);
    }

    #[test]
    fn client_reply_off_is_applied_by_the_proxy_on_a_shared_link() {
        let env = env(|_| {});
        let mut core = SessionCore::new(&env, 10);
        let k = key(&env, 0);
        send(&mut core, &env, on_link(&k), &["CLIENT", "REPLY", "OFF"]);
        send(&mut core, &env, on_link(&k), &["GET", "a"]);
        assert_eq!(
            shared_sent(&mut core).as_bytes(),
            resp(&["GET", "a"]),
            "the server still answers"
        );
        core.ledger.on_frame(b"$-1\r\n", false, false);
        send(&mut core, &env, on_link(&k), &["CLIENT", "REPLY", "ON"]);
        assert_eq!(client_sees(&mut core), "+OK\r\n", "only CLIENT REPLY ON is answered");
    }

    #[test]
    fn a_shared_link_lost_with_requests_in_flight_closes_the_client_and_an_unsent_one_answers_errors() {
        let env = env(|_| {});
        let mut core = SessionCore::new(&env, 10);
        let k = key(&env, 0);
        send(&mut core, &env, on_link(&k), &["GET", "a"]);
        core.on_shared_link_failure(crate::links::LinkFailure::NotSent("connection refused".into()));
        assert_eq!(client_sees(&mut core), "-ERR connection refused\r\n");
        assert!(!core.closing, "the outcome is known: nothing ran");
        send(&mut core, &env, on_link(&k), &["INCR", "a"]);
        core.on_shared_link_failure(crate::links::LinkFailure::Lost("closed the connection".into()));
        assert!(core.closing, "the INCR's outcome is unknown");
        assert!(core.finished(false));
    }

    #[test]
    fn a_replica_stream_passes_through_and_ends_at_a_switch() {
        let env = env(dedicated);
        let mut core = SessionCore::new(&env, 10);
        assert_eq!(send_raw(&mut core, &env, own(0), b"SYNC\r\n"), Verdict::Taken);
        assert!(core.replication_stream);
        assert_eq!(
            own_sent(&mut core).as_bytes(),
            resp(&["SYNC"]),
            "inline SYNC is sent as RESP"
        );
        switch(&env);
        assert_eq!(core.on_turn(&env, Some(0)), (true, Start::Wait));
        assert!(
            core.closing,
            "the replica reconnects, and its PSYNC reaches the new primary"
        );
    }
}
