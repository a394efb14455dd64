//! Prometheus metrics, rendered on the admin port's `GET /metrics`.
//!
//! Each proxy has its own recorder (not the process-wide one), so that several proxies in one process (the
//! tests) keep separate figures. Every handle is registered once at start: the per-command path increments
//! counters and records histograms through handles, with no name lookup.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use crate::command::{Command, CommandId};
use crate::primary::Side;

/// The command families metrics are kept by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Read,
    Write,
    Blocking,
    PubSub,
    Transaction,
    Scripting,
    Connection,
    Other,
}

const FAMILIES: [Family; 8] = [
    Family::Read,
    Family::Write,
    Family::Blocking,
    Family::PubSub,
    Family::Transaction,
    Family::Scripting,
    Family::Connection,
    Family::Other,
];

impl Family {
    pub fn of(command: Command) -> Family {
        match command {
            Command::Read => Family::Read,
            Command::Write | Command::XGroup => Family::Write,
            Command::BlockingRead | Command::BlockingWrite => Family::Blocking,
            Command::Subscribe | Command::Unsubscribe => Family::PubSub,
            Command::Multi | Command::Exec | Command::Discard | Command::Watch | Command::Unwatch => {
                Family::Transaction
            }
            Command::Eval | Command::EvalSha | Command::Script | Command::Function => Family::Scripting,
            Command::Auth
            | Command::Hello
            | Command::Select
            | Command::Client
            | Command::Quit
            | Command::Reset
            | Command::ReadOnly
            | Command::ReadWrite
            | Command::Monitor
            | Command::Replication => Family::Connection,
            Command::Unknown | Command::SecurityWarning => Family::Other,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Family::Read => "read",
            Family::Write => "write",
            Family::Blocking => "blocking",
            Family::PubSub => "pubsub",
            Family::Transaction => "transaction",
            Family::Scripting => "scripting",
            Family::Connection => "connection",
            Family::Other => "other",
        }
    }
}

/// The handles of every metric the proxy keeps.
pub struct Telemetry {
    handle: PrometheusHandle,
    commands: Vec<Counter>,
    errors: Vec<Counter>,
    latency: Latency,
    pub bytes_from_clients: Counter,
    pub bytes_to_clients: Counter,
    client_connections: Gauge,
    backend_connections: [Gauge; 2],
    /// Backend connections open now, by side (old, new).
    open_links: [AtomicI64; 2],
    pub handover_phase: Gauge,
    pub lag_bytes: Gauge,
    writes_held: Gauge,
    pub pause_seconds: Histogram,
    handovers: [Counter; 2],
    /// Sessions that left the shared links for a connection of their own.
    pins: Counter,
    unpins: Counter,
    /// The commands clients sent, by name, for the readiness report.
    pub census: crate::readiness::census::CommandCensus,
    /// Write commands received from clients (a scheduled handover waits for a quiet moment).
    pub writes_received: AtomicU64,
}

