//! A fronted cluster's way back, shard by shard. After a shard's primary moved, its former primary is a replica of
//! the NEW node (`CLUSTER FAILOVER` makes it one), so a failover back to it loses nothing, as the forward move did.
//! Each moved shard gets a window ([`ShardWindow`]) that this watcher keeps honest with the standalone window's
//! judge ([`super::window::assess`]): the former primary must follow the same node with the same run ID, apply
//! every command (`unexpected_error_replies` unchanged, 6.2 and later) and never start a full sync. `ctl rollback`
//! takes every shard's window and moves the shards back one at a time (see [`super::cluster`]).
//!
//! Unlike the standalone window, a closed one leaves its node as it is: a cluster node cannot be made a primary of
//! its own with `REPLICAOF NO ONE`, and a node that starts a full sync from a newer primary empties itself and stays
//! out of sync (it cannot load the newer RDB). The README's cluster section says how to retire it.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::Handover;
use super::window::{Attached, Cause, LINK_GRACE, Verdict, WindowState, assess, look, now_ms};
use crate::cluster::{Front, ShardWindow};
use crate::control::ControlConn;
use crate::primary::{Server, Side};

/// How often each open window is looked at.
const POLL: Duration = Duration::from_millis(250);

/// What [`assess`] compares a look against, from what the window recorded when it opened.
fn attached(window: &ShardWindow) -> Attached {
    let (host, port) = window.primary.rsplit_once(':').unwrap_or((&window.primary, ""));
    Attached {
        follower: Some(follower(window)),
        primary: Some(primary(window)),
        follower_run_id: window.follower_run_id.clone(),
        errors_at_open: window.errors_at_open,
        primary_host: host.to_string(),
        primary_port: port.to_string(),
        ..Attached::default()
    }
}

/// The former primary, reached with OLD's credentials.
pub(super) fn follower(window: &ShardWindow) -> Server {
    Server {
        side: Side::Old,
        addr: window.follower.as_str().into(),
    }
}

/// The NEW node that is the shard's primary.
pub(super) fn primary(window: &ShardWindow) -> Server {
    Server {
        side: Side::New,
        addr: window.primary.as_str().into(),
    }
}

impl Handover {
    /// Starts the task that watches the cluster's open windows, unless it runs already.
    pub(super) fn watch_cluster_windows(self: &Arc<Self>, front: &Arc<Front>) {
        if !front.windows_watched.swap(true, Ordering::SeqCst) {
            tokio::spawn(watch(Arc::downgrade(self), front.clone()));
        }
    }

    /// `ctl rollback` on a cluster: every shard's window, taken for the way back (in use). `Err` says why there is
    /// no way back: no window, or one that closed (each named, with its reason).
    pub(super) fn take_cluster_windows(&self, front: &Front) -> Result<(), String> {
        let window_s = self.shared.config.rollback_window_s;
        front.change_windows(|windows| {
            if windows.is_empty() {
                return Err(if window_s == 0 {
                    "there is no way back: rollback_window_s is 0".to_string()
                } else {
                    "there is no way back: no cluster handover through this proxy moved a shard since it started (the \
                     proxy that drove it keeps its way back)"
                        .to_string()
                });
            }
            let closed: Vec<String> = windows
                .iter()
                .filter(|(_, w)| w.state != WindowState::Open)
                .map(|(port, w)| match w.state {
                    WindowState::InUse => format!("the shard on port {port} is being moved back"),
                    _ => format!(
                        "the way back of the shard on port {port} (to {}) closed: {}",
                        w.follower,
                        w.reason.as_deref().unwrap_or("no reason recorded")
                    ),
                })
                .collect();
            if !closed.is_empty() {
                return Err(closed.join("; "));
            }
            for window in windows.values_mut() {
                window.state = WindowState::InUse;
            }
            Ok(())
        })
    }

