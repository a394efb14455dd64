//! Faults during a handover and outside one, on real servers (killed with SIGKILL, stalled with SIGSTOP) and
//! through a relay that cuts the network: clients get errors rather than hangs, a handover that cannot finish
//! aborts with OLD primary and writable, and the consistency checker finds every acknowledged write.

mod support;

use std::time::{Duration, Instant};

use redis_handover::handover::window::WindowState;
use redis_handover::handover::{Phase, Report};
use redis_handover::primary::Side;
use serde_json::json;
use support::{FaultyLink, Load, Proxy, RedisServer, Reply, Version};

#[derive(Debug, Clone, Copy)]
enum Fault {
    Kill,
    Stall,
    Cut,
}

/// OLD 6.2 and NEW 7.0, with the proxy reaching NEW and NEW reaching OLD through relays that can fail.
struct Scenario {
    old: RedisServer,
    new: RedisServer,
    to_new: FaultyLink,
    replication: FaultyLink,
    proxy: Proxy,
}

impl Scenario {
    fn start(old_args: &[&str]) -> Scenario {
        let old = RedisServer::start(Version::V6_2, old_args);
        let new = RedisServer::start(Version::V7_0, &[]);
        let to_new = FaultyLink::start(new.addr());
        let replication = FaultyLink::start(old.addr());
        let proxy = Proxy::start(old.addr(), Some(to_new.addr), |c| {
            c.old_replication_addr = Some(replication.addr.to_string());
        });
        Scenario {
            old,
            new,
            to_new,
            replication,
            proxy,
        }
    }

    fn inject(&mut self, fault: Fault) {
        match fault {
            Fault::Kill => self.new.kill(),
            Fault::Stall => self.new.stall(),
            Fault::Cut => {
                self.to_new.cut();
                self.replication.cut();
            }
        }
    }

    /// After an aborted handover: OLD primary, unpaused, unfenced, and nothing acknowledged lost.
    fn assert_old_stays_primary(&self, report: &Report, load: Load, what: &str) {
        assert_eq!(report.outcome, Phase::Aborted, "{what}: {report:#?}");
        assert_eq!(self.proxy.status().primary.side, Side::Old, "{what}");
        let started = Instant::now();
        assert_eq!(
            self.old.direct().run("SET direct-write ok"),
            Reply::ok(),
            "{what}: OLD writable"
        );
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{what}: OLD is not left paused"
        );
        assert_eq!(self.proxy.client().run("SET through-proxy ok"), Reply::ok(), "{what}");
        let checked = load.stop_and_verify();
        assert_eq!(checked.lost, 0, "{what}: {checked:#?}");
        assert_eq!(checked.failed_batches, 0, "{what}: clients saw errors: {checked:#?}");
        assert!(checked.acknowledged_writes > 0);
        println!(
            "{what}: aborted ({}); {} acknowledged writes checked, 0 lost",
            report.reason.as_deref().unwrap_or_default(),
            checked.acknowledged_writes
        );
    }
}

