//! A fleet of proxies in front of the same servers hands over together. The proxy where the handover starts
//! drives it; every other one (a peer, listed in `fleet_peers`) follows over the admin port, in three steps:
//!
//! 1. HOLD: the peer holds its writes and drains the ones in flight, before OLD is fenced; it keeps serving
//!    reads from OLD for at most its lease.
//! 2. SWITCH: once NEW is promoted, the peer moves its sessions to NEW (blocked calls ended and issued again,
//!    scripts loaded, subscribers settled) and keeps its writes held.
//! 3. RELEASE: when every peer switched (or its lease ran out), every peer lets its writes go to NEW.
//!
//! So no proxy writes to NEW while another still reads from OLD. Before the pause, a CLAIM renewed by the driver
//! keeps every peer from starting or joining another handover. Safety does not rest on the peers: OLD's fence
//! refuses whatever a peer that missed a step still sends it, and the servers keep the record, so a peer whose
//! lease runs out without a word from the driver finds the outcome there (see `handover::resolve`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::Handover;
use super::resolve::Outcome;
use super::status::{FleetView, Status};
use super::switch;
use crate::primary::Server;

/// How long a peer keeps a claim that its driver does not renew.
pub const CLAIM_LEASE: Duration = Duration::from_secs(10);
/// How often a driver renews its claim.
pub const CLAIM_RENEWAL: Duration = Duration::from_secs(2);
/// What a hold lease adds to the pause budget: the time a driver has to confirm the promotion and send SWITCH.
pub const LEASE_MARGIN: Duration = Duration::from_secs(2);
/// The bound on one call to a peer outside the pause.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a peer whose lease ran out holds writes, while the servers cannot tell, before it refuses them.
const HOLD_AFTER_LEASE: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(250);

/// A message of the fleet protocol (the JSON body of `POST /fleet/<step>`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    /// The handover this step belongs to: its driver's id and start time.
    pub epoch: String,
    /// The driver's proxy id.
    pub driver: String,
    /// The primary now and the server being promoted, as the driver names them: a peer configured for other
    /// servers refuses.
    pub from: String,
    pub to: String,
    /// The same servers by their `run_id`: proxies may reach them by different addresses.
    #[serde(default)]
    pub from_id: Option<String>,
    #[serde(default)]
    pub to_id: Option<String>,
    /// CLAIM and HOLD: how long the peer keeps the step without a word from the driver.
    #[serde(default)]
    pub lease_ms: u64,
}

/// This proxy's part in a fleet handover.
#[derive(Debug, Clone, Default)]
pub(super) enum Part {
    #[default]
    Idle,
    /// Another proxy drives a handover and has not paused yet.
    Claimed { message: Message, until: Instant },
    /// Writes held for the driver's pause.
    Held {
        message: Message,
        until: Instant,
        generation: u64,
    },
    /// Sessions moved to NEW, writes still held until RELEASE.
    Switched { message: Message, until: Instant },
}

impl Part {
    fn name(&self) -> &'static str {
        match self {
            Part::Idle => "idle",
            Part::Claimed { .. } => "claimed",
            Part::Held { .. } => "held",
            Part::Switched { .. } => "switched",
        }
    }

    fn epoch(&self) -> Option<&str> {
        match self {
            Part::Idle => None,
            Part::Claimed { message, .. } | Part::Held { message, .. } | Part::Switched { message, .. } => {
                Some(&message.epoch)
            }
        }
    }
}

/// What this proxy last heard from a peer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerView {
    pub addr: String,
    pub reachable: bool,
    pub proxy_id: Option<String>,
    pub phase: Option<String>,
    pub part: Option<String>,
    pub primary: Option<String>,
}

/// Why a peer refused a step or could not be reached.
#[derive(Debug)]
pub struct Refusal(pub String);

