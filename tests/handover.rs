//! Live handover from OLD to NEW through the proxy, on real servers: under load no client sees an error or a
//! reconnect and no acknowledged write is lost; every kind of session state is carried over; failures before the
//! promotion abort with OLD still primary and nothing lost.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redis_handover::handover::Phase;
use redis_handover::handover::status::RollbackWindow;
use redis_handover::primary::Side;
use serde_json::json;
use support::{Client, FaultyLink, Harness, Reply, Version};

/// What one writer connection saw: the writes acknowledged to it, in order.
struct WriterLog {
    id: usize,
    /// Sequence numbers of the `SET w:<id>:<seq> <seq>` that were answered OK.
    acked_sets: u64,
    /// INCRs of `c:<id>` answered with the expected next value.
    acked_incrs: u64,
    /// The longest time a pipeline waited for its replies.
    longest_wait: Duration,
}

/// Writer connections through the proxy, each sending pipelines of SETs and INCRs until stopped. Any error
/// reply, wrong reply or closed connection fails the test (a client must not notice the handover).
struct Writers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<WriterLog>>,
    /// Pipelines answered so far, over all writers.
    answered: Arc<AtomicU64>,
}

impl Writers {
    fn start(addr: std::net::SocketAddr, connections: usize, pipeline: u64) -> Writers {
        Writers::start_with_transactions(addr, connections, pipeline, 0)
    }

    /// The same, with the first `transactions` writers sending each pipeline inside MULTI/EXEC: with shared links
    /// these sessions pin for every transaction and return to the shared links after its EXEC.
    fn start_with_transactions(
        addr: std::net::SocketAddr,
        connections: usize,
        pipeline: u64,
        transactions: usize,
    ) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let threads = (0..connections)
            .map(|id| {
                let stop = stop.clone();
                let answered = answered.clone();
                let in_multi = id < transactions;
                std::thread::spawn(move || {
                    let mut client = Client::connect(addr);
                    let mut log = WriterLog {
                        id,
                        acked_sets: 0,
                        acked_incrs: 0,
                        longest_wait: Duration::ZERO,
                    };
                    while !stop.load(Ordering::Relaxed) {
                        let mut batch = Vec::new();
                        if in_multi {
                            batch.extend(support::encode(&["MULTI"]));
                        }
                        for j in 0..pipeline {
                            let seq = (log.acked_sets + j).to_string();
                            batch.extend(support::encode(&["SET", &format!("w:{id}:{seq}"), &seq]));
                            batch.extend(support::encode(&["INCR", &format!("c:{id}")]));
                        }
                        if in_multi {
                            batch.extend(support::encode(&["EXEC"]));
                        }
                        let sent = Instant::now();
                        client.write_raw(&batch);
                        let replies = if in_multi {
                            assert_eq!(client.read(), Reply::ok(), "writer {id}: MULTI");
                            for _ in 0..pipeline * 2 {
                                assert_eq!(client.read(), Reply::Status("QUEUED".into()), "writer {id}");
                            }
                            match client.read() {
                                Reply::Array(replies) => replies,
                                other => panic!("writer {id}: EXEC answered {other:?}"),
                            }
                        } else {
                            (0..pipeline * 2).map(|_| client.read()).collect()
                        };
                        assert_eq!(replies.len() as u64, pipeline * 2, "writer {id}");
                        for pair in replies.chunks(2) {
                            assert_eq!(pair[0], Reply::ok(), "writer {id}: SET {}", log.acked_sets);
                            log.acked_sets += 1;
                            assert_eq!(pair[1], Reply::Int(log.acked_incrs as i64 + 1), "writer {id}: INCR");
                            log.acked_incrs += 1;
                        }
                        log.longest_wait = log.longest_wait.max(sent.elapsed());
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    log
                })
            })
            .collect();
        Writers {
            stop,
            threads,
            answered,
        }
    }

    /// Waits until `more` pipelines have been answered from now on (the writers are running).
    fn wait_for(&self, more: u64) {
        let target = self.answered.load(Ordering::Relaxed) + more;
        support::wait_until("the writers to be answered", Duration::from_secs(30), || {
            self.answered.load(Ordering::Relaxed) >= target
        });
    }

