//! Know before you switch: the readiness report, built from the application's live traffic.
//!
//! The report answers the questions the managed services leave to the operator before an upgrade: will the
//! handover be refused (the pre-flight's checks, run without changing anything), which clients are connected and
//! with which library and protocol (and which of them would get RESP3 from NEW), which commands the application
//! sends and which of those changed between OLD's version and NEW's ([`changes`]), and whether NEW's backlog holds
//! enough of OLD's writes for the rollback window. `GET /readiness` serves it as JSON; `ctl check` prints it
//! ([`Report`]'s `Display`) and exits 0 when it says ready.

pub mod census;
pub mod changes;
pub mod shadow;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::clients::{Card, Library};
use census::Counted;
use changes::ChangeSeen;

/// The readiness report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Nothing stands in the way of a handover now.
    pub ready: bool,
    /// Why not, each with what to do about it.
    pub reasons: Vec<String>,
    /// What is worth knowing before the handover but does not stop it.
    pub warnings: Vec<String>,
    /// The servers a handover now would go from and to: `old 127.0.0.1:6379`.
    pub from: String,
    pub to: Option<String>,
    pub from_version: Option<String>,
    pub to_version: Option<String>,
    pub preflight: Preflight,
    pub clients: Clients,
    pub commands: Commands,
    pub backlog: Option<Backlog>,
    /// The current or last shadow reads, and the reads the application sent that they leave out.
    pub shadow: Option<shadow::ShadowReport>,
    pub not_shadowed: std::collections::BTreeMap<String, u64>,
    /// When the report was made (Unix time, ms).
    pub generated_at_unix_ms: u64,
}

/// The pre-flight's checks, run without changing anything.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Preflight {
    /// Whether a handover's pre-flight would pass now.
    pub passed: bool,
    /// Why it would refuse.
    pub refusal: Option<String>,
    pub warnings: Vec<String>,
    pub config_differences: Vec<String>,
}

/// The census of clients.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Clients {
    /// Connected now, oldest first.
    pub connected: Vec<Card>,
    /// Every client since the proxy started, by library and version.
    pub libraries: Vec<LibraryLine>,
    /// The `resp3` setting in force.
    pub resp3_mode: String,
}

/// A library's clients, and what a handover changes for them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LibraryLine {
    #[serde(flatten)]
    pub library: Library,
    /// What the library does about RESP3 (from the README's client table), when it is one the proxy knows.
    pub known_behaviour: Option<String>,
    /// Which protocol its clients get from NEW that they do not get from OLD, if any.
    pub protocol_change: Option<String>,
}

/// The census of commands.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Commands {
    /// Requests since the proxy started.
    pub total: u64,
    /// By command, the most sent first; container commands also by subcommand.
    pub counted: Vec<Counted>,
    /// What changed between the two versions in the commands sent.
    pub changes: Vec<ChangeSeen>,
}

/// NEW's replication backlog against OLD's write rate: how long the former primary can be cut off in the rollback
/// window and still resynchronise partially.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Backlog {
    /// NEW's `repl-backlog-size`, as the handover leaves it.
    pub bytes: u64,
    /// OLD's replication stream, measured over the check.
    pub write_rate_bytes_per_s: f64,
    /// `bytes / rate`: seconds of writes the backlog holds.
    pub holds_s: Option<f64>,
}

/// A Redis version: major, minor, patch.
type Version = (u32, u32, u32);

/// The least time of writes NEW's backlog should hold (the rollback window's link grace is 10 s).
pub const BACKLOG_SPAN_S: f64 = 10.0;

