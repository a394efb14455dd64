//! The proxy's directory of its clients: their ids, and what the readiness report's census says of each.
//!
//! On shared links a client has no server connection of its own, so the id Redis would give it (`CLIENT ID`,
//! `HELLO`'s `id`) is the proxy's: one per session, stable for its life and across a handover. Ids start at
//! [`FIRST_ID`], far above any id a server hands out, so that `CLIENT KILL ID` and `CLIENT UNBLOCK` can tell a
//! session's id from a server connection's: the proxy acts on its own ids and passes the others through.
//!
//! With either kind of link, each session keeps a [`Card`] here: its address, name, library (`CLIENT SETINFO`,
//! which the proxy answers itself, as Redis 7.2 does, whatever the server's version) and protocol. The cards of
//! sessions that ended are summed by library, so the census covers every client since the proxy started.

use std::collections::{BTreeMap, HashMap};
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
    /// The sessions that ended, by library.
    past: Mutex<BTreeMap<LibraryKey, Library>>,
}

/// What the census says of one client.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Card {
    pub id: u64,
    /// The client's address, as the proxy's listener saw it.
    pub addr: String,
    /// When it connected (Unix time, ms).
    pub since_ms: u64,
    /// `CLIENT SETNAME`, `HELLO ... SETNAME`.
    pub name: Option<String>,
    /// `CLIENT SETINFO LIB-NAME` and `LIB-VER`.
    pub lib_name: Option<String>,
    pub lib_ver: Option<String>,
    /// The protocol the client's last `HELLO` asked for, if it named one.
    pub asked_protocol: Option<u8>,
    /// The protocol it speaks now.
    pub protocol: u8,
}

/// A library and version (empty when the client did not say).
type LibraryKey = (String, String);

/// The clients of one library version since the proxy started.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Library {
    /// `CLIENT SETINFO LIB-NAME`, or `None` for clients that did not send it.
    pub lib_name: Option<String>,
    pub lib_ver: Option<String>,
    /// Connections since start, and open now.
    pub connections: u64,
    pub connected: u64,
    /// Connections that asked for RESP3 with `HELLO 3`, and those of them that got it.
    pub asked_resp3: u64,
    pub got_resp3: u64,
    /// A few of their client names.
    pub names: Vec<String>,
}

/// How many client names a [`Library`] lists.
const NAMES_LISTED: usize = 5;
/// The longest library name or version the census keeps.
const MAX_ATTRIBUTE: usize = 128;
/// How many distinct libraries and versions the census of past clients keeps; the others are summed as one.
const MAX_LIBRARIES: usize = 200;
/// The name under which the libraries beyond [`MAX_LIBRARIES`] are summed.
const OTHER_LIBRARIES: &str = "(other libraries)";

impl Library {
    fn add(&mut self, card: &Card, open: bool) {
        self.connections += 1;
        self.connected += u64::from(open);
        self.asked_resp3 += u64::from(card.asked_protocol == Some(3));
        self.got_resp3 += u64::from(card.asked_protocol == Some(3) && card.protocol == 3);
        if let Some(name) = &card.name
            && self.names.len() < NAMES_LISTED
            && !self.names.contains(name)
        {
            self.names.push(name.clone());
        }
    }
}

impl Card {
    fn library(&self) -> LibraryKey {
        (
            self.lib_name.clone().unwrap_or_default(),
            self.lib_ver.clone().unwrap_or_default(),
        )
    }
}

/// What other sessions can do to a session: close it (`CLIENT KILL ID`), or name the server connection it has of
/// its own, when it is pinned (`CLIENT UNBLOCK`, `CLIENT LIST ID`, `CLIENT TRACKING ... REDIRECT`).
#[derive(Default)]
pub struct Handle {
    killed: AtomicBool,
    waker: AtomicWaker,
    /// The id of the session's own server connection, once known, or -1.
    server_id: AtomicI64,
    card: Mutex<Card>,
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

