//! The `CLUSTER` subcommands the proxy answers itself, in the shape the nodes' version gives them (Redis 6.2's
//! `cluster.c` `addNodeReplyForClusterSlot`, 7.0's `addNodeToNodeReply`, `addShardReplyForClusterShards` and
//! `clusterGenNodeDescription`), with each shard's primary at its proxy port. Replicas are not presented: clients
//! reach a shard only through its port, and the proxy sends everything to the primary.

use std::fmt::Write as _;

use bytes::Bytes;

use super::topology::Shard;
use super::{Place, View};
use crate::protocol::request::Args;

/// The answer to `CLUSTER SLOTS`, `SHARDS` (7.0 and later), `NODES`, `REPLICAS` or `SLAVES` for a client speaking
/// `protocol`; `None` for the other subcommands and for wrong arities, which go to the server.
pub fn answer(place: &Place, args: Args<'_>, protocol: u8) -> Option<Bytes> {
    let view = place.front.view();
    let host = place.front.announce_host.as_str();
    let reply = match args.len() {
        2 if args.is(1, "SLOTS") => slots(&view, host, protocol),
        2 if args.is(1, "SHARDS") && view.version >= (7, 0, 0) => shards(&view, host, protocol),
        2 if args.is(1, "NODES") => verbatim(&nodes(&view, host, place.port), protocol),
        // The proxy presents no replicas.
        3 if args.is(1, "REPLICAS") || args.is(1, "SLAVES") => "*0\r\n".to_string(),
        _ => return None,
    };
    Some(Bytes::from(reply))
}

/// The shards that have a proxy port, with it.
fn presented(view: &View) -> impl Iterator<Item = (&Shard, u16)> {
    view.topology
        .shards
        .iter()
        .zip(&view.ports)
        .filter_map(|(shard, port)| port.map(|port| (shard, port)))
}

fn bulk(out: &mut String, text: &str) {
    let _ = write!(out, "${}\r\n{text}\r\n", text.len());
}

/// A map's header: `%n` in RESP3, a flat array of keys and values in RESP2.
fn map_header(out: &mut String, pairs: usize, protocol: u8) {
    if protocol >= 3 {
        let _ = write!(out, "%{pairs}\r\n");
    } else {
        let _ = write!(out, "*{}\r\n", pairs * 2);
    }
}

/// `CLUSTER SLOTS`: one entry per run of slots, in slot order, each `[start, end, [host, port, id]]`, with 7.0's
/// fourth element (the endpoint's other names: none here).
fn slots(view: &View, host: &str, protocol: u8) -> String {
    let mut runs: Vec<(u16, u16, &str, u16)> = presented(view)
        .flat_map(|(shard, port)| {
            shard
                .primary
                .slots
                .iter()
                .map(move |&(start, end)| (start, end, shard.primary.id.as_str(), port))
        })
        .collect();
    runs.sort_unstable();
    let seven = view.version >= (7, 0, 0);
    let mut out = format!("*{}\r\n", runs.len());
    for (start, end, id, port) in runs {
        let _ = write!(out, "*3\r\n:{start}\r\n:{end}\r\n*{}\r\n", if seven { 4 } else { 3 });
        bulk(&mut out, host);
        let _ = write!(out, ":{port}\r\n");
        bulk(&mut out, id);
        if seven {
            map_header(&mut out, 0, protocol);
        }
    }
    out
}