const SLOW_SYNC: [&str; 4] = ["--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "3"];

#[test]
fn new_failing_during_the_full_sync_aborts() {
    for fault in [Fault::Kill, Fault::Stall, Fault::Cut] {
        let mut s = Scenario::start(&SLOW_SYNC);
        let load = Load::start(&s.proxy, 4);
        // A replica that stops answering during the sync may be busy loading: it gets until the catch-up deadline.
        let (status, _) = s.proxy.post("/handover", json!({ "catchup_timeout_s": 6 }));
        assert_eq!(status, 202);
        s.proxy.wait_for_phase(Phase::Syncing, Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(200));
        s.inject(fault);
        let report = s.proxy.wait_for_handover_end(Duration::from_secs(30));
        s.assert_old_stays_primary(&report, load, &format!("{fault:?} during the full sync"));
    }
}

#[test]
fn new_failing_during_the_catch_up_aborts() {
    for fault in [Fault::Kill, Fault::Stall, Fault::Cut] {
        let mut s = Scenario::start(&[]);
        // A slow replication link and a lag limit of one byte keep the handover catching up.
        s.replication.delay(Duration::from_millis(300));
        let load = Load::start(&s.proxy, 4);
        let (status, _) = s
            .proxy
            .post("/handover", json!({ "max_lag_bytes": 1, "catchup_timeout_s": 60 }));
        assert_eq!(status, 202);
        s.proxy.wait_for_phase(Phase::CatchingUp, Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(200));
        s.inject(fault);
        let report = s.proxy.wait_for_handover_end(Duration::from_secs(30));
        s.assert_old_stays_primary(&report, load, &format!("{fault:?} during the catch-up"));
    }
}

#[test]
fn new_failing_during_the_pause_aborts_and_held_writes_go_to_old() {
    for fault in [Fault::Kill, Fault::Stall, Fault::Cut] {
        let mut s = Scenario::start(&[]);
        let load = Load::start(&s.proxy, 4);
        // An open MULTI keeps the pause waiting for its EXEC, with the writers' writes held at the gate.
        let mut transaction = s.proxy.client();
        assert_eq!(transaction.run("MULTI"), Reply::ok());
        assert_eq!(transaction.run("INCR in-tx"), Reply::Status("QUEUED".into()));
        let (status, _) = s.proxy.post("/handover", json!({ "max_pause_ms": 5000 }));
        assert_eq!(status, 202);
        s.proxy.wait_for_phase(Phase::Paused, Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(200));
        assert!(s.proxy.status().writes_held > 0, "writes are held during the pause");
        s.inject(fault);
        assert_eq!(transaction.run("EXEC"), Reply::Array(vec![Reply::Int(1)]));
        let report = s.proxy.wait_for_handover_end(Duration::from_secs(30));
        s.assert_old_stays_primary(&report, load, &format!("{fault:?} during the pause"));
        assert_eq!(s.old.direct().run("GET in-tx"), Reply::bulk("1"));
    }
}

const REPLICAOF_NO_ONE: &[u8] = b"REPLICAOF\r\n$2\r\nNO\r\n$3\r\nONE";

#[test]
fn new_promoted_but_unconfirmed_holds_writes_in_doubt_then_switches_when_new_answers() {
    let s = Scenario::start(&[]);
    let load = Load::start(&s.proxy, 4);
    // REPLICAOF NO ONE reaches NEW, and then the proxy cannot reach NEW any more.
    s.to_new.cut_after(REPLICAOF_NO_ONE);
    let (code, answer) = s.proxy.post("/handover", json!({ "max_pause_ms": 1000 }));
    assert_eq!(code, 202, "{answer}");
    s.proxy.wait_for_phase(Phase::InDoubt, Duration::from_secs(30));
    support::wait_until("the status to say why", Duration::from_secs(10), || {
        let status = s.proxy.status();
        let in_doubt = status.in_doubt.as_deref().unwrap_or_default().to_string();
        in_doubt.contains("cannot be reached") && in_doubt.contains("--force")
    });
    let status = s.proxy.status();
    assert_eq!(status.primary.side, Side::Old);
    // OLD stays fenced (NEW may be a master), and no plain abort lets it take writes again.
    assert!(s.old.direct().run("SET direct 1").text().starts_with("NOREPLICAS"));
    let (code, answer) = s.proxy.post("/handover/abort", json!({}));
    assert_eq!(code, 409, "{answer}");
    // Writes are held within the pause budget, then refused with a clear error.
    let started = Instant::now();
    let refused = s.proxy.client().run("SET during-doubt 1");
    assert!(
        refused.text().starts_with("TRYAGAIN") && refused.text().contains("in doubt"),
        "{refused:?}"
    );
    println!("a write in doubt was refused after {:?}", started.elapsed());
    assert_eq!(s.proxy.client().run("GET during-doubt"), Reply::Nil, "reads go on");

    s.to_new.heal();
    let report = s.proxy.wait_for_handover_end(Duration::from_secs(30));
    assert_eq!(report.outcome, Phase::Switched, "{report:#?}");
    let warnings = report.warnings.join("; ");
    assert!(warnings.contains("as a master promoted from"), "{warnings}");
    assert_eq!(s.proxy.status().primary.side, Side::New);
    assert_eq!(s.proxy.client().run("SET after-doubt 1"), Reply::ok());
    assert_eq!(s.new.direct().run("GET after-doubt"), Reply::bulk("1"));
    let direct = s.old.direct().run("SET direct 2").text();
    assert!(direct.starts_with("READONLY"), "OLD follows NEW: {direct}");
    let checked = load.stop_and_verify();
    assert_eq!(checked.lost, 0, "{checked:#?}");
    assert!(checked.acknowledged_writes > 0);
    println!(
        "in doubt, then switched: {} acknowledged writes checked, 0 lost, {} batches refused",
        checked.acknowledged_writes, checked.failed_batches
    );
}

#[test]
fn a_promotion_that_never_reached_new_ends_in_doubt_as_an_abort_once_new_answers() {
    let s = Scenario::start(&[]);
    let load = Load::start(&s.proxy, 4);
    s.to_new.cut_before(REPLICAOF_NO_ONE);
    let (code, answer) = s.proxy.post("/handover", json!({ "max_pause_ms": 5000 }));
    assert_eq!(code, 202, "{answer}");
    s.proxy.wait_for_phase(Phase::InDoubt, Duration::from_secs(30));
    s.to_new.heal();
    let report = s.proxy.wait_for_handover_end(Duration::from_secs(30));
    let reason = report.reason.as_deref().unwrap_or_default().to_string();
    assert!(reason.contains("still a replica"), "{reason}");
    // Healed within the budget: the held writes went to OLD, and no client saw an error.
    s.assert_old_stays_primary(&report, load, "REPLICAOF NO ONE lost on the way to NEW");
    assert_eq!(s.new.direct().run("ROLE").items()[0], Reply::bulk("slave"));
}

#[test]
fn a_forced_abort_ends_a_handover_in_doubt_with_old_primary_again() {
    let s = Scenario::start(&[]);
    let load = Load::start(&s.proxy, 4);
    s.to_new.cut_after(REPLICAOF_NO_ONE);
    let (code, answer) = s.proxy.post("/handover", json!({ "max_pause_ms": 5000 }));
    assert_eq!(code, 202, "{answer}");
    s.proxy.wait_for_phase(Phase::InDoubt, Duration::from_secs(30));
    let (code, answer) = s.proxy.post("/handover/abort", json!({ "force": true }));
    assert_eq!(code, 202, "{answer}");
    let report = s.proxy.wait_for_handover_end(Duration::from_secs(30));
    let reason = report.reason.as_deref().unwrap_or_default().to_string();
    assert!(reason.contains("aborted by the operator while in doubt"), "{reason}");
    s.assert_old_stays_primary(&report, load, "a forced abort in doubt");
    // What the reason warns of: NEW did become a master, detached from OLD.
    assert_eq!(s.new.direct().run("ROLE").items()[0], Reply::bulk("master"));
}

#[test]
fn old_killed_under_load_gives_errors_not_hangs_and_the_proxy_recovers() {
    let mut old = RedisServer::start(Version::V6_2, &["--appendonly", "yes", "--appendfsync", "always"]);
    let proxy = Proxy::start(old.addr(), None, |_| {});
    let mut idle = proxy.client();
    assert_eq!(idle.run("PING"), Reply::Status("PONG".into()));
    // Counted with the idle client's session and the backend link it opened (a shared link has tasks of its own).
    let tasks_before = proxy.status().tasks;
    let load = Load::start(&proxy, 4);
    std::thread::sleep(Duration::from_millis(300));
    old.kill();
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let reply = idle.run("GET k");
    assert!(
        reply.is_error() && started.elapsed() < Duration::from_secs(2),
        "{reply:?} after {:?}",
        started.elapsed()
    );
    old.restart();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        idle.run("SET after-restart yes"),
        Reply::ok(),
        "the same connection works again"
    );
    let report = load.stop_and_verify();
    assert_eq!(report.lost, 0, "{report:#?}");
    assert!(report.failed_batches > 0, "the writers saw OLD go away: {report:#?}");
    assert!(report.longest_wait_ms < 5000.0, "errors, not hangs: {report:#?}");
    drop(idle);
    support::wait_until("the sessions to end", Duration::from_secs(10), || {
        let status = proxy.status();
        status.clients == 0 && status.tasks <= tasks_before
    });
}

