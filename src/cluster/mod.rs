//! Fronting a Redis Cluster: the proxy presents itself to cluster-aware clients as the cluster's nodes, one proxy
//! port per shard (`cluster_ports`), so that clients route by slot themselves and never connect to a server.
//!
//! Each port is a proxy of its own for one shard's primary ([`Shared`], with its sessions, links and gate), as a
//! standalone proxy is for its server: MULTI, Pub/Sub, blocking calls, RESP3 and AUTH behave as they do there.
//! What the cluster adds is answered from the proxy's [`View`] of it: `CLUSTER SLOTS`, `CLUSTER SHARDS` and
//! `CLUSTER NODES` name the proxy's ports (see [`answers`]), and `-MOVED` and `-ASK` replies are rewritten to the
//! port of the shard they point to. The view is read from `CLUSTER NODES` every second, and at once when a reply
//! names a node the proxy does not know.

pub mod answers;
pub mod topology;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::control::{ControlConn, Credentials};
use crate::primary::{Server, Side};
use crate::shared::Shared;
use topology::{Topology, assign_ports};

/// How often the proxy reads the cluster's nodes.
const REFRESH: Duration = Duration::from_secs(1);
/// The bound on one look at a node.
const LOOK_TIMEOUT: Duration = Duration::from_secs(2);

/// The cluster as the proxy presents it.
#[derive(Debug, Clone, Default)]
pub struct View {
    pub topology: Topology,
    /// The proxy port of each shard of `topology` (none when there are more shards than ports).
    pub ports: Vec<Option<u16>>,
    /// The Redis version of the node the view was read from, which sets the shape of the answers.
    pub version: (u32, u32, u32),
}

impl View {
    /// The node ID of the primary of the shard presented on `port`.
    pub fn primary_on(&self, port: u16) -> Option<&str> {
        self.topology
            .shards
            .iter()
            .zip(&self.ports)
            .find(|(_, p)| **p == Some(port))
            .map(|(shard, _)| shard.primary.id.as_str())
    }

    /// The proxy port of the shard a node address belongs to.
    pub fn port_of_addr(&self, addr: &str) -> Option<u16> {
        self.topology.shard_of_addr(addr).and_then(|i| self.ports[i])
    }

    /// The proxy port of the shard that serves `slot`.
    pub fn port_of_slot(&self, slot: u16) -> Option<u16> {
        self.topology.shard_of_slot(slot).and_then(|i| self.ports[i])
    }
}

/// What every shard's proxy shares about the cluster.
pub struct Front {
    /// The host clients are told to connect to (`cluster_announce_host`, or the listen address's host).
    pub announce_host: String,
    view: ArcSwap<View>,
    /// The shards' proxies by port, for the status (weak: each holds the front).
    proxies: std::sync::Mutex<std::collections::BTreeMap<u16, std::sync::Weak<Shared>>>,
    /// What every shard's proxy counts into: `/metrics` covers them all.
    pub telemetry: Arc<crate::telemetry::Telemetry>,
    /// The running or last handover's steps, by shard port.
    steps: std::sync::Mutex<std::collections::BTreeMap<u16, ShardStep>>,
    /// Each moved shard's way back, by shard port (see [`ShardWindow`]).
    windows: std::sync::Mutex<std::collections::BTreeMap<u16, ShardWindow>>,
    /// Whether a task watches the open windows.
    pub windows_watched: std::sync::atomic::AtomicBool,
    /// Wakes the refresh: a reply named a node the view does not have.
    refresh_now: tokio::sync::Notify,
}

impl Front {
    pub fn new(announce_host: String, view: View) -> Front {
        Front {
            announce_host,
            view: ArcSwap::from_pointee(view),
            proxies: Default::default(),
            telemetry: Arc::new(crate::telemetry::Telemetry::new()),
            steps: Default::default(),
            windows: Default::default(),
            windows_watched: Default::default(),
            refresh_now: tokio::sync::Notify::new(),
        }
    }