impl Telemetry {
    pub fn new() -> Telemetry {
        let pause_buckets = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full("redis_handover_pause_seconds".into()), &pause_buckets)
            .expect("bucket lists are not empty")
            .build_recorder();
        let families = |name: &'static str, help: &'static str| {
            FAMILIES
                .iter()
                .map(|f| counter(&recorder, name, help, &[("family", f.name())]))
                .collect::<Vec<_>>()
        };
        let commands = families(
            "redis_handover_commands_total",
            "Commands received from clients, by family.",
        );
        let errors = families(
            "redis_handover_command_errors_total",
            "Error replies sent to clients, by family.",
        );
        let sides = |name: &'static str, help: &'static str| {
            [
                gauge(&recorder, name, help, &[("server", "old")]),
                gauge(&recorder, name, help, &[("server", "new")]),
            ]
        };
        let outcome = |outcome: &'static str| {
            counter(
                &recorder,
                "redis_handover_handovers_total",
                "Handovers, by outcome.",
                &[("outcome", outcome)],
            )
        };
        Telemetry {
            census: Default::default(),
            writes_received: AtomicU64::new(0),
            pins: counter(
                &recorder,
                "redis_handover_session_pins_total",
                "Sessions that left the shared backend links for a connection of their own.",
                &[],
            ),
            unpins: counter(
                &recorder,
                "redis_handover_session_unpins_total",
                "Pinned sessions that returned to the shared backend links, their connection state gone.",
                &[],
            ),
            commands,
            errors,
            latency: Latency::default(),
            bytes_from_clients: counter(
                &recorder,
                "redis_handover_client_bytes_received_total",
                "Bytes read from clients.",
                &[],
            ),
            bytes_to_clients: counter(
                &recorder,
                "redis_handover_client_bytes_sent_total",
                "Bytes written to clients.",
                &[],
            ),
            client_connections: gauge(
                &recorder,
                "redis_handover_client_connections",
                "Client connections open.",
                &[],
            ),
            backend_connections: sides(
                "redis_handover_backend_connections",
                "Backend connections open, by server.",
            ),
            open_links: [AtomicI64::new(0), AtomicI64::new(0)],
            handover_phase: gauge(
                &recorder,
                "redis_handover_phase",
                "Handover phase: 0 idle, 1 preflight, 2 syncing, 3 catching_up, 4 paused, 5 switched, 6 aborted, 7 in_doubt, 8 synced (NEW follows OLD, no switch).",
                &[],
            ),
            lag_bytes: gauge(
                &recorder,
                "redis_handover_replication_lag_bytes",
                "NEW's replication lag behind OLD.",
                &[],
            ),
            writes_held: gauge(
                &recorder,
                "redis_handover_writes_held",
                "Writes held at the gate now.",
                &[],
            ),
            pause_seconds: histogram(
                &recorder,
                "redis_handover_pause_seconds",
                "Write pauses of handovers.",
                &[],
            ),
            handovers: [outcome("switched"), outcome("aborted")],
            handle: recorder.handle(),
        }
    }

    /// Counts `n` commands of a family received from clients.
    pub fn commands(&self, family: Family, n: u64) {
        self.commands[family as usize].increment(n);
        if family == Family::Write {
            self.writes_received.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Records `n` replies of a family whose latencies fell in one bucket (see [`Tally`]), `errors` of them errors.
    fn replies(&self, family: Family, bucket: usize, n: u64, sum: Duration, errors: u64) {
        let f = family as usize;
        self.latency.buckets[f][bucket].fetch_add(n, Ordering::Relaxed);
        self.latency.sum_ns[f].fetch_add(sum.as_nanos() as u64, Ordering::Relaxed);
        if errors > 0 {
            self.errors[f].increment(errors);
        }
    }

    /// Counts an error reply the proxy gave itself.
    pub fn local_error(&self, family: Family) {
        self.errors[family as usize].increment(1);
    }

    /// A session left the shared links for a connection of its own.
    pub fn pinned(&self) {
        self.pins.increment(1);
    }

    /// A pinned session returned to the shared links.
    pub fn unpinned(&self) {
        self.unpins.increment(1);
    }

    /// A backend connection to `side` opened (`+1`) or closed (`-1`).
    pub fn backend_link(&self, side: Side, delta: i64) {
        let i = side_index(side);
        let open = self.open_links[i].fetch_add(delta, Ordering::Relaxed) + delta;
        self.backend_connections[i].set(open as f64);
    }

    pub fn handover_finished(&self, switched: bool, pause: Option<Duration>) {
        self.handovers[usize::from(!switched)].increment(1);
        if let Some(pause) = pause {
            self.pause_seconds.record(pause.as_secs_f64());
        }
    }

    /// The Prometheus text exposition, with the gauges read at scrape time filled in.
    pub fn render(&self, clients: usize, writes_held: usize) -> String {
        self.client_connections.set(clients as f64);
        self.writes_held.set(writes_held as f64);
        let mut text = self.handle.render();
        self.latency.render(&mut text);
        text
    }

    /// Drains the histograms' buffers; called periodically.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }
}

/// Upper bounds (seconds) of the command latency histogram's buckets, beyond which is `+Inf`.
const LATENCY_BOUNDS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// The command latency histogram, by family, kept as bucket counts. Hand-written rather than the exporter's
/// histogram, which takes one sample at a time: sessions add whole runs of replies at once (see [`Tally`]).
#[derive(Default)]
struct Latency {
    buckets: [[AtomicU64; LATENCY_BOUNDS.len() + 1]; FAMILIES.len()],
    sum_ns: [AtomicU64; FAMILIES.len()],
}

impl Latency {
    /// Appends the histogram in the Prometheus text format.
    fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let name = "redis_handover_command_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time from forwarding a command to its reply, by family.\n# TYPE {name} histogram"
        );
        for (f, family) in FAMILIES.iter().enumerate() {
            let label = family.name();
            let mut cumulative = 0;
            for (i, count) in self.buckets[f].iter().enumerate() {
                cumulative += count.load(Ordering::Relaxed);
                let le = LATENCY_BOUNDS.get(i).map_or("+Inf".to_string(), |b| b.to_string());
                let _ = writeln!(out, "{name}_bucket{{family=\"{label}\",le=\"{le}\"}} {cumulative}");
            }
            let sum = self.sum_ns[f].load(Ordering::Relaxed) as f64 / 1e9;
            let _ = writeln!(out, "{name}_sum{{family=\"{label}\"}} {sum}");
            let _ = writeln!(out, "{name}_count{{family=\"{label}\"}} {cumulative}");
        }
    }
}

