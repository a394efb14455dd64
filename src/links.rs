//! Backend connections shared by many sessions (`backend_links = "shared"`).
//!
//! A shared link is one pipelined connection to the primary that carries the requests of every session whose
//! connection state is the same: the primary's generation, the db, the credentials and the protocol make its
//! [`LinkKey`]. Sessions append whole request frames to the link's output and a place in its queue of owed
//! replies; the link's task writes everything that accumulated since its last write in one write (so the
//! requests of all sessions that ran in one turn of the event loop leave together, without a timer), reads the
//! replies, and hands each one to the inbox of the session it belongs to, in order.
//!
//! Redis answers the requests of one connection in the order it read them, so a session that only ever has
//! requests on one link at a time (it changes link only with no reply owed) sees its replies in order. The link
//! never stops reading because a session is slow: replies wait in that session's inbox, and the session stops
//! reading requests from its client until it has taken them.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use atomic_waker::AtomicWaker;
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

use crate::net::BackendTls;
use crate::primary::Primary;
use crate::protocol::reply::{ReplyScanner, Scanned};
use crate::protocol::request::write_command;
use crate::protocol::value::is_error_frame;
use crate::telemetry::Telemetry;

/// What a backend connection's state is: sessions with the same key can share it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LinkKey {
    pub generation: u64,
    pub db: i64,
    /// 2 or 3.
    pub protocol: u8,
    /// The user and password the connection authenticates with (the configured ones when the proxy checks
    /// `requirepass` itself).
    pub credentials: Option<(Option<Bytes>, Bytes)>,
}

/// The name a link gives itself, which `CLIENT LIST` shows.
pub fn link_name(key: &LinkKey) -> String {
    format!("redis-handover:shared:db{}:resp{}", key.db, key.protocol)
}

/// How links reach the servers.
#[derive(Clone)]
pub struct LinkContext {
    pub connect_timeout: Duration,
    pub tls: Option<BackendTls>,
    pub telemetry: Arc<Telemetry>,
    pub kills: Arc<KillNotice>,
}

/// When a client last sent `CLIENT KILL` through the proxy. A server closes the connections such a kill names
/// while it runs it, and the proxy cannot tell from the closed socket alone whether a kill, a restart or a
/// network fault closed a session's backend connection: within `KillNotice::WINDOW` (1 s) of a kill, a session
/// whose backend connection the server closed closes its client's connection too, as Redis closed the
/// client's own; at any other time it carries on, reconnecting at its next command (README, "What clients see").
#[derive(Debug)]
pub struct KillNotice {
    since: Instant,
    /// Milliseconds after `since` of the last kill sent, plus one (0: none yet).
    last_ms: std::sync::atomic::AtomicU64,
}

impl KillNotice {
    /// How long after a kill was sent a closed backend connection counts as killed.
    const WINDOW: Duration = Duration::from_secs(1);

    /// A `CLIENT KILL` is being sent to the server.
    pub fn note(&self) {
        let now = self.since.elapsed().as_millis() as u64 + 1;
        self.last_ms.store(now, Ordering::Relaxed);
    }

    /// Whether a `CLIENT KILL` was sent within the window.
    pub fn recent(&self) -> bool {
        let last = self.last_ms.load(Ordering::Relaxed);
        last > 0 && self.since.elapsed().as_millis() as u64 + 1 - last <= Self::WINDOW.as_millis() as u64
    }
}

