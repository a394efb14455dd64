//! The cluster as its nodes describe it: `CLUSTER NODES` read into shards (a primary, its replicas, its slots),
//! and the proxy port each shard is presented on.
//!
//! `CLUSTER NODES` is read rather than `CLUSTER SLOTS` or `SHARDS`: every version from 5.0 has it, and only it
//! names the replicas of a primary without slots, the config epochs and the slots in migration.

use std::collections::{BTreeMap, HashMap};

/// The number of hash slots.
pub const SLOTS: u16 = 16384;

/// One node, as a line of `CLUSTER NODES` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The 40-character node ID.
    pub id: String,
    /// `ip:port`, where clients reach it.
    pub addr: String,
    /// The cluster bus port.
    pub bus_port: u16,
    /// Its `cluster-announce-hostname` (7.0), which redirections name instead of the IP when the nodes prefer it.
    pub hostname: Option<String>,
    /// Its flags: `master`, `slave`, `fail`, `handshake`, `noaddr`, `nofailover`, `myself`, ...
    pub flags: Vec<String>,
    /// The primary it replicates, for a replica.
    pub master: Option<String>,
    pub config_epoch: u64,
    /// `connected` or `disconnected` (its link on the cluster bus, from the node that answered).
    pub connected: bool,
    /// The slot ranges it serves, inclusive.
    pub slots: Vec<(u16, u16)>,
    /// Slots moving out of it (`[slot->-target]`) and into it (`[slot-<-source]`), with the other node's ID.
    pub migrating: Vec<(u16, String)>,
    pub importing: Vec<(u16, String)>,
}

impl Node {
    pub fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    pub fn is_primary(&self) -> bool {
        self.has_flag("master")
    }

    /// Whether `addr` names this node: by IP, or by its hostname.
    pub fn is_at(&self, addr: &str) -> bool {
        if self.addr == addr {
            return true;
        }
        let (Some(hostname), Some((host, port))) = (&self.hostname, addr.rsplit_once(':')) else {
            return false;
        };
        host == hostname && self.addr.rsplit_once(':').is_some_and(|(_, own)| own == port)
    }
}

/// Reads the text of `CLUSTER NODES`; `Err` names the line that does not read.
pub fn parse_nodes(text: &str) -> Result<Vec<Node>, String> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| parse_line(line).ok_or_else(|| format!("a CLUSTER NODES line that does not read: {line:?}")))
        .collect()
}

/// `<id> <ip:port@cport[,hostname]> <flags> <master> <ping-sent> <pong-recv> <config-epoch> <link-state> <slot>...`
fn parse_line(line: &str) -> Option<Node> {
    let mut fields = line.split_ascii_whitespace();
    let id = fields.next()?.to_string();
    let address = fields.next()?;
    // 7.0 may add `,hostname`; 4.0 had no bus port.
    let (address, hostname) = match address.split_once(',') {
        Some((address, hostname)) if !hostname.is_empty() => (address, Some(hostname.to_string())),
        Some((address, _)) => (address, None),
        None => (address, None),
    };
    let (addr, bus_port) = match address.split_once('@') {
        Some((addr, bus)) => (addr.to_string(), bus.parse().ok()?),
        None => (address.to_string(), 0),
    };
    let flags: Vec<String> = fields.next()?.split(',').map(str::to_string).collect();
    let master = match fields.next()? {
        "-" => None,
        id => Some(id.to_string()),
    };
    let _ping_sent = fields.next()?;
    let _pong_received = fields.next()?;
    let config_epoch = fields.next()?.parse().ok()?;
    let connected = fields.next()? == "connected";
    let mut node = Node {
        id,
        addr,
        bus_port,
        hostname,
        flags,
        master,
        config_epoch,
        connected,
        slots: Vec::new(),
        migrating: Vec::new(),
        importing: Vec::new(),
    };
    for field in fields {
        if let Some(inner) = field.strip_prefix('[').and_then(|f| f.strip_suffix(']')) {
            if let Some((slot, target)) = inner.split_once("->-") {
                node.migrating.push((slot.parse().ok()?, target.to_string()));
            } else if let Some((slot, source)) = inner.split_once("-<-") {
                node.importing.push((slot.parse().ok()?, source.to_string()));
            }
            continue;
        }
        let (start, end) = match field.split_once('-') {
            Some((start, end)) => (start.parse().ok()?, end.parse().ok()?),
            None => {
                let slot = field.parse().ok()?;
                (slot, slot)
            }
        };
        if start > end || end >= SLOTS {
            return None;
        }
        node.slots.push((start, end));
    }
    Some(node)
}

