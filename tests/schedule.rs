//! Scheduled handovers (`ctl handover --at/--window/--when-writes-below`, `ctl cancel`, `POST
//! /handover/schedule`): one a few seconds ahead runs then; one waiting for a quiet moment waits while a writer is
//! busy and while a MULTI is open, and runs once both end; a window that closes first runs nothing and says why;
//! a blocked one says why at once; cancel.

mod support;

use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis_handover::handover::schedule::{ScheduleState, Scheduled};
use redis_handover::handover::{Phase, Status};
use redis_handover::primary::Side;
use serde_json::json;
use support::{Harness, Proxy, Reply, Version, wait_for};

/// `redis-handover ctl` against `proxy`'s admin port.
fn ctl(proxy: &Proxy, args: &[&str]) -> Output {
    support::ctl(proxy.admin, args)
}

/// `ctl` with a bound on how long it may take: it is killed, and the test fails, past `timeout`.
fn ctl_within(proxy: &Proxy, args: &[&str], timeout: Duration) -> Output {
    let admin = proxy.admin.to_string();
    let mut command = Command::new(env!("CARGO_BIN_EXE_redis-handover"));
    command
        .args(["ctl", "--admin", &admin])
        .args(args)
        .env_remove("REDIS_HANDOVER_ADMIN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    support::output_within(&mut command, timeout)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A client writing through the proxy as fast as it can (pipelines of 20 SETs), until dropped.
struct BusyWriter {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl BusyWriter {
    fn start(proxy: &Proxy) -> BusyWriter {
        let stop = Arc::new(AtomicBool::new(false));
        let mut client = proxy.client();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut n = 0u64;
            while !flag.load(Ordering::Relaxed) {
                for i in 0..20 {
                    client.send(&["SET", "busy", &(n + i).to_string()]);
                }
                for _ in 0..20 {
                    assert_eq!(client.read(), Reply::ok());
                }
                n += 20;
            }
            n
        });
        BusyWriter {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops it; how many writes it made.
    fn stop(&mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .map_or(0, |t| t.join().expect("the writer's writes succeed"))
    }
}

impl Drop for BusyWriter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Waits until the schedule in `GET /status` satisfies `condition`; the status then.
fn wait_for_schedule(proxy: &Proxy, what: &str, condition: impl Fn(&Scheduled) -> bool) -> Status {
    wait_for(what, Duration::from_secs(60), || {
        let status = proxy.status();
        match &status.scheduled {
            Some(scheduled) if condition(scheduled) => Ok(status),
            other => Err(format!("{other:#?}")),
        }
    })
}

/// The state of the scheduled handover in `GET /status`, if one was scheduled.
fn schedule_state(status: &Status) -> Option<ScheduleState> {
    status.scheduled.as_ref().map(|s| s.state)
}

#[test]
fn a_handover_scheduled_a_few_seconds_ahead_runs_then() {
    let h = Harness::start(Version::V6_2, Version::V7_0);
    assert_eq!(h.proxy.client().run("SET before 1"), Reply::ok());
    let out = ctl(&h.proxy, &["handover", "--at", "+3s", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}{}", text(&out.stdout), text(&out.stderr));
    let scheduled: Scheduled = serde_json::from_slice(&out.stdout).expect("a schedule, as JSON");
    assert_eq!(scheduled.state, ScheduleState::Waiting);
    assert!(scheduled.blocked.is_none(), "{scheduled:#?}");
    let not_before = scheduled.not_before_unix_ms;
    let asked_at = scheduled.scheduled_at_unix_ms;
    assert!((2_900..=3_100).contains(&(not_before - asked_at)), "{scheduled:#?}");

    let status = h.proxy.status();
    if schedule_state(&status) == Some(ScheduleState::Waiting) {
        assert!(
            status.last_handover.is_none() && status.handover.is_none(),
            "{status:#?}"
        );
        let shown = text(&ctl(&h.proxy, &["status"]).stdout);
        assert!(shown.contains("scheduled    handover waiting: not before"), "{shown}");
    }
    let report = h.proxy.wait_for_handover_end(Duration::from_secs(60));
    assert_eq!(report.outcome, Phase::Switched, "{report:#?}");
    assert!(report.started_at_unix_ms >= not_before, "{report:#?}");
    let status = h.proxy.status();
    assert_eq!(schedule_state(&status), Some(ScheduleState::Started));
    assert_eq!(h.proxy.client().run("GET before"), Reply::bulk("1"));
    assert_eq!(status.primary.side, Side::New);
}

#[test]
fn a_handover_for_a_quiet_moment_waits_for_the_writer_and_the_open_multi() {
    let h = Harness::start(Version::V6_2, Version::V7_0);
    let mut writer = BusyWriter::start(&h.proxy);
    let (code, scheduled) = h.proxy.post("/handover/schedule", json!({ "when_writes_below": 50 }));
    assert_eq!(code, 202, "{scheduled:#}");
    let busy = wait_for_schedule(&h.proxy, "the busy writer measured", |s| {
        s.state == ScheduleState::Watching && s.writes_per_s.is_some_and(|r| r >= 50.0)
    });
    assert!(busy.last_handover.is_none() && busy.handover.is_none(), "{busy:#?}");

    // A transaction stays open after the writer stops: still no quiet moment.
    let mut transaction = h.proxy.client();
    assert_eq!(transaction.run("MULTI"), Reply::ok());
    assert_eq!(transaction.run("SET in-multi 1"), Reply::Status("QUEUED".into()));
    assert!(writer.stop() > 0);
    let quiet_but_open = wait_for_schedule(&h.proxy, "no writes, one MULTI open", |s| {
        s.writes_per_s.is_some_and(|r| r < 50.0) && s.transactions_open == Some(1)
    });
    assert_eq!(
        schedule_state(&quiet_but_open),
        Some(ScheduleState::Watching),
        "{quiet_but_open:#?}"
    );
    assert!(quiet_but_open.last_handover.is_none(), "{quiet_but_open:#?}");

    assert_eq!(transaction.run("EXEC"), Reply::Array(vec![Reply::ok()]));
    let report = h.proxy.wait_for_handover_end(Duration::from_secs(60));
    assert_eq!(report.outcome, Phase::Switched, "{report:#?}");
    let status = h.proxy.status();
    assert_eq!(schedule_state(&status), Some(ScheduleState::Started), "{status:#?}");
    assert_eq!(h.proxy.client().run("GET in-multi"), Reply::bulk("1"));
}

#[test]
fn a_window_that_closes_before_a_quiet_moment_runs_nothing_and_says_why() {
    let h = Harness::start(Version::V6_2, Version::V7_0);
    let _writer = BusyWriter::start(&h.proxy);
    // A window from now to eight seconds from now, in UTC.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let clock = |s: u64| format!("{:02}:{:02}:{:02}", s / 3600 % 24, s / 60 % 60, s % 60);
    let window = format!("{}-{}", clock(now), clock(now + 8));
    let out = ctl_within(
        &h.proxy,
        &["handover", "--window", &window, "--when-writes-below", "50", "--wait"],
        Duration::from_secs(120),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let said = text(&out.stderr);
    assert!(
        said.contains("scheduled handover missed")
            && said.contains(&format!(
                "the window {window} passed without a moment under 50 writes/s"
            )),
        "{said}"
    );
    let status = h.proxy.status();
    assert_eq!(schedule_state(&status), Some(ScheduleState::Missed));
    assert!(status.last_handover.is_none(), "nothing ran: {status:#?}");
    assert_eq!(status.primary.side, Side::Old);
}

#[test]
fn a_blocked_schedule_says_why_at_once_and_cancel_drops_it() {
    let h = Harness::start(Version::V6_2, Version::V7_0);
    assert_eq!(h.new.direct().run("SET stray 1"), Reply::ok());
    let out = ctl(&h.proxy, &["handover", "--at", "+1h"]);
    let shown = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{shown}{}", text(&out.stderr));
    assert!(
        shown.contains("BLOCKED: the pre-flight would refuse the handover now")
            && shown.contains("is not empty")
            && shown.contains("ctl check"),
        "{shown}"
    );
    let again = ctl(&h.proxy, &["handover", "--at", "+2h"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        text(&again.stderr).contains("a handover is scheduled already"),
        "{}",
        text(&again.stderr)
    );
    let bad = ctl(&h.proxy, &["handover", "--window", "Someday 03:00-04:00"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(text(&bad.stderr).contains("expected a window"), "{}", text(&bad.stderr));

    let cancelled = ctl(&h.proxy, &["cancel"]);
    assert_eq!(cancelled.status.code(), Some(0), "{}", text(&cancelled.stderr));
    let status = h.proxy.status();
    let scheduled = status.scheduled.expect("the cancelled schedule");
    assert_eq!(scheduled.state, ScheduleState::Cancelled);
    assert_eq!(scheduled.reason.as_deref(), Some("cancelled by the operator"));
    let none = ctl(&h.proxy, &["cancel"]);
    assert_eq!(none.status.code(), Some(1));
    assert!(text(&none.stderr).contains("no handover is scheduled"));
}
