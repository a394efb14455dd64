//! Bad input and failing backends: a client's bad input costs that client alone, with the reply Redis itself
//! gives; an unreachable or dying backend gives error replies, never a hang; SIGTERM finishes in-flight replies.

mod support;

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Command, Stdio};

use std::time::{Duration, Instant};

use support::{ALL_VERSIONS, Client, Proxy, RedisServer, Reply, Version};

/// Sends `input` straight to Redis and through the proxy; both must answer with the same bytes and close.
fn assert_same_as_redis(redis: &RedisServer, proxy: &Proxy, input: &[u8]) {
    let mut direct = redis.direct();
    direct.write_raw(input);
    let (expected, direct_closed) = direct.read_until_closed(Duration::from_secs(5));
    let mut through = proxy.client();
    through.write_raw(input);
    let (got, proxy_closed) = through.read_until_closed(Duration::from_secs(5));
    assert!(
        direct_closed,
        "Redis {} kept the connection open after {input:?}",
        redis.version.name()
    );
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&expected),
        "Redis {} answered {:?} differently",
        redis.version.name(),
        String::from_utf8_lossy(input)
    );
    assert!(proxy_closed, "the proxy must close the client after a protocol error");
}

#[test]
fn protocol_errors_get_redis_replies_and_close_only_that_client() {
    for version in ALL_VERSIONS {
        let redis = RedisServer::start(version, &[]);
        let proxy = Proxy::start(redis.addr(), None, |_| {});
        let mut bystander = proxy.client();
        assert_eq!(bystander.run("SET before 1"), Reply::ok());
        let long_count = [b"*".as_slice(), &[b'1'; 70_000]].concat();
        let long_inline = vec![b'a'; 70_000];
        let cases: Vec<&[u8]> = vec![
            b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\nfooz\r\n",
            b"*1\r\n$-5\r\n",
            b"*1\r\n$536870913\r\n",
            b"*1\r\n$abc\r\n",
            b"*x\r\n",
            b"*1048577\r\n",
            b"SET k \"unterminated\r\n",
            b"PING\r\n*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\n*1\r\n:1\r\n",
            b"*1\r\n*1\r\n*1\r\n*1\r\n$1\r\nx\r\n",
            b"*2\r\n$3\r\nGET\r\n$-1073741824\r\n",
            &long_count,
            &long_inline,
        ];
        for input in cases {
            if version == Version::V7_0 && input == b"*1048577\r\n" {
                continue; // 7.0 raised its own limit; the proxy keeps 6.2's, tested below.
            }
            assert_same_as_redis(&redis, &proxy, input);
        }
        // Empty lines and empty multibulks are skipped, as on Redis.
        let mut c = proxy.client();
        c.write_raw(b"\r\n*0\r\n*-10\r\n\nPING\r\n");
        assert_eq!(c.read(), Reply::Status("PONG".into()));
        // The other client never noticed.
        assert_eq!(bystander.run("GET before"), Reply::bulk("1"), "{version:?}");
    }
}

#[test]
fn oversized_requests_are_refused_before_memory_is_reserved() {
    let redis = RedisServer::start(Version::V7_0, &[]);
    let proxy = Proxy::start(redis.addr(), None, |_| {});
    let mut c = proxy.client();
    c.write_raw(b"*2\r\n$3\r\nGET\r\n$1073741824\r\n");
    assert_eq!(c.read(), Reply::Error("ERR Protocol error: invalid bulk length".into()));
    let mut c = proxy.client();
    c.write_raw(b"*1048577\r\n");
    assert_eq!(
        c.read(),
        Reply::Error("ERR Protocol error: invalid multibulk length".into())
    );
    assert!(c.read_until_closed(Duration::from_secs(5)).1);
}