/// A session's metrics of one turn, added to the shared ones in runs: consecutive commands of one family are one
/// addition, and so are consecutive replies of one family whose latencies fall in one bucket (a pipeline's
/// replies, mostly). Flushed at the end of each turn, before the client can see the replies.
#[derive(Debug, Default)]
pub struct Tally {
    commands: Option<(Family, u64)>,
    /// A run of requests of one command, for the census.
    names: Option<(CommandId, u64)>,
    /// A run of requests of one subcommand or unknown name, for the census.
    details: Option<(crate::readiness::census::DetailKey, u64)>,
    replies: Option<Run>,
}

/// Replies of one family with latencies in one bucket.
#[derive(Debug)]
struct Run {
    family: Family,
    bucket: usize,
    count: u64,
    sum: Duration,
    errors: u64,
}

impl Tally {
    /// A command of `family` received.
    pub fn command(&mut self, telemetry: &Telemetry, family: Family) {
        match &mut self.commands {
            Some((f, n)) if *f == family => *n += 1,
            run => {
                if let Some((f, n)) = run.replace((family, 1)) {
                    telemetry.commands(f, n);
                }
            }
        }
    }

    /// A request of the command `id` received (see [`crate::readiness::census`]).
    pub fn name(&mut self, telemetry: &Telemetry, id: CommandId) {
        match &mut self.names {
            Some((i, n)) if *i == id => *n += 1,
            run => {
                if let Some((i, n)) = run.replace((id, 1)) {
                    telemetry.census.add(i, n);
                }
            }
        }
    }

    /// A request of a container command's subcommand, or of a name outside the table (see
    /// [`crate::readiness::census`]).
    pub fn detail(&mut self, telemetry: &Telemetry, key: crate::readiness::census::DetailKey) {
        match &mut self.details {
            Some((k, n)) if *k == key => *n += 1,
            run => {
                if let Some((k, n)) = run.replace((key, 1)) {
                    telemetry.census.add_detail(&k, n);
                }
            }
        }
    }

    /// A reply of `family`, `latency` after its command was forwarded.
    pub fn reply(&mut self, telemetry: &Telemetry, family: Family, latency: Duration, error: bool) {
        let secs = latency.as_secs_f64();
        let bucket = LATENCY_BOUNDS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(LATENCY_BOUNDS.len());
        match &mut self.replies {
            Some(run) if run.family == family && run.bucket == bucket => {
                run.count += 1;
                run.sum += latency;
                run.errors += u64::from(error);
            }
            slot => {
                let next = Run {
                    family,
                    bucket,
                    count: 1,
                    sum: latency,
                    errors: u64::from(error),
                };
                if let Some(run) = slot.replace(next) {
                    telemetry.replies(run.family, run.bucket, run.count, run.sum, run.errors);
                }
            }
        }
    }

