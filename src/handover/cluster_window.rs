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
use crate::cluster::{Front, ShardWindow, StepState};
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
    /// no way back: no window, one that closed (each named, with its reason), or a shard served by a NEW node with no
    /// window (moved outside this proxy's watch, or by a failover that completed after its handover gave up on it).
    pub(super) fn take_cluster_windows(&self, front: &Front) -> Result<(), String> {
        let config = &self.shared.config;
        let view = front.view();
        front.change_windows(|windows| {
            let mut refusals: Vec<String> = windows
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
            for (shard, port) in view.topology.shards.iter().zip(&view.ports) {
                let (Some(port), false) = (port, shard.primary.slots.is_empty()) else {
                    continue;
                };
                if config.cluster_new.contains(&shard.primary.addr) && !windows.contains_key(port) {
                    refusals.push(format!(
                        "the shard on port {port} is served by NEW {} with no way back watched by this proxy (it \
                         moved outside a handover's watch): move it back by hand with CLUSTER FAILOVER on its former \
                         primary, if that follows it",
                        shard.primary.addr
                    ));
                }
            }
            if !refusals.is_empty() {
                return Err(refusals.join("; "));
            }
            if windows.is_empty() {
                return Err(if config.rollback_window_s == 0 {
                    "there is no way back: rollback_window_s is 0".to_string()
                } else {
                    "there is no way back: no shard is on a NEW node that a handover through this proxy moved it to \
                     (none moved since the proxy started, or a rollback moved them back; the proxy that drove a \
                     handover keeps its way back)"
                        .to_string()
                });
            }
            for window in windows.values_mut() {
                window.state = WindowState::InUse;
            }
            Ok(())
        })
    }

    /// A window for a shard whose primary moved from `follower` (node `follower_id`) to `primary`, judged against
    /// `baseline`: the follower's run ID and `unexpected_error_replies` read as its shard moved, or why they could
    /// not be read (the window is then closed from the start).
    pub(super) fn open_cluster_window(
        &self,
        (follower, follower_id): (&Server, &str),
        (primary, primary_id): (&Server, &str),
        baseline: Result<(String, Option<u64>), String>,
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
        match baseline {
            Ok((run_id, errors)) => {
                window.follower_run_id = run_id;
                window.errors_at_open = errors;
                tracing::info!(follower = %window.follower, "a shard's way back is open");
            }
            Err(error) => {
                window.state = WindowState::Closed;
                window.closed_at_unix_ms = Some(now);
                window.cause = Some(Cause::NotCertain);
                window.reason = Some(format!(
                    "the former primary {} could not be read as its shard moved: {error}",
                    window.follower
                ));
                self.count_close(Cause::NotCertain);
            }
        }
        window
    }
}

impl Handover {
    /// A fronted cluster's metrics per shard, by its proxy port, in the Prometheus text format: the step of the
    /// running or last handover (one line per shard, with its state), its pause, NEW's lag, whether its way back is
    /// open, and its clients. Empty when the proxy fronts no cluster.
    pub fn cluster_metrics(&self) -> String {
        let Some(place) = &self.shared.cluster else {
            return String::new();
        };
        let front = &place.front;
        let view = front.view();
        let ports: Vec<u16> = view.ports.iter().flatten().copied().collect();
        let mut text = String::from(
            "# HELP redis_handover_cluster_shard_step Each shard's step in the running or last handover (1 on its \
             state).\n# TYPE redis_handover_cluster_shard_step gauge\n",
        );
        let mut pauses = String::from(
            "# HELP redis_handover_cluster_shard_pause_seconds How long the shard's writes were held while its primary \
             moved, in the running or last handover.\n# TYPE redis_handover_cluster_shard_pause_seconds gauge\n",
        );
        let mut lags = String::from(
            "# HELP redis_handover_cluster_shard_lag_bytes How far the node taking the shard over was behind its \
             primary at the last look.\n# TYPE redis_handover_cluster_shard_lag_bytes gauge\n",
        );
        let mut windows = String::from(
            "# HELP redis_handover_cluster_shard_window_open Whether the shard's way back (ctl rollback) is open.\n\
             # TYPE redis_handover_cluster_shard_window_open gauge\n",
        );
        let mut clients = String::from(
            "# HELP redis_handover_cluster_shard_clients Clients connected to the shard's proxy port.\n\
             # TYPE redis_handover_cluster_shard_clients gauge\n",
        );
        for port in ports {
            if let Some(step) = front.step_on(port) {
                text.push_str(&format!(
                    "redis_handover_cluster_shard_step{{port=\"{port}\",state=\"{}\"}} 1\n",
                    step.state.name()
                ));
                if let Some(pause) = step.pause_ms {
                    pauses.push_str(&format!(
                        "redis_handover_cluster_shard_pause_seconds{{port=\"{port}\"}} {}\n",
                        pause / 1000.0
                    ));
                }
                if let Some(lag) = step.lag_bytes {
                    lags.push_str(&format!(
                        "redis_handover_cluster_shard_lag_bytes{{port=\"{port}\"}} {lag}\n"
                    ));
                }
            }
            let open = front.window_on(port).is_some_and(|w| w.state == WindowState::Open);
            windows.push_str(&format!(
                "redis_handover_cluster_shard_window_open{{port=\"{port}\"}} {}\n",
                u8::from(open)
            ));
            clients.push_str(&format!(
                "redis_handover_cluster_shard_clients{{port=\"{port}\"}} {}\n",
                front.clients_on(port)
            ));
        }
        text + &pauses + &lags + &windows + &clients
    }
}

/// Looks at every open window, and every window in use by a rollback, until there is none.
async fn watch(handover: Weak<Handover>, front: Arc<Front>) {
    let mut conns: BTreeMap<u16, (Option<ControlConn>, Option<ControlConn>)> = BTreeMap::new();
    let mut cut_since: BTreeMap<u16, Instant> = BTreeMap::new();
    // The windows whose follower was seen following its primary.
    let mut following: std::collections::BTreeSet<u16> = std::collections::BTreeSet::new();
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
        // What is kept per window is for the windows watched now: a window that closed or left (its shard moved
        // back) starts afresh if its port gets another.
        let watched = |w: &ShardWindow| matches!(w.state, WindowState::Open | WindowState::InUse);
        conns.retain(|port, _| windows.get(port).is_some_and(watched));
        cut_since.retain(|port, _| windows.get(port).is_some_and(watched));
        following.retain(|port| windows.get(port).is_some_and(watched));
        // A window in use (a rollback moving its shard) is looked at too: a close recorded then stops the
        // rollback before that shard's failover.
        for (port, window) in windows.iter().filter(|(_, w)| watched(w)) {
            // A shard the rollback is moving (or moved) back: its follower is becoming the primary.
            let moving = front
                .step_on(*port)
                .is_some_and(|s| matches!(s.state, StepState::Paused | StepState::Switched));
            if window.state == WindowState::InUse && moving {
                continue;
            }
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
            // The former primary turns itself into the new one's replica as it hears of the failover over the
            // cluster bus, a moment after the switch: until it is first seen following, not following yet is a cut.
            let verdict = match verdict {
                Verdict::Close(Cause::Detached, _) if !following.contains(port) => Verdict::Cut { lag: None },
                Verdict::Open { .. } => {
                    following.insert(*port);
                    verdict
                }
                other => other,
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
                // The same window still (not one opened since on the same port), still watched.
                let w = all
                    .get_mut(port)
                    .filter(|w| watched(w) && w.opened_at_unix_ms == window.opened_at_unix_ms)?;
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
