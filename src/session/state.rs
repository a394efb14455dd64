//! What Redis keeps for one client, and how each reply changes it: the ledger of a session's requests and
//! replies, which [`super::core::SessionCore`] keeps.
//!
//! Every request forwarded to the backend leaves a [`Pending`] entry; replies come back in order and each one
//! settles the entry at the head of the queue. An entry carries the effect its command has on the session when
//! it succeeds (SELECT changes the db, AUTH the user, ...), so the state always describes what the backend
//! connection really has, and can be rebuilt on a new connection.

use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};

use crate::command::Command;
use crate::protocol::request::{Args, string_to_i64, write_command};
use crate::protocol::value::{Value, is_error_frame};
use crate::telemetry::{Family, Tally, Telemetry};

/// The kind of a Pub/Sub subscription: plain channels, patterns, or (7.0) shard channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubKind {
    Channel,
    Pattern,
    Shard,
}

/// Whether replies are sent at all (`CLIENT REPLY ON|OFF|SKIP`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReplyMode {
    #[default]
    On,
    Off,
    SkipNext,
}

/// The state of a client's connection as Redis keeps it, confirmed by the backend's replies.
#[derive(Clone, Default)]
pub struct SessionState {
    pub db: i64,
    /// 2 or 3, as negotiated with HELLO.
    pub protocol: u8,
    /// The user authenticated with AUTH or HELLO (`None` with a password alone: the default user).
    pub user: Option<Bytes>,
    pub password: Option<Bytes>,
    pub name: Option<Bytes>,
    pub readonly: bool,
    pub in_multi: bool,
    pub watching: bool,
    pub channels: BTreeSet<Bytes>,
    pub patterns: BTreeSet<Bytes>,
    pub shard_channels: BTreeSet<Bytes>,
    pub monitor: bool,
    /// The arguments of the CLIENT TRACKING ON that is in force (to turn it on again on a new connection).
    pub tracking: Option<Vec<Bytes>>,
    /// Effects of commands queued inside MULTI, applied at EXEC: (position in the transaction, effect).
    queued: Vec<(usize, Effect)>,
    queued_count: usize,
}

impl fmt::Debug for SessionState {
    // Written by hand so that the password never reaches a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionState")
            .field("db", &self.db)
            .field("protocol", &self.protocol)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("name", &self.name)
            .field("in_multi", &self.in_multi)
            .field("watching", &self.watching)
            .field("subscriptions", &self.subscription_count())
            .field("monitor", &self.monitor)
            .finish()
    }
}

impl SessionState {
    pub fn new() -> Self {
        SessionState {
            protocol: 2,
            ..Default::default()
        }
    }

    pub fn subscription_count(&self) -> usize {
        self.channels.len() + self.patterns.len() + self.shard_channels.len()
    }

    /// Whether a RESP2 connection is in Pub/Sub mode, where replies are mixed with messages.
    pub fn subscribed(&self) -> bool {
        self.subscription_count() > 0
    }

    /// State that lives only on the backend connection that holds it and cannot be rebuilt on another one
    /// without the client noticing: a transaction, watched keys, subscriptions, MONITOR, tracking, no replies.
    pub fn has_unrestorable_state(&self, reply_mode: ReplyMode) -> bool {
        self.in_multi
            || self.watching
            || self.subscribed()
            || self.monitor
            || self.tracking.is_some()
            || reply_mode != ReplyMode::On
    }

    fn subscriptions_mut(&mut self, kind: SubKind) -> &mut BTreeSet<Bytes> {
        match kind {
            SubKind::Channel => &mut self.channels,
            SubKind::Pattern => &mut self.patterns,
            SubKind::Shard => &mut self.shard_channels,
        }
    }

    /// Applies a command's effect after the backend answered it with a success.
    fn apply(&mut self, effect: Effect, reply: &[u8]) {
        match effect {
            Effect::None | Effect::Local(_) | Effect::ClientId => {}
            Effect::Select(db) => self.db = db,
            Effect::Auth(auth) => {
                self.user = auth.user;
                self.password = Some(auth.password);
            }
            Effect::Hello(hello) => {
                if let Some(protocol) = hello.protocol {
                    self.protocol = protocol;
                }
                if let Some(auth) = hello.auth {
                    self.user = auth.user;
                    self.password = Some(auth.password);
                }
                if hello.name.is_some() {
                    self.name = hello.name;
                }
            }
            Effect::SetName(name) => self.name = name,
            Effect::ReadOnly(readonly) => self.readonly = readonly,
            Effect::Multi => {
                self.in_multi = true;
                self.queued.clear();
                self.queued_count = 0;
            }
            Effect::Exec => {
                let queued = std::mem::take(&mut self.queued);
                self.end_transaction();
                // EXEC answers with one reply per queued command (or a null when WATCH aborted it).
                if !queued.is_empty()
                    && let Some(Value::Array(results)) = Value::decode(reply, self.protocol)
                {
                    for (position, effect) in queued {
                        if results.get(position).is_some_and(|r| !r.is_error()) {
                            self.apply(effect, b"+OK\r\n");
                        }
                    }
                }
            }
            Effect::Discard => self.end_transaction(),
            Effect::Watch => self.watching = true,
            Effect::Unwatch => self.watching = false,
            Effect::Monitor => self.monitor = true,
            Effect::Tracking(args) => self.tracking = args,
            Effect::Reset => *self = SessionState::new(),
        }
    }

    fn end_transaction(&mut self) {
        self.in_multi = false;
        self.watching = false;
        self.queued.clear();
        self.queued_count = 0;
    }

    /// Updates the subscriptions from a (un)subscribe confirmation: `[kind, channel, count]`.
    fn confirm_subscription(&mut self, frame: &[u8]) {
        let Some(Value::Array(items)) = Value::decode(frame, self.protocol) else {
            return;
        };
        let Some((kind, subscribe)) = items.first().and_then(Value::as_bytes).and_then(pubsub_confirmation) else {
            return;
        };
        let Some(channel) = items.get(1).and_then(Value::as_bytes) else {
            return;
        };
        let set = self.subscriptions_mut(kind);
        if subscribe {
            set.insert(Bytes::copy_from_slice(channel));
        } else {
            set.remove(channel);
        }
    }
}

/// Credentials from AUTH or HELLO ... AUTH.
#[derive(Clone)]
pub struct Credentials {
    pub user: Option<Bytes>,
    pub password: Bytes,
}

