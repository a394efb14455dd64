//! `backend_links = "shared"`: sessions share pipelined backend connections while they hold no connection
//! state, and get one of their own for the commands whose effect lives on it. What a client sees stays what a
//! direct connection gives: its replies in order, transactions and blocking calls as on Redis, and a lost link
//! costs only the sessions that had requests in flight on it.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use redis_handover::config::BackendLinks;
use support::{Client, Proxy, RedisServer, Reply, Version};

fn shared_proxy(redis: &RedisServer) -> Proxy {
    Proxy::start(redis.addr(), None, |c| c.backend_links = BackendLinks::Shared)
}

/// The server's connections other than `direct` itself (which runs the CLIENT LIST).
fn server_connections(direct: &mut Client) -> Vec<String> {
    let list = direct.run("CLIENT LIST").text();
    list.lines()
        .filter(|l| !l.contains("cmd=client|list"))
        .map(str::to_string)
        .collect()
}

#[test]
fn many_sessions_share_one_connection_and_each_gets_its_own_replies_in_order() {
    let redis = RedisServer::start(Version::V7_0, &[]);
    let proxy = shared_proxy(&redis);
    let mut clients: Vec<Client> = (0..20).map(|_| proxy.client()).collect();
    // Every session pipelines 200 commands before any reads: the link carries them all, interleaved.
    for (i, client) in clients.iter_mut().enumerate() {
        let mut pipeline = Vec::new();
        for n in 0..200 {
            pipeline.extend(support::encode(&["SET", &format!("s{i}:{n}"), &n.to_string()]));
            pipeline.extend(support::encode(&["INCR", &format!("c{i}")]));
        }
        client.write_raw(&pipeline);
    }
    for client in clients.iter_mut() {
        for n in 0..200 {
            assert_eq!(client.read(), Reply::ok());
            assert_eq!(client.read(), Reply::Int(n + 1), "this session's INCRs, in its order");
        }
    }
    let mut direct = redis.direct();
    let connections = server_connections(&mut direct);
    assert_eq!(connections.len(), 1, "one shared link for 20 clients: {connections:#?}");
    assert!(
        connections[0].contains("name=redis-handover:shared:db0:resp2"),
        "{connections:#?}"
    );
    // A reply a client received before another client sent its command is visible to that client.
    let (mut a, mut b) = (proxy.client(), proxy.client());
    for n in 0..100 {
        assert_eq!(a.cmd(&["SET", "seen", &n.to_string()]), Reply::ok());
        assert_eq!(b.cmd(&["GET", "seen"]), Reply::bulk(n.to_string()));
    }
}

#[test]
fn pipelined_writes_then_watch_multi_exec_across_the_pin_behave_as_on_redis() {
    let redis = RedisServer::start(Version::V7_0, &[]);
    let proxy = shared_proxy(&redis);
    let mut c = proxy.client();
    // One write: the SETs go on the shared link; WATCH needs the session's own connection, and waits for their
    // replies, so it watches the value they wrote and EXEC succeeds, as on a direct connection.
    let mut pipeline = Vec::new();
    for n in 0..50 {
        pipeline.extend(support::encode(&["SET", "k", &n.to_string()]));
    }
    for args in [
        &["WATCH", "k"][..],
        &["GET", "k"],
        &["MULTI"],
        &["INCR", "k"],
        &["EXEC"],
    ] {
        pipeline.extend(support::encode(args));
    }
    c.write_raw(&pipeline);
    for _ in 0..50 {
        assert_eq!(c.read(), Reply::ok());
    }
    assert_eq!(c.read(), Reply::ok(), "WATCH");
    assert_eq!(c.read(), Reply::bulk("49"));
    assert_eq!(c.read(), Reply::ok(), "MULTI");
    assert_eq!(c.read(), Reply::Status("QUEUED".into()));
    assert_eq!(c.read(), Reply::Array(vec![Reply::Int(50)]), "EXEC ran");
    // A conflicting write from a shared session aborts a WATCHed transaction, as on Redis.
    let mut other = proxy.client();
    assert_eq!(c.run("WATCH k"), Reply::ok());
    assert_eq!(other.run("SET k changed"), Reply::ok());
    assert_eq!(c.run("MULTI"), Reply::ok());
    assert_eq!(c.run("INCR k"), Reply::Status("QUEUED".into()));
    assert_eq!(c.run("EXEC"), Reply::Nil);
    // A blocking call pins too, after the LPUSH pipelined before it: it is served at once.
    let mut worker = proxy.client();
    worker.write_raw(
        &[
            support::encode(&["LPUSH", "q", "x"]),
            support::encode(&["BLPOP", "q", "0"]),
        ]
        .concat(),
    );
    assert_eq!(worker.read(), Reply::Int(1));
    assert_eq!(worker.read(), Reply::Array(vec![Reply::bulk("q"), Reply::bulk("x")]));
}