    /// Adds what was counted to the shared metrics.
    pub fn flush(&mut self, telemetry: &Telemetry) {
        if let Some((family, n)) = self.commands.take() {
            telemetry.commands(family, n);
        }
        if let Some((id, n)) = self.names.take() {
            telemetry.census.add(id, n);
        }
        if let Some((key, n)) = self.details.take() {
            telemetry.census.add_detail(&key, n);
        }
        if let Some(run) = self.replies.take() {
            telemetry.replies(run.family, run.bucket, run.count, run.sum, run.errors);
        }
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry::new()
    }
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Telemetry")
    }
}

fn side_index(side: Side) -> usize {
    match side {
        Side::Old => 0,
        Side::New => 1,
    }
}

fn key(name: &'static str, labels: &[(&'static str, &'static str)]) -> Key {
    Key::from_parts(name, labels.iter().map(|(k, v)| Label::new(*k, *v)).collect::<Vec<_>>())
}

fn metadata() -> Metadata<'static> {
    Metadata::new(module_path!(), Level::INFO, None)
}

fn counter(
    recorder: &PrometheusRecorder,
    name: &'static str,
    help: &'static str,
    labels: &[(&'static str, &'static str)],
) -> Counter {
    recorder.describe_counter(name.into(), None, help.into());
    recorder.register_counter(&key(name, labels), &metadata())
}

fn gauge(
    recorder: &PrometheusRecorder,
    name: &'static str,
    help: &'static str,
    labels: &[(&'static str, &'static str)],
) -> Gauge {
    recorder.describe_gauge(name.into(), None, help.into());
    recorder.register_gauge(&key(name, labels), &metadata())
}

fn histogram(
    recorder: &PrometheusRecorder,
    name: &'static str,
    help: &'static str,
    labels: &[(&'static str, &'static str)],
) -> Histogram {
    recorder.describe_histogram(name.into(), None, help.into());
    recorder.register_histogram(&key(name, labels), &metadata())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, start: &str) -> &'a str {
        text.lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no {start} in {text}"))
    }

    #[test]
    fn a_turn_is_counted_once_it_is_flushed_with_latencies_in_their_buckets() {
        let telemetry = Telemetry::new();
        let mut tally = Tally::default();
        for _ in 0..16 {
            tally.command(&telemetry, Family::Read);
            tally.reply(&telemetry, Family::Read, Duration::from_micros(200), false);
        }
        tally.command(&telemetry, Family::Write);
        tally.reply(&telemetry, Family::Write, Duration::from_millis(30), true);
        let before = telemetry.render(0, 0);
        assert!(
            before.contains("redis_handover_commands_total{family=\"read\"} 16"),
            "{before}"
        );
        assert!(
            !before.contains("redis_handover_commands_total{family=\"write\"} 1"),
            "not flushed yet"
        );
        tally.flush(&telemetry);
        let text = telemetry.render(0, 0);
        assert!(
            text.contains("redis_handover_commands_total{family=\"write\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("redis_handover_command_errors_total{family=\"write\"} 1"),
            "{text}"
        );
        let read = "redis_handover_command_duration_seconds_bucket{family=\"read\"";
        assert_eq!(
            line(&text, &format!("{read},le=\"0.0001\"}}")),
            format!("{read},le=\"0.0001\"}} 0")
        );
        assert_eq!(
            line(&text, &format!("{read},le=\"0.00025\"}}")),
            format!("{read},le=\"0.00025\"}} 16")
        );
        assert_eq!(
            line(&text, &format!("{read},le=\"+Inf\"}}")),
            format!("{read},le=\"+Inf\"}} 16")
        );
        let write = "redis_handover_command_duration_seconds_bucket{family=\"write\"";
        assert!(text.contains(&format!("{write},le=\"0.025\"}} 0")), "{text}");
        assert!(text.contains(&format!("{write},le=\"0.05\"}} 1")), "{text}");
        assert!(text.contains("redis_handover_command_duration_seconds_count{family=\"read\"} 16"));
        assert!(text.contains("redis_handover_command_duration_seconds_sum{family=\"read\"} 0.0032"));
    }
}