    /// The proxy of the shard on `port`.
    pub fn proxy_on(&self, port: u16) -> Option<Arc<Shared>> {
        let proxies = self.proxies.lock().unwrap_or_else(|e| e.into_inner());
        proxies.get(&port).and_then(std::sync::Weak::upgrade)
    }

    /// The handover's step of the shard on `port`.
    pub fn step_on(&self, port: u16) -> Option<ShardStep> {
        self.steps.lock().unwrap_or_else(|e| e.into_inner()).get(&port).cloned()
    }

    /// Changes the handover's step of the shard on `port`.
    pub fn update_step(&self, port: u16, update: impl FnOnce(&mut ShardStep)) {
        let mut steps = self.steps.lock().unwrap_or_else(|e| e.into_inner());
        update(steps.entry(port).or_default());
    }

    /// Forgets the last handover's steps, as a new one starts.
    pub fn clear_steps(&self) {
        self.steps.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// The way back of the shard on `port`, if it has one.
    pub fn window_on(&self, port: u16) -> Option<ShardWindow> {
        self.windows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&port)
            .cloned()
    }

    /// Every shard's way back, by port.
    pub fn windows(&self) -> std::collections::BTreeMap<u16, ShardWindow> {
        self.windows.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Changes the ways back under one lock: `change` sees them all, and may add, alter or remove any.
    pub fn change_windows<T>(&self, change: impl FnOnce(&mut std::collections::BTreeMap<u16, ShardWindow>) -> T) -> T {
        change(&mut self.windows.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The clients connected to the proxy of the shard on `port`.
    pub fn clients_on(&self, port: u16) -> usize {
        let proxies = self.proxies.lock().unwrap_or_else(|e| e.into_inner());
        proxies
            .get(&port)
            .and_then(std::sync::Weak::upgrade)
            .map_or(0, |shared| shared.clients.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// The view now.
    pub fn view(&self) -> Arc<View> {
        self.view.load_full()
    }

    /// Wakes the refresh: a session waits for a look at the cluster.
    pub fn wake(&self) {
        self.refresh_now.notify_one();
    }

    /// What becomes of a `-MOVED <slot> <addr>` or `-ASK <slot> <addr>` reply from the primary of the shard on
    /// `own_port`: `addr` replaced by the proxy port of that node's shard, or [`Redirect::Unplaced`] when the view
    /// cannot place it (a node it does not know, or a node of the replying shard itself: its primary changed), which
    /// wakes the refresh. `None` for any other reply.
    pub fn redirect(&self, frame: &[u8], own_port: u16) -> Option<Redirect> {
        let text = std::str::from_utf8(frame).ok()?;
        let text = text.strip_suffix("\r\n")?;
        let (kind, rest) = text.split_once(' ')?;
        if kind != "-MOVED" && kind != "-ASK" {
            return None;
        }
        let (slot, addr) = rest.split_once(' ')?;
        let slot: u16 = slot.parse().ok()?;
        match self.view().port_of_addr(addr) {
            Some(port) if port != own_port => Some(Redirect::To(Bytes::from(format!(
                "{kind} {slot} {}:{port}\r\n",
                self.announce_host
            )))),
            _ => {
                self.refresh_now.notify_one();
                Some(Redirect::Unplaced)
            }
        }
    }
}

/// Where one shard is in a cluster's handover.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ShardStep {
    /// The node that takes the shard over: a NEW node, or on the way back (`ctl rollback`) the former primary.
    pub to: String,
    pub state: StepState,
    /// How long the shard's writes were held while its primary moved.
    pub pause_ms: Option<f64>,
    /// How far NEW was behind the primary at the last look, in bytes of the replication stream.
    pub lag_bytes: Option<i64>,
}

/// A shard's way back after a cluster handover: its former primary stays a replica of the NEW node that took over,
/// and `ctl rollback` fails over to it again, the same way, while the window is open. It closes, with the cause, when
/// the former primary restarts, follows another node, starts a full sync (an older Redis cannot load a newer RDB:
/// it would empty itself and stay out of sync), cannot apply a command NEW sent it, is cut off for longer than the
/// grace, or when `rollback_window_s` runs out. A closed window leaves the node as it is: a cluster node cannot be
/// detached as a standalone one is.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ShardWindow {
    pub state: crate::handover::window::WindowState,
    /// The former primary, a replica now, and its node ID.
    pub follower: String,
    pub follower_id: String,
    /// The primary it follows (the NEW node), and its node ID.
    pub primary: String,
    pub primary_id: String,
    pub opened_at_unix_ms: u64,
    /// When `rollback_window_s` runs out.
    pub until_unix_ms: u64,
    pub closed_at_unix_ms: Option<u64>,
    /// How far the follower is behind the primary, in bytes of the replication stream, at the last look.
    pub lag_bytes: Option<i64>,
    pub link_up: bool,
    pub cause: Option<crate::handover::window::Cause>,
    /// Why it closed, naming what happened.
    pub reason: Option<String>,
    /// The follower's run ID and `unexpected_error_replies` (6.2 and later) as the window opened.
    #[serde(skip)]
    pub follower_run_id: String,
    #[serde(skip)]
    pub errors_at_open: Option<u64>,
}

impl ShardStep {
    /// A shard's step as a run starts: waiting, or switched when `to` serves it already.
    pub fn starting(to: &str, done: bool) -> ShardStep {
        ShardStep {
            to: to.to_string(),
            state: if done { StepState::Switched } else { StepState::Waiting },
            pause_ms: None,
            lag_bytes: None,
        }
    }
}

/// A shard's step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    /// Checked, not started.
    #[default]
    Waiting,
    /// NEW meets the cluster.
    Joining,
    /// NEW replicates from the shard's primary.
    Syncing,
    /// NEW is caught up and known to the primary as its replica.
    Synced,
    /// The shard's writes are held while its primary moves.
    Paused,
    /// NEW is the shard's primary.
    Switched,
}

impl StepState {
    /// The state as `GET /status` names it.
    pub fn name(self) -> &'static str {
        match self {
            StepState::Waiting => "waiting",
            StepState::Joining => "joining",
            StepState::Syncing => "syncing",
            StepState::Synced => "synced",
            StepState::Paused => "paused",
            StepState::Switched => "switched",
        }
    }
}

/// A redirection, as the proxy passes it on.
#[derive(Debug, PartialEq, Eq)]
pub enum Redirect {
    /// To the client, naming the proxy port of the shard it points to.
    To(Bytes),
    /// Not placed yet: the request was not executed. A session holds it back and sends it again to the shard's new
    /// primary once a look at the cluster found one (see [`crate::session::state::Parked`]); otherwise the client
    /// is told to try again ([`TRY_AGAIN`]), as Redis tells it during a resharding: sending it back to the port it
    /// came from would only bounce it.
    Unplaced,
}

/// The answer to a redirection the proxy cannot place.
pub const TRY_AGAIN: &[u8] = b"-TRYAGAIN the proxy is learning where this slot went; try again\r\n";

/// Where a shard's proxy stands in the cluster: the front, and its own port.
#[derive(Clone)]
pub struct Place {
    pub front: Arc<Front>,
    pub port: u16,
}

/// Why the proxy cannot front a cluster.
#[derive(Debug, thiserror::Error)]
pub enum FrontError {
    #[error("cannot read the cluster from {addr}: {reason}")]
    Unreadable { addr: String, reason: String },
    #[error("{0} is not a cluster node (cluster_enabled:0): cluster_ports is for fronting a Redis Cluster")]
    NotACluster(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error("the listen address's host {0} is not one clients can connect to: set cluster_announce_host")]
    NoAnnounceHost(String),
}

/// Reads the cluster from its nodes, over one control connection kept from one look to the next.
struct Reader {
    credentials: Credentials,
    tls: Option<crate::net::BackendTls>,
    conn: Option<ControlConn>,
}

impl Reader {
    fn new(config: &Config) -> Result<Reader, crate::net::TlsError> {
        Ok(Reader {
            credentials: Credentials {
                user: config.old_user.clone(),
                password: config.old_password.clone(),
            },
            tls: crate::net::BackendTls::from_config(config)?,
            conn: None,
        })
    }

