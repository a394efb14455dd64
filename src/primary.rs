//! The one value every session agrees on: which server is the primary, and its generation.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;

/// Which of the two configured servers a backend is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Old,
    New,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Side::Old => "old",
            Side::New => "new",
        }
    }

    /// The other server of the pair.
    pub fn other(self) -> Side {
        match self {
            Side::Old => Side::New,
            Side::New => Side::Old,
        }
    }
}

/// A Redis server the proxy fronts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub side: Side,
    /// `host:port`, as configured.
    pub addr: Arc<str>,
}

/// The server that takes every session's commands. A switch replaces the whole value at once, so no session
/// sees a new address with an old generation or the reverse.
#[derive(Debug, Clone)]
pub struct Primary {
    /// Goes up by one with each switch; a session whose backend is of an older generation must move.
    pub generation: u64,
    pub server: Server,
}

/// The shared, atomically swapped primary: read lock-free, replaced whole by the handover. Its generation is
/// also kept in a plain atomic, which sessions check on every batch; they load the whole value only when it
/// changed. The value is stored before the generation, so a session that sees the new generation also finds
/// the new primary.
#[derive(Debug)]
pub struct PrimaryCell {
    primary: ArcSwap<Primary>,
    generation: AtomicU64,
    /// Switches happen one at a time (readers never wait for it).
    switching: std::sync::Mutex<()>,
}

impl PrimaryCell {
    pub fn new(server: Server) -> Self {
        PrimaryCell {
            primary: ArcSwap::from_pointee(Primary { generation: 0, server }),
            generation: AtomicU64::new(0),
            switching: std::sync::Mutex::new(()),
        }
    }

    /// The current primary. The `Arc` is owned: never hold an arc-swap guard across an `.await`.
    pub fn current(&self) -> Arc<Primary> {
        self.primary.load_full()
    }

    /// The current generation: one atomic load.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Makes `server` the primary with the next generation.
    pub fn switch_to(&self, server: Server) -> Arc<Primary> {
        let _one_at_a_time = self.switching.lock().unwrap_or_else(|e| e.into_inner());
        self.store_next(server)
    }

    /// Makes `server` the primary with the next generation, if the generation is still `generation`: a switch
    /// decided from what was seen of one primary does nothing once another switch replaced it.
    pub fn switch_from(&self, generation: u64, server: Server) -> Option<Arc<Primary>> {
        let _one_at_a_time = self.switching.lock().unwrap_or_else(|e| e.into_inner());
        (self.generation() == generation).then(|| self.store_next(server))
    }

    fn store_next(&self, server: Server) -> Arc<Primary> {
        let next = Arc::new(Primary {
            generation: self.generation() + 1,
            server,
        });
        self.primary.store(next.clone());
        self.generation.store(next.generation, Ordering::Release);
        next
    }
}