/// What a client library does about RESP3, by the name it gives in `CLIENT SETINFO LIB-NAME` (a prefix, any
/// case): from each library's handshake code, as the README's client table says.
const KNOWN_LIBRARIES: &[(&str, &str)] = &[
    (
        "redis-py",
        "redis-py 8 asks for RESP3 by default and fails the connection on a refused HELLO 3: set protocol=2 to stay on RESP2",
    ),
    (
        "go-redis",
        "go-redis v9 asks for RESP3 by default and falls back to RESP2 on any error",
    ),
    (
        "lettuce",
        "Lettuce 6 and 7 ask for RESP3 unless a protocol is set, and fall back on Redis 5's error",
    ),
    (
        "ioredis",
        "ioredis 6 asks for RESP3 by default and falls back on Redis 5's error",
    ),
    (
        "se.redis",
        "StackExchange.Redis 3 asks for RESP3 by default and falls back on any error",
    ),
    (
        "jedis",
        "Jedis 8 asks for RESP3 with auto-negotiation and falls back on Redis 5's error",
    ),
    (
        "redis-rs",
        "redis-rs asks for RESP3 only with ?protocol=resp3, and then fails the connection on a refusal",
    ),
    (
        "node-redis",
        "node-redis 6 asks for RESP3 by default and fails the connection on a refused HELLO 3: set RESP: 2 to stay on RESP2",
    ),
];

/// What the proxy knows of a library's RESP3 behaviour.
fn known_behaviour(lib_name: &str) -> Option<String> {
    let lower = lib_name.to_ascii_lowercase();
    KNOWN_LIBRARIES
        .iter()
        .find(|(prefix, _)| lower.starts_with(prefix))
        .map(|(_, behaviour)| behaviour.to_string())
}

/// What goes into a report besides the census, which the handover gathers.
pub struct Inputs {
    pub from: String,
    pub to: Option<String>,
    /// The pre-flight's findings, or why it would refuse (`None` when there is no NEW to check).
    pub preflight: Option<Result<crate::handover::PreflightFound, String>>,
    pub resp3_mode: crate::config::Resp3Mode,
    pub shadow: Option<shadow::ShadowReport>,
}

impl Report {
    /// Builds the report from the handover's checks and the proxy's census, and gives the verdict.
    pub fn build(inputs: Inputs, directory: &crate::clients::Directory, census: &census::CommandCensus) -> Report {
        let mut reasons = Vec::new();
        let mut warnings = Vec::new();
        let (mut from_version, mut to_version) = (None, None);
        let mut preflight = Preflight::default();
        let mut backlog = None;
        match inputs.preflight {
            None => reasons.push("no NEW server is configured: set new = \"HOST:PORT\" (or --new)".to_string()),
            Some(Err(refusal)) => {
                reasons.push(format!("the handover's pre-flight would refuse: {refusal}"));
                preflight.refusal = Some(refusal);
            }
            Some(Ok(found)) => {
                preflight.passed = true;
                from_version = Some(found.source_version.clone());
                to_version = Some(found.target_version.clone());
                warnings.extend(found.warnings.iter().map(|w| format!("pre-flight: {w}")));
                preflight.warnings = found.warnings;
                preflight.config_differences = found.config_differences;
                if let (Some(bytes), Some(rate)) = (found.target_backlog_bytes, found.write_rate_bytes_per_s) {
                    let holds_s = (rate > 0.0).then(|| bytes as f64 / rate);
                    if holds_s.is_some_and(|s| s < BACKLOG_SPAN_S) {
                        warnings.push(format!(
                            "NEW's repl-backlog-size ({bytes} bytes) holds {:.1} s of OLD's writes ({rate:.0} \
                             bytes/s): the rollback window would close if the former primary were cut off longer; \
                             raise rollback_backlog_bytes to at least {:.0}",
                            holds_s.unwrap_or_default(),
                            rate * BACKLOG_SPAN_S
                        ));
                    }
                    backlog = Some(Backlog {
                        bytes,
                        write_rate_bytes_per_s: rate,
                        holds_s,
                    });
                }
            }
        }
        let versions = from_version
            .as_deref()
            .and_then(crate::control::parse_version)
            .zip(to_version.as_deref().and_then(crate::control::parse_version));

        let clients = census_of_clients(directory, inputs.resp3_mode, versions, &mut warnings);

        let counted = census.counted();
        let shadow = inputs.shadow;
        match &shadow {
            // Shadow reads of this handover's two servers, in its direction, count for the verdict.
            Some(shadow) if shadow.primary == inputs.from && Some(&shadow.follower) == inputs.to.as_ref() => {
                shadow_verdict(shadow, &mut reasons, &mut warnings)
            }
            Some(shadow) => warnings.push(format!(
                "the last shadow reads compared {} with {}, not this handover's servers in its direction: run them \
                 again (ctl check --shadow 0.05 --for 60s)",
                shadow.primary, shadow.follower
            )),
            None => {}
        }
        let total = counted
            .iter()
            .filter(|c| !c.command.contains(' '))
            .map(|c| c.count)
            .sum();
        let changes = versions.map_or_else(Vec::new, |(old, new)| changes::seen_between(old, new, &counted));
        for seen in changes.iter().filter(|c| c.matters()) {
            warnings.push(format!(
                "{} ({} sent) changed in {}: {}",
                seen.name(),
                seen.sent,
                seen.change.since,
                seen.change.what
            ));
        }
        Report {
            ready: reasons.is_empty(),
            reasons,
            warnings,
            from: inputs.from,
            to: inputs.to,
            from_version,
            to_version,
            preflight,
            clients,
            not_shadowed: if shadow.is_some() {
                shadow::not_shadowed(&counted)
            } else {
                Default::default()
            },
            commands: Commands {
                total,
                counted,
                changes,
            },
            backlog,
            shadow,
            generated_at_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        }
    }
}