#[test]
fn client_setname_and_getname_stay_with_the_session_on_a_shared_link() {
    let redis = RedisServer::start(Version::V7_0, &[]);
    let proxy = shared_proxy(&redis);
    let mut named = proxy.client();
    let mut other = proxy.client();
    assert_eq!(named.run("CLIENT GETNAME"), Reply::Nil);
    assert_eq!(named.run("CLIENT SETNAME worker-1"), Reply::ok());
    assert_eq!(named.run("CLIENT GETNAME"), Reply::bulk("worker-1"));
    assert_eq!(
        other.run("CLIENT GETNAME"),
        Reply::Nil,
        "the name is the session's, not the link's"
    );
    let refused = named.cmd(&["CLIENT", "SETNAME", "has space"]);
    assert!(refused.is_error());
    assert_eq!(
        refused,
        redis.direct().cmd(&["CLIENT", "SETNAME", "has space"]),
        "Redis's own error"
    );
    assert_eq!(named.run("CLIENT GETNAME"), Reply::bulk("worker-1"));
    // Pinned later (MULTI), the session's connection carries its name.
    assert_eq!(named.run("MULTI"), Reply::ok());
    assert_eq!(named.run("EXEC"), Reply::Array(vec![]));
    let list = redis.direct().run("CLIENT LIST").text();
    assert!(list.contains("name=worker-1"), "{list}");
}

#[test]
fn a_shared_link_killed_on_the_server_closes_only_the_sessions_with_requests_in_flight() {
    let redis = RedisServer::start(Version::V7_0, &["--save", ""]);
    let proxy = shared_proxy(&redis);
    let mut idle = proxy.client();
    assert_eq!(idle.run("SET k v"), Reply::ok());
    // Writes pause on the server, so busy's SET stays in flight on the shared link; then the operator kills
    // that link on the server.
    let mut direct = redis.direct();
    assert_eq!(direct.run("CLIENT PAUSE 5000 WRITE"), Reply::ok());
    let mut busy = proxy.client();
    busy.send(&["SET", "k", "w"]);
    let mut link = String::new();
    support::wait_until("the SET to wait on the server", Duration::from_secs(5), || {
        // A connection whose command the pause holds is flagged b (blocked).
        let paused = |l: &String| l.contains("flags=b") && l.contains("cmd=set");
        link = server_connections(&mut direct)
            .into_iter()
            .find(paused)
            .unwrap_or_default();
        !link.is_empty()
    });
    assert!(link.contains("name=redis-handover:shared"), "{link}");
    let id = link.split(' ').find_map(|f| f.strip_prefix("id=")).unwrap().to_string();
    assert_eq!(direct.run(&format!("CLIENT KILL ID {id}")), Reply::Int(1));
    assert_eq!(direct.run("CLIENT UNPAUSE"), Reply::ok());
    let (_, closed) = busy.read_until_closed(Duration::from_secs(10));
    assert!(closed, "the session whose request's outcome is unknown is closed");
    assert_eq!(
        idle.run("GET k"),
        Reply::bulk("v"),
        "an idle session carries on over a new link"
    );
}

#[test]
fn a_deep_pipeline_beside_a_single_command_client_and_a_client_that_never_reads() {
    let redis = RedisServer::start(Version::V7_0, &[]);
    let proxy = shared_proxy(&redis);
    let mut setup = proxy.client();
    assert_eq!(setup.cmd(&["SET", "big", &"x".repeat(512 * 1024)]), Reply::ok());
    // A client that asks for 400 MB of replies and never reads them.
    let mut stuck = TcpStream::connect(proxy.addr).unwrap();
    let mut asks = Vec::new();
    for _ in 0..800 {
        asks.extend(support::encode(&["GET", "big"]));
    }
    stuck.write_all(&asks).unwrap();
    // A client with 10,000 requests in one pipeline.
    let deep = std::thread::spawn({
        let addr = proxy.addr;
        move || {
            let mut deep = Client::connect(addr);
            let mut pipeline = Vec::new();
            for n in 0..10_000 {
                pipeline.extend(support::encode(&["INCR", "deep"]));
                let _ = n;
            }
            deep.write_raw(&pipeline);
            for n in 0..10_000 {
                assert_eq!(deep.read(), Reply::Int(n + 1));
            }
        }
    });
    // Meanwhile a one-command-at-a-time client is served, in order.
    let mut single = proxy.client();
    for n in 0..200 {
        assert_eq!(single.cmd(&["INCR", "single"]), Reply::Int(n + 1));
    }
    deep.join().expect("the deep pipeline got every reply in order");
    let mut byte = [0u8; 1];
    stuck.read_exact(&mut byte).unwrap();
    assert_eq!(&byte, b"$", "the stuck client's replies wait for it");
}

