//! Connections kept ready for sessions that pin (`backend_links = "shared"`).
//!
//! A session on the shared links that sends MULTI, a blocking call or SUBSCRIBE needs a connection of its own
//! (see [`crate::session::pins`]). Opening one then would cost a connect, and would let other sessions' requests
//! sent after the pinning command reach Redis before it. So a few connections to the primary are kept open: the
//! session takes one in the same turn, and a replacement is opened in the background. A session that returns to
//! the shared links gives its connection back when the connection's state is exactly a link key's (no name, no
//! mode), so that a client running transactions in a loop does not open and close a connection each time.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use atomic_waker::AtomicWaker;
use tokio::io::AsyncRead;

use crate::backend::BackendLink;
use crate::links::{LinkContext, LinkKey};
use crate::primary::Primary;

/// Fresh connections (in the state of a new connection) kept ready per primary.
const FRESH: usize = 2;
/// Connections kept in all, fresh or given back.
const MOST: usize = 16;

/// The connections kept ready.
#[derive(Default)]
pub struct Spares {
    ready: Mutex<Vec<Spare>>,
    /// Fresh connections being opened.
    opening: AtomicUsize,
    /// The task that drops a ready connection as soon as the server closes it (see [`watch`]).
    watcher: AtomicWaker,
    watching: AtomicBool,
}

/// A ready connection, the state it has, and its id on the server when known.
struct Spare {
    key: LinkKey,
    link: BackendLink,
    id: Option<i64>,
}

/// The key of a new connection to the primary of `generation`: db 0, RESP2, not authenticated.
fn fresh_key(generation: u64) -> LinkKey {
    LinkKey {
        generation,
        db: 0,
        protocol: 2,
        credentials: None,
    }
}

impl Spares {
    /// A live connection to `primary` for a session whose connection state is `key`: one already in that state if
    /// there is one (the second value is then `true`: only the session's other state needs restoring), else a
    /// fresh one, with its id on the server when known. `None` when none is ready. A replacement is opened in the
    /// background either way.
    pub fn take(
        self: &Arc<Self>,
        key: &LinkKey,
        primary: &Primary,
        context: &LinkContext,
    ) -> Option<(BackendLink, bool, Option<i64>)> {
        let taken = {
            let mut ready = crate::links::lock(&self.ready);
            ready.retain(|spare| spare.key.generation == primary.generation);
            let fresh = fresh_key(primary.generation);
            let mut found = None;
            while let Some(at) = ready
                .iter()
                .position(|s| &s.key == key)
                .or_else(|| ready.iter().position(|s| s.key == fresh))
            {
                let mut spare = ready.swap_remove(at);
                // A connection the server closed an instant ago may not have been seen by the watcher yet.
                if alive(&mut spare.link, &mut Context::from_waker(Waker::noop())) {
                    found = Some((spare.link, &spare.key == key, spare.id));
                    break;
                }
            }
            found
        };
        self.refill(primary, context);
        taken
    }

    /// Keeps the connection (whose server id is `id`) of a session that returns to the shared links, whose state is
    /// `key`'s exactly.
    pub fn give_back(&self, key: LinkKey, link: BackendLink, id: Option<i64>) {
        let mut ready = crate::links::lock(&self.ready);
        if ready.len() < MOST {
            ready.push(Spare { key, link, id });
            self.watcher.wake();
        }
    }

