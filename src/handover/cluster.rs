//! A fronted cluster's handover, shard by shard (ElastiCache's order, fleet-and-cluster.md section 3.2): every
//! NEW node (`cluster_new`, one per shard in the order of their first slot) joins the cluster and becomes a
//! replica of its shard's primary; once each is synced and known to its primary as its replica, the primaries move
//! one at a time with `CLUSTER FAILOVER`, that shard's writes held at the proxy meanwhile, so that clients see
//! neither a redirection nor an error. Redis Cluster is the fence (the old primary redirects what it no longer
//! serves, and the proxy sends it again to the new one) and the record (config epochs); the manual failover waits
//! for the offsets to meet, so nothing acknowledged is lost.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::window::WindowState;
use super::{Abort, Handover, Phase, Request};
use crate::cluster::{Front, ShardStep, StepState};
use crate::control::{ControlConn, Credentials, parse_version};
use crate::primary::{Server, Side};
use crate::protocol::value::Value;
use crate::shared::Shared;

/// The bound on one call to a node.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long NEW nodes may take to be known to every primary, and to accept their primary.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);
/// How long a primary may take to say `cluster_state:ok` in the pre-flight.
const STATE_SETTLE: Duration = Duration::from_secs(10);

/// One shard's move: its proxy, its primary, and the node that takes over (a NEW node, or on the way back the
/// former primary).
struct ShardMove {
    port: u16,
    shared: Arc<Shared>,
    from: Server,
    from_id: String,
    to: Server,
    to_id: String,
    /// The node that takes over is the shard's primary already (a handover run again after it stopped part way).
    done: bool,
}

/// A running cluster handover.
pub(super) struct ClusterRun {
    handover: Arc<Handover>,
    front: Arc<Front>,
    request: Request,
    cancel: CancellationToken,
    started: Instant,
    /// The way back (`ctl rollback`): each shard whose window is in use moves to its former primary.
    back: bool,
}

impl ClusterRun {
    pub(super) fn new(
        handover: Arc<Handover>,
        front: Arc<Front>,
        request: Request,
        cancel: CancellationToken,
        back: bool,
    ) -> Self {
        ClusterRun {
            handover,
            front,
            request,
            cancel,
            started: Instant::now(),
            back,
        }
    }

    pub(super) async fn execute(self) {
        self.enter(Phase::Preflight);
        let mut moves = Vec::new();
        let result = self.steps(&mut moves).await;
        // A shard's writes are never left held.
        for shard in &moves {
            shard.shared.gate.open();
        }
        if self.back {
            self.after_back(&moves);
        }
        match result {
            Ok(()) => {
                self.enter(Phase::Switched);
                self.handover.shared.telemetry.handover_finished(true, None);
            }
            Err(Abort(reason)) => {
                tracing::warn!(%reason, "the cluster's handover stopped");
                if let Some(report) = self.handover.lock().current.as_mut() {
                    report.reason = Some(reason);
                }
                self.enter(Phase::Aborted);
                self.handover.shared.telemetry.handover_finished(false, None);
            }
        }
        let mut progress = self.handover.lock();
        progress.last = progress.current.take();
    }