/// The options of a HELLO.
#[derive(Clone)]
pub struct HelloArgs {
    pub protocol: Option<u8>,
    pub auth: Option<Credentials>,
    pub name: Option<Bytes>,
}

/// What a forwarded command does to the session once the backend answers it with a success.
#[derive(Clone)]
pub enum Effect {
    None,
    /// A reply the proxy gives itself, sent to the client when it reaches the head of the queue.
    Local(Bytes),
    Select(i64),
    Auth(Box<Credentials>),
    Hello(Box<HelloArgs>),
    SetName(Option<Bytes>),
    ReadOnly(bool),
    Multi,
    Exec,
    Discard,
    Watch,
    Unwatch,
    Monitor,
    /// CLIENT TRACKING: the full arguments when turned on, `None` when turned off.
    Tracking(Option<Vec<Bytes>>),
    Reset,
    /// The backend connection's own client id (from an internal CLIENT ID).
    ClientId,
}

/// How many frames settle a pending request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// One reply.
    One,
    /// This many (un)subscribe confirmations.
    Confirmations(usize),
    /// One confirmation per current subscription of the kind (at least one): UNSUBSCRIBE with no channel.
    AllOf(SubKind),
}

/// A request sent to the backend (or answered locally) whose reply the client has not received yet.
pub struct Pending {
    pub effect: Effect,
    pub expect: Expect,
    /// A command queued inside MULTI: its effect waits for EXEC.
    pub queued: bool,
    /// A write whose answer the handover waits for.
    pub write: bool,
    /// A blocking call: what is needed to issue it again on another server.
    pub blocked: Option<Box<Blocked>>,
    /// A command the proxy sent itself (restoring state on a new connection): the client never sees its
    /// reply, though its effect still applies.
    pub hidden: bool,
    /// The command's family and when it was forwarded, for the latency and error metrics.
    pub family: Family,
    pub sent_at: Instant,
    /// How many bytes of [`Ledger::sent`] are this request's, which can be sent again as they are; 0 for one that
    /// cannot (state to carry, local or hidden).
    pub raw_len: usize,
    /// Sent again elsewhere: its reply from here is dropped.
    pub void: bool,
    /// A read sampled for shadow reads: the request, handed on with its reply.
    pub shadow: Option<Box<Bytes>>,
}

impl Pending {
    fn new(effect: Effect, expect: Expect, sent_at: Instant) -> Self {
        let family = Family::Other;
        Pending {
            effect,
            expect,
            queued: false,
            write: false,
            blocked: None,
            hidden: false,
            family,
            sent_at,
            raw_len: 0,
            void: false,
            shadow: None,
        }
    }
}

/// Replies held back after the primary refused a request as not executed (`NOREPLICAS`, `READONLY`): a handover
/// this proxy took no part in may have fenced it. Until the servers tell, the refused request's reply and every
/// later one wait here; then either the requests are sent again to the new primary, or the replies go to the
/// client as they came.
#[derive(Debug)]
pub struct Parked {
    /// The generation of the primary the refused request went to.
    pub generation: u64,
    /// The reply frames that came since, the refusal first, one per pending request from the head.
    pub frames: Vec<Bytes>,
    pub since: Instant,
}

/// Whether a reply means the server refused the command before it had any effect, as a fenced or demoted primary
/// does (fleet-and-cluster.md, section 1): the refusal itself, an EXEC aborted for it, a script's on 6.2 (which
/// wraps it), and a 5.0 replica's EXEC.
fn not_executed(frame: &[u8]) -> bool {
    let names_it =
        || memchr::memmem::find(frame, b"NOREPLICAS").is_some() || memchr::memmem::find(frame, b"READONLY").is_some();
    frame.starts_with(b"-NOREPLICAS")
        || frame.starts_with(b"-READONLY")
        || (frame.starts_with(b"-EXECABORT") && names_it())
        || (frame.starts_with(b"-ERR Error running script") && names_it())
        || frame.starts_with(b"-ERR Transaction contains write commands but instance is now a read-only")
}

/// A blocking call (BLPOP, BLMOVE, BZPOPMIN, XREAD BLOCK, ...) in flight, which a switch may have to end on
/// the old server and issue again on the new one with the time it had left.
#[derive(Debug, Clone)]
pub struct Blocked {
    /// The call's arguments, command name first.
    pub args: Vec<Bytes>,
    /// Which argument is the timeout.
    pub timeout_at: usize,
    /// The timeout in milliseconds (0: wait forever).
    pub timeout_ms: f64,
    /// Whether the timeout argument is in seconds (BLPOP) rather than milliseconds (XREAD BLOCK).
    pub in_seconds: bool,
    pub sent_at: std::time::Instant,
}

impl Blocked {
    /// Reads the timeout of a blocking call; `None` when the call does not block (XREAD without BLOCK).
    pub fn of(args: Args<'_>) -> Option<Blocked> {
        let name = args.get(0)?.to_ascii_uppercase();
        let (timeout_at, in_seconds) = match name.as_slice() {
            b"BLMPOP" | b"BZMPOP" => (1, true),
            b"XREAD" | b"XREADGROUP" => ((1..args.len()).find(|&i| args.is(i, "BLOCK"))? + 1, false),
            _ => (args.len().checked_sub(1)?, true),
        };
        let value: f64 = std::str::from_utf8(args.get(timeout_at)?).ok()?.parse().ok()?;
        if !value.is_finite() || value < 0.0 {
            return None;
        }
        Some(Blocked {
            args: (0..args.len()).map(|i| owned(args.get(i))).collect(),
            timeout_at,
            timeout_ms: if in_seconds { value * 1000.0 } else { value },
            in_seconds,
            sent_at: std::time::Instant::now(),
        })
    }

    /// The same call with the time it has left, or `None` if that time is up.
    pub fn remaining(&self) -> Option<Blocked> {
        let mut next = self.clone();
        if self.timeout_ms > 0.0 {
            let left = self.timeout_ms - self.sent_at.elapsed().as_secs_f64() * 1000.0;
            if left < 1.0 {
                return None;
            }
            next.timeout_ms = left;
            let text = if self.in_seconds {
                format!("{:.3}", left / 1000.0)
            } else {
                format!("{}", left as u64)
            };
            next.args[self.timeout_at] = Bytes::from(text);
        }
        next.sent_at = std::time::Instant::now();
        Some(next)
    }
}