    fn stop(self) -> Vec<WriterLog> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .map(|t| t.join().expect("a writer saw an error or lost its connection"))
            .collect()
    }
}

/// Every acknowledged write of every writer is on `server`: each SET key with its value, each counter equal
/// to the INCRs acknowledged.
fn assert_all_acknowledged_writes_on(server: &support::RedisServer, logs: &[WriterLog]) -> u64 {
    let mut direct = server.direct();
    let mut checked = 0;
    for log in logs {
        let keys: Vec<String> = (0..log.acked_sets).map(|seq| format!("w:{}:{seq}", log.id)).collect();
        for chunk in keys.chunks(1000) {
            let mut args = vec!["MGET".to_string()];
            args.extend(chunk.iter().cloned());
            let values = direct.cmd(&args);
            for (key, value) in chunk.iter().zip(values.items()) {
                let seq = key.rsplit(':').next().unwrap();
                assert_eq!(
                    value,
                    &Reply::bulk(seq),
                    "{key} acknowledged but missing on {:?}",
                    server.version
                );
            }
        }
        let counter = direct.cmd(&["GET", &format!("c:{}", log.id)]);
        assert_eq!(
            counter,
            Reply::bulk(log.acked_incrs.to_string()),
            "counter c:{}",
            log.id
        );
        checked += log.acked_sets + log.acked_incrs;
    }
    checked
}

fn handover_under_load(old: Version) {
    let h = Harness::start(old, Version::V7_0);
    let mut seed = h.proxy.client();
    for i in 0..2000 {
        seed.send(&["SET", &format!("seed:{i}"), "x"]);
    }
    for _ in 0..2000 {
        assert_eq!(seed.read(), Reply::ok());
    }
    let clients_before = h.proxy.status().clients;
    // Five of them send transactions: with shared links they pin and unpin all along, beside the shared ones.
    let writers = Writers::start_with_transactions(h.proxy.addr, 20, 8, 5);
    writers.wait_for(100);
    let report = h.proxy.handover(json!({ "max_pause_ms": 3000 }));
    writers.wait_for(100);
    let status = h.proxy.status();
    let logs = writers.stop();
    assert_eq!(report.outcome, Phase::Switched, "{report:#?}");
    assert_eq!(status.primary.side, Side::New);
    assert_eq!(status.primary.version.as_deref(), Some("7.0.15"));
    assert_eq!(status.clients, clients_before + 20, "no client reconnected");
    let checked = assert_all_acknowledged_writes_on(&h.new, &logs);
    let longest = logs.iter().map(|l| l.longest_wait).max().unwrap();
    println!(
        "OLD {} -> NEW 7.0: pause {:.1} ms, writes held {}, longest client wait {:.1} ms, {checked} acknowledged writes checked on NEW",
        old.name(),
        report.pause_ms.unwrap(),
        report.writes_held,
        longest.as_secs_f64() * 1000.0
    );
    // Writes after the switch land on NEW, and OLD is fenced against stray writers (a 5.0 OLD is NEW's replica).
    let stray = h.old.direct().run("SET stray 1").text();
    assert!(
        stray.starts_with("NOREPLICAS") || stray.starts_with("READONLY"),
        "{stray}"
    );
    assert_eq!(h.proxy.client().run("SET after switch"), Reply::ok());
    assert_eq!(h.new.direct().run("GET after"), Reply::bulk("switch"));
}

#[test]
fn handover_6_2_to_7_0_under_load_loses_nothing() {
    handover_under_load(Version::V6_2);
}

#[test]
fn handover_5_0_to_7_0_under_load_loses_nothing() {
    handover_under_load(Version::V5_0);
}