/// `CLUSTER SHARDS` (7.0): per shard, its slots as start and end integers and its nodes (the primary only).
fn shards(view: &View, host: &str, protocol: u8) -> String {
    let presented: Vec<_> = presented(view).collect();
    let mut out = format!("*{}\r\n", presented.len());
    for (shard, port) in presented {
        map_header(&mut out, 2, protocol);
        bulk(&mut out, "slots");
        let _ = write!(out, "*{}\r\n", shard.primary.slots.len() * 2);
        for (start, end) in &shard.primary.slots {
            let _ = write!(out, ":{start}\r\n:{end}\r\n");
        }
        bulk(&mut out, "nodes");
        out.push_str("*1\r\n");
        map_header(&mut out, 7, protocol);
        bulk(&mut out, "id");
        bulk(&mut out, &shard.primary.id);
        bulk(&mut out, "port");
        let _ = write!(out, ":{port}\r\n");
        for key in ["ip", "endpoint"] {
            bulk(&mut out, key);
            bulk(&mut out, host);
        }
        bulk(&mut out, "role");
        bulk(&mut out, "master");
        bulk(&mut out, "replication-offset");
        out.push_str(":0\r\n");
        bulk(&mut out, "health");
        bulk(
            &mut out,
            if shard.primary.has_flag("fail") {
                "fail"
            } else {
                "online"
            },
        );
    }
    out
}

/// `CLUSTER NODES`: a line per presented primary, `myself` on the one of `own_port`.
fn nodes(view: &View, host: &str, own_port: u16) -> String {
    let mut text = String::new();
    for (shard, port) in presented(view) {
        let node = &shard.primary;
        let mut flags: Vec<&str> = node
            .flags
            .iter()
            .map(String::as_str)
            .filter(|f| *f != "myself")
            .collect();
        if port == own_port {
            flags.insert(0, "myself");
        }
        let _ = write!(
            text,
            "{} {host}:{port}@0 {} - 0 0 {} connected",
            node.id,
            flags.join(","),
            node.config_epoch
        );
        for &(start, end) in &node.slots {
            if start == end {
                let _ = write!(text, " {start}");
            } else {
                let _ = write!(text, " {start}-{end}");
            }
        }
        text.push('\n');
    }
    text
}

/// Text as Redis sends `CLUSTER NODES`: a bulk string, or in RESP3 a verbatim string of format `txt`.
fn verbatim(text: &str, protocol: u8) -> String {
    if protocol >= 3 {
        format!("={}\r\ntxt:{text}\r\n", text.len() + 4)
    } else {
        format!("${}\r\n{text}\r\n", text.len())
    }
}

#[cfg(test)]
mod tests {
    use super::super::topology::{Topology, parse_nodes};
    use super::super::{Front, Place, View};
    use super::*;
    use crate::protocol::value::Value;

    fn place_of(version: (u32, u32, u32)) -> Place {
        let nodes = parse_nodes(
            "a000000000000000000000000000000000000001 10.0.0.1:6379@16379 master - 0 0 1 connected 0-100 200-16383\n\
             a000000000000000000000000000000000000002 10.0.0.2:6379@16379 master - 0 0 2 connected 101-199\n\
             a000000000000000000000000000000000000003 10.0.0.3:6379@16379 slave a000000000000000000000000000000000000002 0 0 2 connected\n",
        )
        .unwrap();
        let view = View {
            topology: Topology::from_nodes(&nodes),
            ports: vec![Some(7001), Some(7002)],
            version,
        };
        Place {
            front: std::sync::Arc::new(Front::new("127.0.0.1".into(), view)),
            port: 7002,
        }
    }

    fn ask(place: &Place, words: &[&str], protocol: u8) -> Option<Value> {
        use crate::protocol::request::{Parsed, RequestParser, write_command};
        let mut request = bytes::BytesMut::new();
        let words: Vec<&[u8]> = words.iter().map(|w| w.as_bytes()).collect();
        write_command(&mut request, &words);
        let mut parser = RequestParser::new();
        assert!(matches!(parser.parse(&request), Parsed::Request(_)));
        answer(place, parser.args(&request), protocol)
            .map(|reply| Value::decode(&reply, protocol).expect("a complete reply"))
    }