/// A session's state and its queue of pending replies, with no I/O: requests go in through [`Ledger::plan`],
/// reply frames through [`Ledger::on_frame`], and what the client must receive comes out in `client_out`. The
/// decisions about each request (answer, forward, hold, pin) are [`super::core::SessionCore`]'s.
pub struct Ledger {
    pub state: SessionState,
    pub pending: VecDeque<Pending>,
    /// Bytes to write to the client.
    pub client_out: BytesMut,
    /// Reply mode as of the last forwarded command (the backend applies it as it reads them).
    pub reply_mode: ReplyMode,
    /// Whether a MULTI was forwarded and its EXEC or DISCARD not yet: commands sent now are queued.
    pub multi_open: bool,
    /// Writes forwarded and not yet answered.
    pub pending_writes: usize,
    /// The time of the batch of requests or replies being handled: read once per batch, not per request.
    pub now: Instant,
    /// The backend connection's client id, once known.
    pub link_client_id: Option<i64>,
    /// Whether this connection was asked for its id already (it is asked once, before its first blocking call).
    pub link_client_id_asked: bool,
    /// The id the client sees (with shared links): `HELLO`'s reply carries it instead of the server connection's.
    pub virtual_id: Option<u64>,
    /// `CLIENT REPLY` is applied here, not on the server (with shared links): requests sent while replies are off
    /// are still answered by the server, and those replies are kept from the client.
    pub local_reply_mode: bool,
    pub telemetry: Arc<Telemetry>,
    /// When the proxy fronts a cluster: what `-MOVED` and `-ASK` replies are rewritten with, and the port of the
    /// session's shard.
    pub redirects: Option<Arc<crate::cluster::Front>>,
    pub cluster_port: u16,
    /// The metrics of this turn, added to the shared ones at its end.
    pub tally: Tally,
    /// Whether the primary answered a request with NOREPLICAS or READONLY since the last look.
    pub not_executed: bool,
    /// The bytes of the forwarded requests still unanswered that can be sent again (see [`Pending::raw_len`]).
    pub sent: BytesMut,
    /// Replies held back after a refusal (see [`Parked`]).
    pub parked: Option<Parked>,
    /// The generation of the link whose frames are being handled.
    pub frame_generation: u64,
    /// Whether held-back replies are being delivered as they came (a refusal then is the client's).
    replaying: bool,
    /// The open transaction's requests whose replies the client has (MULTI's, the QUEUEDs): their bytes stay at
    /// the front of `sent` until EXEC is answered, since a refused EXEC sends the whole transaction again.
    tx_answered: usize,
    tx_answered_bytes: usize,
    /// A request of the open transaction whose bytes were not kept: it cannot be sent again.
    tx_incomplete: bool,
    /// Requests sent again whose replies the client had already: their replies now are not shown.
    hide_next: usize,
    /// Reads sampled for shadow reads, with their replies, to hand on at the turn's end.
    pub shadowed: Vec<crate::readiness::shadow::Sample>,
}

impl Ledger {
    pub fn new(telemetry: Arc<Telemetry>) -> Self {
        Ledger {
            telemetry,
            redirects: None,
            cluster_port: 0,
            state: SessionState::new(),
            pending: VecDeque::new(),
            client_out: BytesMut::new(),
            reply_mode: ReplyMode::On,
            multi_open: false,
            pending_writes: 0,
            now: Instant::now(),
            link_client_id: None,
            link_client_id_asked: false,
            virtual_id: None,
            local_reply_mode: false,
            tally: Tally::default(),
            not_executed: false,
            sent: BytesMut::new(),
            parked: None,
            frame_generation: 0,
            replaying: false,
            tx_answered: 0,
            tx_answered_bytes: 0,
            tx_incomplete: false,
            hide_next: 0,
            shadowed: Vec::new(),
        }
    }

    /// Records a request about to be forwarded: its effect, whether it is a write the handover must wait for,
    /// and, for a blocking call, how to issue it again.
    pub fn plan(&mut self, command: Command, args: Args<'_>, write: bool, blocked: Option<Blocked>) {
        let family = Family::of(command);
        self.tally.command(&self.telemetry, family);
        if matches!(command, Command::Read | Command::Write) && self.reply_mode == ReplyMode::On {
            // The common case: a data command that changes nothing in the session.
            self.pending_writes += usize::from(write);
            let pending = Pending {
                write,
                queued: self.multi_open,
                family,
                hidden: self.take_hidden(),
                ..Pending::new(Effect::None, Expect::One, self.now)
            };
            self.pending.push_back(pending);
            return;
        }
        let (effect, expect) = effect_of(command, args);
        let queued = self.multi_open && !matches!(effect, Effect::Exec | Effect::Discard | Effect::Multi);
        match effect {
            Effect::Multi => self.multi_open = true,
            Effect::Exec | Effect::Discard | Effect::Reset => self.multi_open = false,
            _ => {}
        }
        let expects_reply = match (command, self.reply_mode) {
            (Command::Client, _) if args.is(1, "REPLY") && args.len() == 3 => {
                if args.is(2, "OFF") {
                    self.reply_mode = ReplyMode::Off;
                    false
                } else if args.is(2, "SKIP") {
                    if self.reply_mode == ReplyMode::On {
                        self.reply_mode = ReplyMode::SkipNext;
                    }
                    false
                } else if args.is(2, "ON") {
                    self.reply_mode = ReplyMode::On;
                    true
                } else {
                    self.reply_mode == ReplyMode::On
                }
            }
            (Command::Reset, _) => {
                self.reply_mode = ReplyMode::On;
                true
            }
            (_, ReplyMode::On) => true,
            (_, ReplyMode::Off) => false,
            (_, ReplyMode::SkipNext) => {
                self.reply_mode = ReplyMode::On;
                false
            }
        };
        if expects_reply || self.local_reply_mode {
            self.pending_writes += usize::from(write);
            let blocked = blocked.map(Box::new);
            let sent_at = self.now;
            let sent_again = self.take_hidden();
            self.pending.push_back(Pending {
                effect,
                expect,
                queued,
                write,
                blocked,
                // Redis sends (un)subscribe confirmations whatever CLIENT REPLY says.
                hidden: (!expects_reply && !matches!(command, Command::Subscribe | Command::Unsubscribe)) || sent_again,
                family,
                sent_at,
                raw_len: 0,
                void: false,
                shadow: None,
            });
        }
    }