    /// Records where the client connects from.
    pub fn set_addr(&self, addr: std::net::SocketAddr) {
        crate::links::lock(&self.card).addr = addr.to_string();
    }

    /// Records the protocol a `HELLO` asked for.
    pub fn asked_protocol(&self, protocol: u8) {
        crate::links::lock(&self.card).asked_protocol = Some(protocol);
    }

    /// Records the session's protocol and name, as its server connection has them now.
    pub fn set_identity(&self, protocol: u8, name: Option<&[u8]>) {
        let mut card = crate::links::lock(&self.card);
        card.protocol = protocol;
        card.name = name.map(|n| String::from_utf8_lossy(n).into_owned());
    }

    /// `CLIENT SETINFO attribute value`, as Redis 7.2 answers it (`clientSetinfoCommand` in networking.c): the
    /// reply, and the value remembered on success. An empty value clears the attribute.
    pub fn set_info(&self, args: crate::protocol::request::Args<'_>) -> bytes::Bytes {
        if args.len() != 4 {
            return crate::session::core::error_reply("wrong number of arguments for 'client|setinfo' command");
        }
        let (attribute, value) = (args.get(2).unwrap_or_default(), args.get(3).unwrap_or_default());
        let shown = String::from_utf8_lossy(attribute);
        let mut card = crate::links::lock(&self.card);
        let field = if attribute.eq_ignore_ascii_case(b"LIB-NAME") {
            &mut card.lib_name
        } else if attribute.eq_ignore_ascii_case(b"LIB-VER") {
            &mut card.lib_ver
        } else {
            return crate::session::core::error_reply(&format!("Unrecognized option '{shown}'"));
        };
        // Printable ASCII only, no space (`validateClientAttr`).
        if !value.iter().all(|b| (b'!'..=b'~').contains(b)) {
            return crate::session::core::error_reply(&format!(
                "{shown} cannot contain spaces, newlines or special characters."
            ));
        }
        // Kept for the census cut at MAX_ATTRIBUTE (Redis keeps any length; the census must stay small).
        *field =
            (!value.is_empty()).then(|| String::from_utf8_lossy(&value[..value.len().min(MAX_ATTRIBUTE)]).into_owned());
        bytes::Bytes::from_static(b"+OK\r\n")
    }

    /// The card as it is now.
    pub fn card(&self) -> Card {
        crate::links::lock(&self.card).clone()
    }
}

impl Directory {
    /// Enters the session `id`.
    pub fn enter(&self, id: u64) -> Arc<Handle> {
        let since_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let handle = Arc::new(Handle {
            server_id: AtomicI64::new(-1),
            card: Mutex::new(Card {
                id,
                since_ms,
                protocol: 2,
                ..Card::default()
            }),
            ..Handle::default()
        });
        crate::links::lock(&self.sessions).insert(id, handle.clone());
        handle
    }

    /// Removes the session `id`, which ended; its card joins the census of past clients.
    pub fn leave(&self, id: u64) {
        let Some(handle) = crate::links::lock(&self.sessions).remove(&id) else {
            return;
        };
        let card = handle.card();
        let mut past = crate::links::lock(&self.past);
        let mut key = card.library();
        if past.len() >= MAX_LIBRARIES && !past.contains_key(&key) {
            key = (OTHER_LIBRARIES.to_string(), String::new());
        }
        past.entry(key).or_default().add(&card, false);
    }

    /// The cards of the clients connected now, oldest first.
    pub fn cards(&self) -> Vec<Card> {
        let handles: Vec<Arc<Handle>> = crate::links::lock(&self.sessions).values().cloned().collect();
        let mut cards: Vec<Card> = handles.iter().map(|h| h.card()).collect();
        cards.sort_by_key(|c| c.id);
        cards
    }

