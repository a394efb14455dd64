//! One handover, step by step. Before the promotion every failure undoes what was done, so OLD stays primary
//! with nothing lost; after it, failures become warnings in the report.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::fleet::{CLAIM_LEASE, CLAIM_RENEWAL, LEASE_MARGIN, Message, PEER_TIMEOUT};
use super::resolve::{self, Outcome};
use super::switch;
use super::{Abort, FENCE_REPLICAS, FenceWas, Handover, Phase, Request, side_index, stream, window};
use crate::config::same_host;
use crate::control::{ControlConn, ControlError, parse_info, parse_version};
use crate::primary::Server;
use crate::protocol::value::Value;

/// The bound on one control call outside the pause.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How often progress is polled during the sync and the catch-up.
const SYNC_POLL: Duration = Duration::from_millis(100);
const CATCH_UP_POLL: Duration = Duration::from_millis(20);
/// How often the pause looks again at in-flight writes and NEW's offset.
const PAUSE_POLL: Duration = Duration::from_millis(1);
/// How often, and how patiently, the servers are asked again while the outcome is in doubt.
const RESOLVE_POLL: Duration = Duration::from_millis(250);
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long each CLIENT PAUSE on a Redis 5.0 OLD lasts; it is renewed while the handover waits.
const PAUSE_SLICE_5_0: Duration = Duration::from_millis(50);
/// The least a 5.0 pause slice must have left for the promotion to start within it.
const SLICE_MARGIN: Duration = Duration::from_millis(10);
/// The bytes a Redis 5.0 OLD adds to its stream after the INFO of the pause transaction: the transaction's
/// `EXEC` (`*1\r\n$4\r\nEXEC\r\n`). 5.0 propagates an empty MULTI/EXEC around INFO, a command neither
/// read-only nor admin there, so NEW's offset must pass OLD's INFO offset by these 14 bytes (rollback-window.md §2).
const EXEC_BYTES_5_0: i64 = 14;
/// The span of writes the target's backlog should hold for the rollback window: OLD cut off for this long (or
/// restarting) still resynchronizes partially.
const BACKLOG_SPAN: Duration = Duration::from_secs(10);

/// What was changed on OLD during the pause, to be undone on an abort.
#[derive(Debug, Default)]
struct PauseState {
    gate_closed: bool,
    source_paused: bool,
    /// The settings OLD had before the proxy fenced it.
    fence_was: Option<FenceWas>,
    /// When OLD's CLIENT PAUSE ends by itself (Redis 5.0 cannot be unpaused).
    pause_expires: Option<Instant>,
    /// Whether `REPLICAOF NO ONE` was sent to NEW (its outcome may be unknown if the link failed).
    promotion_sent: bool,
    /// When the gate closed, and when the pause budget runs out.
    paused_at: Option<Instant>,
    deadline: Option<Instant>,
    /// The generation of the primary before the switch, and the server ids of its blocked connections.
    old_generation: u64,
    known_ids: HashMap<std::net::SocketAddr, i64>,
    /// OLD's replication ID, read when it was fenced: the promoted NEW keeps it as its second ID.
    source_replid: Option<String>,
}

pub(super) struct Run {
    handover: Arc<Handover>,
    source: Server,
    target: Server,
    request: Request,
    cancel: CancellationToken,
    started: Instant,
    source_conn: Option<ControlConn>,
    target_conn: Option<ControlConn>,
    source_version: (u32, u32, u32),
    target_version: (u32, u32, u32),
    pause: PauseState,
    fleet: FleetRun,
    /// Whether this handover goes back over the rollback window (its target follows its source).
    uses_window: bool,
    /// OLD's offset when the pre-flight began, for the write rate; the target's backlog size.
    rate_from: Option<(Instant, i64)>,
    target_backlog: Option<u64>,
    /// Only look (the readiness report's pre-flight): nothing is changed on the servers, and what the checks
    /// find goes to `found` rather than to the handover's report.
    check_only: bool,
    found: PreflightFound,
}

/// What a pre-flight found besides a refusal: its warnings and the settings that differ.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct PreflightFound {
    pub source_version: String,
    pub target_version: String,
    pub warnings: Vec<String>,
    pub config_differences: Vec<String>,
    /// The target's `repl-backlog-size`, as the handover would leave it (raised to `rollback_backlog_bytes`).
    pub target_backlog_bytes: Option<u64>,
    /// The source's replication stream over the checks (at least a second), bytes/s.
    pub write_rate_bytes_per_s: Option<f64>,
}

/// The least time over which a check measures the source's write rate.
const RATE_SPAN: Duration = Duration::from_secs(1);

/// The driver's side of a fleet handover: the other proxies, told each step.
#[derive(Default)]
struct FleetRun {
    peers: Vec<SocketAddr>,
    /// This handover's name among the proxies: the driver's id and its start time.
    epoch: String,
    /// Renews the claim on the peers until the handover ends.
    renewal: Option<tokio::task::JoinHandle<()>>,
    /// The peers that hold their writes, and since when.
    held: Vec<SocketAddr>,
    held_at: Option<Instant>,
    lease: Duration,
    /// The servers' `run_id`s, by which the peers recognise them.
    ids: (Option<String>, Option<String>),
}

impl Run {
    pub(super) fn new(
        handover: Arc<Handover>,
        source: Server,
        target: Server,
        request: Request,
        cancel: CancellationToken,
        uses_window: bool,
    ) -> Run {
        Run {
            handover,
            source,
            target,
            request,
            cancel,
            started: Instant::now(),
            source_conn: None,
            target_conn: None,
            source_version: (0, 0, 0),
            target_version: (0, 0, 0),
            pause: PauseState::default(),
            fleet: FleetRun::default(),
            uses_window,
            rate_from: None,
            target_backlog: None,
            check_only: false,
            found: PreflightFound::default(),
        }
    }

    /// Runs the pre-flight's checks only, changing nothing: what they found, or why the handover would be
    /// refused. With `measure_rate`, the source's write rate too, over at least [`RATE_SPAN`].
    pub(super) async fn check(mut self, measure_rate: bool) -> Result<PreflightFound, String> {
        self.check_only = true;
        self.preflight().await.map_err(|Abort(reason)| reason)?;
        self.found.target_backlog_bytes = self.target_backlog;
        if let Some((since, from)) = self.rate_from.filter(|_| measure_rate) {
            tokio::time::sleep_until((since + RATE_SPAN).into()).await;
            let replication = self.source().info("replication", CALL_TIMEOUT).await;
            if let Ok(replication) = replication
                && let Ok(to) = offset(&replication, "master_repl_offset")
            {
                self.found.write_rate_bytes_per_s = Some((to - from).max(0) as f64 / since.elapsed().as_secs_f64());
            }
        }
        Ok(self.found)
    }