impl Handover {
    /// This proxy's id in the fleet: `proxy_id`, or its admin address.
    pub fn proxy_id(&self) -> String {
        if let Some(id) = &self.shared.config.proxy_id {
            return id.clone();
        }
        match *self.admin_addr.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(addr) => addr.to_string(),
            None => self.shared.config.admin.clone(),
        }
    }

    /// This proxy's part now: a claim its driver stopped renewing has lapsed.
    fn current_part(&self) -> Part {
        let mut part = self.part.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(&*part, Part::Claimed { until, .. } if *until < Instant::now()) {
            *part = Part::Idle;
        }
        part.clone()
    }

    /// The driver and epoch of the handover this proxy follows, if it follows one now.
    pub fn following(&self) -> Option<String> {
        match self.current_part() {
            Part::Idle => None,
            Part::Claimed { message, .. } | Part::Held { message, .. } | Part::Switched { message, .. } => {
                Some(format!("{}, driven by {}", message.epoch, message.driver))
            }
        }
    }

    /// Records where the admin port listens: a proxy finds and skips itself in `fleet_peers` by it.
    pub fn set_admin_addr(&self, addr: SocketAddr) {
        *self.admin_addr.lock().unwrap_or_else(|e| e.into_inner()) = Some(addr);
    }

    /// The peers' admin addresses: `fleet_peers`, each name resolved to all its addresses, this proxy left out.
    pub async fn peers(&self) -> Vec<SocketAddr> {
        let own = *self.admin_addr.lock().unwrap_or_else(|e| e.into_inner());
        let mut peers = Vec::new();
        for entry in &self.shared.config.fleet_peers {
            match tokio::net::lookup_host(entry.as_str()).await {
                Ok(addrs) => peers.extend(addrs.filter(|a| own.is_none_or(|own| !same_endpoint(own, *a)))),
                Err(error) => tracing::warn!(peer = %entry, %error, "a fleet peer's name does not resolve"),
            }
        }
        peers.sort();
        peers.dedup();
        peers
    }

    /// The fleet as `GET /status` shows it.
    pub(super) fn fleet_status(&self) -> FleetView {
        let part = self.current_part();
        let peers = self.peer_views.lock().unwrap_or_else(|e| e.into_inner()).clone();
        FleetView {
            proxy_id: self.proxy_id(),
            part: part.name().into(),
            epoch: part.epoch().map(str::to_string),
            driver: match &part {
                Part::Idle => None,
                Part::Claimed { message, .. } | Part::Held { message, .. } | Part::Switched { message, .. } => {
                    Some(message.driver.clone())
                }
            },
            peers,
        }
    }

    /// `redis_handover_fleet_peer_up{peer="..."}` for each peer, in the Prometheus text format.
    pub fn fleet_metrics(&self) -> String {
        let views = self.peer_views.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if views.is_empty() {
            return String::new();
        }
        let mut text = String::from(
            "# HELP redis_handover_fleet_peer_up Whether a fleet peer's admin port answered the last look.\n\
             # TYPE redis_handover_fleet_peer_up gauge\n",
        );
        for view in views {
            text.push_str(&format!(
                "redis_handover_fleet_peer_up{{peer=\"{}\"}} {}\n",
                view.addr,
                u8::from(view.reachable)
            ));
        }
        text
    }

    /// Looks at every peer's status, for `GET /status` and the metrics.
    pub(super) async fn look_at_peers(&self) {
        let peers = self.peers().await;
        let mut views = Vec::with_capacity(peers.len());
        for peer in peers {
            let view = match self
                .call_peer(peer, "GET", "/status", None, Duration::from_millis(500))
                .await
            {
                // A peer whose status does not read as this build's (another version of the proxy) answered
                // all the same: reachable, with what it said unknown.
                Ok(answer) => {
                    let status = serde_json::from_value::<Status>(answer).ok();
                    PeerView {
                        addr: peer.to_string(),
                        reachable: true,
                        proxy_id: status.as_ref().map(|s| s.fleet.proxy_id.clone()),
                        phase: status.as_ref().map(|s| s.phase.name().to_string()),
                        part: status.as_ref().map(|s| s.fleet.part.clone()),
                        primary: status.map(|s| s.primary.addr),
                    }
                }
                Err(_) => PeerView {
                    addr: peer.to_string(),
                    reachable: false,
                    proxy_id: None,
                    phase: None,
                    part: None,
                    primary: None,
                },
            };
            views.push(view);
        }
        *self.peer_views.lock().unwrap_or_else(|e| e.into_inner()) = views;
    }

    /// Calls a peer's admin port: the JSON answer of a 2xx, the peer's reason otherwise. The call runs on a
    /// blocking thread with ureq (the HTTP client `ctl` uses), since the fleet makes a handful of calls per
    /// handover: not worth an async HTTP client stack.
    pub(super) async fn call_peer(
        &self,
        peer: SocketAddr,
        method: &'static str,
        path: &'static str,
        body: Option<serde_json::Value>,
        timeout: Duration,
    ) -> Result<serde_json::Value, Refusal> {
        let token = self.shared.config.admin_token.clone();
        let task = tokio::task::spawn_blocking(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(timeout))
                .build()
                .into();
            let url = format!("http://{peer}{path}");
            let auth = token.map(|t| format!("Bearer {t}"));
            let response = if method == "GET" {
                let mut request = agent.get(&url);
                if let Some(auth) = &auth {
                    request = request.header("Authorization", auth);
                }
                request.call()
            } else {
                let mut request = agent.post(&url);
                if let Some(auth) = &auth {
                    request = request.header("Authorization", auth);
                }
                request.send_json(body.unwrap_or(serde_json::Value::Null))
            };
            let mut response = response.map_err(|e| Refusal(format!("{peer}: {e}")))?;
            let status = response.status().as_u16();
            let answer: serde_json::Value = response
                .body_mut()
                .read_json()
                .map_err(|e| Refusal(format!("{peer}: answered HTTP {status} without JSON: {e}")))?;
            if (200..300).contains(&status) {
                Ok(answer)
            } else {
                let error = answer["error"].as_str().unwrap_or("no reason given");
                Err(Refusal(format!("{peer} refused (HTTP {status}): {error}")))
            }
        });
        // The blocking call is bounded by its own timeout; this bound only covers a busy blocking pool.
        match tokio::time::timeout(timeout + Duration::from_secs(1), task).await {
            Ok(Ok(result)) => result,
            Ok(Err(error)) => Err(Refusal(format!("{peer}: {error}"))),
            Err(_) => Err(Refusal(format!(
                "{peer} did not answer within {} ms",
                timeout.as_millis()
            ))),
        }
    }

    /// Sends one step to each of `peers` at once; the peers that answered, and the refusals of the others.
    pub(super) async fn tell_peers(
        self: &Arc<Self>,
        peers: &[SocketAddr],
        path: &'static str,
        message: &Message,
        timeout: Duration,
    ) -> (Vec<SocketAddr>, Vec<Refusal>) {
        let body = serde_json::to_value(message).expect("a message serializes");
        let calls = peers.iter().map(|&peer| {
            let this = self.clone();
            let body = body.clone();
            tokio::spawn(async move { (peer, this.call_peer(peer, "POST", path, Some(body), timeout).await) })
        });
        let mut answered = Vec::new();
        let mut refusals = Vec::new();
        for call in calls.collect::<Vec<_>>() {
            match call.await {
                Ok((peer, Ok(_))) => answered.push(peer),
                Ok((_, Err(refusal))) => refusals.push(refusal),
                Err(error) => refusals.push(Refusal(error.to_string())),
            }
        }
        (answered, refusals)
    }

    /// The `run_id`s of two servers, each `None` when it cannot be read.
    pub(super) async fn run_ids(&self, first: &Server, second: &Server) -> (Option<String>, Option<String>) {
        let run_id = |server: &Server| {
            let server = server.clone();
            async move {
                let mut conn = self.connect(&server).await.ok()?;
                let info = conn.info("server", Duration::from_secs(1)).await.ok()?;
                info.get("run_id").cloned()
            }
        };
        tokio::join!(run_id(first), run_id(second))
    }

    /// Checks that a step names the servers this proxy fronts, the primary now first: by their `run_id` when the
    /// driver gave them (proxies may reach the servers by different addresses), else by address.
    async fn same_servers(&self, message: &Message) -> Result<(), String> {
        let Some((source, target)) = self.servers() else {
            return Err("this proxy has no NEW server configured".into());
        };
        let same = match (&message.from_id, &message.to_id) {
            (Some(from), Some(to)) => {
                let (source_id, target_id) = self.run_ids(&source, &target).await;
                source_id.as_ref() == Some(from) && target_id.as_ref() == Some(to)
            }
            _ => *source.addr == *message.from && *target.addr == *message.to,
        };
        if same {
            Ok(())
        } else {
            Err(format!(
                "this proxy hands over from {} to {}, which are not the servers {} and {} that the driver names",
                source.addr, target.addr, message.from, message.to
            ))
        }
    }

    /// `POST /fleet/claim`: another proxy starts a handover; this one starts or joins no other until the claim
    /// ends or lapses. Renewals come with the same epoch.
    pub async fn fleet_claim(&self, message: Message) -> Result<serde_json::Value, String> {
        if self.is_running() && !self.yield_own_claim(&message.epoch) {
            let phase = self.lock().phase.unwrap_or(super::Phase::Idle);
            return Err(format!(
                "a handover runs on this proxy ({}, phase {})",
                self.proxy_id(),
                phase.name()
            ));
        }
        let renewal = self.part.lock().unwrap_or_else(|e| e.into_inner()).epoch() == Some(message.epoch.as_str());
        if !renewal {
            self.same_servers(&message).await?;
        }
        let mut part = self.part.lock().unwrap_or_else(|e| e.into_inner());
        let until = Instant::now() + Duration::from_millis(message.lease_ms);
        match &*part {
            Part::Idle => {}
            // A claim lapsed, renewed, or of a handover started later: the older handover goes first.
            Part::Claimed {
                message: held,
                until: lapses,
            } if held.epoch == message.epoch || *lapses < Instant::now() || older(&message.epoch, &held.epoch) => {}
            Part::Held { message: held, .. } | Part::Switched { message: held, .. } if held.epoch == message.epoch => {
                return Ok(json!({ "claimed": message.epoch, "proxy_id": self.proxy_id() }));
            }
            other => {
                return Err(format!(
                    "busy with handover {} of {} ({})",
                    other.epoch().unwrap_or("?"),
                    match other {
                        Part::Claimed { message, .. } | Part::Held { message, .. } | Part::Switched { message, .. } => {
                            message.driver.as_str()
                        }
                        Part::Idle => "?",
                    },
                    other.name()
                ));
            }
        }
        *part = Part::Claimed {
            message: message.clone(),
            until,
        };
        Ok(json!({ "claimed": message.epoch, "proxy_id": self.proxy_id() }))
    }

    /// A handover this proxy is starting, still asking its peers (no server touched yet), gives way to `epoch`
    /// when that one started earlier: two handovers started at once end with the older one going on.
    fn yield_own_claim(&self, epoch: &str) -> bool {
        let mut own = self.own_claim.lock().unwrap_or_else(|e| e.into_inner());
        match own.as_mut() {
            Some(claim) if older(epoch, &claim.epoch) => {
                claim.yielded = true;
                tracing::info!(own = %claim.epoch, to = %epoch, "fleet: this proxy's handover gives way to an older one");
                true
            }
            _ => false,
        }
    }

    /// `POST /fleet/hold`: holds writes and drains the ones in flight (within the lease), ready for the fence.
    pub async fn fleet_hold(self: &Arc<Self>, message: Message) -> Result<serde_json::Value, String> {
        let lease = Duration::from_millis(message.lease_ms);
        let until = Instant::now() + lease;
        let generation = self.shared.primary.generation();
        {
            let mut part = self.part.lock().unwrap_or_else(|e| e.into_inner());
            match &*part {
                Part::Claimed { message: claim, .. } if claim.epoch == message.epoch => {}
                Part::Held { message: held, .. } if held.epoch == message.epoch => {
                    return Ok(json!({ "held": message.epoch, "proxy_id": self.proxy_id() }));
                }
                other => {
                    return Err(format!(
                        "not claimed for handover {} (this proxy is {}{})",
                        message.epoch,
                        other.name(),
                        other.epoch().map(|e| format!(" for {e}")).unwrap_or_default()
                    ));
                }
            }
            *part = Part::Held {
                message: message.clone(),
                until,
                generation,
            };
        }
        let gate = &self.shared.gate;
        gate.close();
        // The lease runs from here, whatever becomes of the driver.
        let this = self.clone();
        let epoch = message.epoch.clone();
        tokio::spawn(async move { this.watch_lease(epoch).await });
        let drained_by = Instant::now() + lease.saturating_sub(LEASE_MARGIN);
        while gate.writes_in_flight() > 0 && Instant::now() < drained_by {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if gate.writes_in_flight() > 0 {
            let left = gate.writes_in_flight();
            self.fleet_end(&message.epoch);
            return Err(format!("{left} sessions still waited for write replies"));
        }
        tracing::info!(epoch = %message.epoch, driver = %message.driver, "fleet: writes held for the driver's pause");
        Ok(json!({ "held": message.epoch, "proxy_id": self.proxy_id() }))
    }

    /// `POST /fleet/switch`: NEW was promoted; this proxy's sessions move to it, writes still held.
    pub async fn fleet_switch(&self, message: Message) -> Result<serde_json::Value, String> {
        let generation = {
            let mut part = self.part.lock().unwrap_or_else(|e| e.into_inner());
            match &*part {
                Part::Held {
                    message: held,
                    generation,
                    until,
                } if held.epoch == message.epoch => {
                    let generation = *generation;
                    *part = Part::Switched {
                        message: message.clone(),
                        until: *until,
                    };
                    generation
                }
                Part::Switched { message: held, .. } if held.epoch == message.epoch => {
                    return Ok(json!({ "switched": message.epoch }));
                }
                other => return Err(format!("not holding for handover {} ({})", message.epoch, other.name())),
            }
        };
        let warnings = self.switch_here(generation).await;
        tracing::info!(epoch = %message.epoch, ?warnings, "fleet: sessions moved to the promoted server");
        Ok(json!({ "switched": message.epoch, "proxy_id": self.proxy_id(), "warnings": warnings }))
    }

    /// `POST /fleet/release`: every proxy switched; the held writes go to NEW.
    pub fn fleet_release(&self, message: Message) -> Result<serde_json::Value, String> {
        let part = self.part.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match part {
            Part::Switched { message: held, .. } if held.epoch == message.epoch => {
                self.fleet_end(&message.epoch);
                tracing::info!(epoch = %message.epoch, "fleet: writes released to the new primary");
                Ok(json!({ "released": message.epoch }))
            }
            Part::Idle => Ok(json!({ "released": message.epoch })),
            other => Err(format!(
                "not switched for handover {} ({})",
                message.epoch,
                other.name()
            )),
        }
    }

    /// `POST /fleet/abort`: the handover stopped before the promotion; held writes go to OLD.
    pub fn fleet_abort(&self, message: Message) -> Result<serde_json::Value, String> {
        let part = self.part.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match part {
            Part::Switched { message: held, .. } if held.epoch == message.epoch => {
                Err(format!("handover {} was switched here already", message.epoch))
            }
            _ => {
                self.fleet_end(&message.epoch);
                Ok(json!({ "aborted": message.epoch }))
            }
        }
    }

    /// Ends this proxy's part in `epoch`, if it has one: its gate opens.
    fn fleet_end(&self, epoch: &str) {
        let mut part = self.part.lock().unwrap_or_else(|e| e.into_inner());
        let held = matches!(&*part, Part::Held { .. } | Part::Switched { .. });
        if part.epoch() == Some(epoch) {
            *part = Part::Idle;
            if held {
                self.shared.gate.open();
            }
        }
    }

    /// Moves this proxy's sessions to the other server, promoted: what SWITCH does, and what a peer does by
    /// itself when the servers say the switch happened. Returns what could not be done.
    async fn switch_here(&self, old_generation: u64) -> Vec<String> {
        let Some((source, target)) = self.servers() else {
            return vec!["no NEW server is configured".into()];
        };
        let shared = &self.shared;
        let Some(primary) = shared.primary.switch_from(old_generation, target.clone()) else {
            // Another switch came first: what was decided from the primary before it is moot.
            return Vec::new();
        };
        shared.gate.notify();
        *self.fenced.lock().unwrap_or_else(|e| e.into_inner()) = Some((source.side, Default::default()));
        tracing::info!(primary = %primary.server.addr, generation = primary.generation, "primary switched");
        let mut warnings = Vec::new();
        let mut known = std::collections::HashMap::new();
        match self.connect(&source).await {
            Ok(mut conn) => {
                let wait = Duration::from_millis(500);
                warnings.extend(switch::end_blocked_calls(shared, &mut conn, old_generation, &mut known, wait).await);
            }
            Err(error) => warnings.push(format!("could not reach {} to end blocked calls: {error}", source.addr)),
        }
        match self.connect(&target).await {
            Ok(mut conn) => warnings.extend(switch::load_scripts(shared, &mut conn).await),
            Err(error) => warnings.push(format!("could not reach {} to load scripts: {error}", target.addr)),
        }
        let settle_by = Instant::now() + Duration::from_millis(500);
        warnings.extend(switch::settle(shared, primary.generation, settle_by).await);
        self.lock().fence = Some(format!(
            "the former primary {} was fenced by the fleet's handover",
            source.addr
        ));
        warnings
    }

    /// Outside any handover: when the primary carries the proxy's fence, another proxy (one this proxy does not
    /// know as a peer, or one that left it out) has handed over; if the servers say NEW was promoted from it, this
    /// proxy switches too, instead of sending its writes to a fenced server for good.
    pub(super) async fn follow_a_fenced_primary(&self) {
        if self.is_running() || !matches!(*self.part.lock().unwrap_or_else(|e| e.into_inner()), Part::Idle) {
            return;
        }
        let looks = &self.shared.looks;
        let number = looks.started.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let generation = self.shared.primary.generation();
        let Some((source, target)) = self.servers() else {
            // No other server to switch to: a refusal is the server's own answer.
            looks.unfenced.fetch_max(number, std::sync::atomic::Ordering::SeqCst);
            self.shared.gate.notify();
            return;
        };
        let seen = match self.connect(&source).await {
            Ok(mut conn) => super::resolve::look(&mut conn, Duration::from_secs(1)).await.ok(),
            Err(_) => None,
        };
        let Some(seen) = seen else { return };
        if !seen.fenced && seen.master {
            // Sessions holding back a refusal give it to their clients: it was the server's own answer.
            looks.unfenced.fetch_max(number, std::sync::atomic::Ordering::SeqCst);
            self.shared.gate.notify();
            return;
        }
        if self.look_at(&source, &target).await != Outcome::Promoted {
            return;
        }
        let warnings = self.switch_here(generation).await;
        tracing::warn!(
            from = %source.addr,
            to = %target.addr,
            ?warnings,
            "the primary was fenced by a handover this proxy did not take part in, and the other server promoted \
             from it: switched to it"
        );
    }

    /// Waits out a hold's lease. If the driver has neither switched nor released this proxy by then (it died, stalled
    /// or lost this proxy), the servers say what happened: NEW promoted (this proxy switches and releases), OLD
    /// unfenced (it aborts), or neither yet (it holds, then refuses writes, until they tell; a handover stopped
    /// between the fence and the promotion is undone once its driver's connections are closed).
    async fn watch_lease(self: Arc<Self>, epoch: String) {
        loop {
            let until = match &*self.part.lock().unwrap_or_else(|e| e.into_inner()) {
                Part::Held { message, until, .. } | Part::Switched { message, until } if message.epoch == epoch => {
                    *until
                }
                _ => return,
            };
            if Instant::now() >= until {
                break;
            }
            tokio::time::sleep(until.saturating_duration_since(Instant::now()).min(POLL)).await;
        }
        let part = self.part.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let generation = match part {
            Part::Switched { .. } => {
                tracing::warn!(%epoch, "fleet: the driver did not release this proxy within the lease; releasing");
                return self.fleet_end(&epoch);
            }
            Part::Held { generation, .. } => generation,
            _ => return,
        };
        tracing::warn!(%epoch, "fleet: the driver went silent within the hold; asking the servers");
        let Some((old, new)) = self.servers() else { return };
        let since = Instant::now();
        let outcome = loop {
            if self.part.lock().unwrap_or_else(|e| e.into_inner()).epoch() != Some(epoch.as_str()) {
                return; // the driver came back and ended it
            }
            match self.look_and_settle(&old, &new, since).await {
                outcome @ (Outcome::Promoted | Outcome::Former) => break outcome,
                // A stopped handover's driver gets its lease, which bounds the wait: writes stay held.
                Outcome::Stopped => {}
                Outcome::InDoubt(why) => {
                    if since.elapsed() >= HOLD_AFTER_LEASE && self.shared.gate.refusal().is_none() {
                        self.shared.gate.refuse(bytes::Bytes::from(format!(
                            "-TRYAGAIN the proxy cannot tell yet which server is the primary ({why}); writes are \
                             refused until it can\r\n"
                        )));
                    }
                }
            }
            tokio::time::sleep(POLL).await;
        };
        if outcome == Outcome::Promoted {
            let warnings = self.switch_here(generation).await;
            tracing::warn!(%epoch, ?warnings, "fleet: the servers say NEW was promoted; switched without the driver");
        } else {
            tracing::warn!(%epoch, "fleet: the servers say OLD is still the primary; the handover was aborted");
        }
        self.fleet_end(&epoch);
    }
}