    /// Every client since start, by library and version; those that did not say theirs last.
    pub fn libraries(&self) -> Vec<Library> {
        let mut all = crate::links::lock(&self.past).clone();
        for card in self.cards() {
            all.entry(card.library()).or_default().add(&card, true);
        }
        let mut libraries: Vec<Library> = all
            .into_iter()
            .map(|((name, ver), mut library)| {
                library.lib_name = (!name.is_empty()).then_some(name);
                library.lib_ver = (!ver.is_empty()).then_some(ver);
                library
            })
            .collect();
        libraries.sort_by_key(|l| l.lib_name.is_none());
        libraries
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

    fn args(words: &[&str]) -> (crate::protocol::request::RequestParser, Vec<u8>) {
        let mut raw = format!("*{}\r\n", words.len());
        for word in words {
            raw.push_str(&format!("${}\r\n{word}\r\n", word.len()));
        }
        let mut parser = crate::protocol::request::RequestParser::new();
        assert!(matches!(
            parser.parse(raw.as_bytes()),
            crate::protocol::request::Parsed::Request(_)
        ));
        (parser, raw.into_bytes())
    }

    fn set_info(handle: &Handle, words: &[&str]) -> String {
        let (parser, raw) = args(words);
        String::from_utf8(handle.set_info(parser.args(&raw)).to_vec()).unwrap()
    }

    #[test]
    fn client_setinfo_is_answered_as_redis_7_2_answers_it_and_remembered() {
        let directory = Directory::default();
        let handle = directory.enter(FIRST_ID);
        assert_eq!(
            set_info(&handle, &["CLIENT", "SETINFO", "lib-name", "redis-py"]),
            "+OK\r\n"
        );
        assert_eq!(set_info(&handle, &["client", "setinfo", "LIB-VER", "8.1.0"]), "+OK\r\n");
        assert_eq!(
            set_info(&handle, &["CLIENT", "SETINFO", "lib-name", "a b"]),
            "-ERR lib-name cannot contain spaces, newlines or special characters.\r\n"
        );
        assert_eq!(
            set_info(&handle, &["CLIENT", "SETINFO", "colour", "x"]),
            "-ERR Unrecognized option 'colour'\r\n"
        );
        assert_eq!(
            set_info(&handle, &["CLIENT", "SETINFO", "lib-name"]),
            "-ERR wrong number of arguments for 'client|setinfo' command\r\n"
        );
        let card = handle.card();
        assert_eq!(
            (card.lib_name.as_deref(), card.lib_ver.as_deref()),
            (Some("redis-py"), Some("8.1.0"))
        );
        assert_eq!(set_info(&handle, &["CLIENT", "SETINFO", "lib-ver", ""]), "+OK\r\n");
        assert_eq!(handle.card().lib_ver, None, "an empty value clears it");
    }

    #[test]
    fn the_census_of_libraries_counts_clients_that_left_and_those_still_here() {
        let directory = Directory::default();
        let first = directory.enter(FIRST_ID);
        let (parser, raw) = args(&["CLIENT", "SETINFO", "LIB-NAME", "go-redis"]);
        first.set_info(parser.args(&raw));
        first.asked_protocol(3);
        first.set_identity(3, Some(b"worker"));
        directory.leave(FIRST_ID);
        let second = directory.enter(FIRST_ID + 1);
        second.set_info(parser.args(&raw));
        second.asked_protocol(3);
        directory.enter(FIRST_ID + 2);
        let libraries = directory.libraries();
        assert_eq!(libraries.len(), 2);
        let go = &libraries[0];
        assert_eq!(go.lib_name.as_deref(), Some("go-redis"));
        assert_eq!(
            (go.connections, go.connected, go.asked_resp3, go.got_resp3),
            (2, 1, 2, 1)
        );
        assert_eq!(go.names, ["worker"]);
        assert_eq!((libraries[1].lib_name.clone(), libraries[1].connected), (None, 1));
        assert_eq!(directory.cards().len(), 2);
    }
}
