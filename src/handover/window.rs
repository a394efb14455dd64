//! The rollback window: after a switch the former primary follows the new one by partial resync, with no gap,
//! so a handover back to it (`POST /rollback`) loses nothing and needs no RDB in either direction.
//!
//! The window is open while the follower applies everything the primary sends it. It closes, with the cause, when
//! the follower restarts, stays cut off, falls out of the primary's backlog, starts a full sync, cannot apply a
//! command (a newer primary's stream is read by the proxy and checked against the follower's version, see
//! `handover::stream`), when its time runs out, or when the operator closes it. On closing, the follower is detached
//! (`REPLICAOF NO ONE`, fenced) before a full sync could empty it: an older Redis flushes its data and then fails
//! to load a newer RDB (REDIS-FACTS.md, "Rollback window").

use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::status::{Off, RollbackWindow};
use tokio_util::sync::CancellationToken;

use super::stream::{self, StreamReader};
use super::{FENCE_REPLICAS, Handover};
use crate::config::same_host;
use crate::control::{ControlConn, parse_version};
use crate::primary::{Server, Side};
use crate::protocol::value::Value;

/// How often the window looks at both servers.
const WINDOW_POLL: Duration = Duration::from_millis(100);
/// How long the follower may be cut off from the primary (or from the proxy) before the window closes.
pub const LINK_GRACE: Duration = Duration::from_secs(10);
const LOOK_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a closed window keeps trying to detach a follower it could not reach.
const DETACH_TRIES_FOR: Duration = Duration::from_secs(600);

/// Whether the way back is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowState {
    /// The follower applies everything the primary sends it: `POST /rollback` hands back to it.
    Open,
    /// A handover back to the follower is running.
    InUse,
    Closed,
}

/// Why a window closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// The follower's place in the primary's history could not be shown to match, so it was never attached.
    NotCertain,
    /// The follower could not apply a command the primary sent it.
    ApplyError,
    /// The follower restarted and lost its replication state.
    Restarted,
    /// The follower was cut off from the primary, or from the proxy, for [`LINK_GRACE`].
    LinkLost,
    /// The primary's backlog no longer holds the follower's position.
    Backlog,
    /// The follower began a full sync from the primary.
    FullSync,
    /// Someone else changed the follower's replication (`REPLICAOF`).
    Detached,
    /// The proxy could no longer read the primary's stream, so it could not check what the follower applies.
    StreamLost,
    /// `rollback_window_s` ran out.
    Expired,
    /// `POST /rollback/close`.
    Operator,
}

impl Cause {
    /// The cause as `GET /status` and the metrics name it.
    pub fn name(self) -> &'static str {
        match self {
            Cause::NotCertain => "not_certain",
            Cause::ApplyError => "apply_error",
            Cause::Restarted => "restarted",
            Cause::LinkLost => "link_lost",
            Cause::Backlog => "backlog",
            Cause::FullSync => "full_sync",
            Cause::Detached => "detached",
            Cause::StreamLost => "stream_lost",
            Cause::Expired => "expired",
            Cause::Operator => "operator",
        }
    }
}

/// The window after one switch, as `GET /status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Window {
    pub state: WindowState,
    /// The former primary, which follows the primary.
    pub follower: Side,
    pub follower_addr: String,
    pub follower_version: String,
    pub primary_addr: String,
    pub opened_at_unix_ms: u64,
    /// When `rollback_window_s` runs out.
    pub until_unix_ms: u64,
    pub closed_at_unix_ms: Option<u64>,
    pub cause: Option<Cause>,
    /// Why it closed, naming what happened.
    pub reason: Option<String>,
    /// Whether the follower was detached (a fenced primary of its own, with its data) after the window closed.
    pub detached: Option<bool>,
    /// How far the follower is behind the primary, in bytes of the replication stream.
    pub lag_bytes: Option<i64>,
    pub link_up: bool,
    /// Commands of the primary's stream checked against the follower's version (only when it is older).
    pub commands_checked: u64,
    /// The first offset of the primary's stream not read yet (while the stream is read).
    #[serde(skip)]
    pub(super) checked_to: i64,
    #[serde(skip)]
    pub(super) attached: Attached,
}

impl Window {
    /// A window opening now for `rollback_window_s` = `window_s`, its follower attached as `attached` says.
    pub(super) fn opening(follower_version: String, window_s: u64, attached: Attached) -> Option<Window> {
        let (follower, primary) = (attached.follower.clone()?, attached.primary.clone()?);
        let now = now_ms();
        Some(Window {
            state: WindowState::Open,
            follower: follower.side,
            follower_addr: follower.addr.to_string(),
            follower_version,
            primary_addr: primary.addr.to_string(),
            opened_at_unix_ms: now,
            until_unix_ms: now + window_s * 1000,
            closed_at_unix_ms: None,
            cause: None,
            reason: None,
            detached: None,
            lag_bytes: None,
            link_up: false,
            commands_checked: 0,
            checked_to: attached.promotion_offset,
            attached,
        })
    }
}

