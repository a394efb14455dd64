//! The Lua scripts clients have sent through the proxy, so that a new primary can be given them.
//!
//! Redis 7.0 neither replicates `SCRIPT LOAD` nor keeps the script cache in its RDB, so a promoted replica
//! starts with an empty cache and `EVALSHA` would answer `NOSCRIPT` (REDIS-FACTS.md, "Scripts"). The proxy
//! remembers every body it saw in EVAL or SCRIPT LOAD and loads them on the new primary before releasing
//! writes to it.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;

/// Script bodies by their SHA1 (lower-case hex, as Redis prints it).
#[derive(Debug, Default)]
pub struct ScriptCache {
    bodies: Mutex<HashMap<String, Bytes>>,
}

impl ScriptCache {
    /// Remembers a script body.
    pub fn remember(&self, body: &[u8]) {
        let sha = sha1_smol::Sha1::from(body).digest().to_string();
        let mut bodies = self.bodies.lock().unwrap_or_else(|e| e.into_inner());
        bodies.entry(sha).or_insert_with(|| Bytes::copy_from_slice(body));
    }

    /// Forgets every script (SCRIPT FLUSH).
    pub fn clear(&self) {
        self.bodies.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Every script body remembered.
    pub fn all(&self) -> Vec<Bytes> {
        self.bodies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub fn len(&self) -> usize {
        self.bodies.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