#[test]
fn session_state_is_carried_over() {
    for old in [Version::V5_0, Version::V6_2] {
        let h = Harness::start(old, Version::V7_0);
        let mut db3 = h.proxy.client();
        assert_eq!(db3.run("SELECT 3"), Reply::ok());
        assert_eq!(db3.run("SET k in-db-3"), Reply::ok());
        let mut named = h.proxy.client();
        assert_eq!(named.run("CLIENT SETNAME worker-7"), Reply::ok());
        let mut script = h.proxy.client();
        let sha = script
            .cmd(&["SCRIPT", "LOAD", "return redis.call('INCR', KEYS[1])"])
            .text();
        let mut evaluated = h.proxy.client();
        assert_eq!(evaluated.cmd(&["EVAL", "return ARGV[1]", "0", "hi"]), Reply::bulk("hi"));
        let mut watcher = h.proxy.client();
        assert_eq!(watcher.run("WATCH guarded"), Reply::ok());
        let mut waiter = h.proxy.client();
        waiter.send(&["BLPOP", "jobs", "0"]);
        let mut timed = h.proxy.client();
        timed.send(&["BLPOP", "never", "3"]);
        let mut transaction = h.proxy.client();
        assert_eq!(transaction.run("MULTI"), Reply::ok());
        assert_eq!(transaction.run("INCR in-tx"), Reply::Status("QUEUED".into()));
        std::thread::sleep(Duration::from_millis(100));

        // The open MULTI holds the pause until its EXEC, which then runs on OLD.
        let (status, answer) = h.proxy.post("/handover", json!({ "max_pause_ms": 5000 }));
        assert_eq!(status, 202, "{answer}");
        h.proxy.wait_for_phase(Phase::Paused, Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(100));
        let blocked_at = Instant::now();
        assert_eq!(transaction.run("EXEC"), Reply::Array(vec![Reply::Int(1)]));
        let report = h.proxy.wait_for_handover_end(Duration::from_secs(30));
        assert_eq!(report.outcome, Phase::Switched, "{report:#?}");
        let on_new = |c: &mut Client| c.run("INFO server").text().contains("redis_version:7.0.15");

        assert!(
            on_new(&mut db3) && db3.run("GET k") == Reply::bulk("in-db-3"),
            "{old:?}: SELECT 3 carried over"
        );
        assert_eq!(named.run("CLIENT GETNAME"), Reply::bulk("worker-7"));
        assert!(on_new(&mut named));
        assert_eq!(
            script.cmd(&["EVALSHA", &sha, "1", "n"]),
            Reply::Int(1),
            "{old:?}: EVALSHA after the switch"
        );
        let eval_sha = sha1_smol::Sha1::from("return ARGV[1]").digest().to_string();
        let direct_sha = h.new.direct().cmd(&["SCRIPT", "EXISTS", &eval_sha]);
        assert_eq!(
            direct_sha,
            Reply::Array(vec![Reply::Int(1)]),
            "the EVAL body was loaded on NEW"
        );
        // WATCH spanned the switch: the transaction aborts (null), and the retry runs.
        assert_eq!(watcher.run("MULTI"), Reply::ok());
        assert_eq!(watcher.run("INCR guarded"), Reply::Status("QUEUED".into()));
        assert_eq!(
            watcher.run("EXEC"),
            Reply::Nil,
            "{old:?}: EXEC after a WATCH that spanned the switch"
        );
        assert_eq!(watcher.run("WATCH guarded"), Reply::ok());
        assert_eq!(watcher.run("MULTI"), Reply::ok());
        assert_eq!(watcher.run("INCR guarded"), Reply::Status("QUEUED".into()));
        assert_eq!(watcher.run("EXEC"), Reply::Array(vec![Reply::Int(1)]));
        // The blocked call waited through the switch and is served by a push on NEW.
        assert_eq!(h.proxy.client().run("RPUSH jobs j1"), Reply::Int(1));
        assert_eq!(
            waiter.read(),
            Reply::Array(vec![Reply::bulk("jobs"), Reply::bulk("j1")]),
            "{old:?}"
        );
        assert!(on_new(&mut waiter));
        // A timed blocking call keeps its deadline across the switch.
        assert_eq!(timed.read(), Reply::Nil);
        let waited = blocked_at.elapsed();
        assert!(
            waited < Duration::from_millis(3500),
            "BLPOP 3 ran {waited:?} after being moved"
        );
        assert_eq!(h.new.direct().run("GET in-tx"), Reply::bulk("1"));
    }
}