    fn text(v: &Value) -> String {
        match v {
            Value::Str(s) => String::from_utf8_lossy(s).into_owned(),
            Value::Int(i) => i.to_string(),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn cluster_slots_names_the_proxy_ports_in_slot_order_in_each_version_s_shape() {
        let place62 = place_of((6, 2, 14));
        let Some(Value::Array(runs)) = ask(&place62, &["CLUSTER", "SLOTS"], 2) else {
            panic!()
        };
        let summary: Vec<String> = runs
            .iter()
            .map(|run| match run {
                Value::Array(parts) => match &parts[2] {
                    Value::Array(node) => {
                        assert_eq!(node.len(), 3, "6.2: host, port, id");
                        format!(
                            "{}-{} {}:{}",
                            text(&parts[0]),
                            text(&parts[1]),
                            text(&node[0]),
                            text(&node[1])
                        )
                    }
                    other => panic!("{other:?}"),
                },
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            summary,
            [
                "0-100 127.0.0.1:7001",
                "101-199 127.0.0.1:7002",
                "200-16383 127.0.0.1:7001"
            ]
        );
        for protocol in [2, 3] {
            let Some(Value::Array(runs)) = ask(&place_of((7, 0, 15)), &["cluster", "slots"], protocol) else {
                panic!()
            };
            let Value::Array(parts) = &runs[0] else { panic!() };
            let Value::Array(node) = &parts[2] else { panic!() };
            assert_eq!(node.len(), 4, "7.0 adds the endpoint's other names");
            assert!(
                matches!(&node[3], Value::Array(v) if v.is_empty())
                    || matches!(&node[3], Value::Map(m) if m.is_empty())
            );
        }
    }

    #[test]
    fn cluster_shards_and_nodes_name_the_proxy_ports() {
        let place = place_of((7, 0, 15));
        let Some(Value::Map(shard)) = ask(&place, &["CLUSTER", "SHARDS"], 3).and_then(|v| match v {
            Value::Array(mut shards) => Some(shards.remove(1)),
            _ => None,
        }) else {
            panic!()
        };
        // (The RESP3 decoder keeps a map's entries in no order.)
        let field = |key: &str| shard.iter().find(|(k, _)| text(k) == key).map(|(_, v)| v.clone());
        assert!(
            matches!(field("slots"), Some(Value::Array(s)) if s.len() == 2),
            "{shard:?}"
        );
        let Some(Value::Array(nodes)) = field("nodes") else {
            panic!("{shard:?}")
        };
        let Value::Map(node) = &nodes[0] else { panic!() };
        let fields: Vec<(String, String)> = node.iter().map(|(k, v)| (text(k), text(v))).collect();
        assert!(fields.contains(&("port".into(), "7002".into())), "{fields:?}");
        assert!(fields.contains(&("endpoint".into(), "127.0.0.1".into())), "{fields:?}");
        assert!(
            ask(&place_of((6, 2, 14)), &["CLUSTER", "SHARDS"], 2).is_none(),
            "6.2 has none: the server says so"
        );

        let Some(Value::Str(nodes)) = ask(&place, &["CLUSTER", "NODES"], 2) else {
            panic!()
        };
        let nodes = String::from_utf8(nodes).unwrap();
        let lines: Vec<&str> = nodes.lines().collect();
        assert_eq!(lines.len(), 2, "primaries only: {nodes}");
        assert!(
            lines[0].contains(" 127.0.0.1:7001@0 master - 0 0 1 connected 0-100 200-16383"),
            "{nodes}"
        );
        assert!(lines[1].contains(" 127.0.0.1:7002@0 myself,master - "), "{nodes}");
        let Some(Value::Str(verbatim)) = ask(&place, &["CLUSTER", "NODES"], 3) else {
            panic!()
        };
        assert!(
            verbatim.starts_with(b"a0000"),
            "the txt: prefix is not part of the text"
        );
        assert_eq!(
            ask(&place, &["CLUSTER", "REPLICAS", "x"], 2),
            Some(Value::Array(vec![]))
        );
        assert_eq!(ask(&place, &["CLUSTER", "INFO"], 2), None);
    }
}