    /// The node the reader is connected to.
    fn node(&self) -> Option<&str> {
        self.conn.as_ref().map(ControlConn::addr)
    }

    /// Drops the connection: the next look asks the seeds in order.
    fn forget_node(&mut self) {
        self.conn = None;
    }

    /// The cluster as the node the reader is connected to sees it, or else the first of `seeds` that answers.
    async fn read(&mut self, seeds: &[String]) -> Result<View, FrontError> {
        if let Some(mut conn) = self.conn.take()
            && let Ok(view) = look(&mut conn).await
        {
            self.conn = Some(conn);
            return Ok(view);
        }
        let mut last = FrontError::Unreadable {
            addr: seeds.join(", "),
            reason: "no node to ask".into(),
        };
        for seed in seeds {
            let server = Server {
                side: Side::Old,
                addr: seed.as_str().into(),
            };
            let mut conn = match ControlConn::connect(&server, &self.credentials, LOOK_TIMEOUT, self.tls.as_ref()).await
            {
                Ok(conn) => conn,
                Err(error) => {
                    last = FrontError::Unreadable {
                        addr: seed.clone(),
                        reason: error.to_string(),
                    };
                    continue;
                }
            };
            match look(&mut conn).await {
                Ok(view) => {
                    self.conn = Some(conn);
                    return Ok(view);
                }
                Err(error @ FrontError::NotACluster(_)) => return Err(error),
                Err(error) => last = error,
            }
        }
        Err(last)
    }
}

/// One look at a node: its version, and the cluster as its `CLUSTER NODES` says.
async fn look(conn: &mut ControlConn) -> Result<View, FrontError> {
    let addr = conn.addr().to_string();
    let unreadable = |reason: String| FrontError::Unreadable {
        addr: addr.clone(),
        reason,
    };
    let info = conn
        .info("cluster", LOOK_TIMEOUT)
        .await
        .map_err(|e| unreadable(e.to_string()))?;
    if info.get("cluster_enabled").map(String::as_str) != Some("1") {
        return Err(FrontError::NotACluster(addr.clone()));
    }
    let server = conn
        .info("server", LOOK_TIMEOUT)
        .await
        .map_err(|e| unreadable(e.to_string()))?;
    let version = server
        .get("redis_version")
        .and_then(|v| crate::control::parse_version(v))
        .unwrap_or_default();
    let text = match conn.call(&["CLUSTER", "NODES"], LOOK_TIMEOUT).await {
        Ok(crate::protocol::value::Value::Str(text)) => String::from_utf8_lossy(&text).into_owned(),
        Ok(other) => return Err(unreadable(format!("CLUSTER NODES answered {other:?}"))),
        Err(e) => return Err(unreadable(e.to_string())),
    };
    let mut nodes = topology::parse_nodes(&text).map_err(unreadable)?;
    // A node that no other node has met yet does not know its own IP (a cluster of one): it is the one asked.
    let host = addr.rsplit_once(':').map_or("", |(host, _)| host);
    for node in &mut nodes {
        if node.addr.starts_with(':') {
            node.addr = format!("{host}{}", node.addr);
        }
    }
    Ok(View {
        topology: Topology::from_nodes(&nodes),
        ports: Vec::new(),
        version,
    })
}

/// The proxies of the shards, by port, and how to start one for a new shard.
struct Shards {
    config: Config,
    front: Arc<Front>,
    host: String,
    by_port: HashMap<u16, Arc<Shared>>,
    /// Every node ID ever presented, with its shard's port: a shard keeps its port even across a look that did
    /// not see it.
    ports_by_id: HashMap<String, u16>,
    stop: CancellationToken,
    tasks: tokio::task::JoinSet<std::io::Result<()>>,
}

impl Shards {
    /// Starts the proxy of the shard on `port`, toward `primary`.
    async fn start(&mut self, port: u16, primary: &str) -> Result<Arc<Shared>, FrontError> {
        let addr = format!("{}:{port}", self.host);
        let listener = crate::server::bind(&addr).await.map_err(|source| FrontError::Listen {
            addr: addr.clone(),
            source,
        })?;
        let shared = shard_shared(
            &self.config,
            primary,
            &addr,
            Place {
                front: self.front.clone(),
                port,
            },
        )
        .map_err(|e| FrontError::Listen {
            addr: addr.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()),
        })?;
        if self.config.backend_links == crate::config::BackendLinks::Shared {
            shared.links.spares.start_watching();
        }
        tracing::info!(listen = %addr, primary, "presenting a shard of the cluster");
        self.by_port.insert(port, shared.clone());
        self.tasks
            .spawn(crate::server::serve_until(listener, shared.clone(), self.stop.clone()));
        Ok(shared)
    }

