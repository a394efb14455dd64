//! The census of commands: how many of each command (and of each subcommand where the subcommand decides the
//! behaviour) the application sent since the proxy started, for the readiness report.
//!
//! Sessions count in runs (see [`crate::telemetry::Tally`]): consecutive requests of one command are added to the
//! shared counter once. Subcommands and names outside the command table are rarer and go to a map under a lock.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::command::CommandId;

/// At most this many distinct subcommands and names outside the table are kept; the rest are counted together
/// (clients choose these names: the census must not grow with them).
const MAX_DETAIL: usize = 500;
/// The name under which the names beyond [`MAX_DETAIL`] are counted.
const TOO_MANY: &str = "(other names)";
/// The longest name (and subcommand) kept as it is; longer ones are cut, and end in `~`.
const MAX_NAME: usize = 40;

/// Counts of the commands clients sent.
pub struct CommandCensus {
    /// By position in the command table.
    counts: Box<[AtomicU64]>,
    /// `COMMAND SUBCOMMAND` of container commands and names outside the table, upper case.
    detail: Mutex<BTreeMap<String, u64>>,
}

impl Default for CommandCensus {
    fn default() -> Self {
        CommandCensus {
            counts: (0..CommandId::COUNT).map(|_| AtomicU64::new(0)).collect(),
            detail: Mutex::default(),
        }
    }
}

/// A subcommand or unknown name as the census keeps it, built on the stack: upper case, printable ASCII (`?` for
/// anything else), each word cut at `MAX_NAME` (40).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DetailKey {
    bytes: [u8; 2 * MAX_NAME + 3],
    len: usize,
}

impl std::fmt::Debug for DetailKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl DetailKey {
    /// The key of `name` (with `subcommand`, for a container command).
    pub fn new(name: &[u8], subcommand: Option<&[u8]>) -> DetailKey {
        let mut key = DetailKey {
            bytes: [0; 2 * MAX_NAME + 3],
            len: 0,
        };
        key.push_word(name);
        if let Some(sub) = subcommand {
            key.bytes[key.len] = b' ';
            key.len += 1;
            key.push_word(sub);
        }
        key
    }

    fn push_word(&mut self, word: &[u8]) {
        for &b in &word[..word.len().min(MAX_NAME)] {
            self.bytes[self.len] = if b.is_ascii_graphic() {
                b.to_ascii_uppercase()
            } else {
                b'?'
            };
            self.len += 1;
        }
        if word.len() > MAX_NAME {
            self.bytes[self.len] = b'~';
            self.len += 1;
        }
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or("?")
    }
}

/// One line of the census.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counted {
    /// Upper case; `COMMAND SUBCOMMAND` for a subcommand.
    pub command: String,
    pub count: u64,
    /// Not a command Redis 7.0 has (a module's, a newer version's, or a typo).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unknown: bool,
}

impl CommandCensus {
    /// Adds `n` requests of the command `id` (a known one).
    pub fn add(&self, id: CommandId, n: u64) {
        if let Some(counter) = id.index().and_then(|i| self.counts.get(i)) {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Adds `n` requests of a container command's subcommand (`CONFIG GET`), or of a name outside the table.
    pub fn add_detail(&self, key: &DetailKey, n: u64) {
        let mut detail = crate::links::lock(&self.detail);
        if let Some(count) = detail.get_mut(key.as_str()) {
            *count += n;
        } else if detail.len() >= MAX_DETAIL {
            *detail.entry(TOO_MANY.to_string()).or_default() += n;
        } else {
            detail.insert(key.as_str().to_string(), n);
        }
    }

    /// Every command counted, most sent first (then by name): top-level commands, then subcommands beside them.
    pub fn counted(&self) -> Vec<Counted> {
        let mut all: Vec<Counted> = self
            .counts
            .iter()
            .enumerate()
            .filter_map(|(i, count)| {
                let count = count.load(Ordering::Relaxed);
                let name = CommandId::name_at(i)?;
                (count > 0).then(|| Counted {
                    command: name.to_string(),
                    count,
                    unknown: false,
                })
            })
            .collect();
        for (name, &count) in crate::links::lock(&self.detail).iter() {
            all.push(Counted {
                unknown: !name.contains(' ') && name != TOO_MANY,
                command: name.clone(),
                count,
            });
        }
        all.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.command.cmp(&b.command)));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;

    #[test]
    fn commands_are_counted_by_name_subcommand_and_unknown_name() {
        let census = CommandCensus::default();
        census.add(Command::lookup(b"get").1, 5);
        census.add(Command::lookup(b"SET").1, 2);
        census.add(Command::lookup(b"config").1, 1);
        census.add_detail(&DetailKey::new(b"config", Some(b"get")), 1);
        census.add_detail(&DetailKey::new(b"my.module\r\n", None), 1);
        census.add(CommandId::UNKNOWN, 9);
        let counted = census.counted();
        let line = |name: &str| counted.iter().find(|c| c.command == name).cloned();
        assert_eq!(counted[0].command, "GET");
        assert_eq!(line("GET").map(|c| c.count), Some(5));
        assert_eq!(line("SET").map(|c| c.count), Some(2));
        assert_eq!(line("CONFIG GET").map(|c| (c.count, c.unknown)), Some((1, false)));
        assert_eq!(line("MY.MODULE??").map(|c| (c.count, c.unknown)), Some((1, true)));
        assert_eq!(counted.len(), 5);
    }

    #[test]
    fn names_chosen_by_clients_are_bounded() {
        let census = CommandCensus::default();
        for i in 0..MAX_DETAIL + 50 {
            census.add_detail(&DetailKey::new(b"config", Some(format!("x{i}").as_bytes())), 1);
        }
        census.add_detail(&DetailKey::new(b"config", Some(b"x0")), 1);
        let counted = census.counted();
        assert_eq!(counted.len(), MAX_DETAIL + 1);
        assert_eq!((counted[0].command.as_str(), counted[0].count), (TOO_MANY, 50));
        assert!(!counted[0].unknown);
        assert_eq!((counted[1].command.as_str(), counted[1].count), ("CONFIG X0", 2));
        let long = DetailKey::new(&[b'a'; 50], Some(&[b'b'; 50]));
        assert_eq!(long.as_str().len(), 2 * MAX_NAME + 3);
        assert!(long.as_str().ends_with("B~"));
    }
}