impl Default for KillNotice {
    fn default() -> Self {
        KillNotice {
            since: Instant::now(),
            last_ms: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

/// The shared links open now, by key.
#[derive(Default)]
pub struct SharedLinks {
    links: Mutex<HashMap<LinkKey, Arc<SharedLink>>>,
    /// Links replaced because they stalled, still open for the requests they owe (at most [`MAX_STALLED`]).
    stalled: Arc<std::sync::atomic::AtomicUsize>,
    /// Connections kept ready for sessions that pin.
    pub spares: Arc<crate::spares::Spares>,
}

/// How long a link may owe replies without receiving any before sessions with nothing owed on it move to a new
/// one: a request Redis holds (a script running, a write held by CLIENT PAUSE, a slow command) then holds only the
/// requests that were sent behind it, as on a direct connection, not every later request of every session.
pub const STALL: Duration = Duration::from_millis(50);
/// Stalled links kept open at most: beyond it, sessions wait on the stalled link.
const MAX_STALLED: usize = 32;

/// Milliseconds since the process's first use of this clock, for times kept in atomics.
fn millis(at: Instant) -> u64 {
    static EPOCH: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);
    at.saturating_duration_since(*EPOCH).as_millis() as u64 + 1
}

impl SharedLinks {
    /// The link for `key` to `primary`; one is opened (its task connects in the background, and requests wait
    /// in its output meanwhile) if there is none, or if the one there has failed.
    pub fn get(self: &Arc<Self>, key: &LinkKey, primary: &Primary, context: &LinkContext) -> Arc<SharedLink> {
        self.get_avoiding(key, primary, context, None)
    }

    /// The same, but a new link replaces `stalled` if that is the one registered for `key` (see [`STALL`]).
    pub fn get_avoiding(
        self: &Arc<Self>,
        key: &LinkKey,
        primary: &Primary,
        context: &LinkContext,
        stalled: Option<&Arc<SharedLink>>,
    ) -> Arc<SharedLink> {
        let mut links = lock(&self.links);
        if let Some(link) = links.get(key)
            && !lock(&link.state).closed
        {
            let replace = stalled.is_some_and(|s| Arc::ptr_eq(s, link))
                && self
                    .stalled
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                        (n < MAX_STALLED).then_some(n + 1)
                    })
                    .is_ok();
            if !replace {
                return link.clone();
            }
            // It finishes what it owes and closes; its task gives back its place among the stalled.
            tracing::debug!(db = key.db, "shared link stalled; later requests go to a new one");
            *lock(&link.stalled_count) = Some(self.stalled.clone());
            lock(&link.state).closed = true;
            link.wake_writer.notify_one();
        }
        // The first link of a new primary retires the former primary's: they take no more requests and close
        // once they owe nothing.
        links.retain(|other, link| {
            let current = other.generation >= key.generation;
            if !current {
                lock(&link.state).closed = true;
                link.wake_writer.notify_one();
            }
            current
        });
        self.spares.retire_before(key.generation);
        let link = Arc::new(SharedLink {
            key: key.clone(),
            server: primary.server.clone(),
            state: Mutex::new(LinkState::default()),
            wake_writer: Notify::new(),
            attached: Mutex::default(),
            busy_since: std::sync::atomic::AtomicU64::new(0),
            stalled_count: Mutex::default(),
        });
        links.insert(key.clone(), link.clone());
        drop(links);
        let setup = link.setup_commands();
        {
            let mut state = lock(&link.state);
            state.output.extend_from_slice(&setup.bytes);
            state.unsent += setup.critical.len();
            for critical in setup.critical {
                state.owed.push_back(Owed::Link(critical));
            }
        }
        link.wake_writer.notify_one();
        let registry = Arc::downgrade(self);
        tokio::spawn(run(link.clone(), context.clone(), registry));
        self.spares.refill(primary, context);
        link
    }

    /// Forgets `link` if it is still the one registered for its key.
    fn remove(&self, link: &Arc<SharedLink>) {
        let mut links = lock(&self.links);
        if links.get(&link.key).is_some_and(|l| Arc::ptr_eq(l, link)) {
            links.remove(&link.key);
        }
    }
}

/// One shared backend connection.
pub struct SharedLink {
    pub key: LinkKey,
    /// The server it connects to.
    pub server: crate::primary::Server,
    state: Mutex<LinkState>,
    wake_writer: Notify,
    /// The inboxes of the sessions whose link this is now (whether or not they owe replies on it).
    attached: Mutex<Vec<std::sync::Weak<Inbox>>>,
    /// Since when (see [`millis`]) the link has owed replies without receiving one; 0 while it owes none.
    busy_since: std::sync::atomic::AtomicU64,
    /// Set when the link was replaced for stalling: the count it gives its place back to when it ends.
    stalled_count: Mutex<Option<Arc<std::sync::atomic::AtomicUsize>>>,
}

#[derive(Default)]
struct LinkState {
    /// Requests waiting to be written.
    output: BytesMut,
    /// Whose reply each request written or waiting is, in order.
    owed: VecDeque<Owed>,
    /// The link failed: no request can be added any more.
    closed: bool,
    /// How many of the requests at the end of `owed` are still in `output`, not yet handed to the socket.
    unsent: usize,
    /// Why the link failed, as the error a request that could not be sent gets.
    failure: Option<String>,
}