    /// Whether the request being planned was sent again and its reply is the client's already.
    fn take_hidden(&mut self) -> bool {
        let hide = self.hide_next > 0;
        self.hide_next -= usize::from(hide);
        hide
    }

    /// Records a blocking call issued again on a new primary after a switch ended it on the old one.
    pub fn plan_reissued(&mut self, blocked: Blocked) {
        let pending = Pending {
            blocked: Some(Box::new(blocked)),
            ..Pending::new(Effect::None, Expect::One, self.now)
        };
        self.pending.push_back(pending);
    }

    /// Queues a reply the proxy gives itself, in order with the replies still to come from the backend.
    pub fn push_local(&mut self, reply: Bytes) {
        if self.local_reply_mode {
            // Replies the proxy gives itself follow CLIENT REPLY as the server's would.
            match self.reply_mode {
                ReplyMode::On => {}
                ReplyMode::Off => return,
                ReplyMode::SkipNext => {
                    self.reply_mode = ReplyMode::On;
                    return;
                }
            }
        }
        self.pending
            .push_back(Pending::new(Effect::Local(reply), Expect::One, self.now));
        self.flush_locals();
    }

    /// Queues a command the proxy sends itself and writes it to `out`; its reply is kept from the client.
    pub fn push_internal(&mut self, out: &mut BytesMut, args: &[&[u8]]) {
        self.push_hidden(out, args, Effect::None, Expect::One);
    }

    /// Queues a command the proxy sends itself whose effect applies when it succeeds.
    pub fn push_hidden(&mut self, out: &mut BytesMut, args: &[&[u8]], effect: Effect, expect: Expect) {
        write_command(out, args);
        self.pending.push_back(Pending {
            hidden: true,
            ..Pending::new(effect, expect, self.now)
        });
    }

    /// Asks the backend connection for its client id, with a hidden reply, unless it was asked already or the
    /// reply could not be told apart (inside MULTI, or with CLIENT REPLY OFF/SKIP). Sent right before a blocking
    /// call, when the client's own AUTH has run: the handover ends that call on OLD by this id.
    pub fn ask_client_id(&mut self, out: &mut BytesMut) {
        if self.link_client_id_asked || self.multi_open || (self.reply_mode != ReplyMode::On && !self.local_reply_mode)
        {
            return;
        }
        self.link_client_id_asked = true;
        self.push_hidden(out, &[b"CLIENT", b"ID"], Effect::ClientId, Expect::One);
    }

    /// Forgets what was known about the backend connection, which is being replaced.
    pub fn forget_link(&mut self) {
        self.link_client_id = None;
        self.link_client_id_asked = false;
    }

    /// Whether a command the proxy sent itself is still unanswered (the link is not fully restored yet).
    pub fn awaiting_internal(&self) -> bool {
        self.pending.iter().any(|p| p.hidden)
    }

    /// Whether the oldest unanswered request is a blocking call.
    pub fn blocked_call(&self) -> Option<&Blocked> {
        self.pending.front().and_then(|p| p.blocked.as_deref())
    }

    /// Moves local replies that reached the head of the queue to the client's output.
    pub fn flush_locals(&mut self) {
        while let Some(Pending {
            effect: Effect::Local(_),
            ..
        }) = self.pending.front()
        {
            if let Some(Pending {
                effect: Effect::Local(reply),
                ..
            }) = self.pending.pop_front()
            {
                self.client_out.extend_from_slice(&reply);
            }
        }
    }

    /// Handles one complete frame from the backend. `link_retired` says the link belongs to a primary that
    /// was replaced: a blocking call it answers with a timeout was ended by the switch, and the call is
    /// returned (instead of the client getting the timeout) so that it can be issued again on the new primary.
    pub fn on_frame(&mut self, frame: &[u8], push: bool, link_retired: bool) -> Option<Blocked> {
        if self.state.monitor {
            // After MONITOR the connection only streams: every frame goes to the client.
            self.client_out.extend_from_slice(frame);
            return None;
        }
        let expecting_confirmation = matches!(
            self.pending.front(),
            Some(Pending {
                expect: Expect::Confirmations(_) | Expect::AllOf(_),
                ..
            })
        );
        let may_be_pubsub = push || (self.state.protocol < 3 && (self.state.subscribed() || expecting_confirmation));
        if may_be_pubsub {
            match pubsub_frame_kind(frame) {
                Some(PubSubFrame::Message) => {
                    self.client_out.extend_from_slice(frame);
                    return None;
                }
                Some(PubSubFrame::Confirmation) => {
                    self.state.confirm_subscription(frame);
                    self.settle_confirmation(frame);
                    return None;
                }
                None if push => {
                    // Other pushes (tracking invalidations, ...) answer no request.
                    self.client_out.extend_from_slice(frame);
                    return None;
                }
                None => {}
            }
        }
        if let Some(parked) = self.parked.as_mut() {
            parked.frames.push(Bytes::copy_from_slice(frame));
            return None;
        }
        let Some(mut head) = self.pending.pop_front() else {
            // A reply to nothing: Redis does not do this, but forwarding it keeps the client's view honest.
            tracing::warn!("reply from the backend with no request pending");
            self.client_out.extend_from_slice(frame);
            return None;
        };
        if head.void {
            self.pending_writes -= usize::from(head.write);
            return None;
        }
        // A blocking call ended by a demotion (`REPLICAOF` unblocks with UNBLOCKED) is issued again instead.
        let unblocked = head.blocked.is_some() && frame.starts_with(b"-UNBLOCKED");
        // In front of a cluster, a redirection the proxy cannot place yet (its shard's primary changed) was not
        // executed either: the cluster refresh looks, and the request goes again to the shard's new primary.
        let redirect = match &self.redirects {
            Some(front) if frame.first() == Some(&b'-') => front.redirect(frame, self.cluster_port),
            _ => None,
        };
        let unplaced = redirect == Some(crate::cluster::Redirect::Unplaced);
        if (head.raw_len > 0 && (not_executed(frame) || unplaced) || unblocked) && !self.replaying {
            // Not shown to the client yet: the handover asks the servers whether the primary was fenced.
            self.pending.push_front(head);
            self.parked = Some(Parked {
                generation: self.frame_generation,
                frames: vec![Bytes::copy_from_slice(frame)],
                since: self.now,
            });
            self.not_executed = true;
            return None;
        }
        self.consume_sent(&head);
        self.pending_writes -= usize::from(head.write);
        let hidden = head.hidden;
        let error = is_error_frame(frame);
        if !hidden {
            self.tally
                .reply(&self.telemetry, head.family, self.now - head.sent_at, error);
        }
        if link_retired
            && is_null_frame(frame)
            && let Some(blocked) = head.blocked
        {
            self.flush_locals();
            return Some(*blocked);
        }
        if hidden && error {
            let reply = String::from_utf8_lossy(frame);
            if matches!(head.effect, Effect::ClientId) {
                // A user without the CLIENT command: the handover finds the connection by its address instead.
                tracing::debug!(reply = %reply.trim_end(), "the backend connection's id is not available");
            } else {
                tracing::warn!(reply = %reply.trim_end(), "restoring session state failed");
            }
        }
        match (&head.effect, self.virtual_id) {
            _ if hidden => {}
            (Effect::Hello(_), Some(id)) if !error => match crate::clients::hello_with_id(frame, id) {
                Some(rewritten) => self.client_out.extend_from_slice(&rewritten),
                None => self.client_out.extend_from_slice(frame),
            },
            _ if redirect.is_some() => match redirect {
                Some(crate::cluster::Redirect::To(rewritten)) => self.client_out.extend_from_slice(&rewritten),
                _ => self.client_out.extend_from_slice(crate::cluster::TRY_AGAIN),
            },
            _ => self.client_out.extend_from_slice(frame),
        }
        if let Some(request) = head.shadow.take() {
            self.shadowed.push(crate::readiness::shadow::Sample {
                request: *request,
                reply: Bytes::copy_from_slice(frame),
                db: self.state.db,
                protocol: self.state.protocol,
            });
        }
        match head.effect {
            Effect::ClientId => {
                if let Some(Value::Int(id)) = Value::decode(frame, self.state.protocol) {
                    self.link_client_id = Some(id);
                }
            }
            // A command queued inside MULTI: its effect waits for EXEC (an error reply means it was not queued).
            effect if head.queued && frame.starts_with(b"+QUEUED") => {
                let position = self.state.queued_count;
                self.state.queued_count += 1;
                if !matches!(effect, Effect::None) {
                    self.state.queued.push((position, effect));
                }
            }
            _ if head.queued => {}
            effect if !error => self.state.apply(effect, frame),
            // EXECABORT and friends end the transaction too.
            Effect::Exec => self.state.end_transaction(),
            _ => {}
        }
        self.flush_locals();
        None
    }