/// What shadow reads say for the verdict: a reply that differed is a reason not to switch yet.
fn shadow_verdict(shadow: &shadow::ShadowReport, reasons: &mut Vec<String>, warnings: &mut Vec<String>) {
    if shadow.mismatched > 0 {
        let commands: Vec<String> = shadow
            .by_command
            .iter()
            .filter(|c| c.mismatched > 0)
            .map(|c| match c.examples.first() {
                Some(e) => format!(
                    "{} ({} of {}; e.g. `{}`: {} answered `{}`, {} answered `{}`)",
                    c.command,
                    c.mismatched,
                    c.matched + c.lagged + c.mismatched,
                    e.request,
                    shadow.primary,
                    e.primary,
                    shadow.follower,
                    e.follower
                ),
                None => format!("{} ({})", c.command, c.mismatched),
            })
            .collect();
        reasons.push(format!(
            "shadow reads: {} of {} replies differed between {} and {}, after a second look: {}",
            shadow.mismatched,
            shadow.compared,
            shadow.primary,
            shadow.follower,
            commands.join("; ")
        ));
    }
    match shadow.state {
        shadow::ShadowState::Syncing | shadow::ShadowState::Running => {
            warnings.push("shadow reads are still running: the figures are partial".into())
        }
        shadow::ShadowState::Stopped => warnings.push(format!(
            "shadow reads stopped early: {}",
            shadow.stopped_because.as_deref().unwrap_or("no reason given")
        )),
        shadow::ShadowState::Finished => {}
    }
    if shadow.inconclusive > 0 {
        warnings.push(format!(
            "shadow reads: {} replies differed at first and could not be looked at again with both servers at one \
             replication offset (writes kept landing between the looks); they are not counted as differences",
            shadow.inconclusive
        ));
    }
    if shadow.dropped > 0 {
        warnings.push(format!(
            "shadow reads: {} sampled reads were not compared (the comparing task was behind); use a smaller fraction",
            shadow.dropped
        ));
    }
}

