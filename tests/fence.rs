//! The fence on OLD, on real servers: after a switch every write that reaches OLD directly is refused before it
//! has any effect, whatever replicas OLD has of its own; a Redis 5.0 OLD, which lets EXEC and EVAL past the
//! min-replicas fence, is also made NEW's replica; and no handover starts while a Sentinel watches OLD.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use redis_handover::handover::Phase;
use redis_handover::primary::Side;
use serde_json::json;
use support::{Client, Harness, Proxy, RedisServer, Reply, Version};

/// What a client writing to OLD directly, bypassing the proxy, was told.
#[derive(Debug, Default)]
struct DirectLog {
    /// The highest counter value an INCR was acknowledged with.
    highest_acked: i64,
    /// Writes refused as not executed (NOREPLICAS, READONLY).
    refused: u64,
    /// Any other error: a test failure.
    other_errors: Vec<String>,
}

/// A client that INCRs `direct-counter` on OLD without pause until stopped.
struct DirectWriter {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    thread: JoinHandle<DirectLog>,
}

impl DirectWriter {
    fn start(server: &RedisServer) -> DirectWriter {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(AtomicU64::new(0));
        let mut client = server.direct();
        let thread = {
            let (stop, acked, refused) = (stop.clone(), acked.clone(), refused.clone());
            std::thread::spawn(move || {
                let mut log = DirectLog::default();
                while !stop.load(Ordering::Relaxed) {
                    match client.run("INCR direct-counter") {
                        Reply::Int(n) => {
                            log.highest_acked = log.highest_acked.max(n);
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        Reply::Error(e) if e.starts_with("NOREPLICAS") || e.starts_with("READONLY") => {
                            log.refused += 1;
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                        other => log.other_errors.push(format!("{other:?}")),
                    }
                }
                log
            })
        };
        DirectWriter {
            stop,
            acked,
            refused,
            thread,
        }
    }

    fn stop(self) -> DirectLog {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("direct writer")
    }
}

fn info_field(client: &mut Client, section: &str, field: &str) -> Option<String> {
    let text = client.run(&format!("INFO {section}")).text();
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")).map(|v| v.trim().to_string()))
}

fn fence_holds_against_direct_writers(old_version: Version) {
    let old = RedisServer::start(old_version, &[]);
    let old_port = old.port.to_string();
    // OLD's own HA replica: `min-replicas-to-write 1` would count it as good, and let direct writes in.
    let _ha_replica = RedisServer::start(old_version, &["--replicaof", "127.0.0.1", &old_port]);
    let new = RedisServer::start(Version::V7_0, &[]);
    let mut old_admin = old.direct();
    support::wait_until("OLD's own replica to be online", Duration::from_secs(15), || {
        info_field(&mut old_admin, "replication", "slave0").is_some_and(|s| s.contains("state=online"))
    });
    let proxy = Proxy::start(old.addr(), Some(new.addr()), |_| {});

    // A transaction a direct client queued on OLD before the switch, and a writer that never stops.
    let mut queued = old.direct();
    assert_eq!(queued.run("MULTI"), Reply::ok());
    assert_eq!(queued.run("SET queued-before 1"), Reply::Status("QUEUED".into()));
    let writer = DirectWriter::start(&old);
    support::wait_until("the direct writer to write", Duration::from_secs(10), || {
        writer.acked.load(Ordering::Relaxed) >= 50
    });

    let report = proxy.handover(json!({}));
    assert_eq!(report.outcome, Phase::Switched, "{report:#?}");
    support::wait_until("a direct write to OLD to be refused", Duration::from_secs(10), || {
        writer.refused.load(Ordering::Relaxed) > 0
    });
    let log = writer.stop();
    assert!(log.other_errors.is_empty(), "{log:?}");

    // Every write OLD acknowledged is on NEW, and nothing ran on OLD after the fence.
    let counter = |server: &RedisServer| server.direct().run("GET direct-counter");
    assert_eq!(counter(&new), Reply::bulk(log.highest_acked.to_string()), "{log:?}");
    assert_eq!(counter(&old), Reply::bulk(log.highest_acked.to_string()), "{log:?}");

    // EXEC of commands queued before the fence, and a script, are refused too (5.0 runs both past the
    // min-replicas fence alone).
    let exec = queued.run("EXEC");
    assert!(exec.is_error(), "EXEC on the fenced OLD: {exec:?}");
    let mut direct = old.direct();
    let script = direct.cmd(&["EVAL", "return redis.call('set', KEYS[1], 'x')", "1", "by-script"]);
    assert!(script.is_error(), "EVAL on the fenced OLD: {script:?}");
    for server in [&old, &new] {
        let mut client = server.direct();
        assert_eq!(client.run("EXISTS queued-before by-script"), Reply::Int(0));
    }
    let fence = proxy.status().fence.as_deref().unwrap_or_default().to_string();
    // OLD follows NEW now, by partial resync (its data was kept: the counter above), for the rollback window; its
    // own replica follows it.
    assert_eq!(info_field(&mut direct, "replication", "role").as_deref(), Some("slave"));
    assert_eq!(
        info_field(&mut direct, "replication", "master_port"),
        Some(new.port.to_string())
    );
    // Becoming a replica, OLD disconnects its own replica, which comes back.
    support::wait_until("OLD's own replica back", Duration::from_secs(15), || {
        info_field(&mut direct, "replication", "slave0").is_some_and(|s| s.contains("state=online"))
    });
    assert!(fence.contains("2147483647") && fence.contains("follows"), "{fence}");
    assert_eq!(proxy.client().run("SET after-switch 1"), Reply::ok());
    println!(
        "OLD {} with its own replica: {} direct writes acknowledged, all on NEW; {} refused after the fence",
        old_version.name(),
        log.highest_acked,
        log.refused
    );
}

#[test]
fn the_fence_holds_against_direct_writers_on_a_6_2_old_with_its_own_replica() {
    fence_holds_against_direct_writers(Version::V6_2);
}

#[test]
fn the_fence_holds_against_direct_writers_on_a_5_0_old_with_its_own_replica() {
    fence_holds_against_direct_writers(Version::V5_0);
}

#[test]
fn a_handover_is_refused_while_sentinel_watches_old() {
    let h = Harness::start(Version::V6_2, Version::V7_0);
    let sentinel = RedisServer::start_sentinel(h.old.addr());
    let mut old = h.old.direct();
    support::wait_until("Sentinel to connect to OLD", Duration::from_secs(15), || {
        old.run("CLIENT LIST").text().contains("name=sentinel-")
    });
    let report = h.proxy.handover(json!({}));
    assert_eq!(report.outcome, Phase::Aborted, "{report:#?}");
    let reason = report.reason.as_deref().unwrap_or_default();
    assert!(
        reason.contains("watched by Sentinel") && reason.contains("SENTINEL REMOVE"),
        "{reason}"
    );
    // Refused in the pre-flight: nothing was changed on either server.
    assert_eq!(h.new.direct().run("ROLE").items()[0], Reply::bulk("master"));
    assert_eq!(old.run("CONFIG GET min-replicas-to-write").items()[1], Reply::bulk("0"));
    assert_eq!(h.proxy.client().run("SET still-old 1"), Reply::ok());

    // Once the Sentinel is gone, the same handover goes through.
    drop(sentinel);
    support::wait_until("Sentinel's connections to close", Duration::from_secs(10), || {
        !old.run("CLIENT LIST").text().contains("name=sentinel-")
    });
    let report = h.proxy.handover(json!({}));
    assert_eq!(report.outcome, Phase::Switched, "{report:#?}");
    assert_eq!(h.new.direct().run("GET still-old"), Reply::bulk("1"));
}

fn a_proxy_started_after_a_switch_serves_from_new(old_version: Version) {
    let mut h = Harness::start(old_version, Version::V7_0);
    assert_eq!(h.proxy.client().run("SET before 1"), Reply::ok());
    let report = h.proxy.handover(json!({}));
    assert_eq!(report.outcome, Phase::Switched, "{report:#?}");
    assert_eq!(h.proxy.client().run("SET after 1"), Reply::ok());
    h.proxy.stop();

    // The same configuration, which still names OLD: the servers say NEW is the primary.
    let proxy = Proxy::start(h.old.addr(), Some(h.new.addr()), |_| {});
    let status = proxy.status();
    assert_eq!(status.primary.side, Side::New, "{status:#?}");
    assert!(
        status.fence.as_deref().unwrap_or_default().contains("found at start"),
        "{status:#?}"
    );
    let mut client = proxy.client();
    assert_eq!(
        client.run("MGET before after"),
        Reply::Array(vec![Reply::bulk("1"), Reply::bulk("1")])
    );
    assert_eq!(client.run("SET restarted 1"), Reply::ok());
    assert_eq!(h.new.direct().run("GET restarted"), Reply::bulk("1"));
    let stray = h.old.direct().run("SET stray 1");
    assert!(stray.is_error(), "OLD is still fenced: {stray:?}");
}

#[test]
fn a_proxy_started_after_a_switch_from_6_2_serves_from_new() {
    a_proxy_started_after_a_switch_serves_from_new(Version::V6_2);
}

#[test]
fn a_proxy_started_after_a_switch_from_5_0_serves_from_new() {
    a_proxy_started_after_a_switch_serves_from_new(Version::V5_0);
}

/// Leaves the servers as a proxy killed in the middle of a handover's pause does: NEW replicating from OLD, caught
/// up, and OLD fenced.
fn stopped_between_fence_and_promotion(old: &RedisServer, new: &RedisServer) {
    let mut new_admin = new.direct();
    let replicaof = new_admin.run(&format!("REPLICAOF 127.0.0.1 {}", old.port));
    assert!(replicaof.text().starts_with("OK"), "{replicaof:?}");
    support::wait_until("NEW to replicate from OLD", Duration::from_secs(15), || {
        info_field(&mut new_admin, "replication", "master_link_status").as_deref() == Some("up")
    });
    assert_eq!(
        old.direct().run("CONFIG SET min-replicas-to-write 2147483647"),
        Reply::ok()
    );
}

#[test]
fn a_proxy_started_after_a_handover_stopped_between_fence_and_promotion_undoes_it() {
    let old = RedisServer::start(Version::V6_2, &[]);
    let new = RedisServer::start(Version::V7_0, &[]);
    assert_eq!(old.direct().run("SET k 1"), Reply::ok());

    // No other proxy's handover is connected: the proxy undoes the stopped one at once.
    stopped_between_fence_and_promotion(&old, &new);
    let proxy = Proxy::start(old.addr(), Some(new.addr()), |_| {});
    assert_eq!(proxy.client().run("INCR k"), Reply::Int(2));
    assert_eq!(
        old.direct().run("CONFIG GET min-replicas-to-write").items()[1],
        Reply::bulk("0")
    );
    drop(proxy);

    // A stalled proxy's handover connection is still on OLD: it is given its lease, then closed, so that proxy
    // can change nothing when it wakes up.
    stopped_between_fence_and_promotion(&old, &new);
    let mut stalled = old.direct();
    assert_eq!(stalled.run("CLIENT SETNAME redis-handover-control"), Reply::ok());
    let proxy = Proxy::start(old.addr(), Some(new.addr()), |_| {});
    let status = proxy.status();
    assert_eq!(status.phase, Phase::InDoubt, "{status:#?}");
    assert_eq!(proxy.client().run("GET k"), Reply::bulk("2"), "reads go to OLD");
    // A write waits (the stalled proxy's lease bounds it), and is answered once OLD is unfenced.
    let started = std::time::Instant::now();
    assert_eq!(proxy.client().run("INCR k"), Reply::Int(3));
    println!("a write waited {:?} for the stalled proxy's lease", started.elapsed());
    let (_, closed) = stalled.read_until_closed(Duration::from_secs(15));
    assert!(closed, "the stalled proxy's connection was closed");
    support::wait_until("the proxy to decide", Duration::from_secs(10), || {
        proxy.status().phase == Phase::Idle
    });
    assert_eq!(proxy.client().run("INCR k"), Reply::Int(4));
    assert_eq!(proxy.status().primary.side, Side::Old);
    assert_eq!(
        new.direct().run("ROLE").items()[0],
        Reply::bulk("slave"),
        "NEW was not promoted"
    );
}

#[test]
fn a_refusal_that_is_the_server_s_own_answer_reaches_the_client_as_it_came() {
    // OLD's own policy (no replica, one required), not a handover's fence: the proxy looks, then lets it through.
    let old = RedisServer::start(Version::V7_0, &["--min-replicas-to-write", "1"]);
    let new = RedisServer::start(Version::V7_0, &[]);
    let proxy = Proxy::start(old.addr(), Some(new.addr()), |_| {});
    let mut client = proxy.client();
    let started = std::time::Instant::now();
    client.send(&["SET", "a", "1"]);
    client.send(&["GET", "a"]);
    client.send(&["SET", "b", "1"]);
    let replies = [client.read(), client.read(), client.read()];
    assert!(replies[0].text().starts_with("NOREPLICAS"), "{replies:?}");
    assert_eq!(replies[1], Reply::Nil, "{replies:?}");
    assert!(replies[2].text().starts_with("NOREPLICAS"), "{replies:?}");
    println!(
        "the server's own refusals reached the client after {:?}",
        started.elapsed()
    );
    assert_eq!(proxy.status().primary.side, Side::Old);

    // A proxy with no NEW in front of a replica, by the operator's choice: READONLY, as the replica answers.
    let replica = RedisServer::start(Version::V7_0, &["--replicaof", "127.0.0.1", &new.port.to_string()]);
    let proxy = Proxy::start(replica.addr(), None, |_| {});
    let started = std::time::Instant::now();
    let reply = proxy.client().run("SET c 1");
    assert!(reply.text().starts_with("READONLY"), "{reply:?}");
    println!("a replica's READONLY reached the client after {:?}", started.elapsed());
}