    /// Counts a (un)subscribe confirmation against the request at the head of the queue.
    fn settle_confirmation(&mut self, frame: &[u8]) {
        let hidden = self.pending.front().is_some_and(|p| p.hidden);
        if !hidden {
            self.client_out.extend_from_slice(frame);
        }
        let Some(head) = self.pending.front_mut() else { return };
        let left = match head.expect {
            Expect::Confirmations(n) => n.saturating_sub(1),
            // The first confirmation of an unsubscribe-all was counted already: one per subscription that was.
            Expect::AllOf(kind) => self.state.subscriptions_mut(kind).len(),
            Expect::One => return,
        };
        if left == 0 {
            self.pending.pop_front();
            self.flush_locals();
        } else {
            head.expect = Expect::Confirmations(left);
        }
    }

    /// Records the bytes of the request [`Ledger::plan`] just queued, when it can be sent again as it is: a data
    /// command that changes nothing in the session, or a part of a transaction, with its reply expected.
    pub fn log_sent(&mut self, raw: &[u8]) {
        let Some(last) = self.pending.back_mut() else { return };
        let transaction = last.queued || matches!(last.effect, Effect::Multi | Effect::Exec | Effect::Discard);
        let resendable = (transaction || matches!(last.effect, Effect::None))
            && last.expect == Expect::One
            && !last.hidden
            && last.blocked.is_none()
            && last.raw_len == 0;
        if resendable {
            last.raw_len = raw.len();
            self.sent.extend_from_slice(raw);
        } else if transaction || self.multi_open {
            self.tx_incomplete = true;
        }
    }

    /// Lets go of the bytes of a request whose reply the client gets, keeping an open transaction's until its
    /// EXEC (or DISCARD) is answered.
    fn consume_sent(&mut self, head: &Pending) {
        match head.effect {
            _ if head.raw_len == 0 => {}
            Effect::Multi => {
                self.tx_answered += 1;
                self.tx_answered_bytes += head.raw_len;
            }
            _ if head.queued => {
                self.tx_answered += 1;
                self.tx_answered_bytes += head.raw_len;
            }
            Effect::Exec | Effect::Discard => {
                self.sent.advance(self.tx_answered_bytes + head.raw_len);
                (self.tx_answered, self.tx_answered_bytes, self.tx_incomplete) = (0, 0, false);
            }
            _ => self.sent.advance(head.raw_len),
        }
    }

    /// Whether the replies held back are a blocking call's alone.
    pub fn parked_blocked_alone(&self) -> bool {
        self.parked.is_some() && self.pending.len() == 1 && self.pending[0].blocked.is_some()
    }

    /// When the replies held back are a blocking call's alone: that call, to be issued again elsewhere.
    pub fn take_parked_blocked(&mut self) -> Option<Blocked> {
        if !self.parked_blocked_alone() {
            return None;
        }
        let head = self.pending.pop_front()?;
        self.pending_writes -= usize::from(head.write);
        self.parked = None;
        head.blocked.map(|blocked| *blocked)
    }

    /// Forgets every kept request (the link is gone).
    pub fn forget_sent(&mut self) {
        self.sent.clear();
        (self.tx_answered, self.tx_answered_bytes, self.tx_incomplete) = (0, 0, false);
        self.parked = None;
    }

    /// Gives the held-back replies to the client as they came.
    pub fn replay_parked(&mut self) {
        let Some(parked) = self.parked.take() else { return };
        self.replaying = true;
        for frame in parked.frames {
            self.on_frame(&frame, false, false);
        }
        self.replaying = false;
    }