    async fn steps(&self, moves: &mut Vec<ShardMove>) -> Result<(), Abort> {
        if self.back {
            *moves = self.preflight_back()?;
        } else {
            *moves = self.preflight().await?;
            self.enter(Phase::Syncing);
            self.join(moves).await?;
        }
        self.enter(Phase::CatchingUp);
        self.catch_up(moves).await?;
        for shard in moves.iter().filter(|m| !m.done) {
            self.enter(Phase::Paused);
            self.move_primary(shard, moves).await?;
            self.enter(Phase::CatchingUp);
        }
        // Done when the cluster says so too: the proxy's view (what CLUSTER SLOTS and the status show) names every
        // NEW node as the primary of its shard's slots.
        let deadline = Instant::now() + JOIN_TIMEOUT;
        loop {
            let view = self.front.view();
            let primaries = view.topology.serving_primaries();
            if moves.iter().all(|m| primaries.contains(&&*m.to.addr)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Abort(format!(
                    "every shard's primary moved, but the cluster did not show it within {JOIN_TIMEOUT:?}: its \
                     nodes name {primaries:?} as primaries"
                )));
            }
            self.front.wake();
            tokio::time::sleep(POLL).await;
        }
    }

    fn enter(&self, phase: Phase) {
        self.handover.enter(self.started, phase);
    }

    /// The way back's moves: each shard whose window the rollback took, from its NEW node to its former primary,
    /// which replicates from it (the windows' watcher saw it follow with no gap until the rollback took them).
    fn preflight_back(&self) -> Result<Vec<ShardMove>, Abort> {
        let view = self.front.view();
        let mut moves = Vec::new();
        for (port, window) in self.front.windows() {
            if window.state != WindowState::InUse {
                continue;
            }
            let shared = self
                .front
                .proxy_on(port)
                .ok_or_else(|| Abort(format!("the shard on port {port} has no proxy")))?;
            let Some(primary_now) = view.primary_on(port) else {
                return Err(Abort(format!(
                    "the shard on port {port} is not in the cluster's view any more"
                )));
            };
            let done = primary_now == window.follower_id;
            if !done && primary_now != window.primary_id {
                return Err(Abort(format!(
                    "the shard on port {port} is served by another primary than {} since its handover: the cluster \
                     changed, so the way back does not hold",
                    window.primary
                )));
            }
            self.step(port, |s| *s = ShardStep::starting(&window.follower, done));
            moves.push(ShardMove {
                port,
                shared,
                from: super::cluster_window::primary(&window),
                from_id: window.primary_id.clone(),
                to: super::cluster_window::follower(&window),
                to_id: window.follower_id.clone(),
                done,
            });
        }
        if moves.is_empty() {
            return Err(Abort("no shard's way back is open".into()));
        }
        Ok(moves)
    }

    /// After the way back: a shard back on its former primary has no window any more; the others' are open again.
    fn after_back(&self, moves: &[ShardMove]) {
        // A failover back that completed after the run gave up on it shows in the view.
        let view = self.front.view();
        // Lock order: the windows, then the steps.
        self.front.change_windows(|windows| {
            for shard in moves {
                if self.front.step_on(shard.port).map(|s| s.state) == Some(StepState::Switched)
                    || view.primary_on(shard.port) == Some(shard.to_id.as_str())
                {
                    windows.remove(&shard.port);
                }
            }
            for window in windows.values_mut().filter(|w| w.state == WindowState::InUse) {
                window.state = WindowState::Open;
            }
        });
    }

    fn step(&self, port: u16, update: impl FnOnce(&mut ShardStep)) {
        self.front.update_step(port, update);
    }

    fn warn(&self, warnings: Vec<String>) {
        if warnings.is_empty() {
            return;
        }
        if let Some(report) = self.handover.lock().current.as_mut() {
            report.warnings.extend(warnings);
        }
    }

    fn cancelled(&self) -> Result<(), Abort> {
        if self.cancel.is_cancelled() {
            return Err(Abort("aborted by the operator".into()));
        }
        Ok(())
    }

    fn credentials(&self, side: Side) -> Credentials {
        self.handover.credentials(side)
    }

    async fn connect(&self, server: &Server) -> Result<ControlConn, Abort> {
        let tls = self.handover.shared.backend_tls.as_ref();
        ControlConn::connect(server, &self.credentials(server.side), CALL_TIMEOUT, tls)
            .await
            .map_err(|e| Abort(e.to_string()))
    }

    /// Checks what would make the handover fail, before anything is changed: a NEW node per shard, each reachable,
    /// a cluster node of its own and empty; versions that can share a cluster bus; every slot served; no slot in
    /// migration.
    async fn preflight(&self) -> Result<Vec<ShardMove>, Abort> {
        let news = &self.handover.shared.config.cluster_new;
        let view = self.front.view();
        // The shards that serve slots: a primary with none holds no data (or is a former primary that the node
        // read from has not heard of as a replica yet).
        let (shards, ports): (Vec<&crate::cluster::topology::Shard>, Vec<&Option<u16>>) = view
            .topology
            .shards
            .iter()
            .zip(&view.ports)
            .filter(|(shard, _)| !shard.primary.slots.is_empty())
            .unzip();
        if news.len() != shards.len() {
            return Err(Abort(format!(
                "the cluster has {} shards and cluster_new names {} NEW nodes: give one per shard, in the order of \
                 their first slot",
                shards.len(),
                news.len()
            )));
        }
        if view.topology.uncovered_slots() > 0 {
            return Err(Abort(format!(
                "{} slots are served by no primary: the cluster must cover every slot",
                view.topology.uncovered_slots()
            )));
        }
        // Every node's version, and each primary's own view of its slots in migration.
        let mut oldest = (u32::MAX, 0, 0);
        let mut newest = (0, 0, 0);
        for shard in &shards {
            for node in std::iter::once(&shard.primary).chain(&shard.replicas) {
                let server = self.node(&node.addr);
                let mut conn = self.connect(&server).await?;
                let info = conn.info("server", CALL_TIMEOUT).await?;
                let version = info
                    .get("redis_version")
                    .and_then(|v| parse_version(v))
                    .unwrap_or_default();
                oldest = oldest.min(version);
                newest = newest.max(version);
                if !node.is_primary() {
                    continue;
                }
                // A primary that took over lately may say `fail` for a few seconds (Redis's rejoin delay, up to
                // 5 s): it is asked again until a bound.
                let settle_by = Instant::now() + STATE_SETTLE;
                loop {
                    let state = text(&conn.call(&["CLUSTER", "INFO"], CALL_TIMEOUT).await?);
                    if state.contains("cluster_state:ok") {
                        break;
                    }
                    if Instant::now() > settle_by {
                        return Err(Abort(format!(
                            "{} does not say cluster_state:ok (within {STATE_SETTLE:?})",
                            node.addr
                        )));
                    }
                    tokio::time::sleep(POLL).await;
                }
                let nodes = text(&conn.call(&["CLUSTER", "NODES"], CALL_TIMEOUT).await?);
                let own = crate::cluster::topology::parse_nodes(&nodes)
                    .map_err(Abort)?
                    .into_iter()
                    .find(|n| n.has_flag("myself"));
                if let Some(own) = own {
                    if let Some((slot, target)) = own.migrating.first() {
                        return Err(Abort(format!(
                            "slot {slot} is migrating from {} to node {target}: finish the migration, or cancel it \
                             with CLUSTER SETSLOT {slot} STABLE on both nodes",
                            node.addr
                        )));
                    }
                    if let Some((slot, source)) = own.importing.first() {
                        return Err(Abort(format!(
                            "slot {slot} is importing into {} from node {source}: finish the migration, or cancel \
                             it with CLUSTER SETSLOT {slot} STABLE on both nodes",
                            node.addr
                        )));
                    }
                }
            }
        }
        let mut moves = Vec::new();
        for ((shard, new), port) in shards.iter().zip(news).zip(ports) {
            let Some(port) = *port else {
                return Err(Abort(format!("the shard of {} has no proxy port", shard.primary.addr)));
            };
            let shared = self
                .front
                .proxy_on(port)
                .ok_or_else(|| Abort(format!("the shard on port {port} has no proxy")))?;
            let new_server = Server {
                side: Side::New,
                addr: new.as_str().into(),
            };
            let mut conn = self.connect(&new_server).await?;
            let info = conn.info("all", CALL_TIMEOUT).await?;
            let version = info
                .get("redis_version")
                .and_then(|v| parse_version(v))
                .unwrap_or_default();
            if info.get("cluster_enabled").map(String::as_str) != Some("1") {
                return Err(Abort(format!(
                    "NEW {new} is not in cluster mode: start it with cluster-enabled yes"
                )));
            }
            version_rule(version, oldest, newest).map_err(|why| Abort(format!("NEW {new}: {why}")))?;
            if version >= (7, 0, 0) && oldest < (7, 0, 0) {
                let hostname = conn.config_get("cluster-announce-hostname", CALL_TIMEOUT).await?;
                if hostname.is_some_and(|h| !h.is_empty()) {
                    return Err(Abort(format!(
                        "NEW {new} sets cluster-announce-hostname: with it, a 7.0 node cannot join a cluster of 6.2 or \
                         older nodes (they drop its messages); unset it until every node is 7.0"
                    )));
                }
            }
            let new_id = text(&conn.call(&["CLUSTER", "MYID"], CALL_TIMEOUT).await?);
            // Already this shard's primary or replica (a handover run again), or a node of its own, empty.
            let done = shard.primary.id == new_id;
            let member = done || shard.replicas.iter().any(|r| r.id == new_id);
            if !member {
                let known: u64 = text(&conn.call(&["CLUSTER", "INFO"], CALL_TIMEOUT).await?)
                    .lines()
                    .find_map(|l| l.strip_prefix("cluster_known_nodes:"))
                    .and_then(|n| n.trim().parse().ok())
                    .unwrap_or(0);
                if known > 1 {
                    return Err(Abort(format!(
                        "NEW {new} already knows {known} nodes: it must be a fresh node (CLUSTER RESET HARD)"
                    )));
                }
                let keys = info.iter().filter(|(k, _)| k.starts_with("db")).count();
                if keys > 0 {
                    return Err(Abort(format!("NEW {new} holds keys: it must be empty (FLUSHALL)")));
                }
            }
            self.step(port, |s| *s = ShardStep::starting(new, done));
            moves.push(ShardMove {
                port,
                shared,
                from: old_server(&shard.primary.addr),
                from_id: shard.primary.id.clone(),
                to: new_server,
                to_id: new_id,
                done,
            });
        }
        Ok(moves)
    }

    /// Every NEW node meets the cluster and becomes a replica of its shard's primary.
    async fn join(&self, moves: &[ShardMove]) -> Result<(), Abort> {
        let moves: Vec<&ShardMove> = moves.iter().filter(|m| !m.done).collect();
        for shard in &moves {
            self.step(shard.port, |s| s.state = StepState::Joining);
            let mut new = self.connect(&shard.to).await?;
            let (host, port) = shard
                .from
                .addr
                .rsplit_once(':')
                .ok_or_else(|| Abort(format!("{} is not host:port", shard.from.addr)))?;
            new.ok(&["CLUSTER", "MEET", host, port], CALL_TIMEOUT).await?;
        }
        let deadline = Instant::now() + JOIN_TIMEOUT;
        for shard in moves {
            let mut new = self.connect(&shard.to).await?;
            // The node learns its primary by gossip: REPLICATE is refused until then.
            loop {
                self.cancelled()?;
                match new
                    .call(&["CLUSTER", "REPLICATE", &shard.from_id], CALL_TIMEOUT)
                    .await?
                {
                    Value::Error(error) if Instant::now() < deadline => {
                        tracing::debug!(%error, node = %shard.to.addr, "not yet");
                        tokio::time::sleep(POLL).await;
                    }
                    Value::Error(error) => {
                        return Err(Abort(format!(
                            "NEW {} did not become a replica of {} within {JOIN_TIMEOUT:?}: {error}",
                            shard.to.addr, shard.from.addr
                        )));
                    }
                    _ => break,
                }
            }
            self.step(shard.port, |s| s.state = StepState::Syncing);
            // The backlog the way back needs: the former primary follows NEW by partial resync (a full one would
            // empty an older node, which cannot load NEW's RDB).
            let config = &self.handover.shared.config;
            if config.rollback_window_s > 0 {
                let current: u64 = new
                    .config_get("repl-backlog-size", CALL_TIMEOUT)
                    .await?
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                if current < config.rollback_backlog_bytes {
                    let wanted = config.rollback_backlog_bytes.to_string();
                    new.ok(&["CONFIG", "SET", "repl-backlog-size", &wanted], CALL_TIMEOUT)
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// Waits until every NEW node is synced with its primary, within `max_lag_bytes`, and its primary lists it as
    /// its replica (a failover asked of a replica its primary does not know is ignored, silently).
    async fn catch_up(&self, moves: &[ShardMove]) -> Result<(), Abort> {
        let deadline = Instant::now() + Duration::from_secs(self.request.catchup_timeout_s);
        for shard in moves.iter().filter(|m| !m.done) {
            let mut new = self.connect(&shard.to).await?;
            let mut primary = self.connect(&shard.from).await?;
            loop {
                self.cancelled()?;
                let replica = new.info("replication", CALL_TIMEOUT).await?;
                let source = primary.info("replication", CALL_TIMEOUT).await?;
                let up = replica.get("master_link_status").map(String::as_str) == Some("up");
                let offset = |info: &std::collections::HashMap<String, String>, key: &str| {
                    info.get(key).and_then(|v| v.parse::<i64>().ok())
                };
                let lag = match (
                    offset(&source, "master_repl_offset"),
                    offset(&replica, "slave_repl_offset"),
                ) {
                    (Some(a), Some(b)) if up => Some(a - b),
                    _ => None,
                };
                self.step(shard.port, |s| s.lag_bytes = lag);
                let listed = text(&primary.call(&["CLUSTER", "NODES"], CALL_TIMEOUT).await?)
                    .lines()
                    .any(|l| l.starts_with(&shard.to_id) && l.contains(&format!("slave {}", shard.from_id)));
                if listed && lag.is_some_and(|lag| lag <= self.request.max_lag_bytes as i64) {
                    self.step(shard.port, |s| s.state = StepState::Synced);
                    break;
                }
                if Instant::now() > deadline {
                    return Err(Abort(format!(
                        "{} was not synced with {} within catchup_timeout_s = {} (link {}, lag {lag:?}, known to its \
                         primary: {listed})",
                        who(&shard.to),
                        shard.from.addr,
                        self.request.catchup_timeout_s,
                        if up { "up" } else { "down" }
                    )));
                }
                tokio::time::sleep(POLL).await;
            }
        }
        Ok(())
    }

    /// Moves one shard's primary: its writes held at the proxy and drained, `CLUSTER FAILOVER` on NEW (the old
    /// primary pauses its writers and NEW takes over once it has applied everything), the shard's sessions moved to
    /// NEW, the writes let go to it.
    async fn move_primary(&self, shard: &ShardMove, moves: &[ShardMove]) -> Result<(), Abort> {
        self.cancelled()?;
        let mut new = self.connect(&shard.to).await?;
        self.wait_for_voters(&mut new, shard, moves).await?;
        // What the shard's way back will be judged against: the primary's run ID and error count now, as it is
        // about to become the follower (none when windows are off, or on the way back).
        let baseline = if self.back || self.handover.shared.config.rollback_window_s == 0 {
            None
        } else {
            Some(self.follower_now(&shard.from).await)
        };
        let budget = Duration::from_millis(self.request.max_pause_ms);
        let gate = &shard.shared.gate;
        let paused_at = Instant::now();
        let deadline = paused_at + budget;
        self.step(shard.port, |s| s.state = StepState::Paused);
        gate.close();
        while gate.writes_in_flight() > 0 {
            if Instant::now() > deadline {
                return Err(Abort(format!(
                    "{} sessions of the shard on port {} still waited for write replies (or had a MULTI open) after \
                     max_pause_ms = {}; its primary stays {}",
                    gate.writes_in_flight(),
                    shard.port,
                    self.request.max_pause_ms,
                    shard.from.addr
                )));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if self.back {
            // The window's last word, with the shard's writes held: the former primary must still be the node the
            // window watched, with no command it failed to apply.
            self.check_follower(shard).await?;
        }
        // The scripts the shard's clients used, so that their EVALSHA finds them on NEW.
        let warnings = super::switch::load_scripts(&shard.shared, &mut new).await;
        self.warn(warnings);
        new.ok(&["CLUSTER", "FAILOVER"], CALL_TIMEOUT).await?;
        let mut asked_at = Instant::now();
        loop {
            let role = new.call(&["ROLE"], CALL_TIMEOUT).await?;
            if matches!(&role, Value::Array(parts) if parts.first().is_some_and(|p| text(p) == "master")) {
                break;
            }
            // Redis gives a manual failover 5 s (CLUSTER_MF_TIMEOUT), then lets the old primary go on: ask again
            // while the pause has time for it.
            if asked_at.elapsed() > MANUAL_FAILOVER_TIMEOUT
                && deadline.saturating_duration_since(Instant::now()) > MANUAL_FAILOVER_TIMEOUT / 5
            {
                tracing::warn!(node = %shard.to.addr, "the manual failover timed out; asking again");
                new.ok(&["CLUSTER", "FAILOVER"], CALL_TIMEOUT).await?;
                asked_at = Instant::now();
            }
            if Instant::now() > deadline {
                // Writes go on to the old primary; if the failover completes after all, the proxy follows it as
                // any failover (the old primary redirects, the refresh finds the new one).
                return Err(Abort(format!(
                    "{} was not the primary of its shard within max_pause_ms = {} after CLUSTER FAILOVER; the writes \
                     went on to {}",
                    who(&shard.to),
                    self.request.max_pause_ms,
                    shard.from.addr
                )));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // A promoted node that says `cluster_state:fail` answers CLUSTERDOWN to every request until it says ok
        // (Redis keeps a master that lately saw itself in a minority failing for up to 5 s): the shard's writes
        // stay held until then, within the pause's budget, so that clients see a longer wait, not an error.
        loop {
            let info = text(&new.call(&["CLUSTER", "INFO"], CALL_TIMEOUT).await?);
            if info.contains("cluster_state:ok") || Instant::now() > deadline {
                if !info.contains("cluster_state:ok") {
                    self.warn(vec![format!(
                        "{} did not say cluster_state:ok within max_pause_ms = {} of its promotion: its shard's \
                         clients may get CLUSTERDOWN until it does",
                        who(&shard.to),
                        self.request.max_pause_ms
                    )]);
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let primary = shard.shared.primary.switch_to(shard.to.clone());
        gate.notify();
        // Subscribers, tracking and blocked calls move before any write reaches NEW.
        let settle_by = Instant::now().max(deadline);
        let unsettled = super::switch::settle(&shard.shared, primary.generation, settle_by).await;
        self.warn(unsettled.into_iter().collect());
        gate.open();
        let pause = paused_at.elapsed();
        let pause_ms = pause.as_secs_f64() * 1000.0;
        self.step(shard.port, |s| {
            s.state = StepState::Switched;
            s.pause_ms = Some(pause_ms);
        });
        self.front.wake();
        if let Some(baseline) = baseline {
            // The shard's way back opens now, watched from its first moment.
            let primary = Server {
                side: shard.to.side,
                addr: self
                    .announced(&shard.to_id)
                    .map_or_else(|| shard.to.addr.clone(), Into::into),
            };
            let window =
                self.handover
                    .open_cluster_window((&shard.from, &shard.from_id), (&primary, &shard.to_id), baseline);
            self.front.change_windows(|windows| windows.insert(shard.port, window));
            self.handover.watch_cluster_windows(&self.front);
        }
        if let Some(report) = self.handover.lock().current.as_mut() {
            report.pause_ms = Some(report.pause_ms.map_or(pause_ms, |p| p.max(pause_ms)));
            report.writes_held += gate.held_total();
        }
        tracing::info!(
            port = shard.port,
            primary = %primary.server.addr,
            pause_ms,
            "a shard's primary moved"
        );
        Ok(())
    }
}

/// How long Redis gives a manual failover (`CLUSTER_MF_TIMEOUT`), and a margin.
const MANUAL_FAILOVER_TIMEOUT: Duration = Duration::from_millis(5_500);

impl ClusterRun {
    /// Waits, before a shard's pause, until the node taking over says `cluster_state:ok` (a node that joined lately
    /// says fail until it has heard from every primary which slots it serves, and promoted then, it would answer
    /// CLUSTERDOWN to the shard's writes), and every primary that votes would vote for it:
    /// - that node has caught up with the cluster's current epoch: a replica asks the primaries for their votes in
    ///   its own next epoch, and a primary ignores a request from an epoch behind its own, so a node that has not
    ///   heard of the last failover yet would fail its own;
    /// - every primary serving slots knows it as a replica of the shard's primary: a primary refuses its vote to a
    ///   node it still takes for a primary (a node just met), and a failover needs a majority of them (with two
    ///   shards, both).
    async fn wait_for_voters(
        &self,
        new: &mut ControlConn,
        shard: &ShardMove,
        moves: &[ShardMove],
    ) -> Result<(), Abort> {
        let deadline = Instant::now() + JOIN_TIMEOUT;
        let epoch = |text: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix("cluster_current_epoch:"))
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(0)
        };
        let replica_line = format!("slave {}", shard.from_id);
        loop {
            self.cancelled()?;
            // Each moving shard's primary as the run left it (the proxy's view may not have heard yet), and the
            // view's other primaries; each with its node ID.
            let mut voters: Vec<(Server, String)> = moves
                .iter()
                .map(|other| {
                    if other.done || other.shared.primary.current().server.addr == other.to.addr {
                        (other.to.clone(), other.to_id.clone())
                    } else {
                        (other.from.clone(), other.from_id.clone())
                    }
                })
                .collect();
            let view = self.front.view();
            for shard in view.topology.shards.iter().filter(|s| !s.primary.slots.is_empty()) {
                let id = &shard.primary.id;
                if !moves.iter().any(|m| &m.from_id == id || &m.to_id == id) {
                    voters.push((self.node(&shard.primary.addr), id.clone()));
                }
            }
            let mut highest = 0;
            // The voters that would not vote yet, and why (a voter that cannot be asked now is asked again).
            let mut unaware = Vec::new();
            for (voter, _) in &voters {
                let asked = async {
                    let mut conn = self.connect(voter).await?;
                    let info = text(&conn.call(&["CLUSTER", "INFO"], CALL_TIMEOUT).await?);
                    let nodes = text(&conn.call(&["CLUSTER", "NODES"], CALL_TIMEOUT).await?);
                    Ok::<_, Abort>((info, nodes))
                };
                match asked.await {
                    Ok((info, nodes)) => {
                        highest = highest.max(epoch(&info));
                        let knows = nodes
                            .lines()
                            .any(|l| l.starts_with(&shard.to_id) && l.contains(&replica_line) && linked(l));
                        if !knows {
                            unaware.push(format!("{} does not know it as that replica yet", voter.addr));
                        }
                    }
                    Err(Abort(why)) => unaware.push(format!("{} could not be asked: {why}", voter.addr)),
                }
            }
            // And the candidate has a link to each of them, to ask for their votes.
            let own_view = text(&new.call(&["CLUSTER", "NODES"], CALL_TIMEOUT).await?);
            for (voter, id) in &voters {
                if !own_view.lines().any(|l| l.starts_with(id.as_str()) && linked(l)) {
                    unaware.push(format!("{} has no link to {} yet", shard.to.addr, voter.addr));
                }
            }
            let info = text(&new.call(&["CLUSTER", "INFO"], CALL_TIMEOUT).await?);
            let own = epoch(&info);
            let ok = info.contains("cluster_state:ok");
            if own >= highest && unaware.is_empty() && ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Abort(if !ok {
                    format!(
                        "{} did not say cluster_state:ok within {JOIN_TIMEOUT:?}: promoted, it would answer \
                         CLUSTERDOWN",
                        who(&shard.to)
                    )
                } else if own < highest {
                    format!(
                        "{} did not learn the cluster's current epoch ({highest}, it has {own}) within \
                         {JOIN_TIMEOUT:?}",
                        who(&shard.to)
                    )
                } else {
                    format!(
                        "the primaries would not vote for {} as the replica of {} within {JOIN_TIMEOUT:?}: {}",
                        who(&shard.to),
                        shard.from.addr,
                        unaware.join("; ")
                    )
                }));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// A node's run ID and `unexpected_error_replies` (none before 6.2), or why they could not be read.
    async fn follower_now(&self, node: &Server) -> Result<(String, Option<u64>), String> {
        let read = async {
            let mut conn = self.connect(node).await?;
            let server = conn.info("server", CALL_TIMEOUT).await?;
            let stats = conn.info("stats", CALL_TIMEOUT).await?;
            Ok::<_, Abort>((server, stats))
        };
        match read.await {
            Ok((server, stats)) => Ok((
                server.get("run_id").cloned().unwrap_or_default(),
                stats.get("unexpected_error_replies").and_then(|v| v.parse().ok()),
            )),
            Err(Abort(why)) => Err(why),
        }
    }

    /// On the way back, in the shard's pause: its window is still in use (the watcher closed none), and its former
    /// primary has the run ID and error count the window opened with.
    async fn check_follower(&self, shard: &ShardMove) -> Result<(), Abort> {
        let Some(window) = self.front.window_on(shard.port) else {
            return Err(Abort(format!("the shard on port {} lost its way back", shard.port)));
        };
        if window.state != WindowState::InUse {
            return Err(Abort(format!(
                "the way back of the shard on port {} closed during the rollback: {}",
                shard.port,
                window.reason.as_deref().unwrap_or("no reason recorded")
            )));
        }
        let (run_id, errors) = self.follower_now(&shard.to).await.map_err(Abort)?;
        if run_id != window.follower_run_id {
            return Err(Abort(format!(
                "{} restarted since its shard moved (run_id {} is now {run_id}): it may have lost writes; its shard \
                 stays on {}",
                who(&shard.to),
                window.follower_run_id,
                shard.from.addr
            )));
        }
        if let (Some(then), Some(now)) = (window.errors_at_open, errors)
            && now > then
        {
            return Err(Abort(format!(
                "{} could not apply {} commands {} sent it (unexpected_error_replies; its log names them): its shard \
                 stays on {}",
                who(&shard.to),
                now - then,
                shard.from.addr,
                shard.from.addr
            )));
        }
        Ok(())
    }

    /// The address the cluster announces for node `id` (what its replicas' `master_host` shows, which may differ
    /// from the address the proxy was given for it).
    fn announced(&self, id: &str) -> Option<String> {
        let view = self.front.view();
        view.topology
            .shards
            .iter()
            .flat_map(|s| std::iter::once(&s.primary).chain(&s.replicas))
            .find(|n| n.id == id)
            .map(|n| n.addr.clone())
    }

    /// A node of the cluster, reached with NEW's credentials if it is one of `cluster_new`, else OLD's.
    fn node(&self, addr: &str) -> Server {
        let side = if self.handover.shared.config.cluster_new.iter().any(|n| n == addr) {
            Side::New
        } else {
            Side::Old
        };
        Server {
            side,
            addr: addr.into(),
        }
    }
}

/// Whether a `CLUSTER NODES` line shows the node's cluster bus link up from the node that answered (its link-state
/// field): a vote, or a request for one, goes only over a link that is up, and is dropped otherwise (a node just
/// met may have none yet), which a manual failover then waits out.
fn linked(line: &str) -> bool {
    let fields: Vec<&str> = line.split(' ').collect();
    fields.get(7) == Some(&"connected")
        && !fields
            .get(2)
            .is_some_and(|f| f.contains("handshake") || f.contains("noaddr"))
}

/// Whether NEW, of `version`, may join a cluster whose nodes run `oldest` to `newest`: never older than any node,
/// and no Redis 7.2 or later while a node is 6.2 or older (7.2 always adds a ping extension that those drop:
/// redis/redis#13401, #12685; fleet-and-cluster.md section 3.3).
pub fn version_rule(version: (u32, u32, u32), oldest: (u32, u32, u32), newest: (u32, u32, u32)) -> Result<(), String> {
    let name = |v: (u32, u32, u32)| format!("{}.{}.{}", v.0, v.1, v.2);
    if version < newest {
        return Err(format!(
            "Redis {} is older than the cluster's newest node ({}): a cluster is only handed over to a newer version",
            name(version),
            name(newest)
        ));
    }
    if version >= (7, 2, 0) && oldest < (7, 0, 0) {
        return Err(format!(
            "Redis {} cannot join a cluster with Redis {} nodes: from 7.2 every cluster bus message carries an \
             extension that 6.2 and older drop, so the node never leaves its handshake (redis/redis#13401); hand the \
             cluster over to 7.0 first",
            name(version),
            name(oldest)
        ));
    }
    Ok(())
}

/// A node of the cluster, reached with OLD's credentials.
fn old_server(addr: &str) -> Server {
    Server {
        side: Side::Old,
        addr: addr.into(),
    }
}

/// A node as messages name it: `NEW 127.0.0.1:7000`, or `OLD ...` on the way back.
fn who(server: &Server) -> String {
    format!("{} {}", server.side.name().to_uppercase(), server.addr)
}

fn text(value: &Value) -> String {
    match value {
        Value::Str(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        other => format!("{other:?}"),
    }
}

impl Handover {
    /// Starts a fronted cluster's handover (see the module's documentation), or with `back` its way back over the
    /// windows [`Handover::take_cluster_windows`] took; returns at once.
    pub(super) fn start_cluster(
        self: &Arc<Self>,
        front: Arc<Front>,
        request: Request,
        back: bool,
    ) -> Result<(), super::StartError> {
        let release = |front: &Front| {
            if back {
                front.change_windows(|windows| {
                    for window in windows.values_mut().filter(|w| w.state == WindowState::InUse) {
                        window.state = WindowState::Open;
                    }
                });
            }
        };
        if !back && self.shared.config.cluster_new.is_empty() {
            return Err(super::StartError::Cluster(
                "no NEW nodes are configured: set cluster_new (--cluster-new), one per shard",
            ));
        }
        if self.running.swap(true, Ordering::SeqCst) {
            release(&front);
            let phase = self.lock().phase.unwrap_or(Phase::Idle);
            return Err(super::StartError::Running(phase.name()));
        }
        let cancel = CancellationToken::new();
        *self.cancel.lock().unwrap_or_else(|e| e.into_inner()) = Some(cancel.clone());
        front.clear_steps();
        let view = front.view();
        let primaries = view.topology.serving_primaries();
        let targets = if back {
            front.windows().values().map(|w| w.follower.clone()).collect()
        } else {
            self.shared.config.cluster_new.clone()
        };
        let report = super::Report::starting(
            format!("cluster {}", primaries.join(" ")),
            format!("cluster {}", targets.join(" ")),
            request.clone(),
        );
        {
            let mut progress = self.lock();
            progress.current = Some(report);
            progress.promoted = false;
            progress.in_doubt = None;
        }
        let this = self.clone();
        tokio::spawn(async move {
            ClusterRun::new(this.clone(), front, request, cancel, back)
                .execute()
                .await;
            this.running.store(false, Ordering::SeqCst);
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::version_rule;

    #[test]
    fn the_version_rules_of_a_mixed_cluster() {
        assert!(version_rule((7, 0, 15), (6, 2, 14), (6, 2, 14)).is_ok());
        assert!(
            version_rule((6, 2, 14), (6, 2, 14), (6, 2, 14)).is_ok(),
            "the same version: a restart"
        );
        let older = version_rule((5, 0, 6), (6, 2, 14), (6, 2, 14)).unwrap_err();
        assert!(
            older.contains("older than the cluster's newest node (6.2.14)"),
            "{older}"
        );
        let too_far = version_rule((7, 2, 4), (6, 2, 14), (7, 0, 15)).unwrap_err();
        assert!(too_far.contains("cannot join a cluster with Redis 6.2.14 nodes") && too_far.contains("7.0 first"));
        assert!(version_rule((7, 2, 4), (7, 0, 15), (7, 0, 15)).is_ok());
    }
}
