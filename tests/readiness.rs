//! The readiness report (`GET /readiness`, `redis-handover ctl check`): the pre-flight's checks run without
//! changing anything, the census of clients (redis-py naming itself with `CLIENT SETINFO`, a client whose RESP3 a
//! Redis 5.0 OLD refused) and of commands, what changed in those commands between the two versions, and the
//! verdict with its exit code.

mod support;

use redis_handover::handover::Phase;
use redis_handover::readiness::Report;
use redis_handover::readiness::shadow::{ShadowCommand, ShadowReport, ShadowState};
use support::{Harness, Proxy, Reply, Version, ctl};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The report as `ctl check --json` prints it, and the exit code.
fn check_json(admin: std::net::SocketAddr) -> (i32, Report) {
    let out = ctl(admin, &["check", "--json"]);
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "ctl check --json printed no readiness report ({e}): {}{}",
            text(&out.stdout),
            text(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), report)
}

/// Waits until `GET /shadow` says `state`; the shadow reads' report then.
fn wait_for_shadow(proxy: &Proxy, state: ShadowState) -> ShadowReport {
    support::wait_for(
        &format!("shadow reads {}", state.name()),
        std::time::Duration::from_secs(60),
        || {
            let (_, answer) = proxy.get("/shadow");
            match serde_json::from_value::<ShadowReport>(answer.clone()) {
                Ok(report) if report.state == state => Ok(report),
                _ => Err(format!("{answer:#}")),
            }
        },
    )
}

#[test]
fn the_census_names_redis_py_a_client_refused_resp3_by_5_0_and_the_commands_sent() {
    let h = Harness::start(Version::V5_0, Version::V7_0);
    let script = support::repo_root().join("tests/clients/python/census_client.py");
    let out = support::run_tool("python3", &[script.to_str().unwrap(), &h.proxy.addr.port().to_string()]);
    let printed = text(&out.stdout);
    assert!(
        out.status.success() && printed.trim_end().ends_with("ok"),
        "redis-py through the proxy failed:\n{printed}\n{}",
        text(&out.stderr)
    );
    let redis_py_version = printed.lines().next().unwrap_or_default().to_string();

    // A client that asks for RESP3, as go-redis 9 or Lettuce 6 do: Redis 5.0 refuses, and it stays on RESP2.
    let mut resp3_client = h.proxy.client();
    assert!(resp3_client.run("HELLO 3").text().starts_with("ERR unknown command"));
    assert_eq!(resp3_client.run("CLIENT SETNAME ledger"), Reply::ok());
    for i in 0..7 {
        assert_eq!(resp3_client.cmd(&["LPUSH", "queue", &i.to_string()]), Reply::Int(i + 1));
    }
    for _ in 0..3 {
        resp3_client.cmd(&["GETSET", "counter", "0"]);
    }

    let (code, report) = check_json(h.proxy.admin);
    assert_eq!(code, 0, "ready: {report:#?}");
    assert!(report.ready);
    assert_eq!(report.from_version.as_ref().map(|v| &v[..3]), Some("5.0"));
    assert_eq!(report.to_version.as_ref().map(|v| &v[..3]), Some("7.0"));

    let libraries = &report.clients.libraries;
    let redis_py = libraries
        .iter()
        .find(|l| l.library.lib_name.as_deref() == Some("redis-py"))
        .unwrap_or_else(|| panic!("redis-py is named: {libraries:#?}"));
    assert_eq!(redis_py.library.lib_ver.as_deref(), Some(redis_py_version.as_str()));
    assert_eq!((redis_py.library.connections, redis_py.library.connected), (1, 0));
    assert_eq!(redis_py.library.names, ["billing"]);
    let unnamed = libraries
        .iter()
        .find(|l| l.library.lib_name.is_none())
        .unwrap_or_else(|| panic!("the client without a library: {libraries:#?}"));
    assert_eq!((unnamed.library.asked_resp3, unnamed.library.got_resp3), (1, 0));
    let change = unnamed.protocol_change.as_deref().unwrap_or_default();
    assert!(change.contains("get RESP3") && change.contains("pin-resp2"), "{change}");
    assert!(
        report.warnings.iter().any(|w| w == change),
        "the RESP3 exposure is a warning: {report:#?}"
    );
    let connected = &report.clients.connected;
    let ledger = connected
        .iter()
        .find(|c| c.name.as_deref() == Some("ledger"))
        .unwrap_or_else(|| panic!("the client still connected: {connected:#?}"));
    assert_eq!((ledger.asked_protocol, ledger.protocol), (Some(3), 2));
    assert!(ledger.addr.starts_with("127.0.0.1:"));

    let count = |command: &str| {
        report
            .commands
            .counted
            .iter()
            .find(|c| c.command == command)
            .map(|c| c.count)
    };
    assert_eq!(count("LPUSH"), Some(7));
    assert_eq!(count("GETSET"), Some(3));
    assert_eq!(count("SET"), Some(5));
    assert_eq!(count("CLIENT SETINFO"), Some(2), "LIB-NAME and LIB-VER");
    assert_eq!(count("HELLO"), Some(1));
    let changes = &report.commands.changes;
    let getset = changes
        .iter()
        .find(|c| c.change.command == "GETSET")
        .unwrap_or_else(|| panic!("GETSET's deprecation in 6.2 is listed: {changes:#?}"));
    assert_eq!((getset.sent, getset.change.kind.as_str()), (3, "deprecated"));
    assert!(getset.change.source.starts_with("https://"));
    assert!(
        changes.iter().all(|c| c.change.command != "GET"),
        "GET did not change: {changes:#?}"
    );

    let human = ctl(h.proxy.admin, &["check"]);
    let shown = text(&human.stdout);
    assert_eq!(human.status.code(), Some(0), "{shown}{}", text(&human.stderr));
    for expected in ["verdict: READY", "redis-py", "GETSET", "LPUSH", "get RESP3"] {
        assert!(shown.contains(expected), "{expected:?} in:\n{shown}");
    }
}