/// What the follower and the primary said when the follower was attached: what later looks compare against.
#[derive(Debug, Clone, Default)]
pub(super) struct Attached {
    pub follower: Option<Server>,
    pub primary: Option<Server>,
    pub primary_version: String,
    pub follower_run_id: String,
    /// The primary's replication ID and the first offset after the promotion.
    pub primary_replid: String,
    pub promotion_offset: i64,
    /// The follower's `unexpected_error_replies` (6.2 and later) when attached.
    pub errors_at_open: Option<u64>,
    /// Where the follower reaches the primary.
    pub primary_host: String,
    pub primary_port: String,
}

/// What one look at the two servers found.
#[derive(Debug, Clone, Default)]
pub(super) struct Look {
    pub follower: Option<FollowerSeen>,
    /// `master_repl_offset` and `repl_backlog_first_byte_offset` of the primary.
    pub primary: Option<(i64, i64)>,
}

#[derive(Debug, Clone, Default)]
pub(super) struct FollowerSeen {
    pub run_id: String,
    pub replica: bool,
    pub master_host: String,
    pub master_port: String,
    pub link_up: bool,
    pub syncing: bool,
    /// `slave_repl_offset`: the last byte applied.
    pub offset: i64,
    pub errors: Option<u64>,
}

/// What a look means for the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Verdict {
    Open {
        lag: Option<i64>,
        link_up: bool,
    },
    /// Cut off (or unreachable) for now; closes after [`LINK_GRACE`].
    Cut {
        lag: Option<i64>,
    },
    Close(Cause, String),
}

