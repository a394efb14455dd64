//! `redis-handover ctl`: the operator's command line for the admin port.
//!
//! Exit codes a script can rely on: 0 done; 1 refused or failed (the reason on stderr); 2 bad usage; 3 the admin
//! port could not be reached.

use std::io::IsTerminal;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::handover::Status;
use crate::handover::schedule::{ScheduleState, Scheduled};
use crate::handover::status::RollbackWindow;
use crate::handover::window::WindowState;
use crate::primary::Side;
use crate::readiness::shadow::{ShadowReport, ShadowState};

/// Exit code: the operation was refused or failed.
pub const EXIT_FAILED: i32 = 1;
/// Exit code: the admin port could not be reached.
pub const EXIT_UNREACHABLE: i32 = 3;

/// `redis-handover ctl` options. The global ones may come anywhere on the command line (`ctl status --json --admin
/// HOST:PORT` as well as `ctl --admin HOST:PORT status`).
#[derive(Debug, clap::Args)]
pub struct CtlArgs {
    /// The proxy's admin address (a bare PORT means 127.0.0.1:PORT).
    #[arg(
        long,
        global = true,
        env = "REDIS_HANDOVER_ADMIN",
        default_value = "127.0.0.1:7380",
        value_name = "HOST:PORT",
        value_parser = admin_address
    )]
    pub admin: String,
    /// Print the admin port's JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// A file holding the admin token (or set REDIS_HANDOVER_ADMIN_TOKEN).
    #[arg(long, global = true, env = "REDIS_HANDOVER_ADMIN_TOKEN_FILE", value_name = "FILE")]
    pub admin_token_file: Option<std::path::PathBuf>,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum CtlCommand {
    /// Phase, primary, versions, lag, clients and held writes, on one screen.
    Status {
        /// Redraw until the running handover ends, with progress bars for the sync and the catch-up.
        #[arg(long)]
        watch: bool,
    },
    /// Is a handover ready? The pre-flight's checks (changing nothing), the clients and commands seen, what
    /// changes for them on NEW, the shadow reads; exit 0 ready, 1 not ready (with the reasons).
    Check {
        /// First send this share of the reads (0.05 is 5%) to NEW as well and compare the replies; NEW is synced
        /// first if it does not follow OLD yet (no switch).
        #[arg(long, value_name = "FRACTION", requires = "for_")]
        shadow: Option<f64>,
        /// Run shadow reads this long, once NEW follows (`60s`, `5m`); the share is --shadow's, or the proxy's
        /// shadow_reads setting.
        #[arg(long = "for", id = "for_", value_name = "DURATION", value_parser = humantime::parse_duration)]
        for_: Option<Duration>,
    },
    /// Start a handover to the server that is not the primary.
    Handover {
        #[command(flatten)]
        options: HandoverOptions,
        /// Go on although NEW holds keys.
        #[arg(long)]
        allow_nonempty: bool,
        /// Copy maxmemory-policy and notify-keyspace-events from OLD to NEW.
        #[arg(long)]
        copy_config: bool,
        /// Schedule it instead of starting it now: not before TIME (RFC 3339, HH:MM or HH:MM:SS in UTC, or +DURATION
        /// such as +10m).
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
        /// Schedule it inside a maintenance window, DAY HH:MM-HH:MM in UTC (`Sun 03:00-04:00`; without a day,
        /// every day): the next one, or the one in progress.
        #[arg(long, value_name = "WINDOW")]
        window: Option<String>,
        /// Schedule it for a quiet moment: fewer than N writes/s over the last 3 s and no MULTI open (within the
        /// window, if one is given).
        #[arg(long, value_name = "N")]
        when_writes_below: Option<u64>,
        /// Wait until it ends (a scheduled one: until it starts, then until it ends); exit 0 if it switched, 1 if
        /// it aborted or a schedule was missed or cancelled.
        #[arg(long)]
        wait: bool,
    },
    /// Drop the scheduled handover.
    Cancel,
    /// Hand back to the former primary while the rollback window is open (refused once it closed).
    Rollback {
        #[command(flatten)]
        options: HandoverOptions,
        /// Wait until it ends; exit 0 if it switched back, 1 if it aborted.
        #[arg(long)]
        wait: bool,
        /// Close the rollback window instead: the former primary stops following (it keeps its data).
        #[arg(long, conflicts_with = "wait")]
        close: bool,
    },
    /// Stop a running handover before the promotion.
    Abort {
        /// Also stop one whose outcome is in doubt (NEW may have been promoted), making OLD the primary again.
        #[arg(long)]
        force: bool,
    },
    /// Change a setting at run time.
    Config {
        #[command(subcommand)]
        setting: ConfigSetting,
    },
}

