//! The proxy's own client ids (`backend_links = "shared"`).
//!
//! On shared links a client has no server connection of its own, so the id Redis would give it (`CLIENT ID`,
//! `HELLO`'s `id`) is the proxy's: one per session, stable for its life and across a handover. Ids start at
//! [`FIRST_ID`], far above any id a server hands out, so that `CLIENT KILL ID` and `CLIENT UNBLOCK` can tell a
//! session's id from a server connection's: the proxy acts on its own ids and passes the others through.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use atomic_waker::AtomicWaker;

/// The first id the proxy gives. A server numbers its connections from 1; at a thousand new connections a second
/// it would reach this after 31 years.
pub const FIRST_ID: u64 = 1_000_000_000_000;

/// The sessions by id.
#[derive(Default)]
pub struct Directory {
    sessions: Mutex<HashMap<u64, Arc<Handle>>>,
}

/// What other sessions can do to a session: close it (`CLIENT KILL ID`), or name the server connection it has of
/// its own, when it is pinned (`CLIENT UNBLOCK`, `CLIENT LIST ID`, `CLIENT TRACKING ... REDIRECT`).
#[derive(Default)]
pub struct Handle {
    killed: AtomicBool,
    waker: AtomicWaker,
    /// The id of the session's own server connection, once known, or -1.
    server_id: AtomicI64,
}

impl Handle {
    /// Registers the session's task to be woken when it is killed; returns whether it was.
    pub fn poll_killed(&self, waker: &std::task::Waker) -> bool {
        self.waker.register(waker);
        self.killed.load(Ordering::Acquire)
    }

    /// Records the id of the session's own server connection (`None` when it has none, or it is not known yet).
    pub fn set_server_id(&self, id: Option<i64>) {
        self.server_id.store(id.unwrap_or(-1), Ordering::Relaxed);
    }
}

impl Directory {
    /// Enters the session `id`.
    pub fn enter(&self, id: u64) -> Arc<Handle> {
        let handle = Arc::new(Handle {
            server_id: AtomicI64::new(-1),
            ..Handle::default()
        });
        crate::links::lock(&self.sessions).insert(id, handle.clone());
        handle
    }

    /// Removes the session `id`, which ended.
    pub fn leave(&self, id: u64) {
        crate::links::lock(&self.sessions).remove(&id);
    }

    /// Closes the session `id`; returns whether there was one.
    pub fn kill(&self, id: u64) -> bool {
        let Some(handle) = crate::links::lock(&self.sessions).get(&id).cloned() else {
            return false;
        };
        handle.killed.store(true, Ordering::Release);
        handle.waker.wake();
        true
    }

    /// The id of session `id`'s own server connection, if it has one and it is known.
    pub fn server_id(&self, id: u64) -> Option<i64> {
        let sessions = crate::links::lock(&self.sessions);
        let server_id = sessions.get(&id)?.server_id.load(Ordering::Relaxed);
        (server_id >= 0).then_some(server_id)
    }
}

/// Replaces the value of the `id` field in a `HELLO` reply (a RESP2 array or a RESP3 map of name and value) with
/// `id`; `None` when the frame has no such field.
pub fn hello_with_id(frame: &[u8], id: u64) -> Option<Vec<u8>> {
    const FIELD: &[u8] = b"$2\r\nid\r\n:";
    let at = frame.windows(FIELD.len()).position(|w| w == FIELD)? + FIELD.len();
    let end = at + frame[at..].windows(2).position(|w| w == b"\r\n")?;
    let mut rewritten = Vec::with_capacity(frame.len() + 20);
    rewritten.extend_from_slice(&frame[..at]);
    rewritten.extend_from_slice(itoa::Buffer::new().format(id).as_bytes());
    rewritten.extend_from_slice(&frame[end..]);
    Some(rewritten)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hello_reply_carries_the_session_id_in_both_protocols() {
        let resp2 = b"*14\r\n$6\r\nserver\r\n$5\r\nredis\r\n$2\r\nid\r\n:7\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n";
        assert_eq!(
            hello_with_id(resp2, FIRST_ID + 3).unwrap(),
            b"*14\r\n$6\r\nserver\r\n$5\r\nredis\r\n$2\r\nid\r\n:1000000000003\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n"
        );
        let resp3 = b"%7\r\n$5\r\nproto\r\n:3\r\n$2\r\nid\r\n:123\r\n";
        assert_eq!(
            hello_with_id(resp3, 9).unwrap(),
            b"%7\r\n$5\r\nproto\r\n:3\r\n$2\r\nid\r\n:9\r\n"
        );
        assert_eq!(hello_with_id(b"-ERR no\r\n", 9), None);
    }

    #[test]
    fn a_killed_session_is_told_and_a_pinned_one_found() {
        let directory = Directory::default();
        let handle = directory.enter(FIRST_ID + 1);
        assert!(!handle.poll_killed(std::task::Waker::noop()));
        assert_eq!(directory.server_id(FIRST_ID + 1), None);
        handle.set_server_id(Some(42));
        assert_eq!(directory.server_id(FIRST_ID + 1), Some(42));
        assert!(directory.kill(FIRST_ID + 1));
        assert!(handle.poll_killed(std::task::Waker::noop()));
        directory.leave(FIRST_ID + 1);
        assert!(!directory.kill(FIRST_ID + 1), "gone");
    }
}