/// Judges one look; `name` is how reasons call the follower (`OLD`).
pub(super) fn assess(attached: &Attached, look: &Look, name: &str) -> Verdict {
    let Some(follower) = &look.follower else {
        return Verdict::Cut { lag: None };
    };
    if !attached.follower_run_id.is_empty() && follower.run_id != attached.follower_run_id {
        return Verdict::Close(
            Cause::Restarted,
            format!(
                "{name} restarted (run_id {} is now {}) and lost its place in the primary's replication stream",
                attached.follower_run_id, follower.run_id
            ),
        );
    }
    if !follower.replica
        || follower.master_port != attached.primary_port
        || !same_host(&follower.master_host, &attached.primary_host)
    {
        let now = if follower.replica {
            format!("replicates from {}:{}", follower.master_host, follower.master_port)
        } else {
            "is a master".to_string()
        };
        return Verdict::Close(
            Cause::Detached,
            format!("{name} no longer follows the primary: it {now} (someone ran REPLICAOF on it)"),
        );
    }
    if follower.syncing {
        return Verdict::Close(
            Cause::FullSync,
            format!("{name} began a full sync from the primary (its partial resync was refused), which would empty it"),
        );
    }
    if let (Some(at_open), Some(now)) = (attached.errors_at_open, follower.errors)
        && now > at_open
    {
        return Verdict::Close(
            Cause::ApplyError,
            format!(
                "{name} could not apply {} commands the primary sent it (unexpected_error_replies; its log names \
                 them)",
                now - at_open
            ),
        );
    }
    let lag = look.primary.map(|(offset, _)| (offset - follower.offset).max(0));
    if !follower.link_up {
        if let Some((_, first)) = look.primary
            && first > follower.offset + 1
        {
            return Verdict::Close(
                Cause::Backlog,
                format!(
                    "the primary's backlog (from offset {first}) no longer holds {name}'s position ({}): a \
                     resync would be a full one; raise rollback_backlog_bytes",
                    follower.offset + 1
                ),
            );
        }
        return Verdict::Cut { lag };
    }
    Verdict::Open { lag, link_up: true }
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Handover {
    /// Opens a window for `window` (just attached) and starts watching it.
    pub(super) fn open_window(self: &Arc<Self>, window: Window) {
        tracing::info!(follower = %window.follower_addr, until_unix_ms = window.until_unix_ms, "rollback window open");
        *self.window.lock().unwrap_or_else(|e| e.into_inner()) = Some(window);
        self.watch_window();
    }

    /// At start, after the primary was resolved: a former primary that carries the proxy's fence and follows the
    /// primary with its link up is a window an earlier run of this proxy opened. It is watched again, with its
    /// time counted from now and the primary's stream read from its present offset (nothing says what came
    /// before: on a 6.2 or newer follower, `unexpected_error_replies` would have counted it).
    pub(super) async fn adopt_window(self: &Arc<Self>) {
        let window_s = self.shared.config.rollback_window_s;
        // In a fleet each proxy would watch (and read NEW's stream) at once: only a driver keeps a window.
        if window_s == 0 || !self.shared.config.fleet_peers.is_empty() {
            return;
        }
        let primary = self.shared.primary.current().server.clone();
        let Some(addr) = self.addr_of(primary.side.other()) else {
            return;
        };
        let follower = Server {
            side: primary.side.other(),
            addr: addr.into(),
        };
        let follower_side = follower.side;
        let found = async {
            let mut conn = self.connect(&follower).await?;
            let replication = conn.info("replication", LOOK_TIMEOUT).await?;
            let server = conn.info("server", LOOK_TIMEOUT).await?;
            let stats = conn.info("stats", LOOK_TIMEOUT).await?;
            let fence = conn.config_get("min-replicas-to-write", LOOK_TIMEOUT).await?;
            let mut conn = self.connect(&primary).await?;
            let leader = conn.info("replication", LOOK_TIMEOUT).await?;
            let leader_server = conn.info("server", LOOK_TIMEOUT).await?;
            Ok::<_, crate::control::ControlError>((replication, server, stats, fence, leader, leader_server))
        }
        .await;
        let Ok((replication, server, stats, fence, leader, leader_server)) = found else {
            return;
        };
        let field =
            |info: &std::collections::HashMap<String, String>, name: &str| info.get(name).cloned().unwrap_or_default();
        let addr = self.replication_addr(&primary);
        let Some((host, port)) = addr.rsplit_once(':') else {
            return;
        };
        let follows = field(&replication, "role") == "slave"
            && field(&replication, "master_port") == port
            && same_host(&field(&replication, "master_host"), host);
        let adoptable =
            follows && field(&replication, "master_link_status") == "up" && fence.as_deref() == Some(FENCE_REPLICAS);
        let older =
            parse_version(&field(&server, "redis_version")) < parse_version(&field(&leader_server, "redis_version"));
        let offset: i64 = field(&leader, "master_repl_offset").parse().unwrap_or(0);
        let attached = Attached {
            follower: Some(follower),
            primary: Some(primary.clone()),
            primary_version: field(&leader_server, "redis_version"),
            follower_run_id: field(&server, "run_id"),
            primary_replid: field(&leader, "master_replid"),
            promotion_offset: offset + 1,
            errors_at_open: stats.get("unexpected_error_replies").and_then(|v| v.parse().ok()),
            primary_host: host.to_string(),
            primary_port: port.to_string(),
        };
        if !adoptable {
            // An older server following the primary with nothing watching it could get a full sync, which empties
            // it: it is detached instead (a newer one, left replicating by an aborted handover, is left alone).
            if follows && older {
                tracing::warn!("an older server follows the primary, but not as a rollback window: detaching it");
                if let Err(error) = self.detach(&attached).await {
                    tracing::warn!(%error, "could not detach it");
                }
            }
            return;
        }
        let Some(window) = Window::opening(field(&server, "redis_version"), window_s, attached) else {
            return;
        };
        {
            // Under the lock: a handover started meanwhile, or a window it opened, comes first.
            let mut current = self.window.lock().unwrap_or_else(|e| e.into_inner());
            if self.is_running() || current.is_some() {
                return;
            }
            *current = Some(window);
        }
        *self.fenced.lock().unwrap_or_else(|e| e.into_inner()) = Some((follower_side, super::FenceWas::default()));
        self.watch_window();
    }

    /// Records a window that could not open, with the reason.
    pub(super) fn window_not_opened(self: &Arc<Self>, mut window: Window, reason: String, detached: bool) {
        tracing::warn!(%reason, "no rollback window");
        window.state = WindowState::Closed;
        window.closed_at_unix_ms = Some(now_ms());
        window.cause = Some(Cause::NotCertain);
        window.reason = Some(reason);
        window.detached = Some(detached);
        let attached = window.attached.clone();
        let opened = window.opened_at_unix_ms;
        *self.window.lock().unwrap_or_else(|e| e.into_inner()) = Some(window);
        self.count_close(Cause::NotCertain);
        if !detached {
            // Left replicating, it could get a full sync: keep trying to detach it.
            let this = self.clone();
            tokio::spawn(async move { this.detach_until_done(attached, opened, true).await });
        }
    }

    /// Starts (or starts again) the task that watches an open window.
    fn watch_window(self: &Arc<Self>) {
        let cancel = CancellationToken::new();
        let task = tokio::spawn(watch(Arc::downgrade(self), cancel.clone()));
        if let Some((old, _)) = self
            .window_watch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace((cancel, task))
        {
            old.cancel();
        }
    }

    /// Stops watching the window (a handover back is about to pause) and waits until the watcher has stopped.
    pub(super) async fn stop_window_watch(&self) {
        let watch = self.window_watch.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some((cancel, mut task)) = watch {
            cancel.cancel();
            // The watcher heeds the cancel at each await; one that does not end in time is ended here, so it can
            // never act after the handover that stopped it has gone on.
            if tokio::time::timeout(LOOK_TIMEOUT * 4, &mut task).await.is_err() {
                task.abort();
                let _ = task.await;
            }
        }
    }

    /// The open window whose follower is `target`: `Err` with why a handover to it cannot rely on one.
    pub(super) fn window_for(&self, target: Side) -> Result<(), String> {
        match &*self.window.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(w) if w.follower == target && matches!(w.state, WindowState::Open | WindowState::InUse) => Ok(()),
            Some(w) if w.follower == target => Err(format!(
                "the rollback window closed: {}",
                w.reason.as_deref().unwrap_or("no reason recorded")
            )),
            _ if !self.shared.config.fleet_peers.is_empty() => Err(
                "there is no rollback window on this proxy: the proxy of the fleet that drove the switch keeps it"
                    .into(),
            ),
            _ => Err("there is no rollback window: no switch opened one since the proxy started".into()),
        }
    }

    /// In a handover back's pause, with the primary fenced at offset `until`: the commands of its stream the
    /// watcher did not read before it stopped are read and checked now, and a 6.2 or newer follower's error count
    /// is compared with its count when attached. `Err` says why the follower cannot take over.
    pub(super) async fn check_rest_of_stream(&self, until: i64, budget: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + budget;
        let (attached, version, from) = {
            let window = self.window.lock().unwrap_or_else(|e| e.into_inner());
            let Some(w) = window.as_ref() else { return Ok(()) };
            (
                w.attached.clone(),
                parse_version(&w.follower_version).unwrap_or_default(),
                w.checked_to,
            )
        };
        let name = attached
            .follower
            .as_ref()
            .map_or("OLD".into(), |f| f.side.name().to_uppercase());
        let (Some(follower), Some(primary)) = (attached.follower.clone(), attached.primary.clone()) else {
            return Ok(());
        };
        let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
        if let Some(at_open) = attached.errors_at_open {
            let tls = self.shared.backend_tls.clone();
            let failed = |e: crate::control::ControlError| format!("could not read {name}'s error count: {e}");
            let mut conn = ControlConn::connect(&follower, &self.credentials(follower.side), left(), tls.as_ref())
                .await
                .map_err(failed)?;
            let stats = conn.info("stats", left()).await.map_err(failed)?;
            let now: u64 = stats
                .get("unexpected_error_replies")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if now > at_open {
                return Err(format!(
                    "{name} could not apply {} commands the primary sent it (unexpected_error_replies)",
                    now - at_open
                ));
            }
        }
        if version >= parse_version(&attached.primary_version).unwrap_or_default() || from > until {
            return Ok(());
        }
        let credentials = self.credentials(primary.side);
        let tls = self.shared.backend_tls.clone();
        let mut reader = StreamReader::open(
            &primary,
            &credentials,
            tls.as_ref(),
            &attached.primary_replid,
            from,
            left(),
        )
        .await?;
        while reader.offset < until {
            match reader.next(version, left()).await? {
                stream::Next::Fine => {}
                stream::Next::Unappliable(command, why) => {
                    return Err(format!("the primary sent `{command}`: {why}, so {name} skipped it"));
                }
                stream::Next::Idle => {
                    return Err(format!(
                        "the primary's stream up to offset {until} could not be read in time (at {})",
                        reader.offset
                    ));
                }
            }
        }
        Ok(())
    }

    /// Marks the window as used by the handover starting now (true when there was an open one).
    pub(super) fn use_window(&self) -> bool {
        self.move_window(WindowState::Open, WindowState::InUse)
    }

    /// Moves the window from state `from` to `to`; false (and no change) when it was not in `from`.
    fn move_window(&self, from: WindowState, to: WindowState) -> bool {
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        match window.as_mut() {
            Some(w) if w.state == from => {
                w.state = to;
                true
            }
            _ => false,
        }
    }

    /// After a handover that used the window stopped before its switch: the window is open again, and watched.
    pub(super) fn resume_window(self: &Arc<Self>) {
        if self.move_window(WindowState::InUse, WindowState::Open) {
            return self.watch_window();
        }
        // The window closed while the handover ran: detach the follower now if nobody did.
        let left = {
            let window = self.window.lock().unwrap_or_else(|e| e.into_inner());
            window
                .as_ref()
                .filter(|w| w.state == WindowState::Closed && w.detached != Some(true))
                .map(|w| (w.attached.clone(), w.opened_at_unix_ms))
        };
        if let Some((attached, opened)) = left {
            let this = self.clone();
            tokio::spawn(async move { this.detach_until_done(attached, opened, true).await });
        }
    }

    /// `POST /rollback/close`: closes the window and detaches the follower.
    pub async fn close_window(self: &Arc<Self>) -> Result<Window, String> {
        if self.shared.cluster.is_some() {
            return Err(
                "a cluster's ways back are not closed by hand: they change nothing on the nodes, and close \
                        when rollback_window_s runs out; to retire a former primary, CLUSTER FORGET it on every node"
                    .into(),
            );
        }
        let name = self.follower_name();
        let reason = format!("the operator closed it (POST /rollback/close); {name} was detached");
        // Closed at once, under the lock: a rollback asked for from here on is refused.
        let Some((attached, opened)) = self.mark_closed(WindowState::Open, Cause::Operator, reason)? else {
            return Err("there is no rollback window".into());
        };
        self.stop_window_watch().await;
        self.detach_until_done(attached, opened, false).await;
        let window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        window.clone().ok_or_else(|| "there is no rollback window".into())
    }

    /// Marks the window closed if it is in state `from` (or open or in use, when `from` is `InUse`: the watcher
    /// closes it either way); what to detach, and which window it was. `Err` says why it was not.
    #[allow(clippy::type_complexity)]
    fn mark_closed(&self, from: WindowState, cause: Cause, reason: String) -> Result<Option<(Attached, u64)>, String> {
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let Some(w) = window.as_mut() else { return Ok(None) };
        match (from, w.state) {
            (_, WindowState::Closed) => return Err("the rollback window is already closed".into()),
            (WindowState::Open, WindowState::InUse) => {
                return Err("a handover back is using the rollback window".into());
            }
            _ => {}
        }
        tracing::warn!(cause = cause.name(), %reason, "rollback window closed");
        w.state = WindowState::Closed;
        w.closed_at_unix_ms = Some(now_ms());
        w.cause = Some(cause);
        w.reason = Some(reason);
        let closed = (w.attached.clone(), w.opened_at_unix_ms);
        drop(window);
        self.count_close(cause);
        Ok(Some(closed))
    }

    /// Detaches the follower of the window opened at `opened`, trying again for a while if it cannot be reached;
    /// it stops as soon as a handover runs or another window replaced this one (the follower's role is theirs
    /// then).
    ///
    /// `by_handover`: asked by the handover that is ending (it attached the follower, or used the window): a
    /// handover running is no reason to stop then.
    async fn detach_until_done(self: &Arc<Self>, attached: Attached, opened: u64, by_handover: bool) {
        let started = tokio::time::Instant::now();
        loop {
            let current = || {
                let window = self.window.lock().unwrap_or_else(|e| e.into_inner());
                window.as_ref().is_some_and(|w| w.opened_at_unix_ms == opened) && (by_handover || !self.is_running())
            };
            if !current() {
                return;
            }
            let detached = self.detach(&attached).await;
            if let Some(w) = self.window.lock().unwrap_or_else(|e| e.into_inner()).as_mut()
                && w.opened_at_unix_ms == opened
            {
                w.detached = Some(detached.is_ok());
            }
            match detached {
                Ok(()) => return,
                Err(error) if started.elapsed() < DETACH_TRIES_FOR && !self.shared.shutdown.is_cancelled() => {
                    tracing::warn!(%error, "could not detach the former primary yet");
                    tokio::time::sleep(WINDOW_POLL * 5).await;
                }
                Err(error) => return tracing::error!(%error, "gave up detaching the former primary"),
            }
        }
    }

    /// Makes the follower a fenced primary of its own, keeping its data (a full sync in progress is cancelled
    /// before it can flush anything).
    async fn detach(&self, attached: &Attached) -> Result<(), String> {
        let Some(server) = attached.follower.clone() else {
            return Ok(());
        };
        let tls = self.shared.backend_tls.clone();
        let failed = |e: crate::control::ControlError| e.to_string();
        let mut conn = ControlConn::connect(&server, &self.credentials(server.side), LOOK_TIMEOUT, tls.as_ref())
            .await
            .map_err(failed)?;
        let info = conn.info("replication", LOOK_TIMEOUT).await.map_err(failed)?;
        let replica = info.get("role").map(String::as_str) == Some("slave");
        let lag = conn
            .config_get("min-replicas-max-lag", LOOK_TIMEOUT)
            .await
            .map_err(failed)?;
        let lag = super::run::fence_max_lag(lag.as_deref().unwrap_or("10"));
        // Fenced also when it is a master already (restarted, or detached by someone else): it is not the
        // primary, and a restart dropped the fence with the rest of its run-time settings. (Only admin commands
        // in this MULTI: Redis 5.0 leaves no trace of it in its stream.)
        let max_lag = ["CONFIG", "SET", "min-replicas-max-lag", &lag];
        let mut commands: Vec<&[&str]> = vec![
            &["MULTI"],
            &max_lag,
            &["CONFIG", "SET", "min-replicas-to-write", FENCE_REPLICAS],
        ];
        if replica {
            commands.push(&["REPLICAOF", "NO", "ONE"]);
        }
        commands.push(&["EXEC"]);
        let replies = conn.pipeline(&commands, LOOK_TIMEOUT).await.map_err(failed)?;
        match replies.last() {
            Some(Value::Array(results)) if !results.iter().any(Value::is_error) => Ok(()),
            other => Err(format!("{} refused REPLICAOF NO ONE: {other:?}", server.addr)),
        }
    }

    pub(super) fn count_close(&self, cause: Cause) {
        *self
            .windows_closed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(cause.name())
            .or_default() += 1;
    }

    fn follower_name(&self) -> String {
        let window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        window
            .as_ref()
            .map_or("OLD".into(), |w| w.follower.name().to_uppercase())
    }

    /// The window as `GET /status` shows it: off when `rollback_window_s` is 0, none before any switch.
    pub(super) fn window_status(&self) -> Option<RollbackWindow> {
        let window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        match &*window {
            Some(w) => Some(RollbackWindow::Window(Box::new(w.clone()))),
            None if self.shared.config.rollback_window_s == 0 => Some(RollbackWindow::Off { state: Off::Off }),
            None => None,
        }
    }

    /// The window's metrics, in the Prometheus text format.
    pub fn window_metrics(&self) -> String {
        let window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let (open, lag, left) = match &*window {
            Some(w) if w.state != WindowState::Closed => (
                1,
                w.lag_bytes.unwrap_or(0),
                w.until_unix_ms.saturating_sub(now_ms()) as f64 / 1000.0,
            ),
            _ => (0, 0, 0.0),
        };
        drop(window);
        // A cluster's shards: open while any shard's way back is, the largest lag, the soonest end.
        let (open, lag, left) = match &self.shared.cluster {
            Some(place) => {
                let windows = place.front.windows();
                let live: Vec<_> = windows.values().filter(|w| w.state != WindowState::Closed).collect();
                (
                    usize::from(!live.is_empty()),
                    live.iter().filter_map(|w| w.lag_bytes).max().unwrap_or(0),
                    live.iter()
                        .map(|w| w.until_unix_ms.saturating_sub(now_ms()) as f64 / 1000.0)
                        .reduce(f64::min)
                        .unwrap_or(0.0),
                )
            }
            None => (open, lag, left),
        };
        let mut closed = String::from(
            "# HELP redis_handover_rollback_windows_closed_total Rollback windows closed, by cause.\n\
             # TYPE redis_handover_rollback_windows_closed_total counter\n",
        );
        for (cause, n) in self.windows_closed.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            closed.push_str(&format!(
                "redis_handover_rollback_windows_closed_total{{cause=\"{cause}\"}} {n}\n"
            ));
        }
        closed
            + &format!(
                "# HELP redis_handover_rollback_window_open Whether the former primary follows the primary with no gap, \
             so a rollback can hand back to it.\n# TYPE redis_handover_rollback_window_open gauge\n\
             redis_handover_rollback_window_open {open}\n\
             # HELP redis_handover_rollback_lag_bytes How far the former primary is behind the primary.\n\
             # TYPE redis_handover_rollback_lag_bytes gauge\nredis_handover_rollback_lag_bytes {lag}\n\
             # HELP redis_handover_rollback_window_seconds_left Until rollback_window_s runs out.\n\
             # TYPE redis_handover_rollback_window_seconds_left gauge\n\
             redis_handover_rollback_window_seconds_left {left}\n"
            )
    }
}

