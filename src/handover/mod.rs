//! The live handover: NEW replicates from OLD, catches up, and takes over during a brief, bounded write pause.
//!
//! Phases: `preflight` (both servers reachable, NEW at least OLD's version, NEW empty, memory and settings
//! compatible), `syncing` (NEW does a full sync from OLD with native `REPLICAOF`), `catching_up` (until the
//! replication lag is under `max_lag_bytes`), `paused` (writes held in the proxy, OLD paused for writers that
//! bypass the proxy, NEW reaches OLD's last offset, NEW is promoted, the primary switches), then `switched`, or
//! `aborted` with OLD still primary and nothing lost. Every transition is one call of `Run::enter`, which logs it and records it in the timeline.
//! The Redis facts this rests on are in REDIS-FACTS.md ("Replication across versions", "Primitives").

mod cluster;
mod cluster_window;
pub mod fleet;
mod resolve;
mod run;
pub mod schedule;
pub mod status;
mod stream;
mod switch;
pub mod window;

pub use run::PreflightFound;
pub use status::Status;

use status::{PrimaryView, ServerView, Servers, SyncProgress};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::control::{ControlConn, Credentials};
use crate::primary::{Server, Side};
use crate::shared::Shared;

/// The `min-replicas-to-write` of the proxy's fence: more good replicas than any server can have (the largest
/// value Redis accepts), so the fence holds whatever replicas the fenced server has of its own. Seeing it on a
/// server is how a proxy knows that server was fenced by a handover.
pub const FENCE_REPLICAS: &str = "2147483647";

/// The min-replicas settings a fence replaced, put back when the fenced server takes writes again.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FenceWas {
    to_write: String,
    max_lag: String,
}

impl Default for FenceWas {
    /// Redis's defaults, for a server fenced before this process started.
    fn default() -> Self {
        FenceWas {
            to_write: "0".into(),
            max_lag: "10".into(),
        }
    }
}

/// The options of one handover (the JSON body of `POST /handover`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Request {
    /// The longest writes may be held: past it the handover aborts before the promotion.
    pub max_pause_ms: u64,
    /// How long the full sync and the catch-up may take together.
    pub catchup_timeout_s: u64,
    /// The replication lag under which writes are paused.
    pub max_lag_bytes: u64,
    /// Go on even though NEW holds keys (they will be replaced by OLD's data).
    pub allow_nonempty: bool,
    /// Copy `maxmemory-policy` and `notify-keyspace-events` from OLD to NEW when they differ.
    pub copy_config: bool,
    /// Fleet peers (admin addresses, as in `fleet_peers`) to leave out: ones gone for good, which would otherwise
    /// stop every handover. One that is alive after all meets OLD's fence with its writes.
    pub exclude_peers: Vec<String>,
    /// Only sync NEW and leave it following OLD, caught up: no pause, no switch (what `ctl check --shadow`
    /// starts when NEW does not follow OLD yet).
    pub sync_only: bool,
}

impl Default for Request {
    fn default() -> Self {
        Request {
            max_pause_ms: 1000,
            catchup_timeout_s: 600,
            max_lag_bytes: 1 << 20,
            allow_nonempty: false,
            copy_config: false,
            exclude_peers: Vec::new(),
            sync_only: false,
        }
    }
}

/// Where a handover is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Idle = 0,
    Preflight = 1,
    Syncing = 2,
    CatchingUp = 3,
    Paused = 4,
    /// `REPLICAOF NO ONE` was sent but not confirmed: OLD stays fenced and writes held until the servers tell.
    InDoubt = 7,
    Switched = 5,
    Aborted = 6,
    /// A sync-only run ended (`ctl check --shadow`): NEW follows OLD, caught up, and nothing was switched.
    Synced = 8,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Preflight => "preflight",
            Phase::Syncing => "syncing",
            Phase::CatchingUp => "catching_up",
            Phase::Paused => "paused",
            Phase::InDoubt => "in_doubt",
            Phase::Switched => "switched",
            Phase::Aborted => "aborted",
            Phase::Synced => "synced",
        }
    }
}

/// When a phase began and ended, in milliseconds since the handover started.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PhaseSpan {
    pub phase: Phase,
    pub started_ms: f64,
    pub ended_ms: Option<f64>,
}