#[test]
fn acl_user_and_resp3_sessions_are_carried_over() {
    let h = Harness::start(Version::V6_2, Version::V7_0);
    assert_eq!(
        h.old.direct().run("ACL SETUSER alice on >wonderland ~app:* +@all"),
        Reply::ok()
    );
    let mut alice = h.proxy.client();
    assert_eq!(alice.run("AUTH alice wonderland"), Reply::ok());
    let mut resp3 = h.proxy.client();
    resp3.protocol = 3;
    assert!(matches!(resp3.run("HELLO 3"), Reply::Map(_)));
    assert_eq!(resp3.run("HSET app:h f v"), Reply::Int(1));
    let report = h.proxy.handover(json!({}));
    assert_eq!(report.outcome, Phase::Switched, "{report:#?}");
    assert_eq!(alice.run("ACL WHOAMI"), Reply::bulk("alice"));
    assert!(
        alice.run("SET other v").text().starts_with("NOPERM"),
        "the user's rules came along"
    );
    assert_eq!(alice.run("SET app:x v"), Reply::ok());
    assert!(alice.run("INFO server").text().contains("redis_version:7.0.15"));
    let map = resp3.run("HGETALL app:h");
    assert_eq!(
        map,
        Reply::Map(vec![(Reply::bulk("f"), Reply::bulk("v"))]),
        "still RESP3 on NEW"
    );
}

/// How a queue worker authenticates in [`a_blocked_worker_that_authenticates_itself_moves_with_the_handover`].
#[derive(Debug, Clone, Copy)]
enum WorkerAuth {
    /// The servers have a password; the client's AUTH passes through to them.
    ServerPassword,
    /// An ACL user that may not run CLIENT (so not CLIENT ID either).
    AclUserWithoutClient,
    /// The proxy's own `requirepass`; the proxy authenticates to the servers with its configured password.
    ProxyRequirepass,
}

fn blocked_worker_moves(auth: WorkerAuth) {
    const SERVER_PASSWORD: &str = "sekret";
    let requirepass = ["--requirepass", SERVER_PASSWORD];
    let old = match auth {
        WorkerAuth::AclUserWithoutClient => Version::V6_2,
        _ => Version::V7_0,
    };
    let h = Harness::start_with(old, &requirepass, Version::V7_0, &requirepass, |c| {
        c.old_password = Some(SERVER_PASSWORD.into());
        c.new_password = Some(SERVER_PASSWORD.into());
        if let WorkerAuth::ProxyRequirepass = auth {
            c.requirepass = Some("proxy-pw".into());
        }
    });
    let direct = |server: &support::RedisServer| {
        let mut c = server.direct();
        assert_eq!(c.cmd(&["AUTH", SERVER_PASSWORD]), Reply::ok());
        c
    };
    let login: Vec<&str> = match auth {
        WorkerAuth::ServerPassword => vec!["AUTH", SERVER_PASSWORD],
        WorkerAuth::AclUserWithoutClient => {
            let rule = "ACL SETUSER worker on >pw ~* &* +@all -client";
            assert_eq!(direct(&h.old).run(rule), Reply::ok());
            vec!["AUTH", "worker", "pw"]
        }
        WorkerAuth::ProxyRequirepass => vec!["AUTH", "proxy-pw"],
    };
    let mut worker = h.proxy.client();
    assert_eq!(worker.cmd(&login), Reply::ok());
    worker.send(&["BLPOP", "q", "0"]);
    let mut on_old = direct(&h.old);
    support::wait_until("the worker to block on OLD", Duration::from_secs(10), || {
        on_old.run("INFO clients").text().contains("blocked_clients:1")
    });

    let report = h.proxy.handover(json!({ "max_pause_ms": 1000 }));
    assert_eq!(report.outcome, Phase::Switched, "{auth:?}: {report:#?}");
    assert!(
        report.warnings.is_empty(),
        "{auth:?}: every blocked call moved: {report:#?}"
    );
    let mut pusher = h.proxy.client();
    assert_eq!(pusher.cmd(&login), Reply::ok());
    assert_eq!(pusher.run("LPUSH q hello"), Reply::Int(1));
    assert_eq!(
        worker.read(),
        Reply::Array(vec![Reply::bulk("q"), Reply::bulk("hello")]),
        "{auth:?}: the worker is served on NEW"
    );
    assert_eq!(direct(&h.new).run("LLEN q"), Reply::Int(0));
    let stats = direct(&h.old).run("INFO commandstats").text();
    if let WorkerAuth::ServerPassword | WorkerAuth::ProxyRequirepass = auth {
        assert!(
            !stats.contains("cmdstat_client|id:calls=0"),
            "{auth:?}: no hidden CLIENT ID refused: {stats}"
        );
    }
}

