//! The proxy passes Redis through unchanged: data commands, pipelines, transactions, session state, blocking
//! calls, Pub/Sub and MONITOR behave as on a direct connection, against Redis 5.0, 6.2 and 7.0.

mod support;

use std::time::{Duration, Instant};

use support::{ALL_VERSIONS, Proxy, RedisServer, Reply, Version};

/// A Redis server of `version` with the proxy in front of it.
fn setup(version: Version) -> (RedisServer, Proxy) {
    let redis = RedisServer::start(version, &[]);
    let proxy = Proxy::start(redis.addr(), None, |_| {});
    (redis, proxy)
}

fn ints(values: &[i64]) -> Reply {
    Reply::Array(values.iter().map(|&v| Reply::Int(v)).collect())
}

fn bulks(values: &[&str]) -> Reply {
    Reply::Array(values.iter().map(Reply::bulk).collect())
}

#[test]
fn data_types_work_through_the_proxy() {
    for version in ALL_VERSIONS {
        let (redis, proxy) = setup(version);
        let mut c = proxy.client();
        assert_eq!(c.run("SET s hello"), Reply::ok());
        assert_eq!(c.run("APPEND s !"), Reply::Int(6));
        assert_eq!(c.run("GET s"), Reply::bulk("hello!"));
        assert_eq!(c.run("INCRBY n 5"), Reply::Int(5));
        assert_eq!(c.run("HSET h f1 a f2 b"), Reply::Int(2));
        assert_eq!(c.run("HGETALL h"), bulks(&["f1", "a", "f2", "b"]));
        assert_eq!(c.run("RPUSH l a b c"), Reply::Int(3));
        assert_eq!(c.run("LRANGE l 0 -1"), bulks(&["a", "b", "c"]));
        assert_eq!(c.run("SADD set x y x"), Reply::Int(2));
        assert_eq!(c.run("SCARD set"), Reply::Int(2));
        assert_eq!(c.run("ZADD z 1 one 2 two"), Reply::Int(2));
        assert_eq!(c.run("ZRANGE z 0 -1 WITHSCORES"), bulks(&["one", "1", "two", "2"]));
        assert_eq!(c.run("GET missing"), Reply::Nil);
        assert_eq!(
            c.run("MGET s missing"),
            Reply::Array(vec![Reply::bulk("hello!"), Reply::Nil])
        );
        assert!(c.run("LPUSH s x").text().starts_with("WRONGTYPE"), "{version:?}");
        let id = c.run("XADD st * k v").text();
        let read = c.cmd(&["XREAD", "COUNT", "10", "STREAMS", "st", "0"]);
        assert_eq!(read.items()[0].items()[1].items()[0].items()[0], Reply::bulk(&id));
        // What the client wrote is on the server.
        assert_eq!(redis.direct().run("GET s"), Reply::bulk("hello!"), "{version:?}");
    }
}

#[test]
fn xread_block_is_served_by_a_later_xadd() {
    for version in ALL_VERSIONS {
        let (_redis, proxy) = setup(version);
        let mut reader = proxy.client();
        reader.send(&["XREAD", "BLOCK", "5000", "STREAMS", "events", "$"]);
        std::thread::sleep(Duration::from_millis(100));
        proxy.client().run("XADD events * type created");
        let reply = reader.read();
        let entry = &reply.items()[0].items()[1].items()[0];
        assert_eq!(entry.items()[1], bulks(&["type", "created"]), "{version:?}");
    }
}

#[test]
fn a_pipeline_of_1000_commands_gets_1000_replies_in_order() {
    for version in ALL_VERSIONS {
        let (_redis, proxy) = setup(version);
        let mut c = proxy.client();
        let mut batch = Vec::new();
        for i in 0..1000 {
            if i % 2 == 0 {
                batch.extend(support::encode(&["INCR", "counter"]));
            } else {
                batch.extend(support::encode(&["SET", &format!("key:{i}"), &i.to_string()]));
            }
        }
        c.write_raw(&batch);
        for i in 0..1000 {
            let expected = if i % 2 == 0 { Reply::Int(i / 2 + 1) } else { Reply::ok() };
            assert_eq!(c.read(), expected, "{version:?} reply {i}");
        }
        assert_eq!(c.run("GET key:999"), Reply::bulk("999"));
    }
}

