//! Sessions whose state must move actively when the primary switches: subscribers, CLIENT TRACKING users and
//! blocked calls. Ordinary sessions move by themselves at their next command; these cannot wait for one, and the
//! handover keeps writes held until they have all settled on the new primary (so a message published, or an
//! element pushed, right after the switch finds them there).

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Shared between the sessions and the handover.
#[derive(Debug, Default)]
pub struct MoveTracker {
    /// Sessions that must move actively, by the parity of the generation they are settled on. Handovers never
    /// overlap, so two slots tell "settled on the new primary" from "still on the old one".
    settled: [AtomicUsize; 2],
    /// Backend connections that are in a blocking call now.
    blocked: Mutex<HashSet<BlockedConn>>,
}

/// A backend connection in a blocking call, as the handover finds it on the server to end the call there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockedConn {
    /// The primary generation the connection belongs to.
    pub generation: u64,
    /// Its client id, when the session could learn it (a user without the CLIENT command cannot).
    pub id: Option<i64>,
    /// The proxy's end of the connection, which the server's `CLIENT LIST` shows as `addr`.
    pub addr: Option<std::net::SocketAddr>,
}

impl MoveTracker {
    /// Moves a session's count from one generation slot to another (either may be none).
    pub fn shift(&self, from: Option<u64>, to: Option<u64>) {
        if from.map(|g| g % 2) == to.map(|g| g % 2) {
            return;
        }
        if let Some(g) = from {
            self.settled[(g % 2) as usize].fetch_sub(1, Ordering::SeqCst);
        }
        if let Some(g) = to {
            self.settled[(g % 2) as usize].fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Sessions with state to move that are not yet settled on `generation`'s primary.
    pub fn unsettled(&self, generation: u64) -> usize {
        self.settled[((generation + 1) % 2) as usize].load(Ordering::SeqCst)
    }

    /// Records a backend connection entering (`Some`) or leaving (`None`) a blocking call.
    pub fn set_blocked(&self, from: Option<BlockedConn>, to: Option<BlockedConn>) {
        let mut blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(key) = from {
            blocked.remove(&key);
        }
        if let Some(key) = to {
            blocked.insert(key);
        }
    }

    /// The backend connections of `generation` blocked now.
    pub fn blocked_on(&self, generation: u64) -> Vec<BlockedConn> {
        let blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        blocked.iter().filter(|b| b.generation == generation).copied().collect()
    }
}