#[test]
fn a_blocked_worker_that_authenticates_itself_moves_with_the_handover() {
    blocked_worker_moves(WorkerAuth::ServerPassword);
}

#[test]
fn a_blocked_acl_user_without_the_client_command_moves_with_the_handover() {
    blocked_worker_moves(WorkerAuth::AclUserWithoutClient);
}

#[test]
fn a_blocked_worker_behind_the_proxy_s_requirepass_moves_with_the_handover() {
    blocked_worker_moves(WorkerAuth::ProxyRequirepass);
}

#[test]
fn a_subscriber_receives_every_message_before_during_and_after_the_switch() {
    for old in [Version::V5_0, Version::V6_2] {
        let h = Harness::start(old, Version::V7_0);
        let mut subscriber = h.proxy.client();
        subscriber.send(&["SUBSCRIBE", "events"]);
        assert_eq!(subscriber.read().items()[0], Reply::bulk("subscribe"));
        let stop = Arc::new(AtomicBool::new(false));
        let publisher = {
            let (stop, addr) = (stop.clone(), h.proxy.addr);
            std::thread::spawn(move || {
                let mut client = Client::connect(addr);
                let mut sent = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    assert_eq!(
                        client.cmd(&["PUBLISH", "events", &sent.to_string()]),
                        Reply::Int(1),
                        "message {sent}"
                    );
                    sent += 1;
                }
                sent
            })
        };
        std::thread::sleep(Duration::from_millis(200));
        let report = h.proxy.handover(json!({}));
        std::thread::sleep(Duration::from_millis(200));
        stop.store(true, Ordering::Relaxed);
        let sent = publisher.join().unwrap();
        assert_eq!(report.outcome, Phase::Switched, "{report:#?}");
        for expected in 0..sent {
            let message = subscriber.read();
            assert_eq!(
                message.items()[2],
                Reply::bulk(expected.to_string()),
                "{old:?}: message {expected} of {sent}"
            );
        }
        assert!(
            subscriber.read_within(Duration::from_millis(200)).is_none(),
            "no duplicate messages"
        );
        assert_eq!(
            subscriber.run("PING"),
            Reply::Array(vec![Reply::bulk("pong"), Reply::bulk("")])
        );
    }
}

#[test]
fn unreachable_new_aborts_in_preflight_and_old_stays_primary() {
    let old = support::RedisServer::start(Version::V6_2, &[]);
    let nowhere = std::net::SocketAddr::from(([127, 0, 0, 1], support::free_port()));
    let proxy = support::Proxy::start(old.addr(), Some(nowhere), |_| {});
    let mut c = proxy.client();
    assert_eq!(c.run("SET before 1"), Reply::ok());
    let report = proxy.handover(json!({}));
    assert_eq!(report.outcome, Phase::Aborted);
    assert!(report.reason.as_deref().unwrap().contains("unreachable"), "{report:#?}");
    assert_eq!(proxy.status().primary.side, Side::Old);
    assert_eq!(c.run("SET after 2"), Reply::ok());
    assert_eq!(old.direct().run("GET after"), Reply::bulk("2"));
}

