//! `backend_links = "shared"`: sessions share pipelined backend connections while they hold no connection
//! state, and get one of their own for the commands whose effect lives on it. What a client sees stays what a
//! direct connection gives: its replies in order, transactions and blocking calls as on Redis, and a lost link
//! costs only the sessions that had requests in flight on it.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use redis_handover::config::BackendLinks;
use redis_handover::handover::Phase;
use support::{Client, Proxy, RedisServer, Reply, Version};

fn shared_proxy(redis: &RedisServer) -> Proxy {
    Proxy::start(redis.addr(), None, |c| c.backend_links = BackendLinks::Shared)
}

/// The server's connections other than `direct` itself (which runs the CLIENT LIST).
fn server_connections(direct: &mut Client) -> Vec<String> {
    let Reply::Int(own) = direct.run("CLIENT ID") else {
        panic!("CLIENT ID")
    };
    let own = format!("id={own} ");
    let list = direct.run("CLIENT LIST").text();
    list.lines()
        .filter(|l| !l.starts_with(&own))
        .map(str::to_string)
        .collect()
}

/// The `id` field of a `CLIENT LIST` line.
fn connection_id(line: &str) -> &str {
    line.split(' ')
        .find_map(|f| f.strip_prefix("id="))
        .unwrap_or_else(|| panic!("no id in {line:?}"))
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
    let links: Vec<&String> = connections
        .iter()
        .filter(|c| c.contains("name=redis-handover:shared"))
        .collect();
    assert_eq!(links.len(), 1, "one shared link for 20 clients: {connections:#?}");
    assert!(
        links[0].contains("name=redis-handover:shared:db0:resp2"),
        "{connections:#?}"
    );
    // Beside it, at most the few idle connections kept ready for sessions that pin.
    let spares = connections.iter().filter(|c| is_spare(c));
    assert_eq!(spares.count() + 1, connections.len(), "{connections:#?}");
    assert!(connections.len() <= 3, "{connections:#?}");
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
    let list = redis.direct().run("CLIENT LIST").text();
    assert!(list.contains("name=worker-1"), "{list}");
    assert_eq!(named.run("EXEC"), Reply::Array(vec![]));
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
    let id = connection_id(&link).to_string();
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
            assert_eq!(
                c.cmd(&["CLIENT", "SETINFO", "LIB-NAME", "redis-py"]),
                Reply::ok(),
                "answered by the proxy, as 7.2 answers it"
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
    let links = connections
        .iter()
        .filter(|c| c.contains("name=redis-handover:shared"))
        .count();
    let pinned = connections.iter().filter(|c| c.contains("name=app-")).count();
    assert!(
        links <= 2 && pinned == 0,
        "the handshakes pinned nobody: {connections:#?}"
    );
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

/// Whether a `CLIENT LIST` line is a connection kept ready for sessions that pin: unnamed, and it ran nothing
/// but the `CLIENT LIST` by which the proxy learns its id when it opens.
fn is_spare(line: &str) -> bool {
    line.contains("name= ") && (line.contains("cmd=client|list") || line.contains("cmd=NULL"))
}

/// The proxy's count of its open connections to OLD.
fn open_backend_connections(proxy: &Proxy) -> f64 {
    let metrics = proxy.metrics();
    let line = metrics
        .lines()
        .find_map(|l| l.strip_prefix("redis_handover_backend_connections{server=\"old\"} "))
        .map(str::to_string);
    line.expect("the backend connection gauge").trim().parse().unwrap()
}

/// The ids of the idle connections kept ready for sessions that pin, once the proxy has `count` of them open
/// beside its one shared link. The proxy's own count is awaited, not the server's list: a connection the server
/// lists may still be opening on the proxy's side (its `CLIENT LIST` answered but not yet read), and a control
/// connection that has not yet sent its first command looks idle too.
fn spares(proxy: &Proxy, direct: &mut Client, count: usize) -> Vec<String> {
    support::wait_until("the spare connections to be open", Duration::from_secs(10), || {
        open_backend_connections(proxy) >= (count + 1) as f64
    });
    let mut ids = Vec::new();
    support::wait_until(
        "the server to list the spare connections",
        Duration::from_secs(10),
        || {
            ids = server_connections(direct)
                .iter()
                .filter(|c| c.contains("name= ") && c.contains("cmd=client|list"))
                .map(|c| connection_id(c).to_string())
                .collect();
            ids.len() >= count
        },
    );
    ids
}

/// What the server reports for the connection that carries a session's commands.
fn client_info(client: &mut Client) -> String {
    client.run("CLIENT INFO").text()
}

#[test]
fn a_session_pins_onto_a_ready_connection_and_returns_when_its_state_is_gone() {
    let redis = RedisServer::start(Version::V7_0, &[]);
    let proxy = shared_proxy(&redis);
    let mut c = proxy.client();
    let mut direct = redis.direct();
    assert!(client_info(&mut c).contains("name=redis-handover:shared:db0:resp2"));
    let ready = spares(&proxy, &mut direct, 2);

    // A blocking call pins the session onto one of the connections kept ready: no connect, no wait.
    c.send(&["BLPOP", "q", "0"]);
    let mut blocked = String::new();
    support::wait_until("the BLPOP to block", Duration::from_secs(10), || {
        blocked = server_connections(&mut direct)
            .into_iter()
            .find(|l| l.contains("cmd=blpop"))
            .unwrap_or_default();
        !blocked.is_empty()
    });
    let id = connection_id(&blocked);
    assert!(ready.iter().any(|r| r == id), "{id} is one of {ready:?}");
    assert_eq!(direct.run("LPUSH q x"), Reply::Int(1));
    assert_eq!(c.read(), Reply::Array(vec![Reply::bulk("q"), Reply::bulk("x")]));
    // Answered, the call leaves no state: the session is back on the shared link.
    assert!(client_info(&mut c).contains("name=redis-handover:shared"));

    // So do a transaction, a WATCH and a subscription once they end.
    assert_eq!(c.run("WATCH k"), Reply::ok());
    assert!(
        !client_info(&mut c).contains("name=redis-handover:shared"),
        "pinned while watching"
    );
    assert_eq!(c.run("MULTI"), Reply::ok());
    assert_eq!(c.run("SET k 1"), Reply::Status("QUEUED".into()));
    assert_eq!(c.run("EXEC"), Reply::Array(vec![Reply::ok()]));
    assert!(client_info(&mut c).contains("name=redis-handover:shared"));
    assert_eq!(
        c.run("SUBSCRIBE ch"),
        Reply::Array(vec![Reply::bulk("subscribe"), Reply::bulk("ch"), Reply::Int(1)])
    );
    assert_eq!(direct.run("PUBLISH ch m"), Reply::Int(1));
    assert_eq!(
        c.read(),
        Reply::Array(vec![Reply::bulk("message"), Reply::bulk("ch"), Reply::bulk("m")])
    );
    assert_eq!(
        c.run("UNSUBSCRIBE"),
        Reply::Array(vec![Reply::bulk("unsubscribe"), Reply::bulk("ch"), Reply::Int(0)])
    );
    assert!(client_info(&mut c).contains("name=redis-handover:shared"));
    let metrics = proxy.metrics();
    let unpins = metrics
        .lines()
        .find_map(|l| l.strip_prefix("redis_handover_session_unpins_total "))
        .expect("the unpin counter");
    assert_eq!(unpins.trim(), "3", "{metrics}");

    // A mode the proxy cannot see end keeps the session on its own connection.
    assert_eq!(c.run("CLIENT NO-EVICT on"), Reply::ok());
    assert_eq!(c.run("GET k"), Reply::bulk("1"));
    let info = client_info(&mut c);
    assert!(
        !info.contains("name=redis-handover:shared") && info.contains("flags=e"),
        "{info}"
    );
    // Until RESET ends every mode.
    assert_eq!(c.run("RESET"), Reply::Status("RESET".into()));
    assert!(client_info(&mut c).contains("name=redis-handover:shared"));
}

/// A session's own id, from `CLIENT ID`.
fn client_id(client: &mut Client) -> i64 {
    match client.run("CLIENT ID") {
        Reply::Int(id) => id,
        other => panic!("CLIENT ID answered {other:?}"),
    }
}

#[test]
fn client_ids_are_the_sessions_own_and_kill_unblock_and_hello_use_them() {
    let redis = RedisServer::start(Version::V7_0, &[]);
    let proxy = shared_proxy(&redis);
    let (mut a, mut b) = (proxy.client(), proxy.client());
    let (id_a, id_b) = (client_id(&mut a), client_id(&mut b));
    assert_ne!(id_a, id_b, "two sessions on one link have ids of their own");
    assert_eq!(client_id(&mut a), id_a, "stable");
    assert!(id_a >= 1_000_000_000_000, "above any server connection's id: {id_a}");

    // HELLO answers as Redis does, with the session's id in place of the link's.
    let mut direct = redis.direct();
    let expected = match direct.run("HELLO 2") {
        Reply::Array(mut fields) => {
            let at = fields.iter().position(|f| *f == Reply::bulk("id")).unwrap();
            fields[at + 1] = Reply::Int(id_a);
            Reply::Array(fields)
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(a.run("HELLO 2"), expected);

    // CLIENT UNBLOCK by the session's id reaches its blocked call, on whatever connection it waits.
    assert_eq!(
        b.cmd(&["CLIENT", "UNBLOCK", &id_a.to_string()]),
        Reply::Int(0),
        "not blocked"
    );
    a.send(&["BLPOP", "nothing", "0"]);
    support::wait_until("the BLPOP to block", Duration::from_secs(10), || {
        direct.run("CLIENT LIST").text().contains("cmd=blpop")
    });
    support::wait_until("the unblock to land", Duration::from_secs(10), || {
        // The proxy learns the blocked connection's id right before sending the call: retry until it knows.
        b.cmd(&["CLIENT", "UNBLOCK", &id_a.to_string()]) == Reply::Int(1)
    });
    assert_eq!(a.read(), Reply::Nil, "unblocked as by a timeout");
    a.send(&["BLPOP", "nothing", "0"]);
    support::wait_until("the unblock with an error to land", Duration::from_secs(10), || {
        b.cmd(&["CLIENT", "UNBLOCK", &id_a.to_string(), "ERROR"]) == Reply::Int(1)
    });
    let unblocked = a.read();
    assert!(unblocked.text().starts_with("UNBLOCKED"), "{unblocked:?}");

    // CLIENT KILL ID closes that session only; a session is not its own victim unless SKIPME no.
    assert_eq!(a.cmd(&["CLIENT", "KILL", "ID", &id_a.to_string()]), Reply::Int(0));
    assert_eq!(b.cmd(&["CLIENT", "KILL", "ID", &id_a.to_string()]), Reply::Int(1));
    assert!(
        a.read_until_closed(Duration::from_secs(10)).1,
        "the killed session is closed"
    );
    assert_eq!(
        b.cmd(&["CLIENT", "KILL", "ID", &id_a.to_string()]),
        Reply::Int(0),
        "gone"
    );
    assert_eq!(
        b.run("PING"),
        Reply::Status("PONG".into()),
        "the killer's link carries on"
    );
    assert_eq!(
        b.cmd(&["CLIENT", "KILL", "ID", &id_b.to_string(), "SKIPME", "no"]),
        Reply::Int(1)
    );
    assert!(b.read_until_closed(Duration::from_secs(10)).1);
}

#[test]
fn client_reply_off_and_skip_stay_with_the_session_on_a_shared_link() {
    let redis = RedisServer::start(Version::V7_0, &[]);
    let proxy = shared_proxy(&redis);
    let (mut quiet, mut other) = (proxy.client(), proxy.client());
    assert_eq!(other.run("PING"), Reply::Status("PONG".into()));
    let mut pipeline = Vec::new();
    for args in [
        &["CLIENT", "REPLY", "OFF"][..],
        &["SET", "a", "1"],
        &["GET", "a"],
        &["CLIENT", "GETNAME"],
        &["CLIENT", "REPLY", "ON"],
        &["CLIENT", "REPLY", "SKIP"],
        &["SET", "b", "2"],
        &["GET", "b"],
    ] {
        pipeline.extend(support::encode(args));
    }
    quiet.write_raw(&pipeline);
    assert_eq!(
        quiet.read(),
        Reply::ok(),
        "only CLIENT REPLY ON is answered before GET b"
    );
    assert_eq!(quiet.read(), Reply::bulk("2"));
    assert_eq!(
        other.run("GET a"),
        Reply::bulk("1"),
        "the other session still gets its replies"
    );
    assert_eq!(quiet.run("GET a"), Reply::bulk("1"));
}

#[test]
fn a_session_keeps_its_id_across_a_handover() {
    let h = support::Harness::start_with(Version::V6_2, &[], Version::V7_0, &[], |c| {
        c.backend_links = BackendLinks::Shared
    });
    let mut c = h.proxy.client();
    let id = client_id(&mut c);
    assert_eq!(c.run("SET k v"), Reply::ok());
    let report = h.proxy.handover(serde_json::json!({}));
    assert_eq!(report.outcome, Phase::Switched, "{report:?}");
    assert_eq!(c.run("GET k"), Reply::bulk("v"), "now served by NEW");
    assert_eq!(client_id(&mut c), id);
}

#[test]
fn a_script_running_holds_only_what_was_sent_behind_it_on_its_link() {
    // Redis answers BUSY once a script has run 200 ms, longer than a link may owe replies before sessions leave it
    // (`links::STALL`, 50 ms): requests sent before that wait behind the script, as they would on Redis.
    let redis = RedisServer::start(Version::V7_0, &["--busy-reply-threshold", "200", "--save", ""]);
    let proxy = shared_proxy(&redis);
    let (mut runner, mut other) = (proxy.client(), proxy.client());
    assert_eq!(other.run("PING"), Reply::Status("PONG".into()), "both on one link");
    assert_eq!(runner.run("PING"), Reply::Status("PONG".into()));
    // A script that never ends: the others' commands get Redis's BUSY, as on direct connections, instead of
    // waiting behind it on the link.
    runner.send(&["EVAL", "while true do end", "0"]);
    let mut direct = redis.direct();
    support::wait_until("the script to run", Duration::from_secs(10), || {
        direct.run("PING").text().starts_with("BUSY")
    });
    support::wait_until("a BUSY reply through the proxy", Duration::from_secs(10), || {
        other.run("PING").text().starts_with("BUSY")
    });
    assert_eq!(direct.run("SCRIPT KILL"), Reply::ok());
    assert!(runner.read().text().contains("killed by user"));
}

#[test]
fn reads_of_other_sessions_are_answered_while_a_paused_write_holds_a_link() {
    let redis = RedisServer::start(Version::V7_0, &["--save", ""]);
    let proxy = shared_proxy(&redis);
    let (mut runner, mut other) = (proxy.client(), proxy.client());
    assert_eq!(other.run("PING"), Reply::Status("PONG".into()), "both on one link");
    assert_eq!(runner.run("PING"), Reply::Status("PONG".into()));
    let mut direct = redis.direct();
    // A write held by CLIENT PAUSE WRITE: reads of other sessions are answered meanwhile.
    assert_eq!(direct.run("CLIENT PAUSE 20000 WRITE"), Reply::ok());
    runner.send(&["SET", "k", "paused"]);
    // Held for a second at least, so longer than `links::STALL`. CLIENT LIST counts idle time in whole seconds of
    // the server's clock, so `idle=1` can come a moment after the SET arrived (a second boundary crossed): 2 is
    // the first count that means a full second.
    support::wait_until("the SET to be held", Duration::from_secs(10), || {
        let list = direct.run("CLIENT LIST").text();
        list.lines().any(|l| {
            l.contains("cmd=set")
                && l.split(' ')
                    .find_map(|f| f.strip_prefix("idle="))
                    .is_some_and(|idle| idle.parse::<u64>().is_ok_and(|idle| idle >= 2))
        })
    });
    other.send(&["GET", "k"]);
    let answer = other.read_within(Duration::from_secs(10));
    assert_eq!(
        answer,
        Some(Reply::Nil),
        "answered during the pause; the server's connections: {}",
        direct.run("CLIENT LIST").text()
    );
    assert_eq!(other.run("EXISTS k"), Reply::Int(0));
    assert_eq!(
        runner.read_within(Duration::from_millis(50)),
        None,
        "the SET is still held"
    );
    assert_eq!(direct.run("CLIENT UNPAUSE"), Reply::ok());
    assert_eq!(runner.read(), Reply::ok());
    assert_eq!(other.run("GET k"), Reply::bulk("paused"));
}