    /// Opens fresh connections in the background until `FRESH` (2) of them are ready or being opened.
    pub fn refill(self: &Arc<Self>, primary: &Primary, context: &LinkContext) {
        self.start_watching();
        let fresh = fresh_key(primary.generation);
        let have = crate::links::lock(&self.ready)
            .iter()
            .filter(|s| s.key == fresh)
            .count();
        let opening = self.opening.load(Ordering::Relaxed);
        for _ in (have + opening)..FRESH {
            self.opening.fetch_add(1, Ordering::Relaxed);
            let (spares, primary, context) = (self.clone(), primary.clone(), context.clone());
            tokio::spawn(async move {
                let opened =
                    crate::backend::connect(&primary.server, context.connect_timeout, context.tls.as_ref()).await;
                spares.opening.fetch_sub(1, Ordering::Relaxed);
                match opened {
                    Ok(mut stream) => {
                        // Its id is known before a session takes it, so that the session can be named by the proxy's
                        // id at once (CLIENT UNBLOCK of its blocked call). A server that wants a password first
                        // answers NOAUTH: the session then asks once it has authenticated.
                        let id = tokio::time::timeout(context.connect_timeout, client_id(&mut stream))
                            .await
                            .ok()
                            .flatten();
                        let link = BackendLink::new(stream, primary.server, primary.generation, context.telemetry);
                        spares.give_back(fresh_key(primary.generation), link, id);
                    }
                    Err(error) => tracing::debug!(%error, "spare backend connection not opened"),
                }
            });
        }
    }

    /// Starts the task that drops ready connections their server closed (once; [`Spares::refill`] starts it too).
    pub fn start_watching(self: &Arc<Self>) {
        if !self.watching.swap(true, Ordering::Relaxed) {
            tokio::spawn(watch(Arc::downgrade(self)));
        }
    }

    /// Closes the connections to primaries older than `generation`.
    pub fn retire_before(&self, generation: u64) {
        crate::links::lock(&self.ready).retain(|spare| spare.key.generation >= generation);
    }
}

/// Finds a new connection's id on the server: its line in `CLIENT LIST` is the one whose `addr` is this end of the
/// connection. `CLIENT LIST` rather than `CLIENT ID`: an admin command, so MONITOR does not show it to clients.
/// `None` if the server refuses (NOAUTH) or the connection fails.
async fn client_id(stream: &mut crate::net::Stream) -> Option<i64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let own = format!("addr={} ", stream.local_addr().ok()?);
    stream.write_all(b"*2\r\n$6\r\nCLIENT\r\n$4\r\nLIST\r\n").await.ok()?;
    // `$<length>`, or an error line.
    let mut header = Vec::new();
    while !header.ends_with(b"\r\n") {
        let mut byte = [0u8; 1];
        if stream.read(&mut byte).await.ok()? == 0 || header.len() > 512 {
            return None;
        }
        header.push(byte[0]);
    }
    let length: usize = std::str::from_utf8(header.strip_prefix(b"$")?.strip_suffix(b"\r\n")?)
        .ok()?
        .parse()
        .ok()?;
    let mut list = vec![0u8; length + 2];
    stream.read_exact(&mut list).await.ok()?;
    let list = String::from_utf8_lossy(&list);
    let line = list.lines().find(|line| line.contains(&own))?;
    line.split(' ')
        .find_map(|field| field.strip_prefix("id="))?
        .parse()
        .ok()
}

/// Drops each ready connection as soon as its server closes it (a restart, a timeout, `CLIENT KILL`), so that the
/// proxy's count of backend connections stays true and a dead server holds none. It is woken by the connections
/// themselves, and by [`Spares::give_back`] to watch a new one.
async fn watch(spares: std::sync::Weak<Spares>) {
    std::future::poll_fn(|cx| {
        let Some(spares) = spares.upgrade() else {
            return Poll::Ready(());
        };
        spares.watcher.register(cx.waker());
        crate::links::lock(&spares.ready).retain_mut(|spare| alive(&mut spare.link, cx));
        Poll::Pending
    })
    .await
}

/// Whether an idle connection is still open: the server sends nothing unasked on it, so any readiness (end of
/// stream, an error, stray bytes) means it is unusable. A pending read registers `cx` to hear of it.
fn alive(link: &mut BackendLink, cx: &mut Context<'_>) -> bool {
    let mut byte = [0u8; 1];
    let mut buf = tokio::io::ReadBuf::new(&mut byte);
    matches!(Pin::new(&mut link.stream).poll_read(cx, &mut buf), Poll::Pending)
}