    /// When every request still unanswered can be sent again: drops the held-back replies, lets the replies still
    /// to come be dropped too, and returns the requests' bytes, to be sent again in order. `None` (nothing
    /// changed) otherwise.
    pub fn resend_parked(&mut self) -> Option<Bytes> {
        let parked = self.parked.as_ref()?;
        if self.tx_incomplete || !self.pending.iter().all(|p| p.raw_len > 0 && !p.void) {
            return None;
        }
        let answered = parked.frames.len().min(self.pending.len());
        for pending in self.pending.drain(..answered) {
            self.pending_writes -= usize::from(pending.write);
        }
        for pending in &mut self.pending {
            (pending.void, pending.raw_len) = (true, 0);
        }
        self.parked = None;
        // A transaction goes again whole: the replies the client has of it (MULTI's, the QUEUEDs) are not shown
        // twice. The one it began on the old server is abandoned there; a WATCH from before it stays, so the
        // switch makes its EXEC answer null, as a WATCH conflict would.
        self.hide_next = std::mem::take(&mut self.tx_answered);
        self.tx_answered_bytes = 0;
        if self.multi_open || self.state.in_multi {
            let watching = self.state.watching;
            self.state.end_transaction();
            self.state.watching = watching;
            self.multi_open = false;
        }
        Some(self.sent.split().freeze())
    }

    /// The backend link is gone: every pending request gets `reply` (an error), and the answer tells whether
    /// the client must be disconnected because its session had state that a new link cannot carry.
    pub fn backend_lost(&mut self, reply: &Bytes) -> bool {
        // The replies held back go to the client as they came; the requests still unanswered get `reply`.
        self.replay_parked();
        let now = self.now;
        let answered = std::mem::take(&mut self.pending)
            .into_iter()
            .filter_map(|pending| match pending.effect {
                _ if pending.hidden => None,
                Effect::Local(_) => Some(pending),
                _ => Some(Pending::new(Effect::Local(reply.clone()), Expect::One, now)),
            });
        self.pending = answered.collect();
        self.pending_writes = 0;
        self.forget_sent();
        self.forget_link();
        self.flush_locals();
        let close = self.state.has_unrestorable_state(self.reply_mode) || self.multi_open;
        self.multi_open = false;
        close
    }

    /// Writes the commands that give a new backend connection this session's state, with hidden replies:
    /// protocol and user, db, name, READONLY, subscriptions and tracking. Nothing is written for a session with
    /// no state: a hidden command ahead of the client's first one could change that command's reply (a `CLIENT ID`
    /// before the client's own AUTH gets NOAUTH; SYNC refuses to start with a reply pending).
    ///
    /// `proxy_credentials` replaces the client's own user and password when the proxy authenticates clients
    /// itself (`requirepass`) and uses the configured credentials toward the server.
    ///
    /// `identity_in_place`: the connection has the session's protocol, credentials and db already (a spare kept in
    /// that state, see [`crate::spares`]), so only the rest is restored.
    pub fn restore_on(&mut self, out: &mut BytesMut, proxy_credentials: Option<&Credentials>, identity_in_place: bool) {
        let state = self.state.clone();
        let default_user = Bytes::from_static(b"default");
        let (user, password) = match proxy_credentials {
            Some(credentials) => (credentials.user.as_ref(), Some(&credentials.password)),
            None => (state.user.as_ref(), state.password.as_ref()),
        };
        if !identity_in_place {
            if state.protocol >= 3 {
                let mut args: Vec<&[u8]> = vec![b"HELLO", b"3"];
                if let Some(password) = password {
                    args.extend([&b"AUTH"[..], user.unwrap_or(&default_user), password]);
                }
                self.push_internal(out, &args);
            } else if let Some(password) = password {
                match user {
                    Some(user) => self.push_internal(out, &[b"AUTH", user, password]),
                    None => self.push_internal(out, &[b"AUTH", password]),
                }
            }
            if state.db != 0 {
                self.push_internal(out, &[b"SELECT", itoa::Buffer::new().format(state.db).as_bytes()]);
            }
        }
        if let Some(name) = &state.name {
            self.push_internal(out, &[b"CLIENT", b"SETNAME", name]);
        }
        if state.readonly {
            self.push_internal(out, &[b"READONLY"]);
        }
        let kinds: [(&[u8], &BTreeSet<Bytes>); 3] = [
            (b"SUBSCRIBE", &state.channels),
            (b"PSUBSCRIBE", &state.patterns),
            (b"SSUBSCRIBE", &state.shard_channels),
        ];
        for (command, set) in kinds {
            if !set.is_empty() {
                let mut args: Vec<&[u8]> = vec![command];
                args.extend(set.iter().map(|c| &c[..]));
                self.push_hidden(out, &args, Effect::None, Expect::Confirmations(set.len()));
            }
        }
        if let Some(tracking) = &state.tracking {
            let args: Vec<&[u8]> = tracking.iter().map(|a| &a[..]).collect();
            self.push_internal(out, &args);
            if state.protocol >= 3 {
                // What the client cached may have changed while it had no tracking: tell it to drop everything.
                self.client_out.extend_from_slice(b">2\r\n$10\r\ninvalidate\r\n_\r\n");
            }
        }
    }
}

impl Default for Ledger {
    fn default() -> Self {
        Ledger::new(Arc::new(Telemetry::new()))
    }
}

/// What a command does to the session, and how many frames answer it.
fn effect_of(command: Command, args: Args<'_>) -> (Effect, Expect) {
    let one = |effect| (effect, Expect::One);
    match command {
        Command::Select => match args.get(1).and_then(string_to_i64) {
            Some(db) if args.len() == 2 => one(Effect::Select(db)),
            _ => one(Effect::None),
        },
        Command::Auth => match args.len() {
            2 => one(Effect::Auth(Box::new(Credentials {
                user: None,
                password: owned(args.get(1)),
            }))),
            3 => one(Effect::Auth(Box::new(Credentials {
                user: Some(owned(args.get(1))),
                password: owned(args.get(2)),
            }))),
            _ => one(Effect::None),
        },
        Command::Hello => one(parse_hello(args).map_or(Effect::None, |h| Effect::Hello(Box::new(h)))),
        Command::Client if args.is(1, "SETNAME") && args.len() == 3 => {
            let name = owned(args.get(2));
            one(Effect::SetName((!name.is_empty()).then_some(name)))
        }
        Command::Client if args.is(1, "TRACKING") && args.len() >= 3 => {
            let on = args.is(2, "ON");
            one(Effect::Tracking(
                on.then(|| (0..args.len()).map(|i| owned(args.get(i))).collect()),
            ))
        }
        Command::ReadOnly => one(Effect::ReadOnly(true)),
        Command::ReadWrite => one(Effect::ReadOnly(false)),
        Command::Multi => one(Effect::Multi),
        Command::Exec => one(Effect::Exec),
        Command::Discard => one(Effect::Discard),
        Command::Watch => one(Effect::Watch),
        Command::Unwatch => one(Effect::Unwatch),
        Command::Monitor => one(Effect::Monitor),
        Command::Reset => one(Effect::Reset),
        Command::Subscribe | Command::Unsubscribe => {
            let kind = match args.get(0).map(|n| n.to_ascii_uppercase()) {
                Some(n) if n.starts_with(b"P") => SubKind::Pattern,
                Some(n) if n.starts_with(b"S") => SubKind::Shard,
                _ => SubKind::Channel,
            };
            match (command, args.len()) {
                // Wrong arity: one error reply.
                (Command::Subscribe, 0 | 1) => one(Effect::None),
                (Command::Unsubscribe, 0 | 1) => (Effect::None, Expect::AllOf(kind)),
                (_, n) => (Effect::None, Expect::Confirmations(n - 1)),
            }
        }
        _ => one(Effect::None),
    }
}