/// Watches an open window until it closes or the watch is stopped.
async fn watch(handover: Weak<Handover>, cancel: CancellationToken) {
    let Some(this) = handover.upgrade() else { return };
    let (attached, follower_version, name) = {
        let window = this.window.lock().unwrap_or_else(|e| e.into_inner());
        let Some(w) = window.as_ref() else { return };
        (
            w.attached.clone(),
            parse_version(&w.follower_version).unwrap_or_default(),
            w.follower.name().to_uppercase(),
        )
    };
    let primary_version = parse_version(&attached.primary_version).unwrap_or_default();
    drop(this);
    let (Some(follower), Some(primary)) = (attached.follower.clone(), attached.primary.clone()) else {
        return;
    };
    // The primary's stream needs reading only when the follower is older: a newer Redis applies everything an
    // older one sends.
    let read_stream = follower_version < primary_version;
    let mut reader: Option<StreamReader> = None;
    let mut next_offset = attached.promotion_offset;
    let mut cut_since: Option<tokio::time::Instant> = None;
    let mut reader_down_since: Option<tokio::time::Instant> = None;
    let mut conns: (Option<ControlConn>, Option<ControlConn>) = (None, None);
    loop {
        let Some(this) = handover.upgrade() else { return };
        if cancel.is_cancelled() || this.shared.shutdown.is_cancelled() {
            return;
        }
        let tick_end = tokio::time::Instant::now() + WINDOW_POLL;
        let mut verdict = None;
        if read_stream {
            if reader.is_none() {
                let credentials = this.credentials(primary.side);
                let tls = this.shared.backend_tls.clone();
                let opened = tokio::select! {
                    opened = StreamReader::open(
                        &primary,
                        &credentials,
                        tls.as_ref(),
                        &attached.primary_replid,
                        next_offset,
                        LOOK_TIMEOUT,
                    ) => opened,
                    _ = cancel.cancelled() => return,
                };
                let lost = |error: &str| {
                    format!(
                        "the proxy lost the primary's replication stream and cannot check what {name} applies: {error}"
                    )
                };
                match opened {
                    Ok(opened) => {
                        reader = Some(opened);
                        reader_down_since = None;
                    }
                    Err(error) if error.contains("would not continue") => {
                        verdict = Some(Verdict::Close(Cause::StreamLost, lost(&error)));
                    }
                    // Unchecked commands may be going by: as long as a cut link, then the window closes.
                    Err(error) => {
                        let since = *reader_down_since.get_or_insert_with(|| {
                            tracing::warn!(%error, "rollback window: the stream reader cannot connect");
                            tokio::time::Instant::now()
                        });
                        if since.elapsed() >= LINK_GRACE {
                            verdict = Some(Verdict::Close(Cause::StreamLost, lost(&error)));
                        }
                    }
                }
            }
            if let Some(open) = reader.as_mut() {
                let mut checked = 0;
                loop {
                    let wait = tick_end.saturating_duration_since(tokio::time::Instant::now());
                    let next = tokio::select! {
                        next = open.next(follower_version, wait) => next,
                        _ = cancel.cancelled() => return,
                    };
                    match next {
                        Ok(stream::Next::Fine) => {
                            checked += 1;
                            next_offset = open.offset + 1;
                        }
                        Ok(stream::Next::Unappliable(command, why)) => {
                            checked += 1;
                            verdict = Some(Verdict::Close(
                                Cause::ApplyError,
                                format!("the primary sent `{command}`: {why}, so {name} skipped it"),
                            ));
                            break;
                        }
                        Ok(stream::Next::Idle) => break,
                        Err(error) => {
                            tracing::warn!(%error, "rollback window: stream reader");
                            reader = None;
                            break;
                        }
                    }
                }
                if let Some(w) = this.window.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                    w.commands_checked += checked;
                    w.checked_to = next_offset;
                }
            }
        }
        if verdict.is_none() {
            let look = tokio::select! {
                look = look(&this, &follower, &primary, &mut conns) => look,
                _ = cancel.cancelled() => return,
            };
            verdict = Some(assess(&attached, &look, &name));
            // The follower's error count can rise before the reader has read the command that raised it (both get
            // the stream at once): read on a little, to name it.
            if let (Some(Verdict::Close(Cause::ApplyError, _)), Some(open)) = (&verdict, reader.as_mut()) {
                let named = tokio::select! {
                    named = name_the_refused(open, follower_version, &name) => named,
                    _ = cancel.cancelled() => return,
                };
                if let Some(named) = named {
                    verdict = Some(Verdict::Close(Cause::ApplyError, named));
                }
            }
        }
        let verdict = verdict.unwrap_or(Verdict::Cut { lag: None });
        let until = this
            .window
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map_or(0, |w| w.until_unix_ms);
        let verdict = match verdict {
            Verdict::Cut { .. } if cut_since.is_some_and(|since| since.elapsed() >= LINK_GRACE) => Verdict::Close(
                Cause::LinkLost,
                format!(
                    "{name} has been cut off from the primary (or from the proxy) for {} s",
                    LINK_GRACE.as_secs()
                ),
            ),
            Verdict::Open { .. } | Verdict::Cut { .. } if now_ms() >= until => Verdict::Close(
                Cause::Expired,
                format!("rollback_window_s = {} ran out", this.shared.config.rollback_window_s),
            ),
            verdict => verdict,
        };
        match verdict {
            Verdict::Open { lag, link_up } => {
                cut_since = None;
                if let Some(w) = this.window.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                    (w.lag_bytes, w.link_up) = (lag, link_up);
                }
            }
            Verdict::Cut { lag } => {
                cut_since.get_or_insert_with(tokio::time::Instant::now);
                if let Some(w) = this.window.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                    (w.lag_bytes, w.link_up) = (lag.or(w.lag_bytes), false);
                }
            }
            Verdict::Close(cause, reason) => {
                drop(reader);
                // Stopped meanwhile: the handover that stopped it decides from here.
                if cancel.is_cancelled() {
                    return;
                }
                if let Ok(Some((attached, opened))) = this.mark_closed(WindowState::InUse, cause, reason) {
                    // While a handover back is on its way (before its pause), OLD is detached once it ends.
                    this.detach_until_done(attached, opened, false).await;
                }
                return;
            }
        }
        drop(this);
        tokio::select! {
            _ = tokio::time::sleep_until(tick_end) => {}
            _ = cancel.cancelled() => return,
        }
    }
}