#[test]
fn client_handshakes_select_auth_and_hello_stay_on_shared_links() {
    let redis = RedisServer::start(Version::V7_0, &["--requirepass", "pw"]);
    assert_eq!(
        redis.direct().cmd(&["AUTH", "pw"]),
        Reply::ok(),
        "the server has a password"
    );
    let proxy = shared_proxy(&redis);
    // What redis-py 8 and node-redis send at connect: HELLO 3 with AUTH and SETNAME, CLIENT SETINFO, SELECT.
    let mut clients: Vec<Client> = (0..10)
        .map(|i| {
            let mut c = proxy.client();
            c.protocol = 3;
            let hello = c.cmd(&["HELLO", "3", "AUTH", "default", "pw", "SETNAME", &format!("app-{i}")]);
            assert!(matches!(hello, Reply::Map(_)), "{hello:?}");
            assert!(
                c.cmd(&["CLIENT", "SETINFO", "LIB-NAME", "redis-py"]).is_error(),
                "7.0 has no SETINFO"
            );
            assert_eq!(c.run("SELECT 2"), Reply::ok());
            c
        })
        .collect();
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(c.cmd(&["SET", &format!("k{i}"), "v"]), Reply::ok());
        assert_eq!(c.run("CLIENT GETNAME"), Reply::bulk(format!("app-{i}")));
        assert!(matches!(c.run("HGETALL none"), Reply::Map(_)), "RESP3 replies");
    }
    let mut direct = redis.direct();
    assert_eq!(direct.cmd(&["AUTH", "pw"]), Reply::ok());
    let connections = server_connections(&mut direct);
    assert!(connections.len() <= 2, "the handshakes pinned nobody: {connections:#?}");
    assert!(
        connections.iter().any(|c| c.contains("db=2") && c.contains("resp=3")),
        "{connections:#?}"
    );
    assert_eq!(direct.run("SELECT 2"), Reply::ok());
    assert_eq!(direct.run("DBSIZE"), Reply::Int(10));

    // Refusals are Redis's own, and leave the session as it was.
    let mut c = proxy.client();
    assert_eq!(c.cmd(&["AUTH", "wrong"]), direct.cmd(&["AUTH", "wrong"]));
    assert!(c.run("GET k0").text().starts_with("NOAUTH"), "still unauthenticated");
    assert_eq!(c.cmd(&["AUTH", "pw"]), Reply::ok());
    assert_eq!(c.run("SELECT 99"), direct.run("SELECT 99"));
    assert_eq!(c.run("SELECT 2"), Reply::ok());
    assert_eq!(c.run("GET k0"), Reply::bulk("v"), "db 2");
    // An ACL user's session shares a link with the same user only.
    assert_eq!(direct.run("ACL SETUSER app on >secret ~app:* +@all"), Reply::ok());
    let mut app = proxy.client();
    assert_eq!(app.run("AUTH app secret"), Reply::ok());
    assert_eq!(app.run("ACL WHOAMI"), Reply::bulk("app"));
    assert!(app.run("SET other v").text().starts_with("NOPERM"));
    assert_eq!(app.run("SET app:x v"), Reply::ok());
    assert_eq!(c.run("ACL WHOAMI"), Reply::bulk("default"));
    // A pipeline across a SELECT: each command runs in the db the session had selected when it was sent.
    let mut piped = proxy.client();
    let mut pipeline = support::encode(&["AUTH", "pw"]);
    for args in [
        &["SET", "p", "db0"][..],
        &["SELECT", "5"],
        &["SET", "p", "db5"],
        &["SELECT", "0"],
        &["GET", "p"],
    ] {
        pipeline.extend(support::encode(args));
    }
    piped.write_raw(&pipeline);
    for expected in [
        Reply::ok(),
        Reply::ok(),
        Reply::ok(),
        Reply::ok(),
        Reply::ok(),
        Reply::bulk("db0"),
    ] {
        assert_eq!(piped.read(), expected);
    }
    assert_eq!(direct.run("SELECT 5"), Reply::ok());
    assert_eq!(direct.run("GET p"), Reply::bulk("db5"));
}

#[test]
fn script_kill_reaches_redis_while_a_script_runs_on_the_shared_link() {
    let redis = RedisServer::start(Version::V7_0, &["--busy-reply-threshold", "50"]);
    let proxy = shared_proxy(&redis);
    let mut runner = proxy.client();
    let mut killer = proxy.client();
    assert_eq!(
        killer.run("PING"),
        Reply::Status("PONG".into()),
        "on the shared link the runner will use"
    );
    runner.send(&["EVAL", "while true do end", "0"]);
    let mut direct = redis.direct();
    support::wait_until("the script to run", Duration::from_secs(10), || {
        direct.run("PING").text().starts_with("BUSY")
    });
    // The killer's PING owes nothing now: SCRIPT KILL gets a connection of its own and reaches Redis at once.
    assert_eq!(killer.run("SCRIPT KILL"), Reply::ok());
    let killed = runner.read();
    assert!(killed.text().contains("killed by user"), "{killed:?}");
    assert_eq!(runner.run("PING"), Reply::Status("PONG".into()));
}