/// Reads `HELLO [protover [AUTH username password] [SETNAME clientname]]`; `None` when Redis would refuse it.
pub fn parse_hello(args: Args<'_>) -> Option<HelloArgs> {
    let mut hello = HelloArgs {
        protocol: None,
        auth: None,
        name: None,
    };
    let mut i = 1;
    if let Some(version) = args.get(1) {
        hello.protocol = match string_to_i64(version)? {
            v @ 2..=3 => Some(v as u8),
            _ => return None,
        };
        i = 2;
    }
    while i < args.len() {
        if args.is(i, "AUTH") && i + 2 < args.len() {
            hello.auth = Some(Credentials {
                user: Some(owned(args.get(i + 1))),
                password: owned(args.get(i + 2)),
            });
            i += 3;
        } else if args.is(i, "SETNAME") && i + 1 < args.len() {
            hello.name = Some(owned(args.get(i + 1)));
            i += 2;
        } else {
            return None;
        }
    }
    Some(hello)
}

/// Whether a reply is a null: what a blocking call answers when its timeout passes.
fn is_null_frame(frame: &[u8]) -> bool {
    matches!(frame, b"*-1\r\n" | b"$-1\r\n" | b"_\r\n")
}

fn owned(arg: Option<&[u8]>) -> Bytes {
    Bytes::copy_from_slice(arg.unwrap_or_default())
}

/// A Pub/Sub frame that is not the reply to a request.
#[derive(Debug, PartialEq, Eq)]
enum PubSubFrame {
    /// message, pmessage, smessage: a delivery.
    Message,
    /// (p|s)(un)subscribe: the confirmation of one channel.
    Confirmation,
}

/// Classifies an array or push frame by its first element, without decoding the rest.
fn pubsub_frame_kind(frame: &[u8]) -> Option<PubSubFrame> {
    let first = first_string(frame)?;
    if first.eq_ignore_ascii_case(b"message")
        || first.eq_ignore_ascii_case(b"pmessage")
        || first.eq_ignore_ascii_case(b"smessage")
    {
        Some(PubSubFrame::Message)
    } else if pubsub_confirmation(first).is_some() {
        Some(PubSubFrame::Confirmation)
    } else {
        None
    }
}

/// The subscription kind and direction of a confirmation's first element.
fn pubsub_confirmation(word: &[u8]) -> Option<(SubKind, bool)> {
    let lower = word.to_ascii_lowercase();
    Some(match lower.as_slice() {
        b"subscribe" => (SubKind::Channel, true),
        b"unsubscribe" => (SubKind::Channel, false),
        b"psubscribe" => (SubKind::Pattern, true),
        b"punsubscribe" => (SubKind::Pattern, false),
        b"ssubscribe" => (SubKind::Shard, true),
        b"sunsubscribe" => (SubKind::Shard, false),
        _ => return None,
    })
}