/// A handover this proxy drives while it asks its peers to follow (see [`Handover::yield_own_claim`]).
#[derive(Debug)]
pub(super) struct OwnClaim {
    pub epoch: String,
    /// It gave way to an older handover: it must stop before touching a server.
    pub yielded: bool,
}

/// Whether the handover named `a` started before the one named `b` (epochs are `driver@start_ms`; the driver's id
/// breaks a tie).
fn older(a: &str, b: &str) -> bool {
    let split = |epoch: &str| {
        let (driver, at) = epoch.rsplit_once('@').unwrap_or((epoch, "0"));
        (at.parse::<u64>().unwrap_or(u64::MAX), driver.to_string())
    };
    split(a) < split(b)
}

/// Whether two socket addresses are the same endpoint: same port, and the same IP, or one of them bound to every
/// address and the other a loopback one.
fn same_endpoint(own: SocketAddr, other: SocketAddr) -> bool {
    own.port() == other.port()
        && (own.ip() == other.ip()
            || (own.ip().is_unspecified() && other.ip().is_loopback())
            || (own.ip().is_loopback() && other.ip().is_loopback()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handover_started_first_goes_first() {
        assert!(older("proxy-b@100", "proxy-a@200"));
        assert!(!older("proxy-a@200", "proxy-b@100"));
        assert!(older("proxy-a@100", "proxy-b@100"), "the driver's id breaks a tie");
        assert!(!older("proxy-a@100", "proxy-a@100"));
    }

    #[test]
    fn a_proxy_finds_itself_among_its_peers() {
        let own: SocketAddr = "127.0.0.1:7380".parse().unwrap();
        assert!(same_endpoint(own, "127.0.0.1:7380".parse().unwrap()));
        assert!(!same_endpoint(own, "127.0.0.1:7381".parse().unwrap()));
        assert!(!same_endpoint(own, "10.0.0.2:7380".parse().unwrap()));
        let any: SocketAddr = "0.0.0.0:7380".parse().unwrap();
        assert!(same_endpoint(any, "127.0.0.1:7380".parse().unwrap()));
    }
}