#[test]
fn clients_leaving_mid_handover_leave_nothing_behind() {
    let h = support::Harness::start(Version::V6_2, Version::V7_0);
    let tasks_before = h.proxy.status().tasks;
    let mut transaction = h.proxy.client();
    assert_eq!(transaction.run("MULTI"), Reply::ok());
    let mut blocked = h.proxy.client();
    blocked.send(&["BLPOP", "q", "0"]);
    let mut leaving_transaction = h.proxy.client();
    assert_eq!(leaving_transaction.run("MULTI"), Reply::ok());
    assert_eq!(leaving_transaction.run("INCR gone"), Reply::Status("QUEUED".into()));
    std::thread::sleep(Duration::from_millis(100));
    let (status, _) = h.proxy.post("/handover", json!({ "max_pause_ms": 5000 }));
    assert_eq!(status, 202);
    h.proxy.wait_for_phase(Phase::Paused, Duration::from_secs(20));
    let mut held = h.proxy.client();
    held.send(&["SET", "held", "1"]);
    support::wait_until("the write to be held", Duration::from_secs(5), || {
        h.proxy.status().writes_held == 1
    });
    drop(held);
    drop(blocked);
    drop(leaving_transaction);
    support::wait_until("the held write to be released", Duration::from_secs(5), || {
        h.proxy.status().writes_held == 0
    });
    assert_eq!(transaction.run("EXEC"), Reply::Array(vec![]));
    let report = h.proxy.wait_for_handover_end(Duration::from_secs(30));
    assert_eq!(report.outcome, Phase::Switched, "{report:#?}");
    assert_eq!(
        h.new.direct().run("EXISTS held gone"),
        Reply::Int(0),
        "nothing of the departed clients ran"
    );
    drop(transaction);
    // One task stays: the rollback window's watcher.
    assert_eq!(h.proxy.status().window().map(|w| w.state), Some(WindowState::Open));
    support::wait_until("every session to end", Duration::from_secs(10), || {
        let status = h.proxy.status();
        status.clients == 0 && status.tasks <= tasks_before + 1
    });
}