    /// Brings the shards' proxies in line with `view`, before it is presented: a new shard gets its proxy (a
    /// port that cannot be served is taken out of the view, and tried again at the next look), and a shard whose
    /// primary changed (a failover the proxy did not make) moves its sessions to the new primary.
    async fn follow(&mut self, view: &mut View) {
        for (shard, port) in view.topology.shards.iter().zip(view.ports.iter_mut()) {
            let Some(number) = *port else { continue };
            let primary = shard.primary.addr.as_str();
            match self.by_port.get(&number) {
                // Only to a node that says it is a primary: the node the view was read from may not have heard of
                // a failover yet (then the sessions stay where they are, on the node that did take over).
                Some(shared)
                    if &*shared.primary.current().server.addr != primary
                        && !says_primary(&self.config, primary).await =>
                {
                    tracing::debug!(
                        port = number,
                        primary,
                        "the view names a primary that says it is not one"
                    );
                }
                Some(shared) if &*shared.primary.current().server.addr != primary => {
                    tracing::info!(
                        port = number,
                        primary,
                        "the shard's primary changed: its sessions follow"
                    );
                    shared.primary.switch_to(Server {
                        side: Side::Old,
                        addr: primary.into(),
                    });
                    // Sessions waiting for their client or their server hear of it now.
                    shared.gate.notify();
                }
                Some(_) => {}
                None => {
                    if let Err(error) = self.start(number, primary).await {
                        tracing::error!(%error, "cannot present a new shard");
                        *port = None;
                    }
                }
            }
            if let Some(number) = *port {
                for id in shard.ids() {
                    self.ports_by_id.insert(id.to_string(), number);
                }
            }
        }
    }
}

