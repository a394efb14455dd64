//! What every session, the handover and the admin port share: the configuration, the primary, the write gate,
//! the move tracker, the shared links and the telemetry. Its own module, so that the server, the sessions, the
//! handover and the admin port depend on it and not on each other.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use tokio_util::sync::CancellationToken;

use crate::config::{Config, Resp3Mode};
use crate::gate::WriteGate;
use crate::moves::MoveTracker;
use crate::net::{BackendTls, TlsError};
use crate::primary::{PrimaryCell, Server, Side};
use crate::scripts::ScriptCache;
use crate::telemetry::Telemetry;

/// What every session and the admin port share.
pub struct Shared {
    pub config: Config,
    pub primary: PrimaryCell,
    /// Client connections open now.
    pub clients: AtomicUsize,
    pub next_client_id: AtomicU64,
    /// The sessions by id, for `CLIENT KILL ID` and `CLIENT UNBLOCK` of the proxy's own ids.
    pub directory: crate::clients::Directory,
    /// Cancelled when the proxy starts shutting down.
    pub shutdown: CancellationToken,
    pub gate: WriteGate,
    pub moves: MoveTracker,
    pub scripts: ScriptCache,
    pub telemetry: Arc<Telemetry>,
    /// TLS toward clients (the listen port) and toward the servers, when configured.
    pub client_tls: Option<tokio_rustls::TlsAcceptor>,
    pub backend_tls: Option<BackendTls>,
    /// Whether `HELLO 3` is refused (the `resp3` setting, changeable at run time).
    pub resp3_pinned: AtomicBool,
    /// The shared backend links (`backend_links = "shared"`), and how they reach the servers.
    pub links: Arc<crate::links::SharedLinks>,
    pub link_context: crate::links::LinkContext,
    /// Wakes the handover's look at the servers: a session saw the primary refuse a write as not executed.
    pub resolve_now: tokio::sync::Notify,
    /// Those looks, for the sessions that hold replies back meanwhile.
    pub looks: Looks,
    /// Sessions holding replies back until a look (see [`crate::session::state::Parked`]).
    pub parked_sessions: AtomicUsize,
    /// Sessions with a MULTI open (a scheduled handover waits for a moment with none).
    pub transactions_open: AtomicUsize,
    /// Where sessions hand the reads they sampled for shadow reads.
    pub shadow: crate::readiness::shadow::Tap,
    /// When the proxy fronts a Redis Cluster: the cluster as presented, and which shard's port this is.
    pub cluster: Option<crate::cluster::Place>,
}

/// The handover's looks at whether the primary was fenced by a handover this proxy took no part in.
#[derive(Debug, Default)]
pub struct Looks {
    /// How many looks started.
    pub started: AtomicU64,
    /// The number of the last look that found the primary taking writes (no fence, a master).
    pub unfenced: AtomicU64,
}

impl Shared {
    pub fn new(config: Config) -> Result<Self, TlsError> {
        Shared::with_telemetry(config, Arc::new(Telemetry::new()))
    }

    /// [`Shared::new`] counting into `telemetry` (the proxies of a cluster's shards count into one).
    pub fn with_telemetry(config: Config, telemetry: Arc<Telemetry>) -> Result<Self, TlsError> {
        let client_tls = match (&config.tls_cert_file, &config.tls_key_file) {
            (Some(cert), Some(key)) => Some(crate::net::acceptor(cert, key)?),
            _ => None,
        };
        let backend_tls = BackendTls::from_config(&config)?;
        let old = Server {
            side: Side::Old,
            addr: config.old.as_str().into(),
        };
        let link_context = crate::links::LinkContext {
            connect_timeout: std::time::Duration::from_millis(config.connect_timeout_ms),
            tls: backend_tls.clone(),
            telemetry: telemetry.clone(),
            kills: Arc::default(),
        };
        Ok(Shared {
            client_tls,
            backend_tls,
            resp3_pinned: AtomicBool::new(config.resp3 == Resp3Mode::PinResp2),
            config,
            primary: PrimaryCell::new(old),
            clients: AtomicUsize::new(0),
            next_client_id: AtomicU64::new(crate::clients::FIRST_ID),
            directory: Default::default(),
            shutdown: CancellationToken::new(),
            gate: WriteGate::default(),
            moves: MoveTracker::default(),
            scripts: ScriptCache::default(),
            links: Arc::default(),
            link_context,
            telemetry,
            resolve_now: tokio::sync::Notify::new(),
            looks: Looks::default(),
            parked_sessions: AtomicUsize::new(0),
            transactions_open: AtomicUsize::new(0),
            shadow: Default::default(),
            cluster: None,
        })
    }
}

impl Shared {
    /// The `resp3` setting in force.
    pub fn resp3_mode(&self) -> Resp3Mode {
        if self.resp3_pinned.load(Ordering::Relaxed) {
            Resp3Mode::PinResp2
        } else {
            Resp3Mode::Allow
        }
    }

    /// Asks for a look at the servers now: a session holds replies back until one (see
    /// [`crate::session::state::Parked`]). In front of a cluster, the cluster's refresh looks.
    pub fn wake_looks(&self) {
        self.resolve_now.notify_one();
        if let Some(place) = &self.cluster {
            place.front.wake();
        }
    }

    /// Changes the `resp3` setting; it applies to the HELLOs that follow.
    pub fn set_resp3_mode(&self, mode: Resp3Mode) {
        self.resp3_pinned.store(mode == Resp3Mode::PinResp2, Ordering::Relaxed);
        tracing::info!(resp3 = mode.name(), "resp3 setting changed");
    }
}
