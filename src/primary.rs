//! The one value every session agrees on: which server is the primary, and its generation.

use std::sync::Arc;

use arc_swap::ArcSwap;

/// Which of the two configured servers a backend is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
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

/// The shared, atomically swapped primary: read lock-free on every command, replaced whole by the handover.
#[derive(Debug)]
pub struct PrimaryCell(ArcSwap<Primary>);

impl PrimaryCell {
    pub fn new(server: Server) -> Self {
        PrimaryCell(ArcSwap::from_pointee(Primary { generation: 0, server }))
    }

    /// The current primary. The `Arc` is owned: never hold an arc-swap guard across an `.await`.
    pub fn current(&self) -> Arc<Primary> {
        self.0.load_full()
    }

    /// The current generation, without taking a reference to the value.
    pub fn generation(&self) -> u64 {
        self.0.load().generation
    }

    /// Makes `server` the primary with the next generation.
    pub fn switch_to(&self, server: Server) -> Arc<Primary> {
        let next = Arc::new(Primary {
            generation: self.generation() + 1,
            server,
        });
        self.0.store(next.clone());
        next
    }
}