#[test]
fn ctl_check_says_not_ready_when_the_pre_flight_would_refuse_and_changes_nothing() {
    // OLD has a password and an ACL user: a handover's pre-flight would copy them to NEW and set its masterauth.
    let h = Harness::start_with(Version::V6_2, &["--requirepass", "pw"], Version::V7_0, &[], |c| {
        c.old_password = Some("pw".into())
    });
    let mut old = h.old.direct();
    assert_eq!(old.run("AUTH pw"), Reply::ok());
    assert_eq!(old.run("ACL SETUSER app on >apppw ~* +@all"), Reply::ok());
    let mut new = h.new.direct();
    let users_before = new.run("ACL LIST");
    assert_eq!(new.run("SET stray 1"), Reply::ok());
    let backlog_before = new.run("CONFIG GET repl-backlog-size");

    let out = ctl(h.proxy.admin, &["check"]);
    let shown = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "not ready: {shown}");
    assert!(
        shown.contains("verdict: NOT READY") && shown.contains("is not empty"),
        "{shown}"
    );
    assert!(
        text(&out.stderr).contains("not ready: the handover's pre-flight would refuse"),
        "{}",
        text(&out.stderr)
    );
    let (code, report) = check_json(h.proxy.admin);
    assert_eq!(code, 1);
    assert!(!report.ready);
    assert!(
        report
            .preflight
            .refusal
            .as_deref()
            .unwrap_or_default()
            .contains("holds 1 keys"),
        "{report:#?}"
    );

    assert_eq!(new.run("FLUSHALL"), Reply::ok());
    let (code, report) = check_json(h.proxy.admin);
    assert_eq!(code, 0, "ready once NEW is empty: {report:#?}");
    let raised = &report.preflight.config_differences;
    assert!(
        raised.iter().any(|d| d.contains("to be raised")),
        "the backlog the handover would raise: {raised:?}"
    );
    assert!(report.backlog.is_some(), "{report:#?}");

    // Only looked: NEW is still an empty master with its own settings, and no handover ran.
    assert_eq!(new.run("CONFIG GET repl-backlog-size"), backlog_before);
    assert_eq!(new.run("CONFIG GET masterauth").items()[1], Reply::bulk(""));
    assert_eq!(new.run("ACL LIST"), users_before, "no user copied");
    assert!(new.run("INFO replication").text().contains("role:master"));
    let status = h.proxy.status();
    assert!(
        status.last_handover.is_none() && status.phase == Phase::Idle,
        "{status:#?}"
    );
}

