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
    /// Backend connections (primary generation, client id) that are in a blocking call now.
    blocked: Mutex<HashSet<(u64, i64)>>,
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
    pub fn set_blocked(&self, from: Option<(u64, i64)>, to: Option<(u64, i64)>) {
        let mut blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(key) = from {
            blocked.remove(&key);
        }
        if let Some(key) = to {
            blocked.insert(key);
        }
    }

    /// The client ids of backend connections of `generation` blocked now.
    pub fn blocked_on(&self, generation: u64) -> Vec<i64> {
        let blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        blocked
            .iter()
            .filter(|(g, _)| *g == generation)
            .map(|(_, id)| *id)
            .collect()
    }
}