    /// A window for the shard on `port`, whose primary moved from `follower` (node `follower_id`) to `primary`:
    /// what the follower's look will be compared against is read now.
    pub(super) async fn open_cluster_window(
        &self,
        port: u16,
        (follower, follower_id): (&Server, &str),
        (primary, primary_id): (&Server, &str),
    ) -> ShardWindow {
        let now = now_ms();
        let mut window = ShardWindow {
            state: WindowState::Open,
            follower: follower.addr.to_string(),
            follower_id: follower_id.to_string(),
            primary: primary.addr.to_string(),
            primary_id: primary_id.to_string(),
            opened_at_unix_ms: now,
            until_unix_ms: now + self.shared.config.rollback_window_s * 1000,
            closed_at_unix_ms: None,
            lag_bytes: None,
            link_up: false,
            cause: None,
            reason: None,
            follower_run_id: String::new(),
            errors_at_open: None,
        };
        let tls = self.shared.backend_tls.clone();
        let read = async {
            let timeout = Duration::from_secs(2);
            let mut conn =
                ControlConn::connect(follower, &self.credentials(follower.side), timeout, tls.as_ref()).await?;
            let server = conn.info("server", timeout).await?;
            let stats = conn.info("stats", timeout).await?;
            Ok::<_, crate::control::ControlError>((server, stats))
        };
        match read.await {
            Ok((server, stats)) => {
                window.follower_run_id = server.get("run_id").cloned().unwrap_or_default();
                window.errors_at_open = stats.get("unexpected_error_replies").and_then(|v| v.parse().ok());
                tracing::info!(port, follower = %window.follower, "a shard's way back is open");
            }
            Err(error) => {
                window.state = WindowState::Closed;
                window.closed_at_unix_ms = Some(now);
                window.cause = Some(Cause::NotCertain);
                window.reason = Some(format!(
                    "the former primary {} could not be read as the shard moved: {error}",
                    window.follower
                ));
                self.count_close(Cause::NotCertain);
            }
        }
        window
    }
}

/// Looks at every open window until none is open or in use; a window in use (a rollback moving its shard) is left
/// to the rollback.
async fn watch(handover: Weak<Handover>, front: Arc<Front>) {
    let mut conns: BTreeMap<u16, (Option<ControlConn>, Option<ControlConn>)> = BTreeMap::new();
    let mut cut_since: BTreeMap<u16, Instant> = BTreeMap::new();
    loop {
        let live = |windows: &BTreeMap<u16, ShardWindow>| {
            windows
                .values()
                .any(|w| matches!(w.state, WindowState::Open | WindowState::InUse))
        };
        let Some(this) = handover.upgrade().filter(|h| !h.shared.shutdown.is_cancelled()) else {
            return;
        };
        let windows = front.windows();
        if !live(&windows) {
            // Stops, unless a window opened as it was stopping (whose opener saw it still running).
            front.windows_watched.store(false, Ordering::SeqCst);
            if !live(&front.windows()) || front.windows_watched.swap(true, Ordering::SeqCst) {
                return;
            }
            continue;
        }
        for (port, window) in windows.iter().filter(|(_, w)| w.state == WindowState::Open) {
            let name = format!("OLD {}", window.follower);
            let seen = look(
                &this,
                &follower(window),
                &primary(window),
                conns.entry(*port).or_default(),
            )
            .await;
            let verdict = if now_ms() >= window.until_unix_ms {
                Verdict::Close(
                    Cause::Expired,
                    format!("rollback_window_s = {} ran out", this.shared.config.rollback_window_s),
                )
            } else {
                assess(&attached(window), &seen, &name)
            };
            let verdict = match verdict {
                Verdict::Cut { lag } => {
                    let since = *cut_since.entry(*port).or_insert_with(Instant::now);
                    if since.elapsed() >= LINK_GRACE {
                        Verdict::Close(
                            Cause::LinkLost,
                            format!("{name} was cut off from its primary (or from the proxy) for {LINK_GRACE:?}"),
                        )
                    } else {
                        Verdict::Cut { lag }
                    }
                }
                other => {
                    cut_since.remove(port);
                    other
                }
            };
            let closed = front.change_windows(|all| {
                let w = all.get_mut(port).filter(|w| w.state == WindowState::Open)?;
                match verdict {
                    Verdict::Open { lag, link_up } => {
                        w.lag_bytes = lag;
                        w.link_up = link_up;
                        None
                    }
                    Verdict::Cut { lag } => {
                        w.lag_bytes = lag;
                        w.link_up = false;
                        None
                    }
                    Verdict::Close(cause, reason) => {
                        tracing::warn!(port, cause = cause.name(), %reason, "a shard's way back closed");
                        w.state = WindowState::Closed;
                        w.closed_at_unix_ms = Some(now_ms());
                        w.cause = Some(cause);
                        w.reason = Some(reason);
                        w.link_up = false;
                        Some(cause)
                    }
                }
            });
            if let Some(cause) = closed {
                this.count_close(cause);
                conns.remove(port);
            }
        }
        drop(this);
        tokio::time::sleep(POLL).await;
    }
}