/// One shard: a primary and the replicas that follow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    pub primary: Node,
    pub replicas: Vec<Node>,
}

impl Shard {
    /// Its first slot, which orders the shards (a shard with none comes last).
    pub fn first_slot(&self) -> u16 {
        self.primary
            .slots
            .iter()
            .map(|(start, _)| *start)
            .min()
            .unwrap_or(SLOTS)
    }

    /// Every node ID of the shard.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.primary.id.as_str()).chain(self.replicas.iter().map(|r| r.id.as_str()))
    }

    /// Whether `addr` (`ip:port`, or `hostname:port`) is one of its nodes.
    pub fn has_addr(&self, addr: &str) -> bool {
        std::iter::once(&self.primary)
            .chain(&self.replicas)
            .any(|node| node.is_at(addr))
    }
}

/// The shards of a cluster, in the order of their first slot, and the slot owners.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    pub shards: Vec<Shard>,
}

impl Topology {
    /// The shards of the nodes one node knows: every primary (with slots or not, but not one that failed with
    /// none), and the replicas that name it.
    pub fn from_nodes(nodes: &[Node]) -> Topology {
        let mut shards: Vec<Shard> = nodes
            .iter()
            .filter(|n| n.is_primary() && !n.has_flag("handshake") && !n.has_flag("noaddr"))
            .filter(|n| !n.slots.is_empty() || !n.has_flag("fail"))
            .map(|primary| Shard {
                primary: primary.clone(),
                replicas: nodes
                    .iter()
                    .filter(|r| r.master.as_deref() == Some(primary.id.as_str()) && !r.has_flag("handshake"))
                    .cloned()
                    .collect(),
            })
            .collect();
        shards.sort_by(|a, b| {
            a.first_slot()
                .cmp(&b.first_slot())
                .then(a.primary.id.cmp(&b.primary.id))
        });
        Topology { shards }
    }

    /// The addresses of the primaries that serve slots (a primary with none holds no data, or is a former primary
    /// that the node read from has not heard of as a replica yet).
    pub fn serving_primaries(&self) -> Vec<&str> {
        self.shards
            .iter()
            .filter(|s| !s.primary.slots.is_empty())
            .map(|s| s.primary.addr.as_str())
            .collect()
    }

    /// The shard that serves `slot`.
    pub fn shard_of_slot(&self, slot: u16) -> Option<usize> {
        self.shards.iter().position(|s| {
            s.primary
                .slots
                .iter()
                .any(|&(start, end)| (start..=end).contains(&slot))
        })
    }

    /// The shard a node of `addr` belongs to.
    pub fn shard_of_addr(&self, addr: &str) -> Option<usize> {
        self.shards.iter().position(|s| s.has_addr(addr))
    }

    /// Slots no primary serves.
    pub fn uncovered_slots(&self) -> u32 {
        let mut covered = vec![false; usize::from(SLOTS)];
        for shard in &self.shards {
            for &(start, end) in &shard.primary.slots {
                covered[usize::from(start)..=usize::from(end)].fill(true);
            }
        }
        covered.iter().filter(|c| !**c).count() as u32
    }
}