    /// Runs the handover to its end and records the outcome.
    pub(super) async fn execute(mut self) {
        tracing::info!(from = %self.source.addr, to = %self.target.addr, request = ?self.request, "handover started");
        let outcome = async {
            self.enter(Phase::Preflight);
            // A sync-only run pauses nothing, so the other proxies of a fleet have no part in it.
            if !self.request.sync_only {
                self.claim_fleet().await?;
            }
            self.preflight().await?;
            self.enter(Phase::Syncing);
            self.sync().await?;
            self.enter(Phase::CatchingUp);
            self.catch_up().await?;
            if self.request.sync_only {
                return Ok(());
            }
            self.enter(Phase::Paused);
            let paused_at = Instant::now();
            let budget = Duration::from_millis(self.request.max_pause_ms);
            self.pause_and_switch().await.map_err(|Abort(reason)| {
                // A call given what was left of the budget times out when the budget runs out: the budget is the
                // cause, whichever call noticed it.
                if paused_at.elapsed() >= budget && reason.contains(" did not answer ") {
                    Abort(format!(
                        "the write pause reached max_pause_ms = {} before the switch ({reason})",
                        self.request.max_pause_ms
                    ))
                } else {
                    Abort(reason)
                }
            })
        }
        .await;
        // Once REPLICAOF NO ONE was sent, NEW may be a master whatever the failure: OLD is unfenced only when NEW
        // answers that it is still a replica.
        let outcome = match outcome {
            Err(Abort(reason)) if self.pause.promotion_sent && !self.handover.lock().promoted => {
                self.in_doubt(reason).await
            }
            outcome => outcome,
        };
        match outcome {
            Ok(()) if self.request.sync_only => self.enter(Phase::Synced),
            Ok(()) => {
                self.enter(Phase::Switched);
                let pause = self.handover.lock().current.as_ref().and_then(|r| r.pause_ms);
                let pause = pause.map(|ms| Duration::from_secs_f64(ms / 1000.0));
                self.handover.shared.telemetry.handover_finished(true, pause);
            }
            Err(Abort(reason)) => {
                tracing::warn!(%reason, "handover aborted; OLD stays primary");
                self.undo().await;
                if self.uses_window {
                    self.handover.resume_window();
                }
                self.finish_with_reason(reason);
                self.enter(Phase::Aborted);
                self.handover.shared.telemetry.handover_finished(false, None);
            }
        }
        if let Some(renewal) = self.fleet.renewal.take() {
            renewal.abort();
        }
        self.handover.own_claim.lock().unwrap_or_else(|e| e.into_inner()).take();
        let mut progress = self.handover.lock();
        progress.last = progress.current.take();
    }

    /// A step of the fleet protocol, for this handover.
    fn fleet_message(&self, lease: Duration) -> Message {
        Message {
            epoch: self.fleet.epoch.clone(),
            driver: self.handover.proxy_id(),
            from: self.source.addr.to_string(),
            to: self.target.addr.to_string(),
            from_id: self.fleet.ids.0.clone(),
            to_id: self.fleet.ids.1.clone(),
            lease_ms: lease.as_millis() as u64,
        }
    }

    fn fleet_note(&self, line: String) {
        tracing::info!(%line, "fleet");
        if let Some(report) = self.handover.lock().current.as_mut() {
            report.fleet.push(line);
        }
    }