/// The clients by library, with what a handover from `versions.0` to `versions.1` changes in their protocol.
fn census_of_clients(
    directory: &crate::clients::Directory,
    mode: crate::config::Resp3Mode,
    versions: Option<(Version, Version)>,
    warnings: &mut Vec<String>,
) -> Clients {
    let pinned = mode == crate::config::Resp3Mode::PinResp2;
    let new_has_resp3 = versions.is_some_and(|(_, new)| new >= (6, 0, 0));
    let libraries = directory
        .libraries()
        .into_iter()
        .map(|library| {
            let refused = library.asked_resp3 - library.got_resp3.min(library.asked_resp3);
            let name = library
                .lib_name
                .clone()
                .unwrap_or_else(|| "clients that gave no library name".into());
            let protocol_change = (refused > 0 && new_has_resp3).then(|| {
                if pinned {
                    format!(
                        "{refused} connection(s) of {name} asked for RESP3 and were refused; with resp3 = pin-resp2 \
                         they stay on RESP2 after the switch too"
                    )
                } else {
                    format!(
                        "{refused} connection(s) of {name} asked for RESP3 and got RESP2 from OLD: once NEW is the \
                         primary, their new connections get RESP3 (differently shaped replies); sessions open at \
                         the switch keep RESP2. To keep them on RESP2, set resp3 = pin-resp2 before the handover \
                         (redis-handover ctl config resp3 pin-resp2)"
                    )
                }
            });
            if let Some(change) = protocol_change.as_ref().filter(|_| !pinned) {
                warnings.push(change.clone());
            }
            LibraryLine {
                known_behaviour: library.lib_name.as_deref().and_then(known_behaviour),
                library,
                protocol_change,
            }
        })
        .collect();
    Clients {
        connected: directory.cards(),
        libraries,
        resp3_mode: mode.name().to_string(),
    }
}

