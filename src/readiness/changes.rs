//! The table of what changed in commands between Redis versions (`changes.toml`, compiled from Redis's release
//! notes and command pages, each row with its source), and its match against the commands an application sent.

use std::sync::LazyLock;

use super::census::Counted;

/// A row of the table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Change {
    /// Upper case, as clients send it.
    pub command: String,
    /// For container commands (`CONFIG GET`): the subcommand, upper case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subcommand: Option<String>,
    /// The first version with the new behaviour: `6.0`, `6.2`, `7.0` or `7.2`.
    pub since: String,
    /// `behaviour`, `deprecated`, `renamed` or `removed`.
    pub kind: String,
    /// What an application that sends the command sees differently.
    pub what: String,
    /// Where it is written: a URL, then the section or words.
    pub source: String,
}

/// A change that concerns a command the application sent, for the readiness report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChangeSeen {
    /// How many the application sent since the proxy started.
    pub sent: u64,
    #[serde(flatten)]
    pub change: Change,
}

impl ChangeSeen {
    /// The command as counted: `CONFIG GET` for a subcommand.
    pub fn name(&self) -> String {
        match &self.change.subcommand {
            Some(sub) => format!("{} {sub}", self.change.command),
            None => self.change.command.clone(),
        }
    }

    /// Whether the change can make a request that worked on the old version behave differently on the new one
    /// (a deprecated command still works).
    pub fn matters(&self) -> bool {
        self.change.kind != "deprecated"
    }
}

#[derive(serde::Deserialize)]
struct Table {
    change: Vec<Change>,
}

/// The table, read once.
static CHANGES: LazyLock<Vec<Change>> = LazyLock::new(|| {
    let table: Table = toml::from_str(include_str!("changes.toml")).expect("changes.toml is checked by a unit test");
    table.change
});

/// The changes after `old` up to and including `new` (versions as major, minor, patch) of the commands in
/// `counted`, the most sent first.
pub fn seen_between(old: (u32, u32, u32), new: (u32, u32, u32), counted: &[Counted]) -> Vec<ChangeSeen> {
    let mut seen = Vec::new();
    // Names outside Redis 7.0's table count too: STRALGO, which 7.0 removed, is one.
    for line in counted {
        let (command, subcommand) = match line.command.split_once(' ') {
            Some((command, subcommand)) => (command, Some(subcommand)),
            None => (line.command.as_str(), None),
        };
        for change in CHANGES.iter() {
            let Some(since) = crate::control::parse_version(&format!("{}.0", change.since)) else {
                continue;
            };
            if change.command == command && change.subcommand.as_deref() == subcommand && old < since && since <= new {
                seen.push(ChangeSeen {
                    sent: line.count,
                    change: change.clone(),
                });
            }
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The versions a row's `since` may name.
    const VERSIONS: [&str; 4] = ["6.0", "6.2", "7.0", "7.2"];
    /// The kinds a row may be of.
    const KINDS: [&str; 4] = ["behaviour", "deprecated", "renamed", "removed"];

    #[test]
    fn every_row_of_the_table_is_complete_and_names_its_source() {
        assert!(CHANGES.len() >= 20, "{} rows", CHANGES.len());
        for change in CHANGES.iter() {
            let row = format!("{change:?}");
            assert!(VERSIONS.contains(&change.since.as_str()), "{row}");
            assert!(KINDS.contains(&change.kind.as_str()), "{row}");
            assert_eq!(change.command, change.command.to_ascii_uppercase(), "{row}");
            assert!(!change.command.contains(' '), "{row}");
            assert!(change.source.starts_with("https://"), "{row}");
            assert!(change.what.len() > 20 && change.what.len() < 400, "{row}");
            if let Some(sub) = &change.subcommand {
                assert_eq!(sub, &sub.to_ascii_uppercase(), "{row}");
                assert!(
                    crate::command::Command::lookup(change.command.as_bytes())
                        .1
                        .has_subcommands(),
                    "the census counts {} by subcommand: {row}",
                    change.command
                );
            }
        }
    }

    #[test]
    fn only_the_changes_between_the_two_versions_of_commands_sent_are_listed() {
        let counted = |command: &str, count: u64| Counted {
            command: command.into(),
            count,
            unknown: false,
        };
        let sent = [counted("GETSET", 7), counted("GET", 100)];
        let from_6_2 = seen_between((6, 2, 14), (7, 2, 4), &sent);
        assert!(
            from_6_2.iter().all(|c| c.name() == "GETSET" && c.sent == 7),
            "{from_6_2:?}"
        );
        let all = seen_between((5, 0, 7), (7, 2, 4), &sent);
        assert!(
            all.iter().any(|c| c.change.since == "6.2"),
            "GETSET was deprecated in 6.2: {all:?}"
        );
        assert!(seen_between((7, 2, 0), (7, 2, 4), &sent).is_empty());
        assert!(seen_between((5, 0, 7), (6, 0, 20), &[counted("GETSET", 1)]).is_empty());
        let stralgo = Counted {
            unknown: true,
            ..counted("STRALGO", 2)
        };
        let removed = seen_between((6, 2, 14), (7, 0, 15), &[stralgo]);
        assert!(
            removed.iter().any(|c| c.change.kind == "removed"),
            "a command 7.0 removed is not in its table, and still matched: {removed:?}"
        );
    }
}
