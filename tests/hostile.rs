//! Hostile and broken clients: half requests followed by silence, slowloris, clients that never read their
//! replies, and thousands of connections opened and dropped. Each costs only the client doing it; the proxy's
//! memory stays bounded and every task and connection it made for them goes away.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::{Client, Proxy, RedisServer, Reply, Version};

/// This process's resident memory in KiB (the proxy runs in-process).
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn closed_within(client: &mut Client, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let (_, closed) = client.read_until_closed(limit);
    closed.then(|| started.elapsed())
}

#[test]
fn a_half_request_followed_by_silence_is_dropped_after_the_idle_timeout() {
    let redis = RedisServer::start(Version::V7_0, &[]);
    let proxy = Proxy::start(redis.addr(), None, |c| c.client_idle_timeout_s = 1);
    let mut half = proxy.client();
    half.write_raw(b"*3\r\n$3\r\nSET\r\n$1\r\nk");
    let waited = closed_within(&mut half, Duration::from_secs(5)).expect("the half request is dropped");
    assert!(waited >= Duration::from_millis(900), "dropped too early: {waited:?}");
    assert_eq!(
        redis.direct().run("EXISTS k"),
        Reply::Int(0),
        "nothing of the half request ran"
    );
    // Legitimate waits are not idleness: a blocking call and a subscriber outlive the timeout.
    let mut blocked = proxy.client();
    blocked.send(&["BLPOP", "q", "2"]);
    let mut subscriber = proxy.client();
    subscriber.send(&["SUBSCRIBE", "c"]);
    assert_eq!(subscriber.read().items()[0], Reply::bulk("subscribe"));
    std::thread::sleep(Duration::from_millis(1800));
    assert_eq!(blocked.read(), Reply::Nil, "BLPOP 2 timed out normally");
    assert_eq!(proxy.client().run("PUBLISH c still-here"), Reply::Int(1));
    assert_eq!(subscriber.read().items()[2], Reply::bulk("still-here"));
}

#[test]
fn slowloris_one_byte_at_a_time_is_dropped() {
    let redis = RedisServer::start(Version::V7_0, &[]);
    let proxy = Proxy::start(redis.addr(), None, |c| c.client_idle_timeout_s = 1);
    let mut stream = TcpStream::connect(proxy.addr).unwrap();
    let request = support::encode(&["SET", "slow", &"x".repeat(100)]);
    let started = Instant::now();
    let mut dropped_at = None;
    for byte in &request {
        if stream.write_all(&[*byte]).is_err() {
            dropped_at = Some(started.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        stream.set_nonblocking(true).unwrap();
        let mut probe = [0u8; 16];
        let closed = matches!(stream.read(&mut probe), Ok(0));
        stream.set_nonblocking(false).unwrap();
        if closed {
            dropped_at = Some(started.elapsed());
            break;
        }
    }
    let dropped_at = dropped_at.expect("a request trickling in for longer than the timeout is dropped");
    assert!(dropped_at < Duration::from_secs(3), "{dropped_at:?}");
    assert_eq!(
        proxy.client().run("PING"),
        Reply::Status("PONG".into()),
        "others are served"
    );
}

#[test]
fn a_client_that_never_reads_is_dropped_and_memory_stays_bounded() {
    let redis = RedisServer::start(Version::V7_0, &[]);
    let proxy = Proxy::start(redis.addr(), None, |c| c.client_output_timeout_s = 1);
    let mut setup = proxy.client();
    assert_eq!(setup.cmd(&["SET", "big", &"v".repeat(10_000)]), Reply::ok());
    let before = rss_kib();
    let mut greedy = TcpStream::connect(proxy.addr).unwrap();
    let request = support::encode(&["GET", "big"]).repeat(1000);
    let started = Instant::now();
    // 20,000 replies of 10 KB (200 MB) asked for, none read.
    for _ in 0..20 {
        if greedy.write_all(&request).is_err() {
            break;
        }
    }
    let growth_mib = (rss_kib().saturating_sub(before)) / 1024;
    let mut buf = [0u8; 4096];
    greedy.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // It is counted once the proxy has accepted it (which may come after its writes, under load), and gone once
    // dropped: its output timeout is 1 s, so there is time to see it counted.
    support::wait_until(
        "the proxy to accept the client that never reads",
        Duration::from_secs(30),
        || proxy.status().clients == 2,
    );
    support::wait_until(
        "the proxy to drop the client that never reads",
        Duration::from_secs(30),
        || proxy.status().clients == 1,
    );
    // Draining now, the client finds its connection closed after at most the replies already in flight.
    let mut drained = 0usize;
    loop {
        match greedy.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
    println!(
        "client that never read: proxy memory grew {growth_mib} MiB, dropped after {:?}, {} MiB had reached it",
        started.elapsed(),
        drained >> 20
    );
    assert!(
        growth_mib < 64,
        "proxy memory grew {growth_mib} MiB for a client that never reads"
    );
    assert!(drained < 100 << 20, "the client was dropped long before all 200 MB");
    assert_eq!(setup.run("PING"), Reply::Status("PONG".into()), "others are served");
}

#[test]
fn ten_thousand_connections_opened_and_dropped_leave_nothing_behind() {
    let redis = RedisServer::start(Version::V7_0, &[]);
    let proxy = Proxy::start(redis.addr(), None, |_| {});
    // The baseline includes the backend link a first command opens (a shared link outlives its sessions).
    assert_eq!(proxy.client().run("PING"), Reply::Status("PONG".into()));
    support::wait_until("the first client to end", Duration::from_secs(5), || {
        proxy.status().clients == 0
    });
    let tasks_before = proxy.status().tasks;
    let before = rss_kib();
    for batch in 0..20 {
        let connections: Vec<TcpStream> = (0..500).map(|_| TcpStream::connect(proxy.addr).unwrap()).collect();
        if batch % 2 == 0 {
            for mut c in &connections {
                c.write_all(b"PING\r\n").unwrap();
            }
        }
        drop(connections);
    }
    support::wait_until("every session to end", Duration::from_secs(20), || {
        let status = proxy.status();
        status.clients == 0 && status.tasks <= tasks_before
    });
    let growth_mib = rss_kib().saturating_sub(before) / 1024;
    println!("10,000 connections opened and dropped: memory grew {growth_mib} MiB");
    assert!(growth_mib < 64, "{growth_mib} MiB");
    assert_eq!(proxy.client().run("PING"), Reply::Status("PONG".into()));
    let clients: String = redis.direct().run("CLIENT LIST").text();
    // The direct connection, the proxy's, and with shared links the two it keeps ready for sessions that pin.
    let kept_ready = if support::dedicated_links() { 0 } else { 2 };
    assert!(
        clients.lines().count() <= 2 + kept_ready,
        "backend connections were left open:\n{clients}"
    );
}