/// The record of one handover, running or finished.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// `switched` or `aborted` once finished; the current phase while running.
    pub outcome: Phase,
    pub reason: Option<String>,
    pub from: String,
    pub to: String,
    pub request: Request,
    pub started_at_unix_ms: u64,
    pub timeline: Vec<PhaseSpan>,
    /// How long writes were held (gate closed to gate open).
    pub pause_ms: Option<f64>,
    /// Writes held at the gate during the pause.
    pub writes_held: u64,
    pub config_differences: Vec<String>,
    pub warnings: Vec<String>,
    /// What the other proxies of the fleet did, step by step.
    pub fleet: Vec<String>,
}

/// Why a handover stopped.
#[derive(Debug)]
struct Abort(String);

impl From<crate::control::ControlError> for Abort {
    fn from(error: crate::control::ControlError) -> Self {
        Abort(error.to_string())
    }
}

impl Report {
    /// The record of a handover starting now, from `from` to `to`.
    fn starting(from: String, to: String, request: Request) -> Report {
        Report {
            outcome: Phase::Preflight,
            reason: None,
            from,
            to,
            request,
            started_at_unix_ms: schedule::now_ms(),
            timeline: Vec::new(),
            pause_ms: None,
            writes_held: 0,
            config_differences: Vec::new(),
            warnings: Vec::new(),
            fleet: Vec::new(),
        }
    }
}

/// Live progress, read by `GET /status`.
#[derive(Debug, Default)]
struct Progress {
    phase: Option<Phase>,
    sync_bytes_read: Option<u64>,
    sync_bytes_total: Option<u64>,
    lag_bytes: Option<i64>,
    current: Option<Report>,
    last: Option<Report>,
    /// How the former primary is kept from taking writes after a switch.
    fence: Option<String>,
    /// Whether the current handover promoted NEW (then it can no longer be aborted).
    promoted: bool,
    /// While the outcome is in doubt: why, and what the operator can do.
    in_doubt: Option<String>,
    views: [ServerView; 2],
}

