//! `GET /status`: the schema the admin port serves, and the one `ctl`, the fleet's peers and the tests read back.
//!
//! Every field is always present; `null` where the doc says "or null". New fields may be added; none is renamed
//! or removed without a CHANGELOG entry.

use serde::{Deserialize, Serialize};

use super::fleet::PeerView;
use super::schedule::Scheduled;
use super::window::Window;
use super::{Phase, Report};
use crate::config::Resp3Mode;
use crate::primary::Side;

/// Everything `GET /status` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// The running handover's phase; after one, how it ended (`switched`, `aborted`, `synced`); `idle` before any.
    pub phase: Phase,
    /// The server the sessions write to now.
    pub primary: PrimaryView,
    /// Both configured servers, as the proxy last saw them (every two seconds, and during a handover).
    pub servers: Servers,
    /// The running or last full sync of NEW from OLD, in bytes of the RDB; null before any.
    pub sync: SyncProgress,
    /// How far NEW is behind OLD during the catch-up, in bytes of the replication stream; or null.
    pub lag_bytes: Option<i64>,
    /// Client connections open now.
    pub clients: usize,
    /// Tasks alive in the proxy's runtime (sessions, links, watchers).
    pub tasks: usize,
    /// Writes held at the gate now (during a pause).
    pub writes_held: usize,
    /// How the former primary is kept from taking writes after a switch; or null.
    pub fence: Option<String>,
    /// The rollback window of the last switch; null before any switch.
    pub rollback_window: Option<RollbackWindow>,
    /// While a handover's outcome is in doubt: why, and what the operator can do; or null.
    pub in_doubt: Option<String>,
    /// This proxy's part in the fleet, and what it last heard from each peer.
    pub fleet: FleetView,
    /// Lua scripts the proxy knows (from `SCRIPT LOAD` and `EVAL`), to load on NEW before a switch.
    pub scripts_known: usize,
    /// What the proxy does with `HELLO 3` now.
    pub resp3: Resp3Mode,
    /// The running handover's record; null when none runs.
    pub handover: Option<Report>,
    /// The last finished handover's record; null before any.
    pub last_handover: Option<Report>,
    /// The scheduled handover (waiting, watching, or how it ended); null when none was scheduled.
    pub scheduled: Option<Scheduled>,
    /// When the proxy fronts a Redis Cluster (`cluster_ports`): its shards and their ports; null otherwise.
    #[serde(default)]
    pub cluster: Option<ClusterView>,
}

/// A fronted cluster, as the proxy presents it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterView {
    /// The host the proxy's answers and redirections name.
    pub announce_host: String,
    /// The shards in the order of their first slot.
    pub shards: Vec<ShardView>,
    /// Slots no primary serves.
    pub uncovered_slots: u32,
}

/// One shard of a fronted cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardView {
    /// The proxy port clients reach it on; null when there are more shards than `cluster_ports`.
    pub port: Option<u16>,
    /// Its primary's address and node ID.
    pub primary: String,
    pub primary_id: String,
    /// Its slot ranges (inclusive) and how many slots they hold.
    pub slots: Vec<(u16, u16)>,
    pub slot_count: u32,
    /// Its replicas' addresses.
    pub replicas: Vec<String>,
    /// Clients connected to its port now.
    pub clients: usize,
    /// Its step in the running or last handover; null before any.
    #[serde(default)]
    pub handover: Option<crate::cluster::ShardStep>,
    /// Its way back after the last handover (`ctl rollback`); null when it has none.
    #[serde(default)]
    pub window: Option<crate::cluster::ShardWindow>,
}

impl ClusterView {
    /// The view of a fronted cluster.
    pub fn of(front: &crate::cluster::Front) -> ClusterView {
        let view = front.view();
        ClusterView {
            announce_host: front.announce_host.clone(),
            shards: view
                .topology
                .shards
                .iter()
                .zip(&view.ports)
                .map(|(shard, port)| ShardView {
                    port: *port,
                    primary: shard.primary.addr.clone(),
                    primary_id: shard.primary.id.clone(),
                    slots: shard.primary.slots.clone(),
                    slot_count: shard.primary.slots.iter().map(|(s, e)| u32::from(e - s) + 1).sum(),
                    replicas: shard.replicas.iter().map(|r| r.addr.clone()).collect(),
                    clients: port.map_or(0, |p| front.clients_on(p)),
                    handover: port.and_then(|p| front.step_on(p)),
                    window: port.and_then(|p| front.window_on(p)),
                })
                .collect(),
            uncovered_slots: view.topology.uncovered_slots(),
        }
    }
}