#[test]
fn shadow_reads_find_a_real_difference_between_6_2_and_7_0_and_none_for_ordinary_reads() {
    let h = Harness::start(Version::V6_2, Version::V7_0);
    let mut app = h.proxy.client();
    for i in 0..20 {
        assert_eq!(app.cmd(&["SET", &format!("k{i}"), &i.to_string()]), Reply::ok());
        app.cmd(&["HSET", &format!("h{i}"), "a", "1", "b", "2", "c", "3"]);
        app.cmd(&["RPUSH", &format!("l{i}"), "x", "y", "z"]);
    }
    app.cmd(&["XADD", "events", "*", "kind", "signup"]);

    // Every read is shadowed; NEW is synced first (it does not follow OLD yet).
    let (code, started) = h
        .proxy
        .post("/shadow", serde_json::json!({ "fraction": 1.0, "for_s": 300 }));
    assert_eq!(code, 202, "{started:#}");
    wait_for_shadow(&h.proxy, ShadowState::Running);
    assert_eq!(
        h.proxy.status().last_handover.map(|last| last.outcome),
        Some(Phase::Synced),
        "a sync with no switch"
    );

    // A writer keeps changing a key the reads look at: a difference that is only NEW's lag must not count.
    let mut writer = h.proxy.client();
    for round in 0..100 {
        writer.cmd(&["INCR", "hot"]);
        app.cmd(&["GET", "hot"]);
        app.cmd(&["GET", &format!("k{}", round % 20)]);
        assert!(matches!(
            app.cmd(&["HGETALL", &format!("h{}", round % 20)]),
            Reply::Array(_)
        ));
        app.cmd(&["LRANGE", &format!("l{}", round % 20), "0", "-1"]);
        if round % 10 == 0 {
            // Redis 7.0 added fields to XINFO STREAM's reply: a real difference.
            app.cmd(&["XINFO", "STREAM", "events"]);
        }
    }
    let (code, _) = h.proxy.post("/shadow/stop", serde_json::json!({}));
    assert_eq!(code, 202);
    let shadow = wait_for_shadow(&h.proxy, ShadowState::Stopped);
    let line = |command: &str| -> &ShadowCommand {
        shadow
            .by_command
            .iter()
            .find(|c| c.command == command)
            .unwrap_or_else(|| panic!("{command} was shadowed: {shadow:#?}"))
    };
    for ordinary in ["GET", "HGETALL", "LRANGE"] {
        let counts = line(ordinary);
        assert_eq!(counts.mismatched, 0, "{counts:#?}");
        assert!(counts.matched >= 90, "{counts:#?}");
    }
    let get = line("GET");
    assert_eq!(
        get.matched + get.lagged + get.inconclusive,
        200,
        "every GET compared: {get:#?}"
    );
    let xinfo = line("XINFO");
    assert_eq!(xinfo.mismatched, 10, "{xinfo:#?}");
    assert_eq!(xinfo.examples.len(), 1, "one example per distinct request: {xinfo:#?}");
    let example = &xinfo.examples[0];
    assert_eq!(example.request, "XINFO STREAM events", "{example:#?}");
    assert!(
        example.follower.contains("entries-added") && !example.primary.contains("entries-added"),
        "{example:#?}"
    );
    assert_eq!(shadow.dropped, 0);
    assert!(
        h.proxy
            .metrics()
            .contains("redis_handover_shadow_reads_total{command=\"XINFO\",result=\"mismatch\"} 10")
    );

    // The verdict: not ready, naming the command; the report lists what shadow reads leave out.
    let out = ctl(h.proxy.admin, &["check"]);
    let shown = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains("shadow reads: 10 of") && shown.contains("XINFO (10 of 10"),
        "{shown}"
    );
    assert!(shown.contains("left out: RANDOMKEY"), "{shown}");

    // ctl check --shadow: NEW follows already; a run with nothing to compare finds no difference.
    let out = ctl(h.proxy.admin, &["check", "--shadow", "0.5", "--for", "1s"]);
    let shown = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{shown}{}", text(&out.stderr));
    assert!(
        shown.contains("verdict: READY") && shown.contains("shadow reads (50% of reads"),
        "{shown}"
    );
    assert!(
        text(&out.stderr).contains("shadow reads: finished"),
        "{}",
        text(&out.stderr)
    );
}