/// Gives each shard a proxy port from `ports`: the one it had (a shard keeps its port across a failover or a
/// resharding: the port that served its first slot before, `by_slot`, or else the port of any of its node IDs),
/// or the lowest one free. A shard left without one (more shards than ports) gets none.
pub fn assign_ports(
    topology: &Topology,
    ports: &[u16],
    by_slot: impl Fn(u16) -> Option<u16>,
    before: &HashMap<String, u16>,
) -> Vec<Option<u16>> {
    let mut taken: BTreeMap<u16, usize> = BTreeMap::new();
    let mut assigned = vec![None; topology.shards.len()];
    // First by slots (what clients route by), then by node IDs (a shard with no slots).
    let by_slots = |shard: &Shard| {
        (!shard.primary.slots.is_empty())
            .then(|| by_slot(shard.first_slot()))
            .flatten()
    };
    let by_ids = |shard: &Shard| shard.ids().find_map(|id| before.get(id).copied());
    for find in [&by_slots as &dyn Fn(&Shard) -> Option<u16>, &by_ids] {
        for (i, shard) in topology.shards.iter().enumerate() {
            if assigned[i].is_some() {
                continue;
            }
            if let Some(port) = find(shard)
                && ports.contains(&port)
                && !taken.contains_key(&port)
            {
                taken.insert(port, i);
                assigned[i] = Some(port);
            }
        }
    }
    for (i, shard) in topology.shards.iter().enumerate() {
        if assigned[i].is_some() {
            continue;
        }
        match ports.iter().find(|p| !taken.contains_key(p)) {
            Some(&port) => {
                taken.insert(port, i);
                assigned[i] = Some(port);
            }
            None => tracing::error!(
                primary = %shard.primary.addr,
                ports = ports.len(),
                "more shards than cluster_ports: this shard has no proxy port"
            ),
        }
    }
    assigned
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: &str = "\
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@40001 myself,master - 0 1426238316232 1 connected 0-5460
67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30002@40002,host2 master - 0 1426238316232 2 connected 5461-10922 [10922->-292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f]
292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 127.0.0.1:30003@40003 master - 0 1426238318243 3 connected 10923-16383 [10922-<-67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1]
07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@40004 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 1 connected
6ec23923021cf3ffec47632106199cb7f496ce01 127.0.0.1:30005@40005 slave 67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 0 1426238316232 2 connected
abcdefabcdefabcdefabcdefabcdefabcdefabcd :0@0 master,noaddr - 0 0 0 disconnected
";

    #[test]
    fn nodes_read_into_shards_in_slot_order() {
        let nodes = parse_nodes(NODES).unwrap();
        assert_eq!(nodes.len(), 6);
        assert_eq!(nodes[1].addr, "127.0.0.1:30002");
        assert_eq!(nodes[1].bus_port, 40002);
        assert_eq!(nodes[1].hostname.as_deref(), Some("host2"));
        assert!(nodes[1].is_at("host2:30002") && !nodes[1].is_at("host2:30001"));
        assert_eq!(nodes[1].migrating, vec![(10922, nodes[2].id.clone())]);
        assert_eq!(nodes[2].importing, vec![(10922, nodes[1].id.clone())]);
        let topology = Topology::from_nodes(&nodes);
        assert_eq!(topology.shards.len(), 3, "the noaddr node is no shard");
        assert_eq!(topology.shards[0].replicas[0].addr, "127.0.0.1:30004");
        assert!(topology.shards[2].replicas.is_empty());
        assert_eq!(topology.shard_of_slot(0), Some(0));
        assert_eq!(topology.shard_of_slot(10922), Some(1));
        assert_eq!(topology.shard_of_slot(16383), Some(2));
        assert_eq!(topology.shard_of_addr("127.0.0.1:30005"), Some(1));
        assert_eq!(topology.uncovered_slots(), 0);
        assert!(parse_nodes("not a line").is_err());
    }

    #[test]
    fn a_shard_keeps_its_port_across_a_failover_and_a_new_one_takes_the_lowest_free() {
        let nodes = parse_nodes(NODES).unwrap();
        let topology = Topology::from_nodes(&nodes);
        let ports = [7001, 7002, 7003, 7004];
        let first = assign_ports(&topology, &ports, |_| None, &HashMap::new());
        assert_eq!(first, vec![Some(7001), Some(7002), Some(7003)]);
        // Shard 0's replica is promoted: its old primary now follows it.
        let mut after = topology.clone();
        let shard = &mut after.shards[0];
        std::mem::swap(&mut shard.primary, &mut shard.replicas[0]);
        let before: HashMap<String, u16> = HashMap::from([
            (topology.shards[0].primary.id.clone(), 7001),
            (topology.shards[1].primary.id.clone(), 7002),
            (topology.shards[2].primary.id.clone(), 7003),
        ]);
        // The shards in another order, as after a resharding: each keeps its port.
        after.shards.reverse();
        assert_eq!(
            assign_ports(&after, &ports, |_| None, &before),
            vec![Some(7003), Some(7002), Some(7001)]
        );
        assert_eq!(
            assign_ports(&topology, &ports[..2], |_| None, &HashMap::new()),
            vec![Some(7001), Some(7002), None],
            "more shards than ports"
        );
    }
}