impl Status {
    /// The rollback window of the last switch, unless there was none or windows are off.
    pub fn window(&self) -> Option<&Window> {
        self.rollback_window.as_ref().and_then(RollbackWindow::window)
    }
}

/// The primary: which server, where, and the generation sessions compare their backends against.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrimaryView {
    pub side: Side,
    /// `host:port`, as configured.
    pub addr: String,
    /// Its Redis version, once the proxy has seen it.
    pub version: Option<String>,
    /// Goes up by one with each switch.
    pub generation: u64,
}

/// The two configured servers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Servers {
    pub old: ServerView,
    pub new: ServerView,
}

impl Servers {
    /// The view of one side.
    pub fn side(&self, side: Side) -> &ServerView {
        match side {
            Side::Old => &self.old,
            Side::New => &self.new,
        }
    }
}

/// What the proxy last saw of a server.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServerView {
    /// `host:port`, as configured.
    pub addr: String,
    /// `primary` (the proxy's), `standby`, or `replica` (replicating for a handover); `unknown` if unreachable.
    pub role: String,
    pub version: Option<String>,
    pub reachable: bool,
}

/// A full sync's progress, in bytes of the RDB NEW loads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncProgress {
    pub bytes_read: Option<u64>,
    pub bytes_total: Option<u64>,
}

/// The rollback window: the one opened at the last switch, or `{"state": "off"}` when `rollback_window_s` is 0.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RollbackWindow {
    /// Open, in use, or closed (with the cause).
    Window(Box<Window>),
    /// `rollback_window_s = 0`: no window opens.
    Off { state: Off },
}

/// The `state` of a rollback window that never opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Off {
    Off,
}

impl RollbackWindow {
    /// The window, unless windows are off.
    pub fn window(&self) -> Option<&Window> {
        match self {
            RollbackWindow::Window(window) => Some(window),
            RollbackWindow::Off { .. } => None,
        }
    }
}

/// This proxy in its fleet.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetView {
    /// `proxy_id`, or the admin address.
    pub proxy_id: String,
    /// Its part in a fleet handover now: `idle`, `claimed`, `held` or `switched`.
    pub part: String,
    /// The epoch of the fleet handover it takes part in; or null.
    pub epoch: Option<String>,
    /// The proxy that drives that handover; or null.
    pub driver: Option<String>,
    /// What this proxy last heard from each peer of `fleet_peers` (empty without a fleet).
    pub peers: Vec<PeerView>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON the admin port serves reads back as the same `Status`: no field is lost or renamed on the way.
    #[test]
    fn a_status_reads_back_as_it_was_written() {
        let status = Status {
            phase: Phase::CatchingUp,
            primary: PrimaryView {
                side: Side::Old,
                addr: "127.0.0.1:6379".into(),
                version: Some("6.2.14".into()),
                generation: 3,
            },
            servers: Servers {
                old: ServerView {
                    addr: "127.0.0.1:6379".into(),
                    role: "primary".into(),
                    version: Some("6.2.14".into()),
                    reachable: true,
                },
                new: ServerView::default(),
            },
            sync: SyncProgress {
                bytes_read: Some(10),
                bytes_total: Some(20),
            },
            lag_bytes: Some(-1),
            clients: 4,
            tasks: 12,
            writes_held: 0,
            fence: None,
            rollback_window: Some(RollbackWindow::Off { state: Off::Off }),
            in_doubt: None,
            fleet: FleetView {
                proxy_id: "a".into(),
                part: "idle".into(),
                epoch: None,
                driver: None,
                peers: Vec::new(),
            },
            scripts_known: 2,
            resp3: Resp3Mode::PinResp2,
            handover: None,
            last_handover: None,
            scheduled: None,
            cluster: None,
        };
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["phase"], "catching_up");
        assert_eq!(json["rollback_window"], serde_json::json!({ "state": "off" }));
        assert_eq!(json["resp3"], "pin-resp2");
        let back: Status = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), json);
        assert!(matches!(back.rollback_window, Some(RollbackWindow::Off { .. })));
    }
}
