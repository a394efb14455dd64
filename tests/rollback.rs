//! The rollback window, on real servers: after a switch OLD follows NEW by partial resync; `POST /rollback` hands
//! back to it under load with nothing lost and every session's state carried, and NEW then follows OLD so that a
//! second try forward needs no full sync. Each cause that closes the window closes it with its reason, refuses a
//! rollback, and leaves OLD with its data.

mod support;

use std::time::Duration;

use redis_handover::handover::Phase;
use redis_handover::handover::window::{Cause, Window, WindowState};
use redis_handover::primary::Side;
use serde_json::json;
use support::{Client, FaultyLink, Harness, Load, Proxy, RedisServer, Reply, Version, wait_for, wait_until};

const SEEDS: usize = 500;

/// Writes `SEEDS` keys through the proxy, before any handover: what OLD must still hold however the window ends.
fn seed(proxy: &Proxy) {
    let mut client = proxy.client();
    for i in 0..SEEDS {
        client.send(&["SET", &format!("seed:{i}"), "x"]);
    }
    for _ in 0..SEEDS {
        assert_eq!(client.read(), Reply::ok());
    }
}

fn info_field(client: &mut Client, section: &str, field: &str) -> String {
    let text = client.run(&format!("INFO {section}")).text();
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Waits until the rollback window is in `state`; the window as the status shows it.
fn wait_for_window(proxy: &Proxy, state: WindowState, timeout: Duration) -> Window {
    wait_for(&format!("rollback window {state:?}"), timeout, || {
        let status = proxy.status();
        match status.window() {
            Some(window) if window.state == state => Ok(window.clone()),
            _ => Err(format!("{:#?}", status.rollback_window)),
        }
    })
}

/// Waits until the window is open and the follower's link is up.
fn wait_for_follower(proxy: &Proxy, follower: Side) -> Window {
    wait_for(
        &format!("{} following", follower.name()),
        Duration::from_secs(30),
        || {
            let status = proxy.status();
            match status.window() {
                Some(w) if w.state == WindowState::Open && w.follower == follower && w.link_up => Ok(w.clone()),
                _ => Err(format!("{:#?}", status.rollback_window)),
            }
        },
    )
}

/// After the window closed: a rollback is refused with the reason, and OLD, a fenced primary of its own again,
/// still holds every seeded key.
fn assert_closed_and_old_kept(h: &Harness, cause: Cause) -> String {
    let window = wait_for_window(&h.proxy, WindowState::Closed, Duration::from_secs(30));
    assert_eq!(window.cause, Some(cause), "{window:#?}");
    let reason = window.reason.clone().expect("a closed window says why");
    let (status, answer) = h.proxy.post("/rollback", json!({}));
    assert_eq!(status, 409, "{answer}");
    let refusal = answer["error"].as_str().unwrap_or_default();
    assert!(refusal.contains(&reason), "{refusal}");
    wait_until("OLD detached", Duration::from_secs(15), || {
        h.proxy.status().window().and_then(|w| w.detached) == Some(true)
    });
    let mut old = h.old.direct();
    assert_eq!(info_field(&mut old, "replication", "role"), "master");
    for i in (0..SEEDS).step_by(50) {
        assert_eq!(old.run(&format!("GET seed:{i}")), Reply::bulk("x"), "seed:{i} on OLD");
    }
    let stray = old.run("SET stray 1").text();
    assert!(stray.starts_with("NOREPLICAS"), "OLD is fenced: {stray}");
    assert_eq!(h.proxy.status().primary.side, Side::New);
    println!("window closed ({}): {reason}", cause.name());
    reason
}

/// Every kind of session state, opened before the way back and checked after it.
struct Sessions {
    db3: Client,
    alice: Client,
    resp3: Client,
    watcher: Client,
    waiter: Client,
    subscriber: Client,
    script: Client,
    sha: String,
}

impl Sessions {
    fn open(proxy: &Proxy) -> Sessions {
        let mut db3 = proxy.client();
        assert_eq!(db3.run("SELECT 3"), Reply::ok());
        assert_eq!(db3.run("SET k in-db-3"), Reply::ok());
        let mut alice = proxy.client();
        assert_eq!(alice.run("AUTH alice wonderland"), Reply::ok());
        let mut resp3 = proxy.client();
        resp3.protocol = 3;
        assert!(matches!(resp3.run("HELLO 3"), Reply::Map(_)));
        assert_eq!(resp3.run("HSET app:h f v"), Reply::Int(1));
        let mut watcher = proxy.client();
        assert_eq!(watcher.run("WATCH guarded"), Reply::ok());
        let mut waiter = proxy.client();
        waiter.send(&["BLPOP", "jobs", "0"]);
        let mut subscriber = proxy.client();
        subscriber.send(&["SUBSCRIBE", "events"]);
        assert_eq!(subscriber.read().items()[0], Reply::bulk("subscribe"));
        let mut script = proxy.client();
        let sha = script
            .cmd(&["SCRIPT", "LOAD", "return redis.call('INCR', KEYS[1])"])
            .text();
        Sessions {
            db3,
            alice,
            resp3,
            watcher,
            waiter,
            subscriber,
            script,
            sha,
        }
    }

    /// Each session still works as it did, now served by OLD (`version`).
    fn check_on(mut self, proxy: &Proxy, version: &str) {
        let on = |c: &mut Client| {
            c.run("INFO server")
                .text()
                .contains(&format!("redis_version:{version}"))
        };
        assert!(on(&mut self.db3), "the SELECT 3 session is on {version}");
        assert_eq!(self.db3.run("GET k"), Reply::bulk("in-db-3"), "SELECT 3 carried");
        assert_eq!(self.alice.run("ACL WHOAMI"), Reply::bulk("alice"));
        assert!(self.alice.run("SET other v").text().starts_with("NOPERM"));
        assert_eq!(self.alice.run("SET app:x v"), Reply::ok());
        assert_eq!(
            self.resp3.run("HGETALL app:h"),
            Reply::Map(vec![(Reply::bulk("f"), Reply::bulk("v"))]),
            "still RESP3"
        );
        // WATCH spanned both switches: the transaction aborts (null); MULTI works again after it.
        assert_eq!(self.watcher.run("MULTI"), Reply::ok());
        assert_eq!(self.watcher.run("INCR guarded"), Reply::Status("QUEUED".into()));
        assert_eq!(
            self.watcher.run("EXEC"),
            Reply::Nil,
            "EXEC after a WATCH that spanned the switches"
        );
        assert_eq!(self.watcher.run("MULTI"), Reply::ok());
        assert_eq!(self.watcher.run("INCR guarded"), Reply::Status("QUEUED".into()));
        assert_eq!(self.watcher.run("EXEC"), Reply::Array(vec![Reply::Int(1)]));
        assert_eq!(proxy.client().run("RPUSH jobs j1"), Reply::Int(1));
        assert_eq!(
            self.waiter.read(),
            Reply::Array(vec![Reply::bulk("jobs"), Reply::bulk("j1")]),
            "the BLPOP waited through both switches"
        );
        assert_eq!(proxy.client().run("PUBLISH events hello"), Reply::Int(1));
        assert_eq!(self.subscriber.read().items()[2], Reply::bulk("hello"));
        assert_eq!(
            self.script.cmd(&["EVALSHA", &self.sha, "1", "n"]),
            Reply::Int(1),
            "EVALSHA"
        );
    }
}

#[test]
fn a_6_2_to_7_0_handover_rolls_back_under_load_and_goes_forward_again_without_a_full_sync() {
    let h = Harness::start(Version::V6_2, Version::V7_0);
    assert_eq!(
        h.old
            .direct()
            .run("ACL SETUSER alice on >wonderland ~app:* ~jobs ~guarded ~n +@all"),
        Reply::ok()
    );
    seed(&h.proxy);
    let load = Load::start(&h.proxy, 8);
    let forward = h.proxy.handover(json!({ "max_pause_ms": 3000 }));
    assert_eq!(forward.outcome, Phase::Switched, "{forward:#?}");
    let window = wait_for_follower(&h.proxy, Side::Old);
    assert!(window.until_unix_ms > window.opened_at_unix_ms);
    assert_eq!(
        h.old.direct().run("CONFIG GET repl-diskless-load"),
        Reply::Array(vec![Reply::bulk("repl-diskless-load"), Reply::bulk("swapdb")]),
        "a full sync that began anyway would leave OLD's data in place"
    );
    // OLD applies NEW's writes: one made through the proxy now shows on OLD.
    assert_eq!(h.proxy.client().run("SET written-on new"), Reply::ok());
    let mut old = h.old.direct();
    wait_until("OLD has the write", Duration::from_secs(10), || {
        old.run("GET written-on") == Reply::bulk("new")
    });
    let sessions = Sessions::open(&h.proxy);

    let back = {
        let (status, answer) = h.proxy.post("/rollback", json!({ "max_pause_ms": 3000 }));
        assert_eq!(status, 202, "{answer}");
        h.proxy.wait_for_handover_end(Duration::from_secs(60))
    };
    assert_eq!(back.outcome, Phase::Switched, "{back:#?}");
    assert_eq!(h.proxy.status().primary.side, Side::Old);
    sessions.check_on(&h.proxy, "6.2.14");
    // NEW follows OLD now, so the way forward is open again without a new full sync.
    wait_for_follower(&h.proxy, Side::New);
    let again = h.proxy.handover(json!({ "max_pause_ms": 3000 }));
    assert_eq!(again.outcome, Phase::Switched, "{again:#?}");
    let report = load.stop_and_verify();
    assert_eq!(report.lost, 0, "{report:?}");
    assert_eq!((report.failed_batches, report.reconnects), (0, 0), "{report:?}");
    let mut new = h.new.direct();
    assert_eq!(
        info_field(&mut new, "stats", "sync_full"),
        "0",
        "NEW never sent a full sync"
    );
    assert_eq!(
        info_field(&mut old, "stats", "sync_full"),
        "1",
        "OLD sent one full sync, the first one"
    );
    assert_eq!(info_field(&mut old, "replication", "role"), "slave");
    println!(
        "6.2 -> 7.0 -> 6.2 -> 7.0: pauses {:.1} / {:.1} / {:.1} ms, longest client wait {:.1} ms, {} writes \
         checked, {} lost, {} failed batches",
        forward.pause_ms.unwrap(),
        back.pause_ms.unwrap(),
        again.pause_ms.unwrap(),
        report.longest_wait_ms,
        report.acknowledged_writes,
        report.lost,
        report.failed_batches
    );
}

#[test]
fn a_5_0_to_7_0_handover_rolls_back_with_a_workload_5_0_can_apply() {
    let h = Harness::start(Version::V5_0, Version::V7_0);
    seed(&h.proxy);
    let load = Load::start(&h.proxy, 8);
    let forward = h.proxy.handover(json!({ "max_pause_ms": 3000 }));
    assert_eq!(forward.outcome, Phase::Switched, "{forward:#?}");
    let window = wait_for_follower(&h.proxy, Side::Old);
    assert_eq!(window.follower_version, "5.0.6");
    // What the writers send (SET without an expiry, INCR, RPUSH) 5.0 applies: the window stays open while NEW's
    // stream is checked.
    wait_until("NEW's stream checked", Duration::from_secs(10), || {
        h.proxy.status().window().is_some_and(|w| w.commands_checked > 1000)
    });
    let (status, answer) = h.proxy.post("/rollback", json!({ "max_pause_ms": 3000 }));
    assert_eq!(status, 202, "{answer}");
    let back = h.proxy.wait_for_handover_end(Duration::from_secs(60));
    assert_eq!(back.outcome, Phase::Switched, "{back:#?}");
    assert_eq!(h.proxy.status().primary.version.as_deref(), Some("5.0.6"));
    wait_for_follower(&h.proxy, Side::New);
    let report = load.stop_and_verify();
    assert_eq!(report.lost, 0, "{report:?}");
    assert_eq!((report.failed_batches, report.reconnects), (0, 0), "{report:?}");
    assert_eq!(info_field(&mut h.new.direct(), "stats", "sync_full"), "0");
    println!(
        "5.0 -> 7.0 -> 5.0: pauses {:.1} / {:.1} ms, longest client wait {:.1} ms, {} writes checked, 0 lost",
        forward.pause_ms.unwrap(),
        back.pause_ms.unwrap(),
        report.longest_wait_ms,
        report.acknowledged_writes
    );
}

#[test]
fn a_set_with_an_expiry_closes_a_5_0_window_at_once() {
    let h = Harness::start(Version::V5_0, Version::V7_0);
    seed(&h.proxy);
    assert_eq!(h.proxy.handover(json!({})).outcome, Phase::Switched);
    wait_for_follower(&h.proxy, Side::Old);
    assert_eq!(h.proxy.client().run("SET session:1 v EX 100"), Reply::ok());
    let reason = assert_closed_and_old_kept(&h, Cause::ApplyError);
    assert!(
        reason.contains("SET session:1 v PXAT") && reason.contains("Redis 5.0"),
        "{reason}"
    );
}

#[test]
fn an_expire_with_a_7_0_flag_closes_a_6_2_window() {
    let h = Harness::start(Version::V6_2, Version::V7_0);
    seed(&h.proxy);
    assert_eq!(h.proxy.handover(json!({})).outcome, Phase::Switched);
    wait_for_follower(&h.proxy, Side::Old);
    assert_eq!(
        h.proxy.client().run("SET session:1 v EX 100"),
        Reply::ok(),
        "6.2 applies SET PXAT"
    );
    // WAIT after a write counts OLD, which follows, and not the proxy's reader of NEW's stream (it acknowledges
    // offset 0). Asked of NEW itself: the proxy's shared links move a WAIT to a connection of its own.
    let mut writer = h.new.direct();
    assert_eq!(writer.run("SET waited 1"), Reply::ok());
    assert_eq!(writer.run("WAIT 2 300"), Reply::Int(1));
    assert_eq!(h.proxy.client().run("EXPIRE seed:1 100 NX"), Reply::Int(1));
    let reason = assert_closed_and_old_kept(&h, Cause::ApplyError);
    assert!(reason.contains("PEXPIREAT seed:1") && reason.contains("NX"), "{reason}");
}

#[test]
fn old_restarting_closes_the_window() {
    let mut h = Harness::start(Version::V6_2, Version::V7_0);
    seed(&h.proxy);
    assert_eq!(h.proxy.handover(json!({})).outcome, Phase::Switched);
    wait_for_follower(&h.proxy, Side::Old);
    // It comes back from its own RDB, as a master without its replication state.
    assert_eq!(h.old.direct().run("SAVE"), Reply::ok());
    h.old.restart();
    let reason = assert_closed_and_old_kept(&h, Cause::Restarted);
    assert!(reason.contains("restarted"), "{reason}");
}

/// OLD reaching NEW through a link the test can cut, for the window's link and backlog causes.
fn harness_with_a_cuttable_replication_link(
    configure: impl FnOnce(&mut redis_handover::config::Config),
) -> (Harness, FaultyLink) {
    let old = RedisServer::start(Version::V6_2, &[]);
    let new = RedisServer::start(Version::V7_0, &[]);
    let link = FaultyLink::start(new.addr());
    let link_addr = link.addr.to_string();
    let proxy = Proxy::start(old.addr(), Some(new.addr()), |c| {
        c.new_replication_addr = Some(link_addr);
        configure(c);
    });
    (Harness { old, new, proxy }, link)
}

#[test]
fn old_falling_out_of_new_s_backlog_closes_the_window() {
    let (h, link) = harness_with_a_cuttable_replication_link(|_| {});
    seed(&h.proxy);
    assert_eq!(h.proxy.handover(json!({})).outcome, Phase::Switched);
    wait_for_follower(&h.proxy, Side::Old);
    assert_eq!(h.new.direct().run("CONFIG SET repl-backlog-size 16384"), Reply::ok());
    link.cut();
    let mut client = h.proxy.client();
    let value = "v".repeat(1024);
    for i in 0..200 {
        assert_eq!(client.cmd(&["SET", &format!("big:{i}"), &value]), Reply::ok());
    }
    let reason = assert_closed_and_old_kept(&h, Cause::Backlog);
    assert!(reason.contains("backlog"), "{reason}");
}

#[test]
fn old_cut_off_from_new_closes_the_window_after_the_grace() {
    let (h, link) = harness_with_a_cuttable_replication_link(|_| {});
    seed(&h.proxy);
    assert_eq!(h.proxy.handover(json!({})).outcome, Phase::Switched);
    wait_for_follower(&h.proxy, Side::Old);
    link.cut();
    wait_until("the link down", Duration::from_secs(10), || {
        h.proxy.status().window().is_some_and(|w| !w.link_up)
    });
    assert_eq!(
        h.proxy.status().window().map(|w| w.state),
        Some(WindowState::Open),
        "a cut within the grace keeps it open"
    );
    let reason = assert_closed_and_old_kept(&h, Cause::LinkLost);
    assert!(reason.contains("cut off"), "{reason}");
}

#[test]
fn the_window_closes_when_its_time_runs_out() {
    let h = Harness::start_with(Version::V6_2, &[], Version::V7_0, &[], |c| c.rollback_window_s = 2);
    seed(&h.proxy);
    assert_eq!(h.proxy.handover(json!({})).outcome, Phase::Switched);
    let reason = assert_closed_and_old_kept(&h, Cause::Expired);
    assert!(reason.contains("rollback_window_s = 2"), "{reason}");
}

#[test]
fn the_operator_closes_the_window() {
    let h = Harness::start(Version::V6_2, Version::V7_0);
    seed(&h.proxy);
    assert_eq!(h.proxy.handover(json!({})).outcome, Phase::Switched);
    wait_for_follower(&h.proxy, Side::Old);
    let metrics = h.proxy.metrics();
    assert!(metrics.contains("redis_handover_rollback_window_open 1"), "{metrics}");
    let (status, answer) = h.proxy.post("/rollback/close", json!({}));
    assert_eq!(status, 200, "{answer}");
    let reason = assert_closed_and_old_kept(&h, Cause::Operator);
    assert!(reason.contains("operator"), "{reason}");
    let metrics = h.proxy.metrics();
    assert!(metrics.contains("redis_handover_rollback_window_open 0"), "{metrics}");
    assert!(
        metrics.contains("redis_handover_rollback_windows_closed_total{cause=\"operator\"} 1"),
        "{metrics}"
    );
    let (status, _) = h.proxy.post("/rollback/close", json!({}));
    assert_eq!(status, 409, "closing twice");
}

#[test]
fn a_proxy_restarted_while_the_window_is_open_watches_it_again_and_can_roll_back() {
    let mut h = Harness::start(Version::V6_2, Version::V7_0);
    seed(&h.proxy);
    assert_eq!(h.proxy.handover(json!({})).outcome, Phase::Switched);
    wait_for_follower(&h.proxy, Side::Old);
    h.proxy.stop();
    h.proxy = Proxy::start(h.old.addr(), Some(h.new.addr()), |_| {});
    assert_eq!(h.proxy.status().primary.side, Side::New, "the servers name NEW");
    wait_for_follower(&h.proxy, Side::Old);
    assert_eq!(h.proxy.client().run("SET after-restart 1"), Reply::ok());
    let (status, answer) = h.proxy.post("/rollback", json!({}));
    assert_eq!(status, 202, "{answer}");
    let back = h.proxy.wait_for_handover_end(Duration::from_secs(60));
    assert_eq!(back.outcome, Phase::Switched, "{back:#?}");
    assert_eq!(h.proxy.status().primary.side, Side::Old);
    assert_eq!(h.proxy.client().run("GET after-restart"), Reply::bulk("1"));
    assert_eq!(h.proxy.client().run("GET seed:7"), Reply::bulk("x"));
}

#[test]
fn a_backlog_too_small_for_the_write_rate_is_raised_or_warned_about() {
    // Raised: NEW's 16 KiB backlog becomes rollback_backlog_bytes.
    let h = Harness::start_with(
        Version::V6_2,
        &[],
        Version::V7_0,
        &["--repl-backlog-size", "16384"],
        |_| {},
    );
    let report = h.proxy.handover(json!({}));
    let differences = report.config_differences.join("; ");
    assert!(differences.contains("raised to 67108864"), "{differences}");
    assert_eq!(
        info_field(&mut h.new.direct(), "replication", "repl_backlog_size"),
        "67108864"
    );

    // Left alone (rollback_backlog_bytes = 0) and too small for the writes: a warning with the size to set.
    let h = Harness::start_with(
        Version::V6_2,
        &[],
        Version::V7_0,
        &["--repl-backlog-size", "16384"],
        |c| c.rollback_backlog_bytes = 0,
    );
    seed(&h.proxy);
    let load = Load::start(&h.proxy, 8);
    let report = h.proxy.handover(json!({}));
    let warnings = report.warnings.join("; ");
    assert!(
        warnings.contains("repl-backlog-size (16384 bytes) holds") && warnings.contains("raise rollback_backlog_bytes"),
        "{report:#?}"
    );
    assert_eq!(load.stop_and_verify().lost, 0);
}

#[test]
fn a_rollback_right_after_a_command_old_cannot_apply_does_not_go_back() {
    let h = Harness::start(Version::V6_2, Version::V7_0);
    seed(&h.proxy);
    assert_eq!(h.proxy.handover(json!({})).outcome, Phase::Switched);
    wait_for_follower(&h.proxy, Side::Old);
    // The rollback follows at once: the watcher may not have read the command yet; the handover back reads the
    // rest of the stream in its pause.
    assert_eq!(h.proxy.client().run("EXPIRE seed:3 100 GT"), Reply::Int(0));
    assert_eq!(h.proxy.client().run("EXPIRE seed:4 100 NX"), Reply::Int(1));
    let (status, answer) = h.proxy.post("/rollback", json!({}));
    let reason = if status == 202 {
        let back = h.proxy.wait_for_handover_end(Duration::from_secs(60));
        assert_eq!(back.outcome, Phase::Aborted, "{back:#?}");
        back.reason.as_deref().unwrap().to_string()
    } else {
        assert_eq!(status, 409, "{answer}");
        answer["error"].as_str().unwrap().to_string()
    };
    assert!(reason.contains("PEXPIREAT seed:") && reason.contains("7.0"), "{reason}");
    assert_eq!(h.proxy.status().primary.side, Side::New);
    assert!(!h.proxy.client().run("TTL seed:4").is_error());
    assert_closed_and_old_kept(&h, Cause::ApplyError);
}
