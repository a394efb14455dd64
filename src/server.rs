//! The listener: accepts clients, enforces the client limit, and shuts down gracefully.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::config::Config;
use crate::handover::Handover;
use crate::net::Stream;
use crate::session::{ClientSlot, Session};
use crate::shared::Shared;

/// The listen backlog: Redis's default `tcp-backlog`. Tokio's default (128) drops connections that arrive in
/// bursts, which clients then retry only after a one-second SYN timeout.
pub const LISTEN_BACKLOG: u32 = 511;

/// Binds a listener on `addr` (`host:port`) with Redis's backlog.
pub async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    let mut last_error = None;
    for addr in tokio::net::lookup_host(addr).await? {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(addr).and_then(|()| socket.listen(LISTEN_BACKLOG)) {
            Ok(listener) => return Ok(listener),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address to bind")))
}

/// How long a client may take over its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The sockets the proxy serves on, bound by the caller (tests bind port 0).
pub struct Listeners {
    pub proxy: TcpListener,
    pub admin: Option<TcpListener>,
}

/// Runs the proxy until `shutdown` completes, then stops accepting, gives in-flight replies the configured
/// grace period, and returns.
pub async fn run(listeners: Listeners, config: Config, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    if !config.cluster_ports.is_empty() {
        return run_cluster(listeners, config, shutdown).await;
    }
    let shared = Arc::new(Shared::new(config).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?);
    tracing::info!(
        listen = %listeners.proxy.local_addr()?,
        old = %shared.config.old,
        new = shared.config.new.as_deref().unwrap_or("-"),
        "redis-handover started; OLD is the primary"
    );
    if shared.config.backend_links == crate::config::BackendLinks::Shared {
        shared.links.spares.start_watching();
    }
    let handover = Handover::new(shared.clone());
    if let Some(addr) = listeners.admin.as_ref().and_then(|l| l.local_addr().ok()) {
        handover.set_admin_addr(addr);
    }
    // Which server is the primary comes from the servers, before anything is served (the admin port included,
    // so that its first answer is already true).
    handover.resolve_at_start().await;
    let admin = listeners
        .admin
        .map(|listener| tokio::spawn(crate::admin::serve(listener, handover.clone(), shared.shutdown.clone())));
    let result = serve(listeners.proxy, shared.clone(), shutdown).await;
    handover
        .settle(Duration::from_millis(shared.config.shutdown_grace_ms))
        .await;
    if let Some(admin) = admin {
        admin.abort();
    }
    result
}

/// [`run`] for a Redis Cluster (`cluster_ports`): a proxy per shard (see [`crate::cluster`]), and the admin port
/// over the seed's (the listen port's) proxy.
async fn run_cluster(listeners: Listeners, config: Config, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    let stop = tokio_util::sync::CancellationToken::new();
    let running = crate::cluster::start(listeners.proxy, config, stop.clone())
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let handover = Handover::new(running.seed.clone());
    if let Some(addr) = listeners.admin.as_ref().and_then(|l| l.local_addr().ok()) {
        handover.set_admin_addr(addr);
    }
    let admin = listeners
        .admin
        .map(|listener| tokio::spawn(crate::admin::serve(listener, handover.clone(), stop.clone())));
    shutdown.await;
    stop.cancel();
    let _ = running.done.await;
    if let Some(admin) = admin {
        admin.abort();
    }
    Ok(())
}

/// Serves `listener` for the proxy of `shared` until `stop` is cancelled, then lets its sessions finish.
pub async fn serve_until(
    listener: TcpListener,
    shared: Arc<Shared>,
    stop: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    serve(listener, shared, stop.cancelled_owned()).await
}

async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    let mut sessions = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => admit(stream, peer, &shared, &mut sessions),
                Err(error) => {
                    // Out of file descriptors, most likely: give sessions a moment to close some.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    shared.shutdown.cancel();
    let grace = Duration::from_millis(shared.config.shutdown_grace_ms);
    let open = sessions.len();
    tracing::info!(
        sessions = open,
        grace_ms = grace.as_millis() as u64,
        "shutting down: finishing in-flight replies"
    );
    let drained = tokio::time::timeout(grace, async { while sessions.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            sessions = sessions.len(),
            "grace period over; closing the remaining sessions"
        );
        sessions.shutdown().await;
    }
    tracing::info!("stopped");
    Ok(())
}

fn admit(stream: TcpStream, peer: SocketAddr, shared: &Arc<Shared>, sessions: &mut JoinSet<()>) {
    let open = shared.clients.fetch_add(1, Ordering::Relaxed) + 1;
    let slot = ClientSlot(shared.clone());
    if open > shared.config.max_clients {
        // As Redis does: one error line, then the connection is closed.
        let _ = stream.try_write(b"-ERR max number of clients reached\r\n");
        tracing::warn!(%peer, max_clients = shared.config.max_clients, "client refused: max number of clients reached");
        return;
    }
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "set_nodelay failed");
    }
    let id = shared.next_client_id.fetch_add(1, Ordering::Relaxed);
    let shared = shared.clone();
    let task = async move {
        let _slot = slot;
        let stream = match &shared.client_tls {
            None => Stream::Plain(stream),
            Some(acceptor) => match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => Stream::Tls(Box::new(tls.into())),
                Ok(Err(error)) => return tracing::info!(id, %peer, %error, "TLS handshake failed"),
                Err(_) => return tracing::info!(id, %peer, "TLS handshake timed out"),
            },
        };
        Session::new(stream, shared, id).run(peer).await;
    };
    // A span is entered at every poll of the task it instruments, and with one request per poll (-P 1) that is per
    // request: sessions get one (naming the client on every line they log) only when their debug lines are on. At
    // info and above, the lines that end a session carry its id and peer.
    if tracing::enabled!(target: "redis_handover::session", tracing::Level::DEBUG) {
        sessions.spawn(task.instrument(tracing::info_span!("client", id, %peer)));
    } else {
        sessions.spawn(task);
    }
}