/// OLD delays the start of the full sync (diskless sync after a delay), which holds the handover in `syncing`.
const SLOW_SYNC: [&str; 4] = ["--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "3"];

#[test]
fn new_killed_during_the_full_sync_aborts_and_nothing_is_lost() {
    let mut h = Harness::start_with(Version::V6_2, &SLOW_SYNC, Version::V7_0, &[], |_| {});
    let writers = Writers::start(h.proxy.addr, 4, 4);
    let (status, _) = h.proxy.post("/handover", json!({}));
    assert_eq!(status, 202);
    h.proxy.wait_for_phase(Phase::Syncing, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    h.new.kill();
    let report = h.proxy.wait_for_handover_end(Duration::from_secs(30));
    let logs = writers.stop();
    assert_eq!(report.outcome, Phase::Aborted, "{report:#?}");
    assert!(report.reason.as_deref().unwrap().contains("full sync"), "{report:#?}");
    assert_eq!(h.proxy.status().primary.side, Side::Old);
    assert_all_acknowledged_writes_on(&h.old, &logs);
    assert_eq!(h.proxy.client().run("SET still writable"), Reply::ok());
}

#[test]
fn catch_up_timeout_aborts() {
    let h = Harness::start_with(Version::V6_2, &SLOW_SYNC, Version::V7_0, &[], |_| {});
    let report = h.proxy.handover(json!({ "catchup_timeout_s": 1 }));
    assert_eq!(report.outcome, Phase::Aborted, "{report:#?}");
    assert!(
        report.reason.as_deref().unwrap().contains("catchup_timeout_s = 1"),
        "{report:#?}"
    );
    assert_eq!(h.proxy.status().primary.side, Side::Old);
    assert_eq!(h.proxy.client().run("SET k v"), Reply::ok());
}

#[test]
fn exceeding_the_pause_budget_aborts_and_held_writes_go_to_old() {
    // NEW replicates through a link that delays every byte by 300 ms; the pause budget is 50 ms.
    let old = support::RedisServer::start(Version::V6_2, &[]);
    let new = support::RedisServer::start(Version::V7_0, &[]);
    let slow = FaultyLink::start(old.addr());
    slow.delay(Duration::from_millis(300));
    let proxy = support::Proxy::start(old.addr(), Some(new.addr()), |c| {
        c.old_replication_addr = Some(slow.addr.to_string());
    });
    let writers = Writers::start(proxy.addr, 4, 4);
    let report = proxy.handover(json!({ "max_pause_ms": 50 }));
    std::thread::sleep(Duration::from_millis(200));
    let logs = writers.stop();
    assert_eq!(report.outcome, Phase::Aborted, "{report:#?}");
    assert!(
        report.reason.as_deref().unwrap().contains("max_pause_ms = 50"),
        "{report:#?}"
    );
    assert_eq!(proxy.status().primary.side, Side::Old);
    assert_all_acknowledged_writes_on(&old, &logs);
    assert_eq!(
        old.direct().run("SET direct ok"),
        Reply::ok(),
        "OLD is unpaused and unfenced"
    );
}

#[test]
fn a_second_handover_is_refused_while_one_runs_and_abort_stops_it() {
    let h = Harness::start_with(Version::V6_2, &SLOW_SYNC, Version::V7_0, &[], |_| {});
    let (status, _) = h.proxy.post("/handover", json!({}));
    assert_eq!(status, 202);
    let (status, answer) = h.proxy.post("/handover", json!({}));
    assert_eq!(status, 409);
    assert!(
        answer["error"].as_str().unwrap().contains("already running"),
        "{answer}"
    );
    let (status, _) = h.proxy.post("/handover/abort", json!({}));
    assert_eq!(status, 202);
    let report = h.proxy.wait_for_handover_end(Duration::from_secs(30));
    assert_eq!(report.outcome, Phase::Aborted);
    assert_eq!(report.reason.as_deref(), Some("aborted by the operator"));
    let (status, _) = h.proxy.post("/handover/abort", json!({}));
    assert_eq!(status, 409, "nothing to abort any more");
    assert_eq!(h.proxy.client().run("SET k v"), Reply::ok());
}

#[test]
fn after_a_switch_a_handover_back_to_an_older_version_is_refused_without_a_rollback_window() {
    let h = Harness::start_with(Version::V6_2, &[], Version::V7_0, &[], |c| c.rollback_window_s = 0);
    assert_eq!(h.proxy.handover(json!({})).outcome, Phase::Switched);
    let back = h.proxy.handover(json!({}));
    assert_eq!(back.outcome, Phase::Aborted);
    let reason = back.reason.as_deref().unwrap();
    assert!(
        reason.contains("6.2.14") && reason.contains("7.0.15") && reason.contains("older"),
        "{reason}"
    );
    assert!(reason.contains("rollback window"), "{reason}");
    assert!(matches!(
        h.proxy.status().rollback_window,
        Some(RollbackWindow::Off { .. })
    ));
    assert_eq!(h.proxy.status().primary.side, Side::New);
    assert_eq!(h.proxy.status().servers.old.role, "standby");
}

/// Reads from `stream` until `done` holds for what was read, within `timeout`.
fn read_until(stream: &mut std::net::TcpStream, timeout: Duration, done: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    use std::io::{ErrorKind, Read};
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    while !done(&seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "not seen within {timeout:?}: {:?}",
            String::from_utf8_lossy(&seen)
        );
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut chunk) {
            Ok(0) => panic!("closed; read {:?}", String::from_utf8_lossy(&seen)),
            Ok(n) => seen.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(e) => panic!("read failed: {e}"),
        }
    }
    seen
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_replica_follows_the_primary_through_the_proxy_and_across_the_handover() {
    use std::io::Write;
    let h = Harness::start(Version::V6_2, Version::V7_0);
    let mut c = h.proxy.client();
    for i in 0..100 {
        assert_eq!(c.cmd(&["SET", &format!("k{i}"), &format!("v{i}")]), Reply::ok());
    }
    // SYNC as a connection's first command, inline, as Redis's own test suite watches the replication stream:
    // the RDB payload and then the command stream come through unchanged.
    let mut sync = std::net::TcpStream::connect(h.proxy.addr).unwrap();
    sync.write_all(b"SYNC\r\n").unwrap();
    let rdb = read_until(&mut sync, Duration::from_secs(10), |seen| contains(seen, b"REDIS0009"));
    assert!(!contains(&rdb, b"ERR"), "{:?}", String::from_utf8_lossy(&rdb));
    assert_eq!(c.run("SET streamed yes"), Reply::ok());
    read_until(&mut sync, Duration::from_secs(10), |seen| contains(seen, b"streamed"));
    drop(sync);

    // A real replica of the proxy.
    let port = h.proxy.addr.port().to_string();
    let replica = support::RedisServer::start(Version::V7_0, &["--replicaof", "127.0.0.1", &port]);
    let mut on_replica = replica.direct();
    support::wait_until("the replica to sync through the proxy", Duration::from_secs(20), || {
        on_replica.run("GET k99") == Reply::bulk("v99")
    });
    assert_eq!(c.run("SET live 1"), Reply::ok());
    support::wait_until("a write to reach the replica", Duration::from_secs(10), || {
        on_replica.run("GET live") == Reply::bulk("1")
    });

    // The replica's stream from OLD ends at the switch; it reconnects through the proxy and NEW, which continues
    // OLD's replication history, serves it a partial resync.
    let report = h.proxy.handover(json!({}));
    assert_eq!(report.outcome, Phase::Switched, "{report:#?}");
    assert_eq!(c.run("SET after-switch 1"), Reply::ok());
    support::wait_until("the replica to follow NEW", Duration::from_secs(20), || {
        on_replica.run("GET after-switch") == Reply::bulk("1")
    });
    // NEW serves partial resyncs only: to this replica, and to OLD, which follows NEW for the rollback window.
    let stats = h.new.direct().run("INFO stats").text();
    assert!(
        stats.contains("sync_full:0") && !stats.contains("sync_partial_ok:0"),
        "NEW served the replica a partial resync: {stats}"
    );
}