    /// Before any server is touched: every other proxy of the fleet agrees to follow this handover and to start
    /// or follow no other. One that refuses or does not answer stops it here. The claim is renewed until the end.
    async fn claim_fleet(&mut self) -> Result<(), Abort> {
        let mut excluded = Vec::new();
        for entry in &self.request.exclude_peers {
            match tokio::net::lookup_host(entry.as_str()).await {
                Ok(addrs) => excluded.extend(addrs),
                Err(error) => return Err(Abort(format!("exclude_peers: {entry:?} does not resolve: {error}"))),
            }
        }
        self.fleet.peers = self.handover.peers().await;
        self.fleet.peers.retain(|peer| !excluded.contains(peer));
        if !excluded.is_empty() {
            self.fleet_note(format!(
                "left out at the operator's request: {} (a proxy there that is alive after all meets OLD's fence)",
                self.request.exclude_peers.join(", ")
            ));
        }
        let epoch = self
            .handover
            .own_claim
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|claim| claim.epoch.clone());
        let Some(epoch) = epoch.filter(|_| !self.fleet.peers.is_empty()) else {
            self.handover.own_claim.lock().unwrap_or_else(|e| e.into_inner()).take();
            return Ok(());
        };
        self.fleet.epoch = epoch;
        self.fleet.ids = self.handover.run_ids(&self.source, &self.target).await;
        let message = self.fleet_message(CLAIM_LEASE);
        let (claimed, refusals) = self
            .handover
            .tell_peers(&self.fleet.peers, "/fleet/claim", &message, PEER_TIMEOUT)
            .await;
        // Until this handover ends, an older one's claim still makes it give way: it touches no server now.
        let mut own = self.handover.own_claim.lock().unwrap_or_else(|e| e.into_inner());
        if own.as_ref().is_some_and(|claim| claim.yielded) {
            return Err(Abort(
                "another proxy of the fleet started a handover first; this one gave way before touching a server"
                    .into(),
            ));
        }
        if !refusals.is_empty() {
            return Err(Abort(format!(
                "the fleet did not agree to the handover: {}",
                refusals.iter().map(|r| r.0.as_str()).collect::<Vec<_>>().join("; ")
            )));
        }
        // Every peer follows this one: from here on it goes first.
        own.take();
        drop(own);
        self.fleet_note(format!(
            "{} peers follow this handover ({})",
            claimed.len(),
            self.fleet.epoch
        ));
        let (handover, peers) = (self.handover.clone(), self.fleet.peers.clone());
        self.fleet.renewal = Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(CLAIM_RENEWAL).await;
                let (_, refusals) = handover
                    .tell_peers(&peers, "/fleet/claim", &message, PEER_TIMEOUT)
                    .await;
                for refusal in refusals {
                    tracing::warn!(refusal = %refusal.0, "fleet: a peer did not renew its claim");
                }
            }
        }));
        Ok(())
    }

    /// With the gate closed: every peer holds its writes and drains the ones in flight, before OLD is fenced.
    async fn hold_fleet(&mut self, budget: Duration) -> Result<(), Abort> {
        if self.fleet.peers.is_empty() {
            return Ok(());
        }
        self.fleet.lease = budget + LEASE_MARGIN;
        let message = self.fleet_message(self.fleet.lease);
        let asked = Instant::now();
        self.fleet.held_at = Some(asked);
        let (held, refusals) = self
            .handover
            .tell_peers(&self.fleet.peers, "/fleet/hold", &message, budget)
            .await;
        self.fleet.held = held;
        if !refusals.is_empty() {
            return Err(Abort(format!(
                "not every proxy of the fleet held its writes: {}",
                refusals.iter().map(|r| r.0.as_str()).collect::<Vec<_>>().join("; ")
            )));
        }
        self.fleet_note(format!(
            "{} peers held their writes and drained them in {:.1} ms",
            self.fleet.held.len(),
            asked.elapsed().as_secs_f64() * 1000.0
        ));
        Ok(())
    }

    /// After this proxy switched: every peer that holds switches too; the ones that do not confirm are waited for
    /// until their lease ends (by then they find the outcome on the servers themselves); then every peer releases
    /// its writes. So no proxy writes to NEW while another still reads from OLD.
    async fn switch_fleet(&mut self) {
        if self.fleet.held.is_empty() {
            return;
        }
        let message = self.fleet_message(self.fleet.lease);
        let lease_ends = self.fleet.held_at.unwrap_or_else(Instant::now) + self.fleet.lease;
        let wait = remaining(lease_ends).max(Duration::from_millis(200));
        let asked = Instant::now();
        let held = self.fleet.held.clone();
        let (switched, refusals) = self.handover.tell_peers(&held, "/fleet/switch", &message, wait).await;
        self.fleet_note(format!(
            "{} peers moved their sessions to {} in {:.1} ms",
            switched.len(),
            self.target_name(),
            asked.elapsed().as_secs_f64() * 1000.0
        ));
        if !refusals.is_empty() {
            for refusal in &refusals {
                self.warn(format!(
                    "a peer did not confirm the switch ({}); writes were held until its lease ended, when it finds \
                     the outcome on the servers",
                    refusal.0
                ));
            }
            tokio::time::sleep(remaining(lease_ends)).await;
        }
        let (_, refusals) = self
            .handover
            .tell_peers(&self.fleet.peers, "/fleet/release", &message, PEER_TIMEOUT)
            .await;
        for refusal in refusals {
            self.warn(format!("a peer did not confirm the release: {}", refusal.0));
        }
    }

    /// After an abort: every peer lets its held writes go to OLD (unfenced by then) and leaves the claim.
    async fn abort_fleet(&mut self) {
        if self.fleet.peers.is_empty() || self.fleet.epoch.is_empty() {
            return;
        }
        let message = self.fleet_message(Duration::ZERO);
        let (_, refusals) = self
            .handover
            .tell_peers(&self.fleet.peers, "/fleet/abort", &message, PEER_TIMEOUT)
            .await;
        for refusal in refusals {
            self.warn(format!("a peer did not confirm the abort: {}", refusal.0));
        }
    }

    /// After a failure between `REPLICAOF NO ONE` and its confirmation: NEW may or may not be a master. OLD stays
    /// fenced and writes stay held (refused once the pause budget is spent) while the servers are asked again,
    /// until they tell: NEW promoted (the switch goes on), or still a replica (an abort, OLD unfenced). An
    /// operator's forced abort ends it too.
    async fn in_doubt(&mut self, cause: String) -> Result<(), Abort> {
        let since = Instant::now();
        self.enter(Phase::InDoubt);
        let why = format!("{} did not confirm its promotion ({cause})", self.target_name());
        tracing::warn!(%why, "the handover's outcome is in doubt");
        let source_name = self.source_name();
        let advice = |detail: &str| {
            format!(
                "{why}{detail}. {source_name} stays fenced, writes are held (refused once max_pause_ms has passed) \
                 until the servers tell; if NEW is lost for good, `ctl abort --force` makes OLD the primary again"
            )
        };
        // Set before anything else: from here on a plain abort is refused.
        self.handover.lock().in_doubt = Some(advice(""));
        let mut detail = String::new();
        loop {
            if self.cancel.is_cancelled() {
                return Err(Abort(format!(
                    "{why}; aborted by the operator while in doubt: {} is the primary again; {} may have been \
                     promoted and is left as it is (check it with ROLE; no write reached it through this proxy)",
                    self.source_name(),
                    self.target_name()
                )));
            }
            let gate = &self.handover.shared.gate;
            if gate.refusal().is_none() && self.pause.deadline.is_some_and(|d| Instant::now() >= d) {
                gate.refuse(bytes::Bytes::from(format!(
                    "-TRYAGAIN the proxy's handover is in doubt: {} cannot tell yet whether it was promoted; writes \
                     are refused until it does\r\n",
                    self.target.addr
                )));
            }
            match self.look_again().await {
                Outcome::Promoted => {
                    self.warn(format!(
                        "{why}; it answered {} ms later as a master promoted from {}: the switch went on",
                        since.elapsed().as_millis(),
                        self.source_name()
                    ));
                    self.handover.lock().in_doubt = None;
                    return self.commit().await;
                }
                Outcome::Stopped => {
                    return Err(Abort(format!(
                        "{why}; it answered {} ms later that it is still a replica, so it was not promoted",
                        since.elapsed().as_millis()
                    )));
                }
                Outcome::Former => {
                    return Err(Abort(format!(
                        "{why}; {} was found unfenced (someone lifted the fence), so it stays primary",
                        self.source_name()
                    )));
                }
                Outcome::InDoubt(now) if now != detail => {
                    self.handover.lock().in_doubt = Some(advice(&format!("; {now}")));
                    detail = now;
                }
                Outcome::InDoubt(_) => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(RESOLVE_POLL) => {}
                _ = self.cancel.cancelled() => {}
            }
        }
    }

    /// Asks both servers again, each on a new connection. The handover's own connection to NEW is closed by NEW
    /// first (`CLIENT KILL ID`): a `REPLICAOF NO ONE` still on its way there can then never run after the answer.
    async fn look_again(&mut self) -> Outcome {
        let tls = self.handover.shared.backend_tls.clone();
        let look = |server: Server, kill: Option<i64>| {
            let credentials = self.handover.credentials(server.side);
            let tls = tls.clone();
            async move {
                let mut conn = ControlConn::connect(&server, &credentials, RESOLVE_TIMEOUT, tls.as_ref()).await?;
                if let Some(id) = kill {
                    conn.call(&["CLIENT", "KILL", "ID", &id.to_string()], RESOLVE_TIMEOUT)
                        .await?;
                }
                resolve::look(&mut conn, RESOLVE_TIMEOUT).await
            }
        };
        let kill = self.target_conn.as_ref().and_then(ControlConn::id);
        let (former, candidate) = tokio::join!(look(self.source.clone(), None), look(self.target.clone(), kill));
        if candidate.is_ok()
            && let Some(conn) = self.target_conn.as_mut()
        {
            conn.abandon();
        }
        resolve::decide(
            former.ok().as_ref(),
            candidate.ok().as_ref(),
            self.pause.source_replid.as_deref(),
        )
    }

    /// Moves to `phase` (see [`Handover::enter`]).
    fn enter(&self, phase: Phase) {
        self.handover.enter(self.started, phase);
    }

    fn finish_with_reason(&self, reason: String) {
        if let Some(report) = self.handover.lock().current.as_mut() {
            report.reason = Some(reason);
        }
    }

    fn warn(&mut self, warning: String) {
        if self.check_only {
            self.found.warnings.push(warning);
            return;
        }
        tracing::warn!(%warning, "handover");
        if let Some(report) = self.handover.lock().current.as_mut() {
            report.warnings.push(warning);
        }
    }

    /// Records a setting that differs between the servers (or that the handover changes).
    fn config_difference(&mut self, line: String) {
        if self.check_only {
            self.found.config_differences.push(line);
        } else if let Some(report) = self.handover.lock().current.as_mut() {
            report.config_differences.push(line);
        }
    }

    fn cancelled(&self) -> Result<(), Abort> {
        if self.cancel.is_cancelled() {
            Err(Abort("aborted by the operator".into()))
        } else {
            Ok(())
        }
    }

    fn source(&mut self) -> &mut ControlConn {
        self.source_conn.as_mut().expect("connected in pre-flight")
    }

    fn target(&mut self) -> &mut ControlConn {
        self.target_conn.as_mut().expect("connected in pre-flight")
    }

    fn target_name(&self) -> String {
        format!("{} ({})", self.target.side.name().to_uppercase(), self.target.addr)
    }

    fn source_name(&self) -> String {
        format!("{} ({})", self.source.side.name().to_uppercase(), self.source.addr)
    }

    /// Pre-flight: both reachable with the configured credentials, NEW's version at least OLD's, NEW empty,
    /// NEW's maxmemory large enough, settings compared (and copied on request), users and passwords copied.
    async fn preflight(&mut self) -> Result<(), Abort> {
        let source_credentials = self.handover.credentials(self.source.side);
        let target_credentials = self.handover.credentials(self.target.side);
        let tls = self.handover.shared.backend_tls.clone();
        let mut source = ControlConn::connect(&self.source, &source_credentials, CALL_TIMEOUT, tls.as_ref()).await?;
        let mut target = ControlConn::connect(&self.target, &target_credentials, CALL_TIMEOUT, tls.as_ref()).await?;
        source.identify(CALL_TIMEOUT).await?;
        target.identify(CALL_TIMEOUT).await?;
        self.source_conn = Some(source);
        self.target_conn = Some(target);

        let source_info = self.source().info("server", CALL_TIMEOUT).await?;
        let target_info = self.target().info("server", CALL_TIMEOUT).await?;
        let source_version_text = source_info.get("redis_version").cloned().unwrap_or_default();
        let target_version_text = target_info.get("redis_version").cloned().unwrap_or_default();
        self.found.source_version = source_version_text.clone();
        self.found.target_version = target_version_text.clone();
        self.source_version = parse_version(&source_version_text).unwrap_or_default();
        self.target_version = parse_version(&target_version_text).unwrap_or_default();
        {
            let mut progress = self.handover.lock();
            progress.views[side_index(self.source.side)].version = Some(source_version_text.clone());
            progress.views[side_index(self.target.side)].version = Some(target_version_text.clone());
        }
        // An older target can only be the former primary that follows the source with no gap (the rollback
        // window): it needs no sync, so no RDB.
        let back_over_window = self.target_version < self.source_version;
        if back_over_window && let Err(why) = self.handover.window_for(self.target.side) {
            return Err(Abort(format!(
                "{} runs Redis {target_version_text}, older than {}'s {source_version_text}: a replica cannot load \
                 an RDB newer than its own, so the handover must go to the same or a newer version, or back over \
                 an open rollback window ({why})",
                self.target_name(),
                self.source_name()
            )));
        }
        let source_replication = self.source().info("replication", CALL_TIMEOUT).await?;
        if source_replication.get("role").map(String::as_str) != Some("master") {
            return Err(Abort(format!(
                "{} is not a master (role {:?})",
                self.source_name(),
                source_replication.get("role")
            )));
        }

        self.refuse_sentinel().await?;

        self.rate_from = Some((Instant::now(), offset(&source_replication, "master_repl_offset")?));
        let target_replication = self.target().info("replication", CALL_TIMEOUT).await?;
        let already_replica = self.replicates_from_source(&target_replication);
        let linked = target_replication.get("master_link_status").map(String::as_str) == Some("up")
            && target_replication.get("master_sync_in_progress").map(String::as_str) == Some("0");
        if back_over_window && !(already_replica && linked) {
            return Err(Abort(format!(
                "{} does not follow {} with its link up, so going back to it would need a full sync of an older \
                 version from a newer one, which empties it",
                self.target_name(),
                self.source_name()
            )));
        }
        // The former primary of this pair holds the pair's own history: the source was promoted from it, so the
        // source's previous replication ID is the target's ID, and the target can resynchronize partially.
        let source_previous_id = source_replication
            .get("master_replid2")
            .filter(|id| id.bytes().any(|b| b != b'0'));
        let former_primary = source_previous_id.is_some_and(|id| target_replication.get("master_replid") == Some(id));
        if !already_replica && !former_primary && !self.request.allow_nonempty {
            let keyspace = self.target().info("keyspace", CALL_TIMEOUT).await?;
            let keys: u64 = keyspace.values().filter_map(|v| keys_in(v)).sum();
            if keys > 0 {
                return Err(Abort(format!(
                    "{} is not empty: it holds {keys} keys, which the sync would replace; empty it or pass \
                     \"allow_nonempty\": true",
                    self.target_name()
                )));
            }
        }

        let used: u64 = self
            .source()
            .info("memory", CALL_TIMEOUT)
            .await?
            .get("used_memory")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let target_max: u64 = self
            .target()
            .config_get("maxmemory", CALL_TIMEOUT)
            .await?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if target_max > 0 && target_max < used {
            return Err(Abort(format!(
                "{}'s maxmemory is {target_max} bytes, less than the {used} bytes {} uses",
                self.target_name(),
                self.source_name()
            )));
        }

        self.compare_settings().await?;
        self.size_backlog().await?;
        if self.check_only {
            return Ok(());
        }
        self.copy_users().await?;

        // NEW needs OLD's credentials to replicate from it.
        if let Some(password) = source_credentials.password.as_deref() {
            self.target()
                .ok(&["CONFIG", "SET", "masterauth", password], CALL_TIMEOUT)
                .await?;
            if let Some(user) = source_credentials.user.as_deref() {
                self.target()
                    .ok(&["CONFIG", "SET", "masteruser", user], CALL_TIMEOUT)
                    .await?;
            }
        }
        Ok(())
    }

    /// Refuses to go on while a Sentinel watches OLD: it would see its master fenced and then replicating (or
    /// NEW promoted under it) and reconfigure the servers, undoing the switch. Sentinel names its connections
    /// `sentinel-<runid>-cmd` and `sentinel-<runid>-pubsub` (`sentinelSetClientName` in sentinel.c).
    async fn refuse_sentinel(&mut self) -> Result<(), Abort> {
        let list = match self.source().call(&["CLIENT", "LIST"], CALL_TIMEOUT).await? {
            Value::Error(message) => {
                self.warn(format!(
                    "could not check {} for Sentinel connections (CLIENT LIST: {message}); if a Sentinel watches \
                     it, it may undo the switch",
                    self.source_name()
                ));
                return Ok(());
            }
            list => list,
        };
        let text = String::from_utf8_lossy(list.as_bytes().unwrap_or_default()).into_owned();
        let sentinels = sentinel_clients(&text);
        if sentinels.is_empty() {
            return Ok(());
        }
        Err(Abort(format!(
            "{} is watched by Sentinel ({}): Sentinel would undo the switch by reconfiguring the servers; stop \
             it from monitoring this master first (SENTINEL REMOVE <master-name> on every Sentinel), then start the \
             handover again and point Sentinel at the new primary afterwards",
            self.source_name(),
            sentinels.join(", ")
        )))
    }

    /// Reports differences in the settings that replication does not carry; copies them on request.
    async fn compare_settings(&mut self) -> Result<(), Abort> {
        let mut differences = Vec::new();
        for name in ["databases", "maxmemory-policy", "notify-keyspace-events"] {
            let source = self.source().config_get(name, CALL_TIMEOUT).await?.unwrap_or_default();
            let target = self.target().config_get(name, CALL_TIMEOUT).await?.unwrap_or_default();
            if source == target {
                continue;
            }
            let mut line = format!(
                "{name}: {} has {source:?}, {} has {target:?}",
                self.source_name(),
                self.target_name()
            );
            if name == "databases" {
                let (s, t): (u32, u32) = (source.parse().unwrap_or(16), target.parse().unwrap_or(16));
                if t < s {
                    return Err(Abort(format!(
                        "{line}; NEW must have at least as many databases (a restart setting)"
                    )));
                }
            } else if self.request.copy_config && !self.check_only {
                self.target()
                    .ok(&["CONFIG", "SET", name, &source], CALL_TIMEOUT)
                    .await?;
                line.push_str(" (copied)");
            }
            differences.push(line);
        }
        for line in differences {
            self.config_difference(line);
        }
        Ok(())
    }

    /// Gives the target the `repl-backlog-size` the rollback window needs, when its own is smaller.
    async fn size_backlog(&mut self) -> Result<(), Abort> {
        let config = &self.handover.shared.config;
        let wanted = config.rollback_backlog_bytes;
        let current: u64 = self
            .target()
            .config_get("repl-backlog-size", CALL_TIMEOUT)
            .await?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        self.target_backlog = Some(current);
        if self.handover.shared.config.rollback_window_s == 0 {
            return Ok(());
        }
        // The watcher notices a full sync of the former primary when it begins and detaches it before the RDB
        // arrives, which diskless sync delays (repl-diskless-sync-delay); a disk-based RDB can be quicker.
        if self.source_version < self.target_version
            && self
                .target()
                .config_get("repl-diskless-sync", CALL_TIMEOUT)
                .await?
                .as_deref()
                == Some("no")
        {
            self.warn(format!(
                "{} has repl-diskless-sync no: should the former primary lose its place in the rollback window, a \
                 full sync could reach it before the proxy detaches it (a 6.2 one keeps its data, a 5.0 one does \
                 not); consider repl-diskless-sync yes",
                self.target_name()
            ));
        }
        if wanted <= current {
            return Ok(());
        }
        if !self.check_only {
            self.target()
                .ok(
                    &["CONFIG", "SET", "repl-backlog-size", &wanted.to_string()],
                    CALL_TIMEOUT,
                )
                .await?;
        }
        self.target_backlog = Some(wanted);
        let done = if self.check_only { "to be raised" } else { "raised" };
        let line = format!(
            "repl-backlog-size: {} had {current}, {done} to {wanted} (rollback_backlog_bytes) so that the former \
             primary can follow it by partial resync",
            self.target_name()
        );
        self.config_difference(line);
        Ok(())
    }

    /// Warns when the target's backlog holds less than [`BACKLOG_SPAN`] of the writes seen since the pre-flight.
    fn check_backlog_span(&mut self, source_offset: i64) {
        let (Some((since, from)), Some(backlog)) = (self.rate_from, self.target_backlog) else {
            return;
        };
        let seconds = since.elapsed().as_secs_f64();
        if self.handover.shared.config.rollback_window_s == 0 || seconds < 0.02 {
            return;
        }
        let rate = (source_offset - from).max(0) as f64 / seconds;
        let span = backlog as f64 / rate.max(1.0);
        if span < BACKLOG_SPAN.as_secs_f64() {
            self.warn(format!(
                "{}'s repl-backlog-size ({backlog} bytes) holds {span:.1} s of the writes seen since the pre-flight \
                 ({rate:.0} bytes/s): the rollback window closes if the former primary is cut off longer; raise \
                 rollback_backlog_bytes to at least {:.0}",
                self.target_name(),
                rate * BACKLOG_SPAN.as_secs_f64()
            ));
        }
    }

    /// Gives NEW the users and passwords OLD has, so clients authenticate the same way after the switch:
    /// the ACL users on 6.0 and later, `requirepass` on 5.0.
    async fn copy_users(&mut self) -> Result<(), Abort> {
        if self.source_version >= (6, 0, 0) {
            let Value::Array(lines) = self.source().ok(&["ACL", "LIST"], CALL_TIMEOUT).await? else {
                return Ok(());
            };
            for line in lines.iter().filter_map(Value::as_bytes) {
                let line = String::from_utf8_lossy(line);
                let mut words = line.split(' ');
                let (Some("user"), Some(name)) = (words.next(), words.next()) else {
                    continue;
                };
                let rules: Vec<&str> = words.collect();
                if name == "default" && rules.contains(&"nopass") && rules.contains(&"+@all") {
                    continue; // the default user as every server has it
                }
                let mut args = vec!["ACL", "SETUSER", name, "reset"];
                args.extend(rules);
                self.target().ok(&args, CALL_TIMEOUT).await?;
            }
        } else if let Some(password) = self
            .source()
            .config_get("requirepass", CALL_TIMEOUT)
            .await?
            .filter(|p| !p.is_empty())
        {
            self.target()
                .ok(&["CONFIG", "SET", "requirepass", &password], CALL_TIMEOUT)
                .await?;
        }
        Ok(())
    }

    fn replicates_from_source(&self, replication: &std::collections::HashMap<String, String>) -> bool {
        let addr = self.handover.replication_addr(&self.source);
        let Some((host, port)) = addr.rsplit_once(':') else {
            return false;
        };
        replication.get("role").map(String::as_str) == Some("slave")
            && replication.get("master_port").map(String::as_str) == Some(port)
            && replication.get("master_host").is_some_and(|h| same_host(h, host))
    }

    /// NEW replicates from OLD; the full sync's progress is followed until the link is up.
    async fn sync(&mut self) -> Result<(), Abort> {
        let addr = self.handover.replication_addr(&self.source);
        let (host, port) = addr
            .rsplit_once(':')
            .ok_or_else(|| Abort(format!("bad replication address {addr}")))?;
        let (host, port) = (host.to_string(), port.to_string());
        self.target().ok(&["REPLICAOF", &host, &port], CALL_TIMEOUT).await?;
        // A target the proxy fenced after an earlier switch must take writes again once promoted; as a replica
        // it refuses writes anyway, so the fence can go now.
        let fenced = self.handover.fenced.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some((side, was)) = fenced
            && side == self.target.side
        {
            let commands: [&[&str]; 2] = [
                &["CONFIG", "SET", "min-replicas-to-write", &was.to_write],
                &["CONFIG", "SET", "min-replicas-max-lag", &was.max_lag],
            ];
            for reply in self.target().pipeline(&commands, CALL_TIMEOUT).await? {
                if let Value::Error(message) = reply {
                    return Err(Abort(format!(
                        "could not lift the fence on {}: {message}",
                        self.target_name()
                    )));
                }
            }
        }
        let deadline = self.started + Duration::from_secs(self.request.catchup_timeout_s);
        loop {
            self.cancelled()?;
            let failed = |e: ControlError, name: String| Abort(format!("{name} failed during the full sync: {e}"));
            let info = match self.target().info("replication", CALL_TIMEOUT).await {
                Ok(info) => info,
                // A replica busy emptying or loading a large dataset answers nothing for a while: wait for it
                // (on a new connection) until the deadline; a closed or refused connection ends the handover.
                Err(error @ ControlError::Timeout { .. }) if Instant::now() < deadline => {
                    tracing::info!(%error, "NEW is busy with the full sync");
                    self.reconnect(Which::Target)
                        .await
                        .map_err(|e| failed(e, self.target_name()))?;
                    continue;
                }
                Err(error) => return Err(failed(error, self.target_name())),
            };
            let syncing = info.get("master_sync_in_progress").map(String::as_str) == Some("1");
            let link_up = info.get("master_link_status").map(String::as_str) == Some("up");
            {
                let mut progress = self.handover.lock();
                progress.sync_bytes_total = info.get("master_sync_total_bytes").and_then(|v| v.parse().ok());
                progress.sync_bytes_read = info.get("master_sync_read_bytes").and_then(|v| v.parse().ok());
                if link_up && !syncing {
                    progress.sync_bytes_read = progress.sync_bytes_total.or(progress.sync_bytes_read);
                }
            }
            if link_up && !syncing {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Abort(format!(
                    "the full sync did not finish within catchup_timeout_s = {}",
                    self.request.catchup_timeout_s
                )));
            }
            tokio::time::sleep(SYNC_POLL).await;
        }
    }

    /// Waits until NEW is within `max_lag_bytes` of OLD.
    async fn catch_up(&mut self) -> Result<(), Abort> {
        let deadline = self.started + Duration::from_secs(self.request.catchup_timeout_s);
        loop {
            self.cancelled()?;
            let (source, target) = self.offsets(CALL_TIMEOUT).await?;
            let lag = source - target;
            self.handover.lock().lag_bytes = Some(lag);
            self.handover.shared.telemetry.lag_bytes.set(lag as f64);
            if lag <= self.request.max_lag_bytes as i64 {
                self.check_backlog_span(source);
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Abort(format!(
                    "NEW did not catch up within catchup_timeout_s = {} (lag {lag} bytes, max_lag_bytes {})",
                    self.request.catchup_timeout_s, self.request.max_lag_bytes
                )));
            }
            tokio::time::sleep(CATCH_UP_POLL).await;
        }
    }

    /// OLD's `master_repl_offset` and NEW's applied `slave_repl_offset`, each read fresh.
    async fn offsets(&mut self, timeout: Duration) -> Result<(i64, i64), Abort> {
        let source = self.source().info("replication", timeout).await?;
        let target = self
            .target()
            .info("replication", timeout)
            .await
            .map_err(|e| Abort(format!("{} failed: {e}", self.target_name())))?;
        if target.get("master_link_status").map(String::as_str) != Some("up") {
            return Err(Abort(format!("{}'s replication link is down", self.target_name())));
        }
        Ok((
            offset(&source, "master_repl_offset")?,
            offset(&target, "slave_repl_offset")?,
        ))
    }

    /// The pause: hold writes, let in-flight writes finish, pause and fence OLD, wait for NEW to apply OLD's
    /// last offset, promote NEW, switch, move the sessions that cannot wait, release the writes.
    async fn pause_and_switch(&mut self) -> Result<(), Abort> {
        let budget = Duration::from_millis(self.request.max_pause_ms);
        let fence_was = FenceWas {
            to_write: self
                .source()
                .config_get("min-replicas-to-write", CALL_TIMEOUT)
                .await?
                .unwrap_or_else(|| "0".into()),
            max_lag: self
                .source()
                .config_get("min-replicas-max-lag", CALL_TIMEOUT)
                .await?
                .unwrap_or_else(|| "10".into()),
        };
        let old_generation = self.handover.shared.primary.generation();
        self.pause.old_generation = old_generation;
        // Every blocked call must be found on OLD to be ended there after the switch; find the ones whose
        // sessions could not learn their connection's id before writes are held, and give up if one cannot be.
        let mut known_ids = HashMap::new();
        let conn = self.source_conn.as_mut().expect("connected in pre-flight");
        let unknown = switch::identify_blocked(&self.handover.shared, conn, old_generation, &mut known_ids).await?;
        self.pause.known_ids = known_ids;
        if unknown > 0 {
            return Err(Abort(format!(
                "{unknown} sessions in a blocking call could not be found in {}'s CLIENT LIST by their connection's \
                 address (is there NAT between the proxy and the server?), so their calls could not be moved",
                self.source_name()
            )));
        }
        // The window's watcher checks what the target applies until now; from here the handover watches.
        if self.uses_window {
            self.handover.stop_window_watch().await;
            self.handover
                .window_for(self.target.side)
                .map_err(|why| Abort(format!("cannot go back: {why}")))?;
        }
        let gate = &self.handover.shared.gate;
        let paused_at = Instant::now();
        let deadline = paused_at + budget;
        (self.pause.paused_at, self.pause.deadline) = (Some(paused_at), Some(deadline));
        gate.close();
        self.pause.gate_closed = true;
        self.hold_fleet(budget).await?;
        let gate = &self.handover.shared.gate;

        while gate.writes_in_flight() > 0 {
            self.cancelled()?;
            if Instant::now() > deadline {
                return Err(Abort(format!(
                    "{} sessions still waited for write replies (or had a MULTI open) after max_pause_ms = {}",
                    gate.writes_in_flight(),
                    self.request.max_pause_ms
                )));
            }
            tokio::time::sleep(PAUSE_POLL).await;
        }

        // The peers hold for the budget and a margin from when they were asked: a driver that comes back from a
        // stall (or a slow drain) after its budget must not fence OLD while they may have let writes go to it.
        self.cancelled()?;
        if remaining(deadline).is_zero() {
            return Err(Abort(format!(
                "the write pause reached max_pause_ms = {} before OLD was fenced",
                self.request.max_pause_ms
            )));
        }
        let modern = self.source_version >= (6, 2, 0);
        let max_lag = fence_max_lag(&fence_was.max_lag);
        self.pause.fence_was = Some(fence_was);
        let mut source_offset = self.pause_source(deadline, modern, &max_lag).await?;

        // Wait until NEW has applied everything OLD has. OLD's offset can still move (a replication PING every
        // repl-ping-replica-period), so it is read again each time where OLD answers during the pause. On 5.0
        // OLD's pause is renewed in slices, and NEW is promoted only while a slice still has time left.
        loop {
            self.cancelled()?;
            let left = remaining(deadline);
            if left.is_zero() {
                return Err(Abort(format!(
                    "NEW did not reach OLD's replication offset {source_offset} within max_pause_ms = {}",
                    self.request.max_pause_ms
                )));
            }
            if !modern && self.pause.pause_expires.is_none_or(|end| remaining(end) < SLICE_MARGIN) {
                source_offset = self.pause_source(deadline, modern, &max_lag).await?;
            }
            let target = self
                .target()
                .info("replication", left)
                .await
                .map_err(|e| Abort(format!("{} failed during the pause: {e}", self.target_name())))?;
            let target_offset = offset(&target, "slave_repl_offset")?;
            if modern {
                source_offset = offset(&self.source().info("replication", left).await?, "master_repl_offset")?;
            }
            self.handover.lock().lag_bytes = Some(source_offset - target_offset);
            let slice_left = modern
                || self
                    .pause
                    .pause_expires
                    .is_some_and(|end| remaining(end) >= SLICE_MARGIN);
            let needed = if modern {
                source_offset
            } else {
                source_offset + EXEC_BYTES_5_0
            };
            if target_offset >= needed && slice_left {
                break;
            }
            tokio::time::sleep(PAUSE_POLL).await;
        }

        // Going back over the window: what the primary wrote since its watcher last read must be something the
        // follower applied.
        if self.uses_window
            && let Err(why) = self
                .handover
                .check_rest_of_stream(source_offset, remaining(deadline))
                .await
        {
            return Err(Abort(format!("cannot go back: {why}")));
        }

        // Promote NEW and confirm it. If the link to NEW fails from here to the confirmation, NEW may or may not
        // be a master now; OLD stays primary (it has every acknowledged write) and the reason says so.
        let left = remaining(deadline).max(Duration::from_millis(50));
        self.pause.promotion_sent = true;
        self.target().ok(&["REPLICAOF", "NO", "ONE"], left).await?;
        let role = self.target().ok(&["ROLE"], left).await?;
        let is_master =
            matches!(&role, Value::Array(items) if items.first().and_then(Value::as_bytes) == Some(b"master"));
        if !is_master {
            return Err(Abort(format!(
                "{} did not become a master: ROLE answered {role:?}",
                self.target_name()
            )));
        }

        self.commit().await
    }

    /// The switch, once NEW is a master: the point of no return, from which failures are warnings. The primary
    /// swaps, blocked calls on OLD end and are issued again on NEW, a 5.0 OLD is demoted, scripts are loaded,
    /// subscribers settle on NEW, then the held writes go to NEW and OLD is unpaused (its fence stays).
    async fn commit(&mut self) -> Result<(), Abort> {
        let modern = self.source_version >= (6, 2, 0);
        let paused_at = self.pause.paused_at.unwrap_or_else(Instant::now);
        let deadline = self.pause.deadline.unwrap_or_else(Instant::now);
        let old_generation = self.pause.old_generation;
        let mut known_ids = std::mem::take(&mut self.pause.known_ids);
        // After a promotion confirmed late, either connection may have been closed or given up on.
        for which in [Which::Source, Which::Target] {
            if let Err(error) = self.ensure_connected(which).await {
                self.warn(format!("could not reconnect for the switch: {error}"));
            }
        }
        // The point of no return: from here on, failures are warnings.
        self.handover.lock().promoted = true;
        let shared = self.handover.shared.clone();
        let primary = shared.primary.switch_to(self.target.clone());
        shared.gate.notify();
        tracing::info!(primary = %primary.server.addr, generation = primary.generation, "primary switched");
        let was = self.pause.fence_was.take().unwrap_or_default();
        *self.handover.fenced.lock().unwrap_or_else(|e| e.into_inner()) = Some((self.source.side, was));

        // Blocked calls on OLD end as if timed out; their sessions issue them again on NEW.
        let wait = remaining(deadline).max(Duration::from_millis(200));
        let conn = self.source_conn.as_mut().expect("connected in pre-flight");
        for warning in switch::end_blocked_calls(&shared, conn, old_generation, &mut known_ids, wait).await {
            self.warn(warning);
        }
        // Redis 5.0 lets EXEC and scripts past the min-replicas fence (it checks only commands flagged as writes):
        // a replica refuses them, so a 5.0 OLD becomes NEW's replica at once, by partial resync since NEW was
        // promoted from it at the same offset. Blocked calls were ended first: a demotion would fail them with
        // UNBLOCKED. A newer OLD follows NEW for the rollback window, once the writes are released.
        let window_s = shared.config.rollback_window_s;
        let mut attached = None;
        if !modern {
            attached = Some(self.attach_source().await);
        }
        let conn = self.target_conn.as_mut().expect("connected in pre-flight");
        for warning in switch::load_scripts(&shared, conn).await {
            self.warn(warning);
        }
        let settle_by = deadline.max(Instant::now() + Duration::from_millis(200));
        if let Some(warning) = switch::settle(&shared, primary.generation, settle_by).await {
            self.warn(warning);
        }

        self.switch_fleet().await;
        shared.gate.open();
        self.pause.gate_closed = false;
        let pause = paused_at.elapsed();
        let held = shared.gate.held_total();

        tracing::info!(
            pause_ms = pause.as_secs_f64() * 1000.0,
            writes_held = held,
            "writes released to NEW"
        );
        if let Some(report) = self.handover.lock().current.as_mut() {
            report.pause_ms = Some(pause.as_secs_f64() * 1000.0);
            report.writes_held = held;
        }

        // Still paused: no write can reach OLD between its fence and its REPLICAOF, so its offset is the one NEW
        // continues from.
        let checkable = self.source_version >= self.target_version || stream::knows_stream_of(self.target_version);
        if modern && window_s > 0 && !checkable {
            let (major, minor, _) = self.target_version;
            attached = Some(Err((
                format!(
                    "the proxy knows what Redis up to 7.0 writes to its replication stream, not what {major}.{minor} \
                     writes, so it could not check what the older {} applies",
                    self.source_name()
                ),
                true,
            )));
        } else if modern && window_s > 0 {
            // The pause was given what was left of the budget: renewed, so that it still holds (writes, expiry)
            // when the switch came late.
            if let Err(error) = self
                .source()
                .call(&["CLIENT", "PAUSE", "2000", "WRITE"], CALL_TIMEOUT)
                .await
            {
                self.warn(format!("could not renew the pause of {}: {error}", self.source_name()));
            }
            attached = Some(self.attach_source().await);
        }
        if modern && let Err(error) = self.source().call(&["CLIENT", "UNPAUSE"], CALL_TIMEOUT).await {
            self.warn(format!("could not unpause {}: {error}", self.source_name()));
        }
        let mut fence = format!(
            "min-replicas-to-write {FENCE_REPLICAS} on the former primary {}: writes sent to it directly get \
             NOREPLICAS whatever replicas it has",
            self.source.addr
        );
        let follows = matches!(attached, Some(Ok(_)));
        if follows {
            fence.push_str(&format!(
                ", and it follows {} by partial resync, as a read-only replica",
                self.target.addr
            ));
        } else {
            fence.push_str("; its data is left as it was");
        }
        self.handover.lock().fence = Some(fence);
        if let Some(attached) = attached {
            self.open_window(attached, window_s);
        }
        Ok(())
    }

    /// Records the rollback window the switch opened, or why it did not open.
    fn open_window(&mut self, attached: Result<window::Attached, (String, bool)>, window_s: u64) {
        let (major, minor, patch) = self.source_version;
        let version = format!("{major}.{minor}.{patch}");
        match attached {
            // A 5.0 OLD follows NEW as its fence even with the window off.
            Ok(_) if window_s == 0 => {}
            Ok(attached) => {
                if let Some(window) = window::Window::opening(version, window_s, attached) {
                    self.handover.open_window(window);
                }
            }
            Err((reason, detached)) => {
                self.warn(format!("no rollback window: {reason}"));
                let attached = window::Attached {
                    follower: Some(self.source.clone()),
                    primary: Some(self.target.clone()),
                    ..window::Attached::default()
                };
                if let Some(window) = window::Window::opening(version, window_s, attached) {
                    self.handover.window_not_opened(window, reason, detached);
                }
            }
        }
    }

    /// Makes the former primary a read-only replica of the promoted one and shows, in the same breath, that the
    /// resync will be partial: its replication ID and offset are the ones the promoted server continues
    /// (`master_replid2`, `second_repl_offset`). Otherwise it is detached at once, before it could connect (a
    /// full sync from a newer server empties an older one, which then fails to load the RDB). `Err` carries the
    /// reason, and whether it was detached.
    async fn attach_source(&mut self) -> Result<window::Attached, (String, bool)> {
        let addr = self.handover.replication_addr(&self.target);
        let Some((host, port)) = addr.rsplit_once(':') else {
            return Err((format!("bad replication address {addr}"), true));
        };
        let (host, port) = (host.to_string(), port.to_string());
        let promoted = match self.target().info("replication", CALL_TIMEOUT).await {
            Ok(info) => info,
            Err(error) => {
                return Err((
                    format!("could not read {}'s promotion: {error}", self.target_name()),
                    true,
                ));
            }
        };
        // It needs the promoted server's credentials to replicate from it.
        let credentials = self.handover.credentials(self.target.side);
        let mut commands: Vec<Vec<&str>> = vec![vec!["CONFIG", "SET", "replica-read-only", "yes"]];
        // A second line of defence should a full sync still begin before the window's watcher detaches it: a 6.2
        // or newer replica loading with swapdb keeps its data when the newer RDB fails to load
        // (`disklessLoadRestoreBackup`, replication.c; rollback-window.md §4.5). 5.0 has no such setting.
        if self.source_version >= (6, 2, 0) && self.source_version < self.target_version {
            commands.push(vec!["CONFIG", "SET", "repl-diskless-load", "swapdb"]);
        }
        if let Some(password) = credentials.password.as_deref() {
            commands.push(vec!["CONFIG", "SET", "masterauth", password]);
            if let Some(user) = credentials.user.as_deref() {
                commands.push(vec!["CONFIG", "SET", "masteruser", user]);
            }
        }
        commands.extend([
            vec!["REPLICAOF", &host, &port],
            vec!["INFO", "replication"],
            vec!["INFO", "server"],
            vec!["INFO", "stats"],
        ]);
        let commands: Vec<&[&str]> = commands.iter().map(Vec::as_slice).collect();
        // One pipeline, which Redis runs from the connection's buffer in one go, so nothing of another client runs
        // between REPLICAOF and the INFO that shows the offset it will resume from. Not a MULTI: Redis 5.0 wraps
        // a transaction holding INFO in a MULTI/EXEC of its stream, and one that turned it into a replica leaves
        // an EXEC in its backlog (`execCommand`, multi.c), 14 bytes its history has and the promoted server's has
        // not. A 5.0 OLD answers when its pause slice ends.
        let wait = self.pause.pause_expires.map_or(Duration::ZERO, remaining) + CALL_TIMEOUT;
        let replies = match self.source().pipeline(&commands, wait).await {
            Ok(replies) => replies,
            Err(error) => {
                let reason = format!("could not make {} a replica: {error}", self.source_name());
                let detached = self.detach_source().await;
                return Err((reason, detached));
            }
        };
        if let Some(error) = replies.iter().find(|r| r.is_error()) {
            let reason = format!("{} refused to replicate: {error:?}", self.source_name());
            let detached = self.detach_source().await;
            return Err((reason, detached));
        }
        let results = &replies[replies.len() - 3..];
        let follower = parse_info(results[0].as_bytes().unwrap_or_default());
        let server = parse_info(results[1].as_bytes().unwrap_or_default());
        let stats = parse_info(results[2].as_bytes().unwrap_or_default());
        let field = |info: &HashMap<String, String>, name: &str| info.get(name).cloned().unwrap_or_default();
        let (id, at) = (
            field(&follower, "master_replid"),
            field(&follower, "master_repl_offset"),
        );
        let (id2, from) = (
            field(&promoted, "master_replid2"),
            field(&promoted, "second_repl_offset"),
        );
        let at: i64 = at.parse().unwrap_or(-1);
        let from: i64 = from.parse().unwrap_or(-2);
        if id.is_empty() || id != id2 || at + 1 != from {
            let reason = format!(
                "the resync of {} would not be partial: it is at {id}:{at}, and {} continues {id2} only up to                  offset {} (a full sync would empty it)",
                self.source_name(),
                self.target_name(),
                from - 1
            );
            let detached = self.detach_source().await;
            return Err((reason, detached));
        }
        Ok(window::Attached {
            follower: Some(self.source.clone()),
            primary: Some(self.target.clone()),
            primary_version: format!(
                "{}.{}.{}",
                self.target_version.0, self.target_version.1, self.target_version.2
            ),
            follower_run_id: field(&server, "run_id"),
            primary_replid: field(&promoted, "master_replid"),
            promotion_offset: from,
            errors_at_open: stats.get("unexpected_error_replies").and_then(|v| v.parse().ok()),
            primary_host: host,
            primary_port: port,
        })
    }

    /// Stops the former primary replicating (it keeps its data and its fence); false if it could not be told.
    async fn detach_source(&mut self) -> bool {
        if let Err(error) = self.ensure_connected(Which::Source).await {
            self.warn(format!("could not reach {} to detach it: {error}", self.source_name()));
            return false;
        }
        match self.source().ok(&["REPLICAOF", "NO", "ONE"], CALL_TIMEOUT).await {
            Ok(_) => true,
            Err(error) => {
                self.warn(format!("could not detach {}: {error}", self.source_name()));
                false
            }
        }
    }

    /// Pauses OLD for writers that bypass the proxy and fences it, in one transaction that also reads OLD's
    /// replication offset: on Redis 5.0 CLIENT PAUSE stops every command of every client (there is no WRITE
    /// mode, and no UNPAUSE), so nothing can follow it, and it is given a short slice instead of the budget.
    ///
    /// The fence asks for more good replicas than any server can have, with a lag bound that is not 0 (0 turns
    /// the check off), so it holds whatever replicas OLD has of its own: from here on Redis refuses every write
    /// that reaches OLD before it has any effect (`processCommand` checks min-replicas before the pause; on 6.2+
    /// EXEC and scripts too), whoever sends it.
    async fn pause_source(&mut self, deadline: Instant, modern: bool, max_lag: &str) -> Result<i64, Abort> {
        let left = remaining(deadline);
        let length = if modern { left } else { left.min(PAUSE_SLICE_5_0) };
        let length_ms = length.as_millis().max(1).to_string();
        let pause: Vec<&str> = if modern {
            vec!["CLIENT", "PAUSE", &length_ms, "WRITE"]
        } else {
            vec!["CLIENT", "PAUSE", &length_ms]
        };
        let commands: [&[&str]; 6] = [
            &["MULTI"],
            &["CONFIG", "SET", "min-replicas-max-lag", max_lag],
            &["CONFIG", "SET", "min-replicas-to-write", FENCE_REPLICAS],
            &pause,
            &["INFO", "replication"],
            &["EXEC"],
        ];
        // On 5.0 a renewal waits for the slice before it to end.
        let wait = left.max(Duration::from_millis(50)) + self.pause.pause_expires.map_or(Duration::ZERO, remaining);
        // Whatever the outcome, OLD may be paused and fenced from here on: an abort undoes both.
        self.pause.source_paused = true;
        let replies = self.source().pipeline(&commands, wait).await?;
        let Some(Value::Array(results)) = replies.last() else {
            return Err(Abort(format!(
                "{} refused to pause: {:?}",
                self.source_name(),
                replies.last()
            )));
        };
        if let Some(error) = results.iter().find(|r| r.is_error()) {
            return Err(Abort(format!("{} refused to pause: {error:?}", self.source_name())));
        }
        self.pause.pause_expires = Some(Instant::now() + length);
        let info = parse_info(results[3].as_bytes().unwrap_or_default());
        self.pause.source_replid = info.get("master_replid").cloned();
        offset(&info, "master_repl_offset")
    }

    /// Replaces a control connection, after one that failed or timed out (its replies can no longer be paired).
    async fn reconnect(&mut self, which: Which) -> Result<(), ControlError> {
        let server = match which {
            Which::Source => self.source.clone(),
            Which::Target => self.target.clone(),
        };
        let credentials = self.handover.credentials(server.side);
        let tls = self.handover.shared.backend_tls.clone();
        let mut conn = ControlConn::connect(&server, &credentials, CALL_TIMEOUT, tls.as_ref()).await?;
        conn.identify(CALL_TIMEOUT).await?;
        match which {
            Which::Source => self.source_conn = Some(conn),
            Which::Target => self.target_conn = Some(conn),
        }
        Ok(())
    }

    /// Reconnects a control connection that can no longer be used; a failed reconnect leaves it unusable, so
    /// calls on it fail rather than wait.
    async fn ensure_connected(&mut self, which: Which) -> Result<(), ControlError> {
        let conn = match which {
            Which::Source => &self.source_conn,
            Which::Target => &self.target_conn,
        };
        if conn.as_ref().is_some_and(|c| !c.is_broken()) {
            return Ok(());
        }
        self.reconnect(which).await
    }

    /// Gives OLD back the min-replicas settings it had before the fence.
    async fn restore_fence(&mut self, was: &FenceWas, wait: Duration) -> Result<(), ControlError> {
        let commands: [&[&str]; 2] = [
            &["CONFIG", "SET", "min-replicas-to-write", &was.to_write],
            &["CONFIG", "SET", "min-replicas-max-lag", &was.max_lag],
        ];
        let replies = self.source().pipeline(&commands, wait).await?;
        match replies.into_iter().find(Value::is_error) {
            Some(Value::Error(message)) => Err(self.source().refused(&["CONFIG"], message)),
            _ => Ok(()),
        }
    }

    /// Undoes the pause after an abort: OLD unpaused and unfenced, then the held writes go to OLD.
    async fn undo(&mut self) {
        if self.source_conn.as_ref().is_some_and(ControlConn::is_broken)
            && let Err(error) = self.reconnect(Which::Source).await
        {
            self.warn(format!(
                "could not reach {} to undo the pause: {error}",
                self.source_name()
            ));
        }
        if self.pause.source_paused
            && self.source_version >= (6, 2, 0)
            && let Err(error) = self.source().call(&["CLIENT", "UNPAUSE"], CALL_TIMEOUT).await
        {
            self.warn(format!("could not unpause {}: {error}", self.source_name()));
        }
        if let Some(was) = self.pause.fence_was.take() {
            // On 5.0 this waits for OLD's pause to end by itself.
            let wait = self.pause.pause_expires.map_or(Duration::ZERO, remaining) + CALL_TIMEOUT;
            if let Err(error) = self.restore_fence(&was, wait).await {
                self.warn(format!(
                    "could not lift the fence on {} (min-replicas-to-write {}, min-replicas-max-lag {}): {error}",
                    self.source_name(),
                    was.to_write,
                    was.max_lag
                ));
            }
        }
        self.abort_fleet().await;
        if self.pause.gate_closed {
            let gate = &self.handover.shared.gate;
            if let Some(report) = self.handover.lock().current.as_mut() {
                report.writes_held = gate.held_total();
            }
            gate.open();
            self.pause.gate_closed = false;
        }
    }
}