/// Why a handover could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("a handover is already running (phase {0})")]
    Running(&'static str),
    #[error("no NEW server is configured (--new)")]
    NoTarget,
    #[error("this proxy follows a handover that another proxy of the fleet drives ({0})")]
    Following(String),
    #[error("no rollback: {0}")]
    NoWindow(String),
    #[error("this proxy fronts a Redis Cluster: {0}")]
    Cluster(&'static str),
}

/// The handover controller: at most one handover at a time.
pub struct Handover {
    shared: Arc<Shared>,
    progress: Mutex<Progress>,
    running: AtomicBool,
    cancel: Mutex<Option<CancellationToken>>,
    /// The side the proxy fenced after a switch, and what the fence replaced: undone if it becomes the target.
    fenced: Mutex<Option<(Side, FenceWas)>>,
    /// Where the admin port listens (the fleet's peers reach this proxy there).
    admin_addr: Mutex<Option<std::net::SocketAddr>>,
    /// This proxy's part in a handover another proxy of the fleet drives.
    part: Mutex<fleet::Part>,
    /// What the peers said last.
    peer_views: Mutex<Vec<fleet::PeerView>>,
    /// The handover this proxy drives while it asks its peers to follow it.
    own_claim: Mutex<Option<fleet::OwnClaim>>,
    /// The rollback window of the last switch, and the task watching it while it is open. Lock order: `progress`
    /// before `window`.
    window: Mutex<Option<window::Window>>,
    window_watch: Mutex<Option<(CancellationToken, tokio::task::JoinHandle<()>)>>,
    /// Windows closed since start, by cause.
    windows_closed: Mutex<std::collections::BTreeMap<&'static str, u64>>,
    /// The scheduled handover (or the last one, once it started, was missed or cancelled), and what cancels it.
    /// Lock order: `schedule` before `progress`.
    schedule: Mutex<Option<(schedule::Scheduled, CancellationToken)>>,
    /// Stops the running shadow reads.
    shadow_stop: Mutex<Option<CancellationToken>>,
}

impl Handover {
    /// The controller; its looks at the servers start with [`Handover::resolve_at_start`].
    pub fn new(shared: Arc<Shared>) -> Arc<Self> {
        Arc::new(Handover {
            shared,
            progress: Mutex::new(Progress::default()),
            running: AtomicBool::new(false),
            cancel: Mutex::new(None),
            fenced: Mutex::new(None),
            admin_addr: Mutex::new(None),
            part: Mutex::new(fleet::Part::Idle),
            peer_views: Mutex::new(Vec::new()),
            own_claim: Mutex::new(None),
            window: Mutex::new(None),
            window_watch: Mutex::new(None),
            windows_closed: Mutex::new(std::collections::BTreeMap::new()),
            schedule: Mutex::new(None),
            shadow_stop: Mutex::new(None),
        })
    }

    /// Starts a handover to the server that is not the primary now; returns at once.
    pub fn start(self: &Arc<Self>, request: Request) -> Result<(), StartError> {
        if let Some(place) = &self.shared.cluster {
            if request.sync_only {
                return Err(StartError::Cluster("shadow reads are not built for a cluster yet"));
            }
            return self.start_cluster(place.front.clone(), request, false);
        }
        let (source, target) = self.servers().ok_or(StartError::NoTarget)?;
        if let Some(driver) = self.following() {
            return Err(StartError::Following(driver));
        }
        let started_at_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        {
            // Under this lock, so that a peer's claim sees a starting handover with its epoch, and can make it
            // give way when that claim is older (see `fleet::yield_own_claim`).
            let mut own = self.own_claim.lock().unwrap_or_else(|e| e.into_inner());
            if self.running.swap(true, Ordering::SeqCst) {
                let phase = self.lock().phase.unwrap_or(Phase::Idle);
                return Err(StartError::Running(phase.name()));
            }
            // A sync-only run pauses nothing and claims nothing of the fleet (see `Run::execute`).
            *own = (!self.shared.config.fleet_peers.is_empty() && !request.sync_only).then(|| fleet::OwnClaim {
                epoch: format!("{}@{started_at_unix_ms}", self.proxy_id()),
                yielded: false,
            });
        }
        let cancel = CancellationToken::new();
        *self.cancel.lock().unwrap_or_else(|e| e.into_inner()) = Some(cancel.clone());
        // A sync-only run leaves the rollback window as it is.
        let uses_window = !request.sync_only && self.use_window();
        let mut report = Report::starting(
            format!("{} {}", source.side.name(), source.addr),
            format!("{} {}", target.side.name(), target.addr),
            request.clone(),
        );
        report.started_at_unix_ms = started_at_unix_ms;
        {
            let mut progress = self.lock();
            progress.current = Some(report);
            progress.promoted = false;
            progress.in_doubt = None;
            progress.sync_bytes_read = None;
            progress.sync_bytes_total = None;
            progress.lag_bytes = None;
        }
        let this = self.clone();
        tokio::spawn(async move {
            run::Run::new(this.clone(), source, target, request, cancel, uses_window)
                .execute()
                .await;
            this.running.store(false, Ordering::SeqCst);
        });
        Ok(())
    }

    /// The readiness report: the pre-flight's checks of a handover now (changing nothing), the census of
    /// clients and commands, and the verdict.
    pub async fn readiness(self: &Arc<Self>) -> crate::readiness::Report {
        let primary = self.shared.primary.current().server.clone();
        let from = format!("{} {}", primary.side.name(), primary.addr);
        let (to, preflight) = match self.servers() {
            None => (None, None),
            Some((source, target)) => {
                let to = format!("{} {}", target.side.name(), target.addr);
                let run = run::Run::new(
                    self.clone(),
                    source,
                    target,
                    Request::default(),
                    CancellationToken::new(),
                    false,
                );
                (Some(to), Some(run.check(true).await))
            }
        };
        let inputs = crate::readiness::Inputs {
            from,
            to,
            preflight,
            resp3_mode: self.shared.resp3_mode(),
            shadow: self.shared.shadow.report(),
        };
        crate::readiness::Report::build(inputs, &self.shared.directory, &self.shared.telemetry.census)
    }

    /// `POST /shadow`: shadow reads of `fraction` of the reads for `duration` (see [`crate::readiness::shadow`]).
    /// The other server is synced first, as a handover's first phases do (a sync-only run; nothing is switched),
    /// and the duration counts from then. Refused while a handover or shadow reads run.
    pub fn start_shadow(
        self: &Arc<Self>,
        fraction: f64,
        duration: Duration,
    ) -> Result<crate::readiness::shadow::ShadowReport, String> {
        use crate::readiness::shadow::{self, ShadowReport, ShadowState};
        if !(fraction > 0.0 && fraction <= 1.0) {
            return Err(format!(
                "the shadow fraction must be above 0 and at most 1, not {fraction}"
            ));
        }
        if duration.is_zero() || duration > Duration::from_secs(86_400) {
            return Err("shadow reads last from 1 s to 24 h".into());
        }
        if self.shared.cluster.is_some() {
            return Err(StartError::Cluster("shadow reads are not built for a cluster yet").to_string());
        }
        let (source, target) = self.servers().ok_or_else(|| StartError::NoTarget.to_string())?;
        let describe = |s: &Server| format!("{} {}", s.side.name(), s.addr);
        let report = ShadowReport::new(fraction, describe(&source), describe(&target), duration);
        let tap = &self.shared.shadow;
        // Under this lock, so that a stop finds this run's token, never the last run's.
        let mut stop_slot = self.shadow_stop.lock().unwrap_or_else(|e| e.into_inner());
        if !tap.begin(report.clone()) {
            return Err("shadow reads are running already".into());
        }
        let stop = CancellationToken::new();
        *stop_slot = Some(stop.clone());
        let sync = Request {
            sync_only: true,
            ..Request::default()
        };
        if let Err(error) = self.start(sync) {
            tap.update(|r| {
                r.state = ShadowState::Stopped;
                r.stopped_because = Some(format!("could not sync the follower first: {error}"));
            });
            return Err(error.to_string());
        }
        drop(stop_slot);
        // The sync-only run, known by its start time among the handovers that may follow it.
        let sync_started = self.lock().current.as_ref().map(|r| r.started_at_unix_ms);
        let this = self.clone();
        tokio::spawn(async move {
            let tap = &this.shared.shadow;
            let ours = |r: &Option<Report>| r.as_ref().map(|r| r.started_at_unix_ms) == sync_started;
            // The sync-only run ends as `synced`, or aborted with its reason.
            let last = loop {
                let ended = {
                    let progress = this.lock();
                    (!ours(&progress.current)).then(|| progress.last.clone().filter(|r| ours(&Some(r.clone()))))
                };
                if let Some(last) = ended {
                    break last;
                }
                if stop.is_cancelled() {
                    // Only the sync this run started is aborted, never a handover that came after it.
                    if ours(&this.lock().current) {
                        this.abort(false).ok();
                    }
                    break None;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            let synced = last.as_ref().is_some_and(|r| r.outcome == Phase::Synced);
            if !synced || stop.is_cancelled() {
                let why = match last.and_then(|r| r.reason) {
                    Some(reason) if !synced => format!("the follower could not be synced: {reason}"),
                    _ => "stopped by the operator".to_string(),
                };
                tap.update(|r| {
                    r.state = ShadowState::Stopped;
                    r.stopped_because = Some(why);
                });
                return;
            }
            let now = schedule::now_ms();
            tap.update(|r| {
                r.started_at_unix_ms = now;
                r.until_unix_ms = now + duration.as_millis() as u64;
            });
            let servers = shadow::Servers {
                primary_credentials: this.credentials(source.side),
                follower_credentials: this.credentials(target.side),
                primary: source,
                follower: target,
                tls: this.shared.backend_tls.clone(),
            };
            let shared = this.shared.clone();
            let until = std::time::Instant::now() + duration;
            shadow::run(tap, servers, fraction, until, stop, || shared.primary.generation()).await;
        });
        Ok(report)
    }

    /// `POST /shadow/stop`: ends the shadow reads (what was sampled is still compared).
    pub fn stop_shadow(&self) -> Result<(), String> {
        let running = self.shared.shadow.report().is_some_and(|r| {
            matches!(
                r.state,
                crate::readiness::shadow::ShadowState::Syncing | crate::readiness::shadow::ShadowState::Running
            )
        });
        match self.shadow_stop.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            Some(stop) if running => {
                stop.cancel();
                Ok(())
            }
            _ => Err("no shadow reads are running".into()),
        }
    }

    /// `POST /rollback`: a handover back to the former primary over the open rollback window; refused when the
    /// window is not open.
    pub fn rollback(self: &Arc<Self>, request: Request) -> Result<(), StartError> {
        if let Some(place) = &self.shared.cluster {
            if self.is_running() {
                let phase = self.lock().phase.unwrap_or(Phase::Idle);
                return Err(StartError::Running(phase.name()));
            }
            self.take_cluster_windows(&place.front).map_err(StartError::NoWindow)?;
            return self.start_cluster(place.front.clone(), request, true);
        }
        let (_, target) = self.servers().ok_or(StartError::NoTarget)?;
        if self.is_running() {
            let phase = self.lock().phase.unwrap_or(Phase::Idle);
            return Err(StartError::Running(phase.name()));
        }
        self.window_for(target.side).map_err(StartError::NoWindow)?;
        self.start(request)
    }

    /// Asks a running handover to stop; refused once NEW was promoted, and, unless `force`d, while its outcome
    /// is in doubt (NEW may be a master already: OLD taking writes again would split them).
    pub fn abort(&self, force: bool) -> Result<(), String> {
        let progress = self.lock();
        if !self.running.load(Ordering::SeqCst) {
            return Err("no handover is running".into());
        }
        if progress.promoted {
            return Err("NEW was already promoted: the switch cannot be aborted any more".into());
        }
        if progress.in_doubt.is_some() && !force {
            return Err(
                "the handover is in doubt: NEW may have been promoted already; abort with force to make \
                        OLD the primary again anyway (writes NEW may have taken from others would be lost; none \
                        went to it through this proxy)"
                    .into(),
            );
        }
        if let Some(cancel) = &*self.cancel.lock().unwrap_or_else(|e| e.into_inner()) {
            cancel.cancel();
        }
        Ok(())
    }

    /// On shutdown: asks a running handover to abort (refused once NEW was promoted, when it finishes instead)
    /// and waits, up to `grace`, until it has undone its pause and fence, so OLD is not left fenced.
    pub async fn settle(&self, grace: Duration) {
        if !self.is_running() {
            return;
        }
        let _ = self.abort(false);
        let deadline = tokio::time::Instant::now() + grace;
        while self.is_running() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if self.is_running() {
            tracing::warn!("shutting down with a handover still running: check OLD's pause and fence");
        }
    }

    /// The state shared with the sessions.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Whether a handover is running now.
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    /// Everything `GET /status` shows.
    pub fn status(&self) -> Status {
        // Before `progress`: a scheduled handover starts under the schedule's lock.
        let scheduled = self.scheduled();
        let progress = self.lock();
        let primary = self.shared.primary.current();
        let view = |side: Side| {
            let mut view = progress.views[side_index(side)].clone();
            view.addr = self.addr_of(side).unwrap_or_default();
            if view.reachable || view.role.is_empty() {
                if side == primary.server.side {
                    view.role = "primary".into();
                } else if view.role != "replica" {
                    view.role = "standby".into();
                }
            }
            view
        };
        let servers = Servers {
            old: view(Side::Old),
            new: view(Side::New),
        };
        Status {
            phase: progress.phase.unwrap_or(Phase::Idle),
            primary: PrimaryView {
                side: primary.server.side,
                addr: primary.server.addr.to_string(),
                version: servers.side(primary.server.side).version.clone(),
                generation: primary.generation,
            },
            servers,
            sync: SyncProgress {
                bytes_read: progress.sync_bytes_read,
                bytes_total: progress.sync_bytes_total,
            },
            lag_bytes: progress.lag_bytes,
            clients: self.shared.clients.load(Ordering::Relaxed),
            tasks: tokio::runtime::Handle::current().metrics().num_alive_tasks(),
            writes_held: self.shared.gate.held_now(),
            fence: progress.fence.clone(),
            rollback_window: self.window_status(),
            in_doubt: progress.in_doubt.clone(),
            fleet: self.fleet_status(),
            scripts_known: self.shared.scripts.len(),
            resp3: self.shared.resp3_mode(),
            handover: progress.current.clone(),
            last_handover: progress.last.clone(),
            scheduled,
            cluster: self
                .shared
                .cluster
                .as_ref()
                .map(|place| status::ClusterView::of(&place.front)),
        }
    }

    /// A running handover (started at `started`) moves to `phase`: closes the previous span of its timeline, opens
    /// the next, and logs it.
    fn enter(&self, started: std::time::Instant, phase: Phase) {
        let at = started.elapsed().as_secs_f64() * 1000.0;
        let mut progress = self.lock();
        progress.phase = Some(phase);
        if let Some(report) = progress.current.as_mut() {
            if let Some(last) = report.timeline.last_mut() {
                last.ended_ms.get_or_insert(at);
            }
            report.outcome = phase;
            let finished = matches!(phase, Phase::Switched | Phase::Aborted | Phase::Synced);
            report.timeline.push(PhaseSpan {
                phase,
                started_ms: at,
                ended_ms: finished.then_some(at),
            });
        }
        tracing::info!(phase = phase.name(), at_ms = at, "handover phase");
        self.shared.telemetry.handover_phase.set(phase as u8 as f64);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn addr_of(&self, side: Side) -> Option<String> {
        match side {
            Side::Old => Some(self.shared.config.old.clone()),
            Side::New => self.shared.config.new.clone(),
        }
    }

    /// The primary now and the other server, the handover's target.
    fn servers(&self) -> Option<(Server, Server)> {
        let source = self.shared.primary.current().server.clone();
        let target_side = match source.side {
            Side::Old => Side::New,
            Side::New => Side::Old,
        };
        let target = Server {
            side: target_side,
            addr: self.addr_of(target_side)?.into(),
        };
        Some((source, target))
    }

    fn credentials(&self, side: Side) -> Credentials {
        let config = &self.shared.config;
        match side {
            Side::Old => Credentials {
                user: config.old_user.clone(),
                password: config.old_password.clone(),
            },
            Side::New => Credentials {
                user: config.new_user.clone(),
                password: config.new_password.clone(),
            },
        }
    }

    /// The address `to` uses to reach `from` for replication.
    fn replication_addr(&self, from: &Server) -> String {
        let config = &self.shared.config;
        let configured = match from.side {
            Side::Old => config.old_replication_addr.clone(),
            Side::New => config.new_replication_addr.clone(),
        };
        configured.unwrap_or_else(|| from.addr.to_string())
    }
}

fn side_index(side: Side) -> usize {
    match side {
        Side::Old => 0,
        Side::New => 1,
    }
}

/// Looks at both servers every two seconds, for the versions and roles `GET /status` shows, and whether the
/// primary was fenced by a handover this proxy did not take part in; at once (at most every 50 ms) when a session
/// saw the primary refuse a write.
async fn probe(handover: std::sync::Weak<Handover>) {
    let timeout = Duration::from_millis(500);
    let period = Duration::from_secs(2);
    let mut next_views = tokio::time::Instant::now();
    let spacing = Duration::from_millis(50);
    let mut last_look = tokio::time::Instant::now() - spacing;
    loop {
        let Some(this) = handover.upgrade() else { return };
        if this.shared.shutdown.is_cancelled() {
            return;
        }
        tokio::time::sleep_until(last_look + spacing).await;
        last_look = tokio::time::Instant::now();
        this.follow_a_fenced_primary().await;
        if tokio::time::Instant::now() < next_views {
            let shared = this.shared.clone();
            drop(this);
            // Sessions holding replies back wait for a look: look again soon while there are any.
            let soon = tokio::time::Instant::now() + spacing;
            let wake = if shared.parked_sessions.load(Ordering::SeqCst) > 0 {
                soon.min(next_views)
            } else {
                next_views
            };
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                _ = shared.resolve_now.notified() => {}
            }
            continue;
        }
        next_views = tokio::time::Instant::now() + period;
        for side in [Side::Old, Side::New] {
            let Some(addr) = this.addr_of(side) else { continue };
            let server = Server {
                side,
                addr: addr.as_str().into(),
            };
            let seen = async {
                let tls = this.shared.backend_tls.as_ref();
                let mut conn = ControlConn::connect(&server, &this.credentials(side), timeout, tls).await?;
                let info = conn.info("server", timeout).await?;
                let replication = conn.info("replication", timeout).await?;
                Ok::<_, crate::control::ControlError>((info, replication))
            }
            .await;
            let mut progress = this.lock();
            let view = &mut progress.views[side_index(side)];
            match seen {
                Ok((info, replication)) => {
                    view.reachable = true;
                    view.version = info.get("redis_version").cloned();
                    view.role = if replication.get("role").map(String::as_str) == Some("slave") {
                        "replica".into()
                    } else {
                        String::new()
                    };
                }
                Err(_) => {
                    view.reachable = false;
                    view.role = "unknown".into();
                }
            }
        }
        this.shared.telemetry.upkeep();
        if !this.shared.config.fleet_peers.is_empty() {
            this.look_at_peers().await;
        }
    }
}