/// The options a handover and a rollback share.
#[derive(Debug, clap::Args)]
pub struct HandoverOptions {
    #[arg(long, value_name = "MS")]
    max_pause_ms: Option<u64>,
    #[arg(long, value_name = "S")]
    catchup_timeout_s: Option<u64>,
    #[arg(long, value_name = "BYTES")]
    max_lag_bytes: Option<u64>,
    /// Leave this fleet peer out (repeat it): one that is gone for good and would stop every handover.
    #[arg(long = "exclude-peer", value_name = "HOST:PORT")]
    exclude_peers: Vec<String>,
}

impl HandoverOptions {
    /// The JSON body of `POST /handover` or `POST /rollback`, with only the options given.
    fn body(&self) -> serde_json::Map<String, Value> {
        let mut body = serde_json::Map::new();
        for (key, value) in [
            ("max_pause_ms", self.max_pause_ms),
            ("catchup_timeout_s", self.catchup_timeout_s),
            ("max_lag_bytes", self.max_lag_bytes),
        ] {
            if let Some(value) = value {
                body.insert(key.into(), json!(value));
            }
        }
        if !self.exclude_peers.is_empty() {
            body.insert("exclude_peers".into(), json!(self.exclude_peers));
        }
        body
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum ConfigSetting {
    /// What HELLO 3 gets: allow, or pin-resp2.
    Resp3 {
        #[arg(value_parser = ["allow", "pin-resp2"])]
        mode: String,
    },
}

/// A failed call: the exit code and the message for stderr.
struct Failure(i32, String);

/// Runs a ctl command; returns the process's exit code.
pub fn run(args: CtlArgs) -> i32 {
    let token = match &args.admin_token_file {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => Some(text.lines().next().unwrap_or_default().to_string()),
            Err(error) => {
                eprintln!("redis-handover ctl: cannot read {}: {error}", path.display());
                return EXIT_FAILED;
            }
        },
        None => std::env::var("REDIS_HANDOVER_ADMIN_TOKEN").ok(),
    };
    let client = Admin::new(&args.admin, token);
    let result = match &args.command {
        CtlCommand::Status { watch: false } => client.get::<Status>("/status").map(|status| {
            print_or_json(&status, args.json, render_status);
            0
        }),
        CtlCommand::Status { watch: true } => watch(&client, args.json),
        CtlCommand::Check { shadow, for_ } => match for_ {
            Some(duration) => {
                shadow_reads(&client, *shadow, *duration, args.json).and_then(|()| check(&client, args.json))
            }
            None => check(&client, args.json),
        },
        CtlCommand::Handover {
            options,
            allow_nonempty,
            copy_config,
            at,
            window,
            when_writes_below,
            wait,
        } => {
            let mut body = options.body();
            if *allow_nonempty {
                body.insert("allow_nonempty".into(), json!(true));
            }
            if *copy_config {
                body.insert("copy_config".into(), json!(true));
            }
            if at.is_some() || window.is_some() || when_writes_below.is_some() {
                let plan = json!({
                    "at": at,
                    "window": window,
                    "when_writes_below": when_writes_below,
                    "handover": body,
                });
                schedule(&client, plan, *wait, args.json)
            } else {
                start(&client, "/handover", body, *wait, args.json)
            }
        }
        CtlCommand::Cancel => client
            .send::<Scheduled>("POST", "/handover/cancel", json!({}))
            .map(|answer| {
                print_or_json(&answer, args.json, |_| "scheduled handover cancelled\n".into());
                0
            }),
        CtlCommand::Rollback { close: true, .. } => client
            .send::<crate::handover::window::Window>("POST", "/rollback/close", json!({}))
            .map(|window| {
                print_or_json(&window, args.json, |w| {
                    format!("rollback window closed: {}\n", or_dash(&w.reason))
                });
                0
            }),
        CtlCommand::Rollback { options, wait, .. } => start(&client, "/rollback", options.body(), *wait, args.json),
        CtlCommand::Abort { force } => client
            .send::<Value>("POST", "/handover/abort", json!({ "force": force }))
            .map(|answer| {
                print_or_json(&answer, args.json, |_| "abort requested\n".into());
                0
            }),
        CtlCommand::Config {
            setting: ConfigSetting::Resp3 { mode },
        } => client.send::<Value>("PUT", "/config/resp3", json!(mode)).map(|answer| {
            print_or_json(&answer, args.json, |a| {
                format!("resp3 = {}\n", a["resp3"].as_str().unwrap_or("?"))
            });
            0
        }),
    };
    match result {
        Ok(code) => code,
        Err(Failure(code, message)) => {
            eprintln!("redis-handover ctl: {message}");
            code
        }
    }
}

/// Runs shadow reads and waits for their end, with a line of progress now and then (not with `--json`).
fn shadow_reads(client: &Admin, fraction: Option<f64>, duration: Duration, json: bool) -> Result<(), Failure> {
    let body = json!({ "fraction": fraction, "for_s": duration.as_secs_f64() });
    client.send::<Value>("POST", "/shadow", body)?;
    let mut last_line = String::new();
    loop {
        let report: ShadowReport = client.get("/shadow")?;
        let line = match report.state {
            ShadowState::Syncing => "shadow reads: syncing NEW with OLD first".to_string(),
            state => format!(
                "shadow reads: {}, {} compared, {} different",
                state.name(),
                report.compared,
                report.mismatched
            ),
        };
        if line != last_line && !json {
            eprintln!("{line}");
            last_line = line;
        }
        if matches!(report.state, ShadowState::Finished | ShadowState::Stopped) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Prints the readiness report; 0 when it says ready, 1 when not.
fn check(client: &Admin, json: bool) -> Result<i32, Failure> {
    let report: crate::readiness::Report = client.get("/readiness")?;
    print_or_json(&report, json, |r| r.to_string());
    if report.ready {
        Ok(0)
    } else {
        Err(Failure(
            EXIT_FAILED,
            format!("not ready: {}", report.reasons.join("; ")),
        ))
    }
}

/// Schedules a handover; with `wait`, waits for it to start and follows it to its end.
fn schedule(client: &Admin, plan: Value, wait: bool, json: bool) -> Result<i32, Failure> {
    let scheduled: Scheduled = client.send("POST", "/handover/schedule", plan)?;
    print_or_json(&scheduled, json, render_schedule);
    if !wait {
        return Ok(0);
    }
    loop {
        let status: Status = client.get("/status")?;
        let Some(now) = status.scheduled.filter(|now| now.id == scheduled.id) else {
            return Err(Failure(EXIT_FAILED, "the schedule was replaced".into()));
        };
        match now.state {
            ScheduleState::Started => return watch(client, json),
            ScheduleState::Missed | ScheduleState::Cancelled => {
                return Err(Failure(
                    EXIT_FAILED,
                    format!("scheduled handover {}: {}", now.state.name(), or_dash(&now.reason)),
                ));
            }
            ScheduleState::Waiting | ScheduleState::Watching => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// A scheduled handover, for a person.
fn render_schedule(s: &Scheduled) -> String {
    let mut out = format!(
        "handover {}: not before {}",
        s.state.name(),
        crate::handover::schedule::rfc3339(s.not_before_unix_ms)
    );
    if let Some(after) = s.not_after_unix_ms {
        out.push_str(&format!(", not after {}", crate::handover::schedule::rfc3339(after)));
    }
    if let Some(below) = s.when_writes_below {
        out.push_str(&format!(", at a moment under {below} writes/s with no MULTI open"));
        if let Some(rate) = s.writes_per_s {
            out.push_str(&format!(" (now {rate:.0}/s)"));
        }
    }
    out.push('\n');
    if let Some(blocked) = &s.blocked {
        out.push_str(&format!("BLOCKED: {blocked}\n"));
    }
    if let Some(reason) = &s.reason {
        out.push_str(&format!("reason: {reason}\n"));
    }
    out
}

/// Starts a handover (or a rollback) and, with `wait`, follows it to its end.
fn start(
    client: &Admin,
    path: &str,
    body: serde_json::Map<String, Value>,
    wait: bool,
    json: bool,
) -> Result<i32, Failure> {
    let started: Status = client.send("POST", path, Value::Object(body))?;
    if wait {
        return watch(client, json);
    }
    print_or_json(&started, json, |s| format!("handover started: {}\n", s.phase.name()));
    Ok(0)
}

/// An optional text, or `-`.
fn or_dash(text: &Option<String>) -> &str {
    text.as_deref().unwrap_or("-")
}

fn print_or_json<T: Serialize>(value: &T, json: bool, render: impl Fn(&T) -> String) {
    if json {
        match serde_json::to_string(value) {
            Ok(text) => println!("{text}"),
            Err(error) => eprintln!("redis-handover ctl: cannot write the answer as JSON: {error}"),
        }
    } else {
        print!("{}", render(value));
    }
}

/// Follows a handover until it ends: progress bars on a terminal, a line per change otherwise. Exits 0 when the
/// last handover switched (or none ran), 1 when it aborted.
fn watch(client: &Admin, json: bool) -> Result<i32, Failure> {
    let terminal = std::io::stdout().is_terminal() && !json;
    let bars = indicatif::MultiProgress::new();
    let phase_line = bars.add(indicatif::ProgressBar::new_spinner());
    let sync_bar = bars.add(indicatif::ProgressBar::hidden());
    let style = indicatif::ProgressStyle::with_template("{prefix:>10} [{bar:40}] {msg}")
        .expect("a valid template")
        .progress_chars("=> ");
    sync_bar.set_style(style);
    sync_bar.set_prefix("sync");
    let mut last_line = String::new();
    let status = loop {
        let status: Status = client.get("/status")?;
        let running = status.handover.is_some();
        let (read, total) = (status.sync.bytes_read, status.sync.bytes_total);
        let line = format!(
            "phase {}{}{}, clients {}, writes held {}",
            status.phase.name(),
            match (read, total) {
                (Some(r), Some(t)) if running => format!(", sync {} of {}", bytes(r), bytes(t)),
                _ => String::new(),
            },
            status
                .lag_bytes
                .map(|l| format!(", lag {}", bytes(l.max(0) as u64)))
                .unwrap_or_default(),
            status.clients,
            status.writes_held
        );
        if terminal {
            phase_line.set_message(line.clone());
            phase_line.tick();
            if let (Some(r), Some(t)) = (read, total) {
                sync_bar.set_length(t);
                sync_bar.set_position(r);
                sync_bar.set_message(format!("{} of {}", bytes(r), bytes(t)));
            }
        } else if line != last_line && !json {
            println!("{line}");
        }
        last_line = line;
        if !running {
            break status;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    phase_line.finish_and_clear();
    sync_bar.finish_and_clear();
    print_or_json(&status, json, render_status);
    match &status.last_handover {
        Some(last) if last.outcome == crate::handover::Phase::Aborted => Err(Failure(
            EXIT_FAILED,
            format!(
                "handover aborted: {}",
                last.reason.as_deref().unwrap_or("no reason given")
            ),
        )),
        _ => Ok(0),
    }
}

/// The one-screen status.
fn render_status(s: &Status) -> String {
    let mut out = String::new();
    out.push_str(&format!("phase        {}\n", s.phase.name()));
    out.push_str(&format!(
        "primary      {} {} (Redis {}), generation {}\n",
        s.primary.side.name().to_uppercase(),
        s.primary.addr,
        or_dash(&s.primary.version),
        s.primary.generation
    ));
    for side in [Side::Old, Side::New] {
        let server = s.servers.side(side);
        out.push_str(&format!(
            "{:<12} {:<22} {:<8} {}\n",
            side.name().to_uppercase(),
            server.addr,
            server.role,
            or_dash(&server.version)
        ));
    }
    if let (Some(read), Some(total)) = (s.sync.bytes_read, s.sync.bytes_total) {
        out.push_str(&format!("sync         {} of {}\n", bytes(read), bytes(total)));
    }
    if let Some(lag) = s.lag_bytes {
        out.push_str(&format!("lag          {}\n", bytes(lag.max(0) as u64)));
    }
    out.push_str(&format!("clients      {}\n", s.clients));
    out.push_str(&format!("writes held  {}\n", s.writes_held));
    out.push_str(&format!("resp3        {}\n", s.resp3.name()));
    if let Some(in_doubt) = &s.in_doubt {
        out.push_str(&format!("in doubt     {in_doubt}\n"));
    }
    if let Some(fence) = &s.fence {
        out.push_str(&format!("fence        {fence}\n"));
    }
    if let Some(window) = &s.rollback_window {
        out.push_str(&render_window(window));
    }
    if let Some(scheduled) = &s.scheduled {
        out.push_str(&format!("scheduled    {}", render_schedule(scheduled)));
    }
    let fleet = &s.fleet;
    if !fleet.peers.is_empty() {
        out.push_str(&format!(
            "fleet        this proxy {}, {}{}\n",
            fleet.proxy_id,
            fleet.part,
            fleet
                .driver
                .as_ref()
                .map(|d| format!(" (driven by {d})"))
                .unwrap_or_default()
        ));
        for peer in &fleet.peers {
            let state = if peer.reachable {
                format!(
                    "{} phase {}, {}, primary {}",
                    or_dash(&peer.proxy_id),
                    or_dash(&peer.phase),
                    or_dash(&peer.part),
                    or_dash(&peer.primary)
                )
            } else {
                "unreachable".to_string()
            };
            out.push_str(&format!("  peer       {:<22} {state}\n", peer.addr));
        }
    }
    if let Some(cluster) = &s.cluster {
        // A primary with no slots and no port holds nothing: a former primary that the node the view was read
        // from has not heard of as a replica yet, or an empty node. It is counted, not listed.
        let (shards, empty): (Vec<_>, Vec<_>) = cluster
            .shards
            .iter()
            .partition(|shard| shard.slot_count > 0 || shard.port.is_some());
        out.push_str(&format!(
            "cluster      {} shards at {}, {} slots uncovered{}\n",
            shards.len(),
            cluster.announce_host,
            cluster.uncovered_slots,
            match empty.len() {
                0 => String::new(),
                n => format!(", {n} primaries with no slots"),
            }
        ));
        for shard in shards {
            let ranges: Vec<String> = shard.slots.iter().map(|(s, e)| format!("{s}-{e}")).collect();
            out.push_str(&format!(
                "  shard      port {:<6} primary {:<22} {} slots ({}), {} replicas, {} clients\n",
                shard.port.map_or("none".to_string(), |p| p.to_string()),
                shard.primary,
                shard.slot_count,
                ranges.join(" "),
                shard.replicas.len(),
                shard.clients
            ));
            if let Some(step) = &shard.handover {
                out.push_str(&format!(
                    "             handover to {}: {}{}{}\n",
                    step.to,
                    step.state.name(),
                    step.lag_bytes
                        .map(|l| format!(", lag {}", bytes(l.max(0) as u64)))
                        .unwrap_or_default(),
                    step.pause_ms.map(|p| format!(", pause {p:.1} ms")).unwrap_or_default()
                ));
            }
            if let Some(w) = &shard.window {
                out.push_str(&match w.state {
                    WindowState::Closed => format!(
                        "             way back to {}: closed at {}: {}\n",
                        w.follower,
                        w.closed_at_unix_ms.map_or("-".into(), |ms| when(ms).to_string()),
                        or_dash(&w.reason)
                    ),
                    WindowState::Open | WindowState::InUse => format!(
                        "             way back to {}: {} until {}, lag {}, link {}\n",
                        w.follower,
                        if w.state == WindowState::Open { "open" } else { "in use" },
                        when(w.until_unix_ms),
                        w.lag_bytes.map_or("-".into(), |l| bytes(l.max(0) as u64)),
                        if w.link_up { "up" } else { "down" }
                    ),
                });
            }
        }
    }
    if let Some(last) = &s.last_handover {
        out.push_str(&format!(
            "last         {} ({} -> {})",
            last.outcome.name(),
            last.from,
            last.to
        ));
        if let Some(pause) = last.pause_ms {
            out.push_str(&format!(", pause {pause:.1} ms, {} writes held", last.writes_held));
        }
        if let Some(reason) = &last.reason {
            out.push_str(&format!(", reason: {reason}"));
        }
        out.push('\n');
    }
    out
}

/// The rollback window's line: open (until when, lag), closed (why), or off.
fn render_window(window: &RollbackWindow) -> String {
    let Some(w) = window.window() else {
        return "rollback     off (rollback_window_s = 0)\n".into();
    };
    match w.state {
        WindowState::Closed => format!(
            "rollback     closed at {}: {}{}\n",
            w.closed_at_unix_ms.map_or("-".into(), |ms| when(ms).to_string()),
            or_dash(&w.reason),
            if w.detached == Some(true) {
                " (the former primary was detached, its data kept)"
            } else {
                ""
            }
        ),
        WindowState::Open | WindowState::InUse => format!(
            "rollback     {} since {} until {}: {} {} follows, lag {}, link {}{}\n",
            if w.state == WindowState::Open { "open" } else { "in use" },
            when(w.opened_at_unix_ms),
            when(w.until_unix_ms),
            w.follower.name().to_uppercase(),
            w.follower_addr,
            w.lag_bytes.map_or("-".into(), |l| bytes(l.max(0) as u64)),
            if w.link_up { "up" } else { "down" },
            match w.commands_checked {
                0 => String::new(),
                n => format!(", {n} commands of the primary's stream checked"),
            }
        ),
    }
}

/// A time of the admin API (milliseconds since the epoch), as ctl prints it.
fn when(ms: u64) -> humantime::Rfc3339Timestamp {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms))
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} bytes"),
    }
}

/// Reads `--admin`: `host:port`, `[v6]:port`, or a bare port on loopback. A bare number must not be taken as a
/// host name (an HTTP client reads `32478` as the IPv4 address 0.0.126.222, port 80).
fn admin_address(given: &str) -> Result<String, String> {
    if let Ok(port) = given.parse::<u16>() {
        return Ok(format!("127.0.0.1:{port}"));
    }
    match given.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(given.to_string()),
        _ => Err(format!("expected HOST:PORT or PORT, not {given:?}")),
    }
}

/// A blocking HTTP client for the admin port.
struct Admin {
    base: String,
    agent: ureq::Agent,
    token: Option<String>,
}

impl Admin {
    fn new(addr: &str, token: Option<String>) -> Admin {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        Admin {
            base: format!("http://{addr}"),
            agent,
            token,
        }
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Failure> {
        let mut request = self.agent.get(&format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.header("Authorization", &format!("Bearer {token}"));
        }
        let response = request.call();
        self.answer(path, response)
    }

    fn send<T: DeserializeOwned>(&self, method: &str, path: &str, body: Value) -> Result<T, Failure> {
        let url = format!("{}{path}", self.base);
        let mut request = match method {
            "PUT" => self.agent.put(&url),
            _ => self.agent.post(&url),
        };
        if let Some(token) = &self.token {
            request = request.header("Authorization", &format!("Bearer {token}"));
        }
        let response = request.send_json(body);
        self.answer(path, response)
    }

    /// A 2xx answer read as `T`; the admin port's reason otherwise.
    fn answer<T: DeserializeOwned>(
        &self,
        path: &str,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<T, Failure> {
        let mut response = response.map_err(|e| {
            Failure(
                EXIT_UNREACHABLE,
                format!("cannot reach the admin port at {}: {e}", self.base),
            )
        })?;
        let status = response.status().as_u16();
        let value: Value = response.body_mut().read_json().unwrap_or(Value::Null);
        if status >= 400 {
            let reason = value["error"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| format!("HTTP {status}"));
            return Err(Failure(EXIT_FAILED, reason));
        }
        serde_json::from_value(value).map_err(|error| {
            Failure(
                EXIT_FAILED,
                format!("the admin port's answer to {path} did not read as expected (another version?): {error}"),
            )
        })
    }
}