/// Whether the node at `addr` says it is a primary (`ROLE`), asked within [`LOOK_TIMEOUT`].
async fn says_primary(config: &Config, addr: &str) -> bool {
    let credentials = Credentials {
        user: config.old_user.clone(),
        password: config.old_password.clone(),
    };
    let server = Server {
        side: Side::Old,
        addr: addr.into(),
    };
    let tls = crate::net::BackendTls::from_config(config).ok().flatten();
    let Ok(mut conn) = ControlConn::connect(&server, &credentials, LOOK_TIMEOUT, tls.as_ref()).await else {
        return false;
    };
    matches!(
        conn.call(&["ROLE"], LOOK_TIMEOUT).await,
        Ok(crate::protocol::value::Value::Array(parts))
            if matches!(parts.first(), Some(crate::protocol::value::Value::Str(role)) if role == b"master")
    )
}

/// The configuration of one shard's proxy: the primary is its OLD.
fn shard_shared(
    config: &Config,
    primary: &str,
    listen: &str,
    place: Place,
) -> Result<Arc<Shared>, crate::net::TlsError> {
    let mut config = config.clone();
    config.old = primary.to_string();
    config.new = None;
    config.listen = listen.to_string();
    let mut shared = Shared::with_telemetry(config, place.front.telemetry.clone())?;
    let (front, port) = (place.front.clone(), place.port);
    shared.cluster = Some(place);
    let shared = Arc::new(shared);
    let mut proxies = front.proxies.lock().unwrap_or_else(|e| e.into_inner());
    proxies.entry(port).or_insert_with(|| Arc::downgrade(&shared));
    drop(proxies);
    Ok(shared)
}

/// A cluster fronted: the seed's proxy (for the admin port) and the task that runs until `stop`.
pub struct Running {
    pub seed: Arc<Shared>,
    pub done: tokio::task::JoinHandle<()>,
}