#[test]
fn an_http_request_to_the_redis_port_is_dropped_without_a_reply() {
    let redis = RedisServer::start(Version::V7_0, &[]);
    let proxy = Proxy::start(redis.addr(), None, |_| {});
    let mut c = proxy.client();
    c.write_raw(b"POST / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let (reply, closed) = c.read_until_closed(Duration::from_secs(5));
    assert!(closed && reply.is_empty(), "got {:?}", String::from_utf8_lossy(&reply));
}

#[test]
fn max_clients_refuses_extra_connections_like_redis() {
    let redis = RedisServer::start(Version::V7_0, &[]);
    let proxy = Proxy::start(redis.addr(), None, |c| c.max_clients = 2);
    let mut first = proxy.client();
    let mut second = proxy.client();
    assert_eq!(first.run("PING"), Reply::Status("PONG".into()));
    assert_eq!(second.run("PING"), Reply::Status("PONG".into()));
    let mut third = proxy.client();
    let (reply, closed) = third.read_until_closed(Duration::from_secs(5));
    assert_eq!(
        String::from_utf8_lossy(&reply),
        "-ERR max number of clients reached\r\n"
    );
    assert!(closed);
    drop(first);
    support::wait_until("a slot to free up", Duration::from_secs(5), || {
        let mut again = proxy.client();
        again.send(&["PING"]);
        again
            .read_within(Duration::from_secs(1))
            .is_some_and(|r| r == Reply::Status("PONG".into()))
    });
}

#[test]
fn unreachable_old_gets_an_error_naming_it_and_the_next_command_retries() {
    let port = support::free_port();
    let old = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let proxy = Proxy::start(old, None, |_| {});
    let mut c = proxy.client();
    let started = Instant::now();
    let reply = c.run("GET k");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the error must come without a hang"
    );
    let text = reply.text();
    assert!(
        reply.is_error() && text.contains(&format!("127.0.0.1:{port}")) && text.contains("old"),
        "{text}"
    );
    // A pipeline gets one error per request.
    c.write_raw(&[support::encode(&["GET", "a"]), support::encode(&["GET", "b"])].concat());
    assert!(c.read().is_error() && c.read().is_error());
    // OLD comes up on that port: the same connection now works.
    let _redis = RedisServer::start_on(Version::V7_0, port, &[]);
    assert_eq!(c.run("SET k v"), Reply::ok());
    assert_eq!(c.run("GET k"), Reply::bulk("v"));
}

#[test]
fn a_backend_dying_mid_pipeline_answers_every_pending_request() {
    for version in ALL_VERSIONS {
        let mut redis = RedisServer::start(version, &[]);
        let proxy = Proxy::start(redis.addr(), None, |_| {});
        let mut c = proxy.client();
        assert_eq!(c.run("SET k v"), Reply::ok());
        // BLPOP holds the backend connection, so the two GETs behind it are pending when OLD dies.
        c.write_raw(
            &[
                support::encode(&["BLPOP", "q", "0"]),
                support::encode(&["GET", "k"]),
                support::encode(&["GET", "k"]),
            ]
            .concat(),
        );
        std::thread::sleep(Duration::from_millis(200));
        redis.kill();
        for i in 0..3 {
            let reply = c.read();
            assert!(
                reply.is_error() && reply.text().contains(&redis.port.to_string()),
                "{version:?} reply {i}: {reply:?}"
            );
        }
        // The proxy notices by itself that every connection to OLD is gone (a shared link too), stays up, and
        // answers with errors, not hangs.
        support::wait_until("every backend connection to close", Duration::from_secs(10), || {
            proxy
                .metrics()
                .contains("redis_handover_backend_connections{server=\"old\"} 0")
        });
        assert!(proxy.client().run("PING").is_error());
        assert!(c.run("PING").is_error());
    }
}

#[test]
fn subscribers_are_disconnected_when_their_backend_dies() {
    let mut redis = RedisServer::start(Version::V6_2, &[]);
    let proxy = Proxy::start(redis.addr(), None, |_| {});
    let mut sub = proxy.client();
    sub.send(&["SUBSCRIBE", "c"]);
    assert_eq!(sub.read().items()[0], Reply::bulk("subscribe"));
    redis.kill();
    // A direct subscriber would see its connection drop; so does this one: it must resubscribe.
    assert!(sub.read_until_closed(Duration::from_secs(5)).1);
}

#[test]
fn sigterm_finishes_in_flight_replies_then_exits_0() {
    let redis = RedisServer::start(Version::V6_2, &[]);
    let port = support::free_port();
    let admin = support::free_port();
    let mut proxy = Command::new(env!("CARGO_BIN_EXE_redis-handover"))
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--old",
            &redis.addr().to_string(),
        ])
        .args(["--admin", &format!("127.0.0.1:{admin}"), "--log-format", "json"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    support::wait_until("the proxy to listen", Duration::from_secs(10), || {
        TcpStream::connect(addr).is_ok()
    });
    let mut c = Client::connect(addr);
    assert_eq!(c.run("SET k v"), Reply::ok());
    c.send(&["DEBUG", "SLEEP", "1"]);
    std::thread::sleep(Duration::from_millis(200));
    let kill = Command::new("kill")
        .args(["-TERM", &proxy.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    assert_eq!(c.read(), Reply::ok(), "the in-flight reply arrives after SIGTERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = proxy.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the proxy did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status}");
    assert!(TcpStream::connect(addr).is_err(), "no new connections after shutdown");
    // Logs are JSON lines, with the client's span (its id and address) on session events.
    let lines: Vec<String> = BufReader::new(proxy.stderr.take().unwrap())
        .lines()
        .map(Result::unwrap)
        .collect();
    assert!(!lines.is_empty());
    for line in &lines {
        let value: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(value.get("level").is_some() && value.get("fields").is_some(), "{line}");
    }
    assert!(lines.iter().any(|l| l.contains("SIGTERM received")), "{lines:?}");
}