#[test]
fn a_16_mb_value_and_binary_keys_round_trip() {
    for version in ALL_VERSIONS {
        let (redis, proxy) = setup(version);
        let mut c = proxy.client();
        let big: Vec<u8> = (0..16 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
        assert_eq!(c.cmd(&[&b"SET"[..], b"big", &big]), Reply::ok());
        assert_eq!(c.cmd(&["GET", "big"]), Reply::Bulk(big.clone()), "{version:?}");
        let key = b"k\x00\r\n\xff*3\r\n";
        assert_eq!(c.cmd(&[&b"SET"[..], key, b"v\r\n\x00"]), Reply::ok());
        assert_eq!(c.cmd(&[&b"GET"[..], key]), Reply::bulk(b"v\r\n\x00"));
        assert_eq!(
            redis.direct().cmd(&[&b"STRLEN"[..], b"big"]),
            Reply::Int(big.len() as i64)
        );
    }
}

#[test]
fn inline_commands_work_as_on_redis() {
    for version in ALL_VERSIONS {
        let (_redis, proxy) = setup(version);
        let mut c = proxy.client();
        c.write_raw(b"PING\r\nSET greeting \"hello world\"\r\nGET greeting\n\r\nECHO 'it''s'\r\n");
        assert_eq!(c.read(), Reply::Status("PONG".into()));
        assert_eq!(c.read(), Reply::ok());
        assert_eq!(c.read(), Reply::bulk("hello world"));
        assert_eq!(
            c.read(),
            Reply::Error("ERR Protocol error: unbalanced quotes in request".into()),
            "{version:?}"
        );
        let (_, closed) = c.read_until_closed(Duration::from_secs(5));
        assert!(closed, "a protocol error closes the connection, as on Redis");
        let mut cli = support::run_tool("redis-cli", &["-p", &proxy.addr.port().to_string(), "GET", "greeting"]);
        assert_eq!(String::from_utf8_lossy(&cli.stdout).trim(), "hello world");
        cli = support::run_tool("redis-cli", &["-p", &proxy.addr.port().to_string(), "PING"]);
        assert!(cli.status.success());
    }
}

#[test]
fn transactions_and_watch_conflicts() {
    for version in ALL_VERSIONS {
        let (_redis, proxy) = setup(version);
        let mut c = proxy.client();
        assert_eq!(c.run("MULTI"), Reply::ok());
        assert_eq!(c.run("INCR t"), Reply::Status("QUEUED".into()));
        assert_eq!(c.run("INCR t"), Reply::Status("QUEUED".into()));
        assert_eq!(c.run("EXEC"), ints(&[1, 2]));
        assert_eq!(c.run("MULTI"), Reply::ok());
        assert_eq!(c.run("INCR t"), Reply::Status("QUEUED".into()));
        assert_eq!(c.run("DISCARD"), Reply::ok());
        assert_eq!(c.run("GET t"), Reply::bulk("2"));
        // Another client changes a watched key: EXEC returns null and nothing runs.
        assert_eq!(c.run("WATCH t"), Reply::ok());
        assert_eq!(proxy.client().run("SET t 100"), Reply::ok());
        assert_eq!(c.run("MULTI"), Reply::ok());
        assert_eq!(c.run("INCR t"), Reply::Status("QUEUED".into()));
        assert_eq!(c.run("EXEC"), Reply::Nil, "{version:?}");
        assert_eq!(c.run("GET t"), Reply::bulk("100"));
        // Without a conflict the watched transaction runs.
        assert_eq!(c.run("WATCH t"), Reply::ok());
        assert_eq!(c.run("MULTI"), Reply::ok());
        assert_eq!(c.run("INCR t"), Reply::Status("QUEUED".into()));
        assert_eq!(c.run("EXEC"), ints(&[101]));
        assert_eq!(c.run("EXEC"), Reply::Error("ERR EXEC without MULTI".into()));
    }
}

#[test]
fn select_and_client_name_belong_to_the_session() {
    for version in ALL_VERSIONS {
        let (redis, proxy) = setup(version);
        let mut a = proxy.client();
        let mut b = proxy.client();
        assert_eq!(a.run("SELECT 3"), Reply::ok());
        assert_eq!(a.run("SET k in-db-3"), Reply::ok());
        assert_eq!(b.run("GET k"), Reply::Nil, "{version:?}: db 0 of another session");
        assert_eq!(a.run("GET k"), Reply::bulk("in-db-3"));
        let mut direct = redis.direct();
        assert_eq!(direct.run("SELECT 3"), Reply::ok());
        assert_eq!(direct.run("GET k"), Reply::bulk("in-db-3"));
        assert_eq!(a.run("CLIENT SETNAME worker-a"), Reply::ok());
        assert_eq!(a.run("CLIENT GETNAME"), Reply::bulk("worker-a"));
        assert_eq!(b.run("CLIENT GETNAME"), Reply::Nil);
        // With a connection per client (1:1) the server shows the name; on a shared link it is the session's own.
        let list = direct.run("CLIENT LIST").text();
        assert_eq!(list.contains("name=worker-a"), support::dedicated_links(), "{list}");
    }
}

#[test]
fn auth_with_requirepass() {
    for version in ALL_VERSIONS {
        let redis = RedisServer::start(version, &["--requirepass", "s3cret"]);
        let proxy = Proxy::start(redis.addr(), None, |_| {});
        let mut c = proxy.client();
        assert!(c.run("GET k").text().starts_with("NOAUTH"), "{version:?}");
        assert!(c.run("AUTH wrong").is_error());
        assert_eq!(c.run("AUTH s3cret"), Reply::ok());
        assert_eq!(c.run("SET k v"), Reply::ok());
        assert!(
            proxy.client().run("GET k").text().starts_with("NOAUTH"),
            "another session is not authenticated"
        );
    }
}

#[test]
fn auth_with_an_acl_user() {
    for version in [Version::V6_2, Version::V7_0] {
        let redis = RedisServer::start(version, &[]);
        let mut admin = redis.direct();
        assert_eq!(admin.run("ACL SETUSER alice on >wonderland ~app:* +@all"), Reply::ok());
        let proxy = Proxy::start(redis.addr(), None, |_| {});
        let mut c = proxy.client();
        assert_eq!(c.run("AUTH alice wonderland"), Reply::ok());
        assert_eq!(c.run("ACL WHOAMI"), Reply::bulk("alice"));
        assert_eq!(c.run("SET app:1 v"), Reply::ok());
        assert!(c.run("SET other v").text().starts_with("NOPERM"), "{version:?}");
        assert!(c.run("AUTH alice nope").text().starts_with("WRONGPASS"));
        assert_eq!(c.run("ACL WHOAMI"), Reply::bulk("alice"));
    }
}

#[test]
fn blpop_is_unblocked_by_a_push_and_times_out_alone() {
    for version in ALL_VERSIONS {
        let (_redis, proxy) = setup(version);
        let mut waiter = proxy.client();
        waiter.run("PING");
        waiter.send(&["BLPOP", "jobs", "0"]);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(proxy.client().run("RPUSH jobs j1"), Reply::Int(1));
        assert_eq!(waiter.read(), bulks(&["jobs", "j1"]), "{version:?}");
        let started = Instant::now();
        assert_eq!(waiter.run("BLPOP empty 1"), Reply::Nil);
        assert!(started.elapsed() >= Duration::from_millis(900), "BLPOP returned early");
        // The session keeps working after a blocking call.
        assert_eq!(waiter.run("PING"), Reply::Status("PONG".into()));
    }
}

#[test]
fn pubsub_subscribe_publish_unsubscribe() {
    for version in ALL_VERSIONS {
        let (_redis, proxy) = setup(version);
        let mut sub = proxy.client();
        sub.send(&["SUBSCRIBE", "news", "sport"]);
        assert_eq!(
            sub.read(),
            Reply::Array(vec![Reply::bulk("subscribe"), Reply::bulk("news"), Reply::Int(1)])
        );
        assert_eq!(
            sub.read(),
            Reply::Array(vec![Reply::bulk("subscribe"), Reply::bulk("sport"), Reply::Int(2)])
        );
        sub.send(&["PSUBSCRIBE", "log.*"]);
        assert_eq!(
            sub.read(),
            Reply::Array(vec![Reply::bulk("psubscribe"), Reply::bulk("log.*"), Reply::Int(3)])
        );
        let mut publisher = proxy.client();
        assert_eq!(publisher.run("PUBLISH news hello"), Reply::Int(1));
        assert_eq!(publisher.run("PUBLISH log.app started"), Reply::Int(1));
        assert_eq!(sub.read(), bulks(&["message", "news", "hello"]));
        assert_eq!(
            sub.read(),
            bulks(&["pmessage", "log.*", "log.app", "started"]),
            "{version:?}"
        );
        assert_eq!(sub.run("PING"), bulks(&["pong", ""]));
        sub.send(&["UNSUBSCRIBE"]);
        let mut gone = [sub.read(), sub.read()];
        gone.sort_by_key(|r| r.items()[1].text());
        assert_eq!(
            gone[0],
            Reply::Array(vec![
                Reply::bulk("unsubscribe"),
                Reply::bulk("news"),
                gone[0].items()[2].clone()
            ])
        );
        assert_eq!(
            sub.run("PUNSUBSCRIBE"),
            Reply::Array(vec![Reply::bulk("punsubscribe"), Reply::bulk("log.*"), Reply::Int(0)])
        );
        // Out of Pub/Sub mode, ordinary commands work again on the same connection.
        assert_eq!(sub.run("SET after pubsub"), Reply::ok());
        assert_eq!(publisher.run("PUBLISH news nobody"), Reply::Int(0));
    }
}

#[test]
fn monitor_streams_other_clients_commands() {
    for version in ALL_VERSIONS {
        let (_redis, proxy) = setup(version);
        let mut monitor = proxy.client();
        assert_eq!(monitor.run("MONITOR"), Reply::ok());
        proxy.client().run("SET watched-key 1");
        let line = loop {
            let event = monitor.read().text();
            if event.contains("watched-key") {
                break event;
            }
        };
        assert!(
            line.contains("\"SET\"") || line.contains("\"set\""),
            "{version:?}: {line}"
        );
    }
}

#[test]
fn redis_cli_and_redis_py_work_through_the_proxy() {
    for version in [Version::V6_2, Version::V7_0] {
        let (_redis, proxy) = setup(version);
        let port = proxy.addr.port().to_string();
        let script = r#"
import sys, redis
r = redis.Redis(port=int(sys.argv[1]), protocol=int(sys.argv[2]))
r.flushdb()
r.set("py:k", "v")
assert r.get("py:k") == b"v"
p = r.pipeline(transaction=True)
for i in range(100):
    p.incr("py:n")
assert p.execute()[-1] == 100
r.hset("py:h", mapping={"a": "1"})
assert r.hgetall("py:h") == {b"a": b"1"}
print("ok")
"#;
        for protocol in ["2", "3"] {
            let out = support::run_tool("python3", &["-c", script, &port, protocol]);
            assert!(
                out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok",
                "redis-py protocol={protocol} on {version:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[test]
fn client_kill_sent_through_the_proxy_closes_the_killed_clients() {
    let (redis, proxy) = setup(Version::V7_0);
    // A kill the proxy does not see (an operator on the server itself, or Redis's `timeout`) costs an idle client
    // nothing: it gets a new server connection at its next command.
    let mut bystander = proxy.client();
    // The id of the server connection that carries its commands (with shared links, CLIENT ID is the proxy's).
    let info = bystander.run("CLIENT INFO").text();
    let id = info.split(' ').find_map(|f| f.strip_prefix("id=")).expect("an id");
    let open = || {
        let metrics = proxy.metrics();
        let line = metrics
            .lines()
            .find_map(|l| l.strip_prefix("redis_handover_backend_connections{server=\"old\"} "))
            .map(str::to_string);
        line.expect("the backend connection gauge")
            .trim()
            .parse::<f64>()
            .unwrap()
    };
    // Its connection, and with shared links the two kept ready for sessions that pin.
    let before = if support::dedicated_links() { 1.0 } else { 3.0 };
    support::wait_until("the backend connections to open", Duration::from_secs(10), || {
        open() == before
    });
    assert_eq!(redis.direct().run(&format!("CLIENT KILL ID {id}")), Reply::Int(1));
    // A command sent before the proxy saw the connection close would be lost with it, as on a direct connection.
    support::wait_until("the proxy to see the kill", Duration::from_secs(10), || open() < before);
    assert_eq!(bystander.run("PING"), Reply::Status("PONG".into()));

    // Through the proxy, the kill closes the client's own connection, as Redis closes a direct one.
    let mut victim = proxy.client();
    let Reply::Int(id) = victim.run("CLIENT ID") else {
        panic!("CLIENT ID")
    };
    let mut killer = proxy.client();
    assert_eq!(killer.run(&format!("CLIENT KILL ID {id}")), Reply::Int(1));
    let (_, closed) = victim.read_until_closed(Duration::from_secs(5));
    assert!(closed, "the killed client's connection is closed");
    assert_eq!(killer.run("PING"), Reply::Status("PONG".into()), "the killer is not");

    // SKIPME NO kills the caller too: it gets the count, then its connection closes (Redis's own suite).
    let Reply::Int(killed) = killer.run("CLIENT KILL TYPE normal SKIPME NO") else {
        panic!("a count")
    };
    assert!(
        killed >= 2,
        "the bystander's and the killer's own connections: {killed}"
    );
    let (_, closed) = killer.read_until_closed(Duration::from_secs(5));
    assert!(closed, "the caller's connection is closed after its reply");
    let (_, closed) = bystander.read_until_closed(Duration::from_secs(5));
    assert!(closed, "every client whose connection the kill closed");
    assert_eq!(proxy.client().run("PING"), Reply::Status("PONG".into()));
}
