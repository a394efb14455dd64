//! The census of commands: how many of each command (and of each subcommand where the subcommand decides the
//! behaviour) the application sent since the proxy started, for the readiness report.
//!
//! Sessions count in runs (see [`crate::telemetry::Tally`]): consecutive requests of one command are added to the
//! shared counter once. Subcommands and names outside the command table are rarer and go to a map under a lock.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::command::CommandId;

/// At most this many distinct names outside the table are kept; the rest are counted together.
const MAX_OTHER_NAMES: usize = 200;
/// The name under which the names beyond [`MAX_OTHER_NAMES`] are counted.
const TOO_MANY: &str = "(other names)";
/// The longest name kept as it is; longer ones are cut.
const MAX_NAME: usize = 40;

/// Counts of the commands clients sent.
pub struct CommandCensus {
    /// By position in the command table.
    counts: Box<[AtomicU64]>,
    /// `COMMAND SUBCOMMAND` of container commands and names outside the table, upper case.
    detail: Mutex<BTreeMap<String, u64>>,
    /// Names outside the table kept in `detail`.
    other_names: Mutex<usize>,
}

impl Default for CommandCensus {
    fn default() -> Self {
        CommandCensus {
            counts: (0..CommandId::COUNT).map(|_| AtomicU64::new(0)).collect(),
            detail: Mutex::default(),
            other_names: Mutex::default(),
        }
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

    /// Counts a request of a container command by its subcommand (`CONFIG GET`), or of a name outside the table.
    /// `name` is the command as sent; `subcommand` is given for a known container command.
    pub fn add_detail(&self, name: &[u8], subcommand: Option<&[u8]>) {
        let mut key = upper(name);
        let known = subcommand.is_some();
        if let Some(sub) = subcommand {
            key.push(' ');
            key.push_str(&upper(sub));
        }
        let mut detail = crate::links::lock(&self.detail);
        if let Some(count) = detail.get_mut(&key) {
            *count += 1;
            return;
        }
        if !known {
            let mut kept = crate::links::lock(&self.other_names);
            if *kept >= MAX_OTHER_NAMES {
                *detail.entry(TOO_MANY.to_string()).or_default() += 1;
                return;
            }
            *kept += 1;
        }
        detail.insert(key, 1);
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
                unknown: !name.contains(' '),
                command: name.clone(),
                count,
            });
        }
        all.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.command.cmp(&b.command)));
        all
    }
}

/// A name as the census keeps it: upper case, printable, cut at [`MAX_NAME`] characters.
fn upper(name: &[u8]) -> String {
    let cut = &name[..name.len().min(MAX_NAME)];
    let mut text: String = String::from_utf8_lossy(cut)
        .chars()
        .map(|c| if c.is_control() { '?' } else { c.to_ascii_uppercase() })
        .collect();
    if name.len() > MAX_NAME {
        text.push('…');
    }
    text
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
        census.add_detail(b"config", Some(b"get"));
        census.add_detail(b"my.module\r\n", None);
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
    fn names_outside_the_table_are_bounded() {
        let census = CommandCensus::default();
        for i in 0..MAX_OTHER_NAMES + 50 {
            census.add_detail(format!("x{i}").as_bytes(), None);
        }
        census.add_detail(b"x0", None);
        let counted = census.counted();
        assert_eq!(counted.len(), MAX_OTHER_NAMES + 1);
        assert_eq!(counted[0].command, TOO_MANY);
        assert_eq!(counted[0].count, 50);
        assert_eq!(counted[1].command, "X0");
        assert_eq!(counted[1].count, 2);
        assert_eq!(upper(&[b'a'; 50]).chars().count(), MAX_NAME + 1);
    }
}