impl fmt::Display for Report {
    /// The report for a person: the verdict and its reasons first, then the census.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let version = |v: &Option<String>| v.as_ref().map(|v| format!(" (Redis {v})")).unwrap_or_default();
        writeln!(
            f,
            "handover from {}{} to {}{}",
            self.from,
            version(&self.from_version),
            self.to.as_deref().unwrap_or("(no NEW configured)"),
            version(&self.to_version)
        )?;
        writeln!(f, "verdict: {}", if self.ready { "READY" } else { "NOT READY" })?;
        for reason in &self.reasons {
            writeln!(f, "  - {reason}")?;
        }
        if !self.warnings.is_empty() {
            writeln!(f, "\nworth knowing:")?;
            for warning in &self.warnings {
                writeln!(f, "  - {warning}")?;
            }
        }
        writeln!(
            f,
            "\npre-flight: {}",
            match (&self.preflight.refusal, self.preflight.passed) {
                (Some(_), _) => "would refuse (above)",
                (None, true) => "would pass",
                (None, false) => "not run",
            }
        )?;
        for line in &self.preflight.config_differences {
            writeln!(f, "  setting: {line}")?;
        }
        if let Some(backlog) = &self.backlog {
            let holds = backlog.holds_s.map_or("any time (no writes seen)".to_string(), |s| {
                let span = std::time::Duration::from_secs(s.round() as u64);
                format!("{} of writes", humantime::format_duration(span))
            });
            writeln!(
                f,
                "backlog: NEW's {} bytes hold {holds} at OLD's current {:.0} bytes/s",
                backlog.bytes, backlog.write_rate_bytes_per_s
            )?;
        }
        let clients = &self.clients;
        writeln!(
            f,
            "\nclients: {} connected now (resp3 = {})",
            clients.connected.len(),
            clients.resp3_mode
        )?;
        writeln!(
            f,
            "  {:<24} {:<12} {:>11} {:>5} {:>11} {:>9}",
            "library", "version", "connections", "now", "asked RESP3", "got RESP3"
        )?;
        for line in &clients.libraries {
            let l = &line.library;
            writeln!(
                f,
                "  {:<24} {:<12} {:>11} {:>5} {:>11} {:>9}",
                l.lib_name.as_deref().unwrap_or("(not given)"),
                l.lib_ver.as_deref().unwrap_or("-"),
                l.connections,
                l.connected,
                l.asked_resp3,
                l.got_resp3
            )?;
            if let Some(change) = &line.protocol_change {
                writeln!(f, "      {change}")?;
            }
            if let Some(known) = line.known_behaviour.as_ref().filter(|_| line.protocol_change.is_some()) {
                writeln!(f, "      {known}")?;
            }
        }
        writeln!(f, "\ncommands: {} since the proxy started", self.commands.total)?;
        for counted in self.commands.counted.iter().take(15) {
            let unknown = if counted.unknown {
                "  (not a Redis 7.0 command)"
            } else {
                ""
            };
            writeln!(f, "  {:<28} {:>12}{unknown}", counted.command, counted.count)?;
        }
        if self.commands.counted.len() > 15 {
            writeln!(f, "  ... {} more (--json lists all)", self.commands.counted.len() - 15)?;
        }
        if let Some(shadow) = &self.shadow {
            writeln!(
                f,
                "\nshadow reads ({}% of reads, {} -> {}): {}, {} compared, {} equal, {} equal on a second look \
                 (lag), {} different, {} undecided (writes kept landing between the looks), {} dropped",
                shadow.fraction * 100.0,
                shadow.primary,
                shadow.follower,
                shadow.state.name(),
                shadow.compared,
                shadow.matched,
                shadow.lagged,
                shadow.mismatched,
                shadow.inconclusive,
                shadow.dropped
            )?;
            for command in &shadow.by_command {
                writeln!(
                    f,
                    "  {:<16} {:>8} equal {:>6} lag {:>6} different {:>6} undecided",
                    command.command, command.matched, command.lagged, command.mismatched, command.inconclusive
                )?;
                for example in &command.examples {
                    writeln!(
                        f,
                        "      `{}`\n        primary:  {}\n        follower: {}",
                        example.request, example.primary, example.follower
                    )?;
                }
            }
            if !self.not_shadowed.is_empty() {
                let list: Vec<String> = self.not_shadowed.iter().map(|(c, n)| format!("{c} ({n})")).collect();
                writeln!(f, "  reads sent but never shadowed: {}", list.join(", "))?;
            }
            for left_out in &shadow.left_out {
                writeln!(f, "  left out: {left_out}")?;
            }
        }
        if !self.commands.changes.is_empty() {
            writeln!(f, "\nchanged between the two versions, in commands sent:")?;
            for seen in &self.commands.changes {
                writeln!(
                    f,
                    "  {} ({} sent), {} in {}: {}\n      source: {}",
                    seen.name(),
                    seen.sent,
                    seen.change.kind,
                    seen.change.since,
                    seen.change.what,
                    seen.change.source
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_reads_count_only_for_the_handover_they_tried() {
        let mut shadow = shadow::ShadowReport::new(
            0.05,
            "old 127.0.0.1:1".into(),
            "new 127.0.0.1:2".into(),
            std::time::Duration::from_secs(1),
        );
        shadow.state = shadow::ShadowState::Finished;
        shadow.compared = 10;
        shadow.mismatched = 1;
        let report = |from: &str, to: &str| {
            let inputs = Inputs {
                from: from.into(),
                to: Some(to.into()),
                preflight: Some(Ok(crate::handover::PreflightFound::default())),
                resp3_mode: crate::config::Resp3Mode::Allow,
                shadow: Some(shadow.clone()),
            };
            Report::build(inputs, &Default::default(), &Default::default())
        };
        let forward = report("old 127.0.0.1:1", "new 127.0.0.1:2");
        assert!(
            !forward.ready && forward.reasons[0].starts_with("shadow reads: 1 of 10"),
            "{forward:?}"
        );
        let back = report("new 127.0.0.1:2", "old 127.0.0.1:1");
        assert!(back.ready, "{back:?}");
        assert!(
            back.warnings.iter().any(|w| w.contains("not this handover's servers")),
            "{back:?}"
        );
    }

    #[test]
    fn libraries_are_known_by_the_name_they_give() {
        assert!(known_behaviour("redis-py").is_some_and(|b| b.contains("protocol=2")));
        assert!(known_behaviour("go-redis(,go1.22.1)").is_some());
        assert!(known_behaviour("Lettuce").is_some());
        assert_eq!(known_behaviour("my-own-client"), None);
    }
}