/// The first element of an array (`*`) or push (`>`) frame when it is a bulk or simple string.
fn first_string(frame: &[u8]) -> Option<&[u8]> {
    if !matches!(frame.first(), Some(b'*' | b'>')) {
        return None;
    }
    let header_end = memchr::memchr(b'\n', frame)? + 1;
    let rest = &frame[header_end..];
    let line_end = memchr::memchr(b'\n', rest)?;
    let line = rest.get(1..line_end.checked_sub(1)?)?;
    match rest.first()? {
        b'+' => Some(line),
        b'$' => {
            let len = usize::try_from(string_to_i64(line)?).ok()?;
            rest.get(line_end + 1..line_end + 1 + len)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::request::{Parsed, RequestParser};

    fn forward(core: &mut Ledger, command: &[u8]) {
        let mut parser = RequestParser::new();
        assert!(matches!(parser.parse(command), Parsed::Request(_)));
        let args = parser.args(command);
        let command = Command::classify(args.get(0).unwrap());
        core.plan(
            command,
            args,
            command.is_write(args.get(1)),
            Blocked::of(args).filter(|_| command.is_blocking()),
        );
    }

    impl Ledger {
        fn on_frame_test(&mut self, frame: &[u8], push: bool) {
            assert!(self.on_frame(frame, push, false).is_none());
        }
    }

    fn taken(core: &mut Ledger) -> Vec<u8> {
        core.client_out.split().to_vec()
    }

    #[test]
    fn the_connection_id_is_asked_once_outside_transactions_and_its_reply_is_hidden() {
        let mut core = Ledger::default();
        let mut out = BytesMut::new();
        core.restore_on(&mut out, None, false);
        assert!(
            out.is_empty(),
            "a session with no state sends nothing ahead of its first command"
        );
        forward(&mut core, b"MULTI\r\n");
        core.ask_client_id(&mut out);
        assert!(out.is_empty(), "no hidden command inside MULTI");
        forward(&mut core, b"DISCARD\r\n");
        core.ask_client_id(&mut out);
        core.ask_client_id(&mut out);
        assert_eq!(&out[..], b"*2\r\n$6\r\nCLIENT\r\n$2\r\nID\r\n", "asked once");
        core.on_frame_test(b"+OK\r\n", false);
        core.on_frame_test(b"+OK\r\n", false);
        core.on_frame_test(b":42\r\n", false);
        assert_eq!(core.link_client_id, Some(42));
        assert_eq!(
            taken(&mut core),
            b"+OK\r\n+OK\r\n",
            "the id's reply is not the client's"
        );
        core.forget_link();
        core.ask_client_id(&mut out);
        core.on_frame_test(
            b"-NOPERM this user has no permissions to run the 'client|id' command\r\n",
            false,
        );
        assert_eq!(core.link_client_id, None);
        assert!(core.client_out.is_empty() && core.pending.is_empty());
    }

    #[test]
    fn select_applies_only_on_success() {
        let mut core = Ledger::default();
        forward(&mut core, b"SELECT 3\r\n");
        forward(&mut core, b"SELECT 99\r\n");
        core.on_frame_test(b"+OK\r\n", false);
        core.on_frame_test(b"-ERR DB index is out of range\r\n", false);
        assert_eq!(core.state.db, 3);
        assert!(core.pending.is_empty());
    }

    #[test]
    fn queued_select_applies_at_exec() {
        let mut core = Ledger::default();
        for cmd in [
            &b"MULTI\r\n"[..],
            b"SELECT 2\r\n",
            b"DISCARD\r\n",
            b"MULTI\r\n",
            b"SELECT 5\r\n",
            b"EXEC\r\n",
        ] {
            forward(&mut core, cmd);
        }
        for reply in [&b"+OK\r\n"[..], b"+QUEUED\r\n", b"+OK\r\n", b"+OK\r\n", b"+QUEUED\r\n"] {
            core.on_frame_test(reply, false);
        }
        assert_eq!(core.state.db, 0, "a discarded SELECT changes nothing");
        assert!(core.state.in_multi);
        core.on_frame_test(b"*1\r\n+OK\r\n", false);
        assert_eq!(core.state.db, 5);
        assert!(!core.state.in_multi);
    }

    #[test]
    fn resp2_subscribe_counts_confirmations_and_passes_messages() {
        let mut core = Ledger::default();
        forward(&mut core, b"SUBSCRIBE a b\r\n");
        core.on_frame_test(b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n", false);
        core.on_frame_test(b"*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$2\r\nhi\r\n", false);
        assert_eq!(core.pending.len(), 1);
        core.on_frame_test(b"*3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n", false);
        assert!(core.pending.is_empty());
        assert_eq!(core.state.channels.len(), 2);
        forward(&mut core, b"UNSUBSCRIBE\r\n");
        core.on_frame_test(b"*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:1\r\n", false);
        assert_eq!(core.pending.len(), 1);
        core.on_frame_test(b"*3\r\n$11\r\nunsubscribe\r\n$1\r\nb\r\n:0\r\n", false);
        assert!(core.pending.is_empty());
        assert!(!core.state.subscribed());
        assert_eq!(taken(&mut core).iter().filter(|&&b| b == b'*').count(), 5);
    }

    #[test]
    fn client_reply_off_expects_nothing() {
        let mut core = Ledger::default();
        forward(&mut core, b"CLIENT REPLY OFF\r\n");
        forward(&mut core, b"SET a 1\r\n");
        assert!(core.pending.is_empty());
        forward(&mut core, b"CLIENT REPLY ON\r\n");
        assert_eq!(core.pending.len(), 1);
        forward(&mut core, b"CLIENT REPLY SKIP\r\n");
        forward(&mut core, b"SET a 1\r\n");
        forward(&mut core, b"GET a\r\n");
        assert_eq!(core.pending.len(), 2);
    }

    #[test]
    fn local_replies_keep_their_place() {
        let mut core = Ledger::default();
        forward(&mut core, b"GET a\r\n");
        core.push_local(Bytes::from_static(b"-ERR local\r\n"));
        assert!(taken(&mut core).is_empty());
        core.on_frame_test(b"$1\r\nx\r\n", false);
        assert_eq!(taken(&mut core), b"$1\r\nx\r\n-ERR local\r\n");
    }

    #[test]
    fn lost_backend_answers_every_pending_request() {
        let mut core = Ledger::default();
        forward(&mut core, b"GET a\r\n");
        forward(&mut core, b"GET b\r\n");
        let close = core.backend_lost(&Bytes::from_static(b"-ERR gone\r\n"));
        assert!(!close);
        assert_eq!(taken(&mut core), b"-ERR gone\r\n-ERR gone\r\n");
        forward(&mut core, b"MULTI\r\n");
        assert!(core.backend_lost(&Bytes::from_static(b"-ERR gone\r\n")));
    }

    #[test]
    fn a_blocked_call_ended_by_a_switch_is_returned_with_its_time_left() {
        let mut core = Ledger::default();
        forward(&mut core, b"BLPOP q 10\r\n");
        assert!(core.blocked_call().is_some());
        let blocked = core.on_frame(b"*-1\r\n", false, true).expect("returned for reissue");
        assert!(taken(&mut core).is_empty(), "the client does not see the timeout");
        let again = blocked.remaining().unwrap();
        let left: f64 = std::str::from_utf8(&again.args[2]).unwrap().parse().unwrap();
        assert!(left > 9.0 && left <= 10.0, "{left}");
        forward(&mut core, b"XREAD BLOCK 0 STREAMS s $\r\n");
        let blocked = core.on_frame(b"*-1\r\n", false, true).unwrap();
        assert_eq!(blocked.remaining().unwrap().args[2], Bytes::from_static(b"0"));
        forward(&mut core, b"XREAD STREAMS s 0\r\n");
        assert!(core.blocked_call().is_none(), "XREAD without BLOCK does not block");
    }

    #[test]
    fn hello_forms() {
        let parse = |line: &[u8]| {
            let mut parser = RequestParser::new();
            assert!(matches!(parser.parse(line), Parsed::Request(_)));
            parse_hello(parser.args(line)).map(|h| (h.protocol, h.auth.map(|a| a.password), h.name))
        };
        assert_eq!(parse(b"HELLO\r\n"), Some((None, None, None)));
        assert_eq!(parse(b"hello 3\r\n"), Some((Some(3), None, None)));
        let full = parse(b"HELLO 3 auth u p SetName n\r\n").unwrap();
        assert_eq!(
            (full.0, full.1.as_deref(), full.2.as_deref()),
            (Some(3), Some(&b"p"[..]), Some(&b"n"[..]))
        );
        assert_eq!(parse(b"HELLO 4\r\n"), None);
        assert_eq!(parse(b"HELLO 3 AUTH u\r\n"), None);
    }

    #[test]
    fn first_string_reads_the_kind() {
        assert_eq!(
            first_string(b"*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$1\r\nb\r\n"),
            Some(&b"message"[..])
        );
        assert_eq!(first_string(b">2\r\n+invalidate\r\n*-1\r\n"), Some(&b"invalidate"[..]));
        assert_eq!(first_string(b"+OK\r\n"), None);
    }
}