/// Reads the stream on, for up to a second, until it shows a command the follower cannot apply: the reason that
/// names it, or `None`.
async fn name_the_refused(reader: &mut StreamReader, version: (u32, u32, u32), name: &str) -> Option<String> {
    let deadline = tokio::time::Instant::now() + LOOK_TIMEOUT;
    loop {
        let wait = deadline.saturating_duration_since(tokio::time::Instant::now());
        match reader.next(version, wait).await {
            Ok(stream::Next::Fine) => continue,
            Ok(stream::Next::Unappliable(command, why)) => {
                return Some(format!("the primary sent `{command}`: {why}, so {name} skipped it"));
            }
            Ok(stream::Next::Idle) | Err(_) => return None,
        }
    }
}

/// Reads what [`assess`] needs; a server that does not answer is `None` (its connection is opened again next time).
pub(super) async fn look(
    handover: &Handover,
    follower: &Server,
    primary: &Server,
    conns: &mut (Option<ControlConn>, Option<ControlConn>),
) -> Look {
    let tls = handover.shared.backend_tls.clone();
    let mut found = Look::default();
    for (server, conn) in [(follower, &mut conns.0), (primary, &mut conns.1)] {
        if conn.as_ref().is_none_or(ControlConn::is_broken) {
            *conn = ControlConn::connect(server, &handover.credentials(server.side), LOOK_TIMEOUT, tls.as_ref())
                .await
                .ok();
        }
    }
    if let Some(conn) = conns.0.as_mut() {
        let seen = async {
            let replication = conn.info("replication", LOOK_TIMEOUT).await?;
            let server = conn.info("server", LOOK_TIMEOUT).await?;
            let stats = conn.info("stats", LOOK_TIMEOUT).await?;
            Ok::<_, crate::control::ControlError>((replication, server, stats))
        }
        .await;
        if let Ok((replication, server, stats)) = seen {
            let field = |name: &str| replication.get(name).cloned().unwrap_or_default();
            found.follower = Some(FollowerSeen {
                run_id: server.get("run_id").cloned().unwrap_or_default(),
                replica: field("role") == "slave",
                master_host: field("master_host"),
                master_port: field("master_port"),
                link_up: field("master_link_status") == "up",
                syncing: field("master_sync_in_progress") == "1",
                offset: field("slave_repl_offset").parse().unwrap_or(0),
                errors: stats.get("unexpected_error_replies").and_then(|v| v.parse().ok()),
            });
        }
    }
    if let Some(conn) = conns.1.as_mut()
        && let Ok(replication) = conn.info("replication", LOOK_TIMEOUT).await
    {
        let number = |name: &str| replication.get(name).and_then(|v| v.parse().ok()).unwrap_or(0);
        found.primary = Some((number("master_repl_offset"), number("repl_backlog_first_byte_offset")));
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attached() -> Attached {
        Attached {
            follower_run_id: "run-a".into(),
            primary_host: "127.0.0.1".into(),
            primary_port: "7001".into(),
            errors_at_open: Some(2),
            ..Attached::default()
        }
    }

    fn following() -> FollowerSeen {
        FollowerSeen {
            run_id: "run-a".into(),
            replica: true,
            master_host: "localhost".into(),
            master_port: "7001".into(),
            link_up: true,
            syncing: false,
            offset: 90,
            errors: Some(2),
        }
    }

    fn look(follower: FollowerSeen) -> Look {
        Look {
            follower: Some(follower),
            primary: Some((100, 50)),
        }
    }

    fn cause(verdict: Verdict) -> Option<Cause> {
        match verdict {
            Verdict::Close(cause, _) => Some(cause),
            _ => None,
        }
    }

    #[test]
    fn a_follower_with_no_gap_keeps_the_window_open() {
        assert_eq!(
            assess(&attached(), &look(following()), "OLD"),
            Verdict::Open {
                lag: Some(10),
                link_up: true
            }
        );
    }

    #[test]
    fn each_cause_closes_the_window() {
        let a = attached();
        let restarted = FollowerSeen {
            run_id: "run-b".into(),
            ..following()
        };
        assert_eq!(cause(assess(&a, &look(restarted), "OLD")), Some(Cause::Restarted));
        let master = FollowerSeen {
            replica: false,
            ..following()
        };
        assert_eq!(cause(assess(&a, &look(master), "OLD")), Some(Cause::Detached));
        let elsewhere = FollowerSeen {
            master_port: "7002".into(),
            ..following()
        };
        assert_eq!(cause(assess(&a, &look(elsewhere), "OLD")), Some(Cause::Detached));
        let syncing = FollowerSeen {
            syncing: true,
            link_up: false,
            ..following()
        };
        assert_eq!(cause(assess(&a, &look(syncing), "OLD")), Some(Cause::FullSync));
        let errors = FollowerSeen {
            errors: Some(3),
            ..following()
        };
        let verdict = assess(&a, &look(errors), "OLD");
        assert!(matches!(&verdict, Verdict::Close(Cause::ApplyError, why) if why.contains("apply 1 commands")));
        let behind = FollowerSeen {
            link_up: false,
            offset: 10,
            ..following()
        };
        assert_eq!(cause(assess(&a, &look(behind), "OLD")), Some(Cause::Backlog));
    }

    #[test]
    fn a_cut_link_within_the_backlog_waits() {
        let down = FollowerSeen {
            link_up: false,
            ..following()
        };
        assert_eq!(assess(&attached(), &look(down), "OLD"), Verdict::Cut { lag: Some(10) });
        assert_eq!(assess(&attached(), &Look::default(), "OLD"), Verdict::Cut { lag: None });
    }
}