/// Fronts the cluster `config.old` is a node of: a proxy per shard on `cluster_ports`, and `seed` (the listen
/// port) serving as a node of the shard of slot 0, so that any client can start there. Runs until `stop` is
/// cancelled, then lets every shard's sessions finish.
pub async fn start(seed: TcpListener, config: Config, stop: CancellationToken) -> Result<Running, FrontError> {
    let host = config
        .listen
        .rsplit_once(':')
        .map(|(host, _)| host.trim_start_matches('[').trim_end_matches(']').to_string())
        .unwrap_or_default();
    let announce = match &config.cluster_announce_host {
        Some(host) => host.clone(),
        None if host.is_empty() || host == "0.0.0.0" || host == "::" => {
            return Err(FrontError::NoAnnounceHost(host));
        }
        None => host.clone(),
    };
    let mut reader = Reader::new(&config).map_err(|e| FrontError::Unreadable {
        addr: config.old.clone(),
        reason: e.to_string(),
    })?;
    let mut view = reader.read(std::slice::from_ref(&config.old)).await?;
    view.ports = assign_ports(&view.topology, &config.cluster_ports, |_| None, &HashMap::new());
    tracing::info!(
        shards = view.topology.shards.len(),
        uncovered_slots = view.topology.uncovered_slots(),
        "fronting a Redis Cluster"
    );
    let front = Arc::new(Front::new(announce, view.clone()));
    let mut shards = Shards {
        config: config.clone(),
        front: front.clone(),
        host,
        by_port: HashMap::new(),
        ports_by_id: HashMap::new(),
        stop: stop.clone(),
        tasks: tokio::task::JoinSet::new(),
    };
    for (shard, port) in view.topology.shards.iter().zip(&view.ports) {
        if let Some(port) = port {
            shards.start(*port, &shard.primary.addr).await?;
            for id in shard.ids() {
                shards.ports_by_id.insert(id.to_string(), *port);
            }
        }
    }
    let first = view.port_of_slot(0).and_then(|port| shards.by_port.get(&port).cloned());
    let seed_shared = match first {
        Some(shared) => shared,
        None => {
            let port = seed.local_addr().map(|a| a.port()).unwrap_or_default();
            let place = Place {
                front: front.clone(),
                port,
            };
            shard_shared(&config, &config.old, &config.listen, place).map_err(|e| FrontError::Unreadable {
                addr: config.old.clone(),
                reason: e.to_string(),
            })?
        }
    };
    shards
        .tasks
        .spawn(crate::server::serve_until(seed, seed_shared.clone(), stop));
    let done = tokio::spawn(async move {
        refresh(&mut shards, &config, &mut reader).await;
        while let Some(done) = shards.tasks.join_next().await {
            if let Ok(Err(error)) = done {
                tracing::warn!(%error, "a shard's listener failed");
            }
        }
    });
    Ok(Running {
        seed: seed_shared,
        done,
    })
}

/// The least time between two looks, however often a redirection wakes the refresh.
const LOOK_SPACING: Duration = Duration::from_millis(100);

/// Reads the cluster every [`REFRESH`] (sooner when woken) until `stop`, and follows what changed.
async fn refresh(shards: &mut Shards, config: &Config, reader: &mut Reader) {
    let front = shards.front.clone();
    let stop = shards.stop.clone();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(REFRESH) => {}
            () = front.refresh_now.notified() => {}
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = look_and_follow(shards, config, reader) => {}
        }
        tokio::time::sleep(LOOK_SPACING).await;
    }
}

/// One look at the cluster; the view is replaced when it changed and the new one is plausible. It is also each
/// shard proxy's look at its primary, for the sessions that hold back a reply refused as not executed (see
/// [`crate::session::state::Parked`]): a shard whose primary changed has a new generation, and they send their
/// requests again; for the others, the look says the primary stands, and they pass the replies on.
async fn look_and_follow(shards: &mut Shards, config: &Config, reader: &mut Reader) {
    use std::sync::atomic::Ordering;
    let looking: Vec<(Arc<Shared>, u64, u64)> = shards
        .by_port
        .values()
        .map(|shared| {
            let number = shared.looks.started.fetch_add(1, Ordering::SeqCst) + 1;
            (shared.clone(), number, shared.primary.generation())
        })
        .collect();
    if !read_and_follow(shards, config, reader).await {
        return;
    }
    for (shared, number, generation) in looking {
        if shared.primary.generation() == generation {
            shared.looks.unfenced.fetch_max(number, Ordering::SeqCst);
        }
    }
}

