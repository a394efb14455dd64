//! The write gate: while a handover pauses writes, sessions hold their clients' writes here, and the handover
//! waits until every write already sent has been answered.
//!
//! A session takes a "write ticket" before it forwards a write and checks the gate after taking it; the
//! handover closes the gate and then waits for the ticket count to reach zero. With both sides sequentially
//! consistent, either the session sees the gate closed (and holds), or the handover sees its ticket (and
//! waits for the reply): no write slips past a closed gate unseen. A session holds one ticket while it has
//! any write unanswered (or a MULTI open), so the shared counter changes only when that goes from none to
//! some and back, not on every command.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;
use tokio::sync::watch;

/// Shared by every session and the handover.
#[derive(Debug)]
pub struct WriteGate {
    closed: AtomicBool,
    /// While set (the gate is closed and the handover's outcome is in doubt past the pause budget), the error
    /// reply every held and new write gets instead of waiting.
    refusal: Mutex<Option<Bytes>>,
    refusing: AtomicBool,
    /// Sessions with at least one write (or an open MULTI) sent and not yet answered.
    tickets: AtomicUsize,
    /// Sessions holding a write at the gate right now.
    held_now: AtomicUsize,
    /// Writes held since the gate last closed.
    held_total: AtomicU64,
    /// Bumped on every change a waiting session must look at (the gate reopening, the primary switching).
    epoch: watch::Sender<u64>,
}

impl Default for WriteGate {
    fn default() -> Self {
        WriteGate {
            closed: AtomicBool::new(false),
            refusal: Mutex::new(None),
            refusing: AtomicBool::new(false),
            tickets: AtomicUsize::new(0),
            held_now: AtomicUsize::new(0),
            held_total: AtomicU64::new(0),
            epoch: watch::Sender::new(0),
        }
    }
}

impl WriteGate {
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Stops new writes; the writes already sent go on.
    pub fn close(&self) {
        self.held_total.store(0, Ordering::Relaxed);
        self.closed.store(true, Ordering::SeqCst);
        self.notify();
    }

    /// Lets held writes go, to whatever the primary is now.
    pub fn open(&self) {
        self.stop_refusing();
        self.closed.store(false, Ordering::SeqCst);
        self.notify();
    }

    /// Answers every held write, and every new one, with `error` (a whole RESP error frame) until the gate opens
    /// or [`WriteGate::stop_refusing`]: for when writes cannot be let through within their bound.
    pub fn refuse(&self, error: Bytes) {
        *self.refusal.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
        self.refusing.store(true, Ordering::SeqCst);
        self.notify();
    }

    /// Holds writes again instead of refusing them.
    pub fn stop_refusing(&self) {
        self.refusing.store(false, Ordering::SeqCst);
    }

    /// The error a write gets now instead of waiting, if any.
    pub fn refusal(&self) -> Option<Bytes> {
        if !self.refusing.load(Ordering::SeqCst) {
            return None;
        }
        self.refusal.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Wakes every session waiting on [`WriteGate::subscribe`].
    pub fn notify(&self) {
        self.epoch.send_modify(|epoch| *epoch += 1);
    }

    /// A receiver that sees a change whenever the gate opens or closes or the primary switches.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.epoch.subscribe()
    }

    /// Takes a ticket for a session that had none.
    pub fn take_ticket(&self) {
        self.tickets.fetch_add(1, Ordering::SeqCst);
    }

    /// Returns a session's ticket once it has nothing written unanswered.
    pub fn return_ticket(&self) {
        self.tickets.fetch_sub(1, Ordering::SeqCst);
    }

    /// Sessions that still wait for the answer to a write.
    pub fn writes_in_flight(&self) -> usize {
        self.tickets.load(Ordering::SeqCst)
    }

    /// Records that a session started holding a write.
    pub fn hold(&self) {
        self.held_now.fetch_add(1, Ordering::Relaxed);
        self.held_total.fetch_add(1, Ordering::Relaxed);
    }

    /// Records that a session let its held write go.
    pub fn release(&self) {
        self.held_now.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn held_now(&self) -> usize {
        self.held_now.load(Ordering::Relaxed)
    }

    pub fn held_total(&self) -> u64 {
        self.held_total.load(Ordering::Relaxed)
    }
}