/// Which server a control connection goes to.
#[derive(Debug, Clone, Copy)]
enum Which {
    Source,
    Target,
}

/// The lag bound of the fence: OLD's own when it has one, else 10 (Redis's default); never 0, which would turn
/// the min-replicas check off.
pub(super) fn fence_max_lag(was: &str) -> String {
    was.parse::<u64>().ok().filter(|&lag| lag > 0).unwrap_or(10).to_string()
}

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

fn offset(info: &std::collections::HashMap<String, String>, key: &str) -> Result<i64, Abort> {
    info.get(key)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Abort(format!("INFO replication has no {key}")))
}

/// The key count in an INFO keyspace line such as `keys=12,expires=0,avg_ttl=0`.
fn keys_in(line: &str) -> Option<u64> {
    line.split(',')
        .find_map(|part| part.strip_prefix("keys="))
        .and_then(|n| n.parse().ok())
}

/// The Sentinel connections in a `CLIENT LIST` reply, as `name from addr`.
fn sentinel_clients(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let field = |name: &str| {
                line.split(' ')
                    .find_map(|f| f.strip_prefix(name).and_then(|rest| rest.strip_prefix('=')))
            };
            let name = field("name")?;
            name.starts_with("sentinel-")
                .then(|| format!("{name} from {}", field("addr").unwrap_or("?")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_connections_are_found_by_name() {
        let text = "id=3 addr=127.0.0.1:5001 fd=8 name=sentinel-4d2f1a2b-cmd cmd=ping\n\
                    id=4 addr=127.0.0.1:5002 fd=9 name=app cmd=get\n\
                    id=5 addr=127.0.0.1:5003 fd=10 name=sentinel-4d2f1a2b-pubsub cmd=subscribe\n";
        assert_eq!(
            sentinel_clients(text),
            vec![
                "sentinel-4d2f1a2b-cmd from 127.0.0.1:5001",
                "sentinel-4d2f1a2b-pubsub from 127.0.0.1:5003"
            ]
        );
        assert!(sentinel_clients("id=4 addr=127.0.0.1:5002 name= cmd=get\n").is_empty());
    }
}