/// Reads the cluster and follows it; whether it could.
async fn read_and_follow(shards: &mut Shards, config: &Config, reader: &mut Reader) -> bool {
    let front = shards.front.clone();
    let current = front.view();
    // Ask the primaries first, then the replicas, then the configured node.
    let mut seeds: Vec<String> = Vec::new();
    let primaries = current.topology.shards.iter().map(|s| &s.primary);
    let replicas = current.topology.shards.iter().flat_map(|s| s.replicas.iter());
    for addr in primaries.chain(replicas).map(|n| &n.addr).chain([&config.old]) {
        if !seeds.contains(addr) {
            seeds.push(addr.clone());
        }
    }
    let mut next = match reader.read(&seeds).await {
        Ok(view) => view,
        Err(error) => {
            tracing::warn!(%error, "cannot read the cluster; presenting what was last seen");
            return false;
        }
    };
    // A node that lost its view of the cluster (reset, forgotten, cut off) is not believed over the last view.
    if next.topology.shards.is_empty() || next.topology.uncovered_slots() > current.topology.uncovered_slots() {
        tracing::warn!(
            node = reader.node().unwrap_or("?"),
            shards = next.topology.shards.len(),
            uncovered_slots = next.topology.uncovered_slots(),
            "a node sees less of the cluster than the proxy did; asking another"
        );
        reader.forget_node();
        return false;
    }
    next.ports = assign_ports(
        &next.topology,
        &config.cluster_ports,
        |slot| current.port_of_slot(slot),
        &shards.ports_by_id,
    );
    if next.topology != current.topology || next.ports != current.ports || next.version != current.version {
        shards.follow(&mut next).await;
        tracing::info!(shards = next.topology.shards.len(), "the cluster changed");
        front.view.store(Arc::new(next));
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn front() -> Front {
        let nodes = topology::parse_nodes(
            "a 10.0.0.1:6379@16379 master - 0 0 1 connected 0-8191\n\
             b 10.0.0.2:6379@16379 master - 0 0 2 connected 8192-16383\n\
             c 10.0.0.3:6379@16379 slave b 0 0 2 connected\n",
        )
        .unwrap();
        Front::new(
            "127.0.0.1".into(),
            View {
                topology: Topology::from_nodes(&nodes),
                ports: vec![Some(7001), Some(7002)],
                version: (7, 0, 15),
            },
        )
    }

    #[test]
    fn redirects_name_the_proxy_port_of_the_node_s_shard() {
        let front = front();
        let moved = |frame: &str| match front.redirect(frame.as_bytes(), 7001) {
            Some(Redirect::To(bytes)) => Some(String::from_utf8(bytes.to_vec()).unwrap()),
            Some(Redirect::Unplaced) => Some("unplaced".to_string()),
            None => None,
        };
        assert_eq!(
            moved("-MOVED 9000 10.0.0.2:6379\r\n").as_deref(),
            Some("-MOVED 9000 127.0.0.1:7002\r\n")
        );
        assert_eq!(
            moved("-ASK 9000 10.0.0.3:6379\r\n").as_deref(),
            Some("-ASK 9000 127.0.0.1:7002\r\n")
        );
        // A node the view does not know yet, or one of the replying shard: not placed until the view is read.
        let again = Some("unplaced");
        assert_eq!(moved("-MOVED 3 10.0.0.9:6379\r\n").as_deref(), again);
        assert_eq!(moved("-MOVED 3 10.0.0.1:6379\r\n").as_deref(), again);
        assert_eq!(moved("-ERR MOVED is not this\r\n"), None);
        assert_eq!(moved("-MOVEDX 3 10.0.0.9:6379\r\n"), None);
    }
}