#[test]
fn sigterm_during_a_handover_leaves_old_primary_and_writable() {
    let old = RedisServer::start(Version::V6_2, &SLOW_SYNC);
    let new = RedisServer::start(Version::V7_0, &[]);
    let (port, admin) = (support::free_port(), support::free_port());
    let mut proxy = std::process::Command::new(env!("CARGO_BIN_EXE_redis-handover"))
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admin",
            &format!("127.0.0.1:{admin}"),
        ])
        .args(["--old", &old.addr().to_string(), "--new", &new.addr().to_string()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    support::wait_until("the proxy to listen", Duration::from_secs(10), || {
        std::net::TcpStream::connect(addr).is_ok()
    });
    let mut client = support::Client::connect(addr);
    assert_eq!(client.run("SET before sigterm"), Reply::ok());
    let started = std::process::Command::new(env!("CARGO_BIN_EXE_redis-handover"))
        .args(["ctl", "--admin", &format!("127.0.0.1:{admin}"), "handover"])
        .output()
        .unwrap();
    assert!(started.status.success());
    std::thread::sleep(Duration::from_millis(500));
    std::process::Command::new("kill")
        .args(["-TERM", &proxy.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = proxy.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the proxy did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    let mut direct = old.direct();
    assert_eq!(direct.run("ROLE").items()[0], Reply::bulk("master"));
    assert_eq!(
        direct.run("SET after sigterm"),
        Reply::ok(),
        "OLD is writable: not fenced, not paused"
    );
    assert_eq!(direct.run("GET before"), Reply::bulk("sigterm"));
}