/// Whose the next reply is.
enum Owed {
    /// A command the link sent itself (its setup); `true` for one that gives the connection its key's state
    /// (credentials, protocol, db), whose failure leaves the link unusable for that key.
    Link(bool),
    /// This many replies of one session.
    Session(Arc<Inbox>, usize),
}

/// Commands written to a new link before any session's: whether each one gives it its key's state.
struct Setup {
    bytes: BytesMut,
    critical: Vec<bool>,
}

impl SharedLink {
    /// Whether the link has owed replies for longer than [`STALL`] without receiving one, as of `now`.
    pub fn stalled(&self, now: Instant) -> bool {
        let since = self.busy_since.load(Ordering::Relaxed);
        since != 0 && millis(now) > since + STALL.as_millis() as u64
    }

    /// Why the link failed, if it did: the error for requests that could not be sent on it.
    pub fn failure(&self) -> Option<String> {
        lock(&self.state).failure.clone()
    }

    /// Gives back the link's place among the stalled ones, if it was replaced for stalling; its task ends.
    fn leave_stalled(&self) {
        if let Some(count) = lock(&self.stalled_count).take() {
            count.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Appends `requests` (whole frames, `count` of them) of the session whose inbox is `inbox`. Returns false,
    /// adding nothing, if the link has failed: the session then takes another.
    pub fn send(&self, inbox: &Arc<Inbox>, requests: &[u8], count: usize) -> bool {
        let mut state = lock(&self.state);
        if state.closed {
            return false;
        }
        let was_empty = state.output.is_empty();
        state.output.extend_from_slice(requests);
        state.unsent += count;
        match state.owed.back_mut() {
            Some(Owed::Session(last, n)) if Arc::ptr_eq(last, inbox) => *n += count,
            _ => state.owed.push_back(Owed::Session(inbox.clone(), count)),
        }
        drop(state);
        if was_empty {
            self.wake_writer.notify_one();
        }
        true
    }

    /// Records that the session of `inbox` now sends its requests here.
    pub fn attach(&self, inbox: &Arc<Inbox>) {
        let mut attached = lock(&self.attached);
        attached.retain(|a| a.strong_count() > 0);
        attached.push(Arc::downgrade(inbox));
    }

    /// Records that the session of `inbox` left for another link.
    pub fn detach(&self, inbox: &Arc<Inbox>) {
        lock(&self.attached).retain(|a| !std::ptr::eq(a.as_ptr(), Arc::as_ptr(inbox)));
    }

    /// What a new connection needs before it can carry sessions' requests: the credentials, the protocol, the db,
    /// and a name that tells it apart in `CLIENT LIST`.
    fn setup_commands(&self) -> Setup {
        let mut bytes = BytesMut::new();
        let mut critical = Vec::new();
        let mut command = |args: &[&[u8]]| {
            write_command(&mut bytes, args);
            critical.push(true);
        };
        let key = &self.key;
        let default_user = Bytes::from_static(b"default");
        match (&key.credentials, key.protocol) {
            (Some((user, password)), 3) => command(&[
                b"HELLO",
                b"3",
                b"AUTH",
                user.as_ref().unwrap_or(&default_user),
                password,
            ]),
            (None, 3) => command(&[b"HELLO", b"3"]),
            (Some((Some(user), password)), _) => command(&[b"AUTH", user, password]),
            (Some((None, password)), _) => command(&[b"AUTH", password]),
            (None, _) => {}
        }
        if key.db != 0 {
            command(&[b"SELECT", itoa::Buffer::new().format(key.db).as_bytes()]);
        }
        write_command(&mut bytes, &[b"CLIENT", b"SETNAME", link_name(key).as_bytes()]);
        critical.push(false);
        Setup { bytes, critical }
    }

    /// Marks the link failed and tells every session with replies owed on it. Requests that never left the
    /// proxy get [`LinkFailure::NotSent`] (an error reply), whatever the failure: only what reached the socket has
    /// an unknown outcome.
    fn fail(&self, failure: &LinkFailure) {
        let not_sent = match failure {
            LinkFailure::NotSent(_) => failure.clone(),
            LinkFailure::Lost(reason) => LinkFailure::NotSent(format!(
                "backend {} {} {reason}",
                self.server.side.name(),
                self.server.addr
            )),
        };
        let (owed, mut unsent) = {
            let mut state = lock(&self.state);
            state.closed = true;
            state.output.clear();
            if let LinkFailure::NotSent(message) = &not_sent {
                state.failure = Some(message.clone());
            }
            (std::mem::take(&mut state.owed), std::mem::take(&mut state.unsent))
        };
        // From the newest: the last `unsent` requests were never written.
        let mut told: Vec<(Arc<Inbox>, LinkFailure)> = Vec::new();
        for owed in owed.into_iter().rev() {
            let (inbox, n) = match owed {
                Owed::Session(inbox, n) => (inbox, n),
                Owed::Link(_) => {
                    unsent = unsent.saturating_sub(1);
                    continue;
                }
            };
            let all_unsent = n <= unsent;
            unsent = unsent.saturating_sub(n);
            let this = if all_unsent { not_sent.clone() } else { failure.clone() };
            match told.iter_mut().find(|(known, _)| Arc::ptr_eq(known, &inbox)) {
                // A session with any request of unknown outcome is told so.
                Some((_, told)) if matches!(this, LinkFailure::Lost(_)) => *told = this,
                Some(_) => {}
                None => told.push((inbox, this)),
            }
        }
        for (inbox, failure) in told {
            inbox.fail(failure);
        }
    }
}

/// Why a shared link stopped serving a session's requests.
#[derive(Debug, Clone)]
pub enum LinkFailure {
    /// The requests never reached the server (the connection could not be opened): each can be answered with
    /// this error.
    NotSent(String),
    /// The connection was lost with requests in flight: their outcome is unknown.
    Lost(String),
}

/// Where a session's replies from shared links arrive.
#[derive(Default)]
pub struct Inbox {
    state: Mutex<InboxState>,
    waker: AtomicWaker,
}

#[derive(Default)]
struct InboxState {
    /// Complete reply frames, in order.
    replies: BytesMut,
    failure: Option<LinkFailure>,
}

impl Inbox {
    /// Registers the session's task to be woken when replies arrive.
    pub fn register(&self, waker: &std::task::Waker) {
        self.waker.register(waker);
    }

    /// Moves the replies that arrived into `into`; returns them with the failure, if the link failed.
    pub fn take(&self, into: &mut BytesMut) -> (bool, Option<LinkFailure>) {
        let mut state = lock(&self.state);
        let got = !state.replies.is_empty();
        if got {
            into.extend_from_slice(&state.replies);
            state.replies.clear();
        }
        (got, state.failure.take())
    }

    fn deliver(&self, frames: &[u8]) {
        lock(&self.state).replies.extend_from_slice(frames);
        self.waker.wake();
    }

    fn fail(&self, failure: LinkFailure) {
        lock(&self.state).failure = Some(failure);
        self.waker.wake();
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The link's task: connects, then writes what sessions append (its writer task) and routes the replies, until
/// the connection fails or the link is retired (its primary was replaced) and owes nothing.
async fn run(link: Arc<SharedLink>, context: LinkContext, registry: std::sync::Weak<SharedLinks>) {
    let server = link.server.clone();
    let forget = || {
        if let Some(registry) = registry.upgrade() {
            registry.remove(&link);
        }
    };
    let stream = match crate::backend::connect(&server, context.connect_timeout, context.tls.as_ref()).await {
        Ok(stream) => stream,
        Err(error) => {
            tracing::warn!(%error, "shared backend link could not connect");
            link.leave_stalled();
            forget();
            link.fail(&LinkFailure::NotSent(error.to_string()));
            return;
        }
    };
    context.telemetry.backend_link(server.side, 1);
    tracing::debug!(backend = %server.addr, db = link.key.db, protocol = link.key.protocol, "shared link open");
    let (reader, writer) = tokio::io::split(stream);
    let writing = tokio::spawn(write_loop(link.clone(), writer));
    let failure = read_loop(&link, reader).await;
    forget();
    match failure {
        Some(reason) => {
            tracing::warn!(backend = %server.addr, %reason, "shared backend link lost");
            let failure = LinkFailure::Lost(reason);
            link.fail(&failure);
            if context.kills.recent() {
                // A CLIENT KILL sent through the proxy closed this connection: it closes the connections of every
                // session on it, as Redis closes each client it kills.
                for inbox in lock(&link.attached).iter().filter_map(std::sync::Weak::upgrade) {
                    inbox.fail(failure.clone());
                }
            }
        }
        None => tracing::debug!(backend = %server.addr, "shared link retired"),
    }
    link.wake_writer.notify_one();
    let _ = writing.await;
    link.leave_stalled();
    context.telemetry.backend_link(server.side, -1);
}

/// Writes whatever sessions appended since the last write, in one write. A closed link that owes nothing shuts
/// its side of the connection down, which makes the server close it.
async fn write_loop(link: Arc<SharedLink>, mut writer: tokio::io::WriteHalf<crate::net::Stream>) {
    let mut batch = BytesMut::new();
    loop {
        link.wake_writer.notified().await;
        let done = {
            let mut state = lock(&link.state);
            std::mem::swap(&mut batch, &mut state.output);
            state.unsent = 0;
            if !batch.is_empty() && link.busy_since.load(Ordering::Relaxed) == 0 {
                link.busy_since.store(millis(Instant::now()), Ordering::Relaxed);
            }
            state.closed && state.owed.is_empty()
        };
        if !batch.is_empty() {
            if let Err(error) = writer.write_all(&batch).await {
                link.fail(&LinkFailure::Lost(format!("connection error: {error}")));
                return;
            }
            batch.clear();
        }
        if done {
            let _ = writer.shutdown().await;
            return;
        }
    }
}

/// Reads replies and routes them until the connection ends; `None` when it ended because the link was retired
/// and owed nothing, else why it failed.
async fn read_loop(link: &SharedLink, mut reader: tokio::io::ReadHalf<crate::net::Stream>) -> Option<String> {
    let mut input = BytesMut::with_capacity(16 * 1024);
    let mut scanner = ReplyScanner::new();
    loop {
        match reader.read_buf(&mut input).await {
            Ok(0) => {
                let state = lock(&link.state);
                return (!(state.closed && state.owed.is_empty())).then(|| "closed the connection".into());
            }
            Ok(_) => {}
            Err(error) => return Some(format!("connection error: {error}")),
        }
        match route(link, &mut scanner, &mut input) {
            Ok(true) => link.wake_writer.notify_one(),
            Ok(false) => {}
            Err(reason) => return Some(reason),
        }
        if input.capacity() - input.len() < 4096 {
            input.reserve(16 * 1024);
        }
    }
}

/// Hands every complete reply in `input` to the session it belongs to; consecutive replies of one session go to
/// its inbox together. Returns whether the link is closed and now owes nothing (its writer can then shut the
/// connection down).
fn route(link: &SharedLink, scanner: &mut ReplyScanner, input: &mut BytesMut) -> Result<bool, String> {
    let mut state = lock(&link.state);
    let mut pos = 0;
    // Replies scanned but not yet delivered, all of one session: whose, and where they start in `input`.
    let mut run: Option<(Arc<Inbox>, usize)> = None;
    let deliver = |run: &mut Option<(Arc<Inbox>, usize)>, input: &[u8], end: usize| {
        if let Some((owner, from)) = run.take() {
            owner.deliver(&input[from..end]);
        }
    };
    let result = loop {
        let (len, push) = match scanner.scan(&input[pos..]) {
            Scanned::Incomplete => break Ok(state.closed && state.owed.is_empty()),
            Scanned::Invalid => break Err("sent bytes that are not RESP".to_string()),
            Scanned::Frame { len, push } => (len, push),
        };
        let (start, end) = (pos, pos + len);
        pos = end;
        let owner = match state.owed.front_mut() {
            _ if push => {
                // Nothing a shared link carries asks for pushes (subscriptions and tracking pin their session).
                tracing::debug!("unexpected push on a shared link dropped");
                None
            }
            None => {
                tracing::warn!("reply on a shared link with no request owed");
                None
            }
            Some(Owed::Link(critical)) => {
                if is_error_frame(&input[start..end]) {
                    let reply = String::from_utf8_lossy(&input[start..end]).trim_end().to_string();
                    if *critical {
                        // A wrong password, a db out of range, no RESP3: the sessions that sent requests behind it
                        // get Redis's own error for them (their AUTH, SELECT or HELLO fails the same way), and the
                        // link takes no more.
                        tracing::debug!(%reply, "shared link setup refused; the link is retired");
                        state.closed = true;
                    } else {
                        tracing::debug!(%reply, "shared link could not name itself");
                    }
                }
                state.owed.pop_front();
                None
            }
            Some(Owed::Session(inbox, n)) => {
                // The same session as the reply before: its run goes on (no clone, no delivery yet).
                let continues = run.as_ref().is_some_and(|(current, _)| Arc::ptr_eq(current, inbox));
                let owner = (!continues).then(|| inbox.clone());
                *n -= 1;
                if *n == 0 {
                    state.owed.pop_front();
                }
                if continues {
                    continue;
                }
                owner
            }
        };
        deliver(&mut run, input, start);
        run = owner.map(|inbox| (inbox, start));
    };
    deliver(&mut run, input, pos);
    if pos > 0 {
        // Replies arrived: the link is making progress (or owes nothing).
        let since = if state.owed.is_empty() {
            0
        } else {
            millis(Instant::now())
        };
        link.busy_since.store(since, Ordering::Relaxed);
    }
    input.advance(pos);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::primary::{Server, Side};

    fn link() -> SharedLink {
        SharedLink {
            key: LinkKey {
                generation: 0,
                db: 0,
                protocol: 2,
                credentials: None,
            },
            server: Server {
                side: Side::Old,
                addr: "127.0.0.1:6379".into(),
            },
            state: Mutex::default(),
            wake_writer: Notify::new(),
            attached: Mutex::default(),
            busy_since: std::sync::atomic::AtomicU64::new(0),
            stalled_count: Mutex::default(),
        }
    }

    fn failure_of(inbox: &Inbox) -> Option<LinkFailure> {
        inbox.take(&mut BytesMut::new()).1
    }

    #[test]
    fn a_lost_link_closes_sessions_with_requests_written_and_answers_the_others() {
        let link = link();
        let (written, unwritten) = (Arc::new(Inbox::default()), Arc::new(Inbox::default()));
        assert!(link.send(&written, b"*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nPING\r\n", 2));
        // The writer takes what was appended so far.
        let mut batch = BytesMut::new();
        {
            let mut state = lock(&link.state);
            std::mem::swap(&mut batch, &mut state.output);
            state.unsent = 0;
        }
        assert!(link.send(&unwritten, b"*1\r\n$4\r\nPING\r\n", 1));
        link.fail(&LinkFailure::Lost("closed the connection".into()));
        assert!(matches!(failure_of(&written), Some(LinkFailure::Lost(_))));
        match failure_of(&unwritten) {
            Some(LinkFailure::NotSent(message)) => {
                assert_eq!(message, "backend old 127.0.0.1:6379 closed the connection")
            }
            other => panic!("{other:?}"),
        }
        assert!(
            !link.send(&unwritten, b"*1\r\n$4\r\nPING\r\n", 1),
            "a failed link takes no more"
        );
    }

    #[test]
    fn replies_go_to_their_sessions_in_order_and_setup_replies_to_none() {
        let link = link();
        {
            let mut state = lock(&link.state);
            state.owed.push_back(Owed::Link(true));
        }
        let (a, b) = (Arc::new(Inbox::default()), Arc::new(Inbox::default()));
        assert!(link.send(&a, b"", 2));
        assert!(link.send(&b, b"", 1));
        assert!(link.send(&a, b"", 1));
        let mut input = BytesMut::from(&b"+OK\r\n:1\r\n:2\r\n$1\r\nb\r\n:3\r\n"[..]);
        let mut scanner = ReplyScanner::new();
        assert!(!route(&link, &mut scanner, &mut input).unwrap());
        let mut got = BytesMut::new();
        a.take(&mut got);
        assert_eq!(&got[..], b":1\r\n:2\r\n:3\r\n");
        got.clear();
        b.take(&mut got);
        assert_eq!(&got[..], b"$1\r\nb\r\n");
        assert!(input.is_empty() && lock(&link.state).owed.is_empty());
    }
}
