//! What operators use: `redis-handover ctl` against a running proxy, `/metrics` in Prometheus format, the
//! configuration's precedence (file, environment, flags) and `--check-config`, and the docker-compose file.

mod support;

use std::collections::HashMap;
use std::process::{Command, Output};
use std::time::Duration;

use redis_handover::config::Resp3Mode;
use redis_handover::handover::{Phase, Status};
use redis_handover::primary::Side;
use support::{Harness, Proxy, RedisServer, Reply, Version};

/// Runs the real binary with `args` and extra environment variables.
fn binary(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_redis-handover"));
    command.args(args).env_remove("REDIS_HANDOVER_ADMIN");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("run redis-handover")
}

fn ctl(proxy: &Proxy, args: &[&str]) -> Output {
    let admin = proxy.admin.to_string();
    let mut all = vec!["ctl", "--admin", &admin];
    all.extend_from_slice(args);
    binary(&all, &[])
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn ctl_drives_a_handover_and_reports_with_reliable_exit_codes() {
    let h = Harness::start(Version::V6_2, Version::V7_0);
    let mut client = h.proxy.client();
    assert_eq!(client.run("SET k v"), Reply::ok());

    let status = ctl(&h.proxy, &["status"]);
    assert!(status.status.success(), "{}", stderr(&status));
    let text = stdout(&status);
    assert!(
        text.contains("phase        idle") && text.contains("OLD") && text.contains("6.2.14"),
        "{text}"
    );

    let watched = ctl(&h.proxy, &["status", "--watch"]);
    assert!(
        watched.status.success() && stdout(&watched).contains("phase        idle"),
        "nothing running: one screen"
    );

    let json = ctl(&h.proxy, &["status", "--json"]);
    let parsed: Status = serde_json::from_slice(&json.stdout).expect("ctl --json prints the status schema");
    assert_eq!(parsed.primary.side, Side::Old);

    let resp3 = ctl(&h.proxy, &["config", "resp3", "pin-resp2"]);
    assert!(resp3.status.success() && stdout(&resp3).contains("resp3 = pin-resp2"));
    assert_eq!(h.proxy.status().resp3, Resp3Mode::PinResp2);
    assert_eq!(
        ctl(&h.proxy, &["config", "resp3", "bogus"]).status.code(),
        Some(2),
        "bad usage exits 2"
    );

    let nothing = ctl(&h.proxy, &["abort"]);
    assert_eq!(nothing.status.code(), Some(1));
    assert!(
        stderr(&nothing).contains("no handover is running"),
        "{}",
        stderr(&nothing)
    );

    let handover = ctl(&h.proxy, &["handover", "--max-pause-ms", "2000", "--wait"]);
    assert!(
        handover.status.success(),
        "{}\n{}",
        stdout(&handover),
        stderr(&handover)
    );
    let text = stdout(&handover);
    assert!(
        text.contains("phase        switched") && text.contains("last         switched"),
        "{text}"
    );
    assert_eq!(client.run("GET k"), Reply::bulk("v"));
    assert!(text.contains("rollback     open since"), "{text}");

    // Once the rollback window is closed, going back is refused: ctl rollback exits 1 with the reason, and a
    // handover back to 6.2 is refused by the version rule (it aborts and ctl says why, exiting 1).
    let close = ctl(&h.proxy, &["rollback", "--close"]);
    assert!(close.status.success(), "{}", stderr(&close));
    assert!(
        stdout(&close).contains("rollback window closed: the operator closed it"),
        "{}",
        stdout(&close)
    );
    let rollback = ctl(&h.proxy, &["rollback", "--wait"]);
    assert_eq!(rollback.status.code(), Some(1));
    assert!(
        stderr(&rollback).contains("no rollback: the rollback window closed"),
        "{}",
        stderr(&rollback)
    );
    let status = stdout(&ctl(&h.proxy, &["status"]));
    assert!(status.contains("rollback     closed at"), "{status}");
    let back = ctl(&h.proxy, &["handover", "--wait", "--json"]);
    assert_eq!(back.status.code(), Some(1));
    assert!(
        stderr(&back).contains("handover aborted") && stderr(&back).contains("older"),
        "{}",
        stderr(&back)
    );
    let last: Status = serde_json::from_slice(&back.stdout).expect("the status schema after --wait");
    assert_eq!(last.last_handover.map(|l| l.outcome), Some(Phase::Aborted));
}

#[test]
fn ctl_reports_an_unreachable_admin_port_with_exit_code_3() {
    let port = support::free_port().to_string();
    let out = binary(&["ctl", "--admin", &format!("127.0.0.1:{port}"), "status"], &[]);
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("cannot reach the admin port"), "{}", stderr(&out));
}

#[test]
fn ctl_reads_a_bare_admin_port_as_loopback() {
    let redis = RedisServer::start(Version::V7_0, &[]);
    let proxy = Proxy::start(redis.addr(), None, |_| {});
    let port = proxy.admin.port().to_string();
    let out = binary(&["ctl", "--admin", &port, "status", "--json"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let parsed: Status = serde_json::from_slice(&out.stdout).expect("ctl --json prints the status schema");
    assert_eq!(parsed.phase, Phase::Idle);
    // The admin address (and --json) may also follow the subcommand.
    let after = binary(&["ctl", "status", "--json", "--admin", &port], &[]);
    assert!(after.status.success(), "{}", stderr(&after));
    let parsed: Status = serde_json::from_slice(&after.stdout).expect("ctl --json prints the status schema");
    assert_eq!(parsed.phase, Phase::Idle);
    let bad = binary(&["ctl", "--admin", "nonsense", "status"], &[]);
    assert_eq!(bad.status.code(), Some(2), "a malformed address is a usage error");
    assert!(stderr(&bad).contains("HOST:PORT or PORT"), "{}", stderr(&bad));
}

/// Parses a `/metrics` scrape strictly; sample values by metric name and labels.
fn scrape(proxy: &Proxy) -> HashMap<String, f64> {
    let text = ureq::get(&format!("http://{}/metrics", proxy.admin))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let parsed = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text format");
    let mut samples = HashMap::new();
    for sample in parsed.samples {
        let mut labels: Vec<String> = sample.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        let value = match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            prometheus_parse::Value::Summary(_) => 0.0,
        };
        samples.insert(format!("{}{{{}}}", sample.metric, labels.join(",")), value);
    }
    samples
}

#[test]
fn metrics_move_with_traffic_and_show_the_handover() {
    let h = Harness::start(Version::V6_2, Version::V7_0);
    let before = scrape(&h.proxy);
    assert_eq!(before["redis_handover_commands_total{family=read}"], 0.0);
    let mut client = h.proxy.client();
    for i in 0..50 {
        client.cmd(&["SET", &format!("k{i}"), "v"]);
        client.cmd(&["GET", &format!("k{i}")]);
    }
    assert!(client.run("LPUSH k0 x").is_error());
    let after = scrape(&h.proxy);
    assert_eq!(after["redis_handover_commands_total{family=read}"], 50.0);
    assert_eq!(after["redis_handover_commands_total{family=write}"], 51.0);
    assert_eq!(after["redis_handover_command_errors_total{family=write}"], 1.0);
    assert_eq!(after["redis_handover_client_connections{}"], 1.0);
    // Its connection (or shared link), and with shared links up to two kept ready for sessions that pin.
    let kept_ready = if support::dedicated_links() { 0.0 } else { 2.0 };
    let backend = after["redis_handover_backend_connections{server=old}"];
    assert!((1.0..=1.0 + kept_ready).contains(&backend), "{backend}");
    assert!(after["redis_handover_client_bytes_received_total{}"] > 1000.0);
    assert!(
        after["redis_handover_command_duration_seconds{family=read}"] >= 50.0,
        "latency histogram counts"
    );

    assert_eq!(h.proxy.handover(serde_json::json!({})).outcome, Phase::Switched);
    client.run("GET k1");
    let switched = scrape(&h.proxy);
    assert_eq!(switched["redis_handover_handovers_total{outcome=switched}"], 1.0);
    assert_eq!(switched["redis_handover_phase{}"], 5.0);
    assert_eq!(switched["redis_handover_pause_seconds{}"], 1.0, "one pause recorded");
    let new = switched["redis_handover_backend_connections{server=new}"];
    assert!((1.0..=1.0 + kept_ready).contains(&new), "{new}");
    support::wait_until("the connections to OLD to close", Duration::from_secs(10), || {
        scrape(&h.proxy)["redis_handover_backend_connections{server=old}"] == 0.0
    });
}

#[test]
fn configuration_precedence_file_then_environment_then_flags() {
    let dir = std::env::temp_dir().join(format!("rh-ops-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("handover.toml");
    std::fs::write(
        &file,
        "max_clients = 5\nconnect_timeout_ms = 50\nold_password = \"from-file\"\n",
    )
    .unwrap();
    let config = file.to_str().unwrap();
    let check = |args: &[&str], env: &[(&str, &str)]| {
        let mut all = vec!["--config", config, "--check-config"];
        all.extend_from_slice(args);
        let out = binary(&all, env);
        assert!(out.status.success(), "{}", stderr(&out));
        redis_handover::config::Config::from_toml(&stdout(&out)).expect("--check-config prints the settings as TOML")
    };
    let from_file = check(&[], &[]);
    assert_eq!((from_file.max_clients, from_file.connect_timeout_ms), (5, 50));
    assert_eq!(
        from_file.old_password.as_deref(),
        Some("********"),
        "secrets are masked"
    );
    let from_env = check(
        &[],
        &[
            ("REDIS_HANDOVER_MAX_CLIENTS", "6"),
            ("REDIS_HANDOVER_NEW", "127.0.0.1:7000"),
        ],
    );
    assert_eq!((from_env.max_clients, from_env.connect_timeout_ms), (6, 50));
    assert_eq!(from_env.new.as_deref(), Some("127.0.0.1:7000"));
    let from_flag = check(&["--max-clients", "7"], &[("REDIS_HANDOVER_MAX_CLIENTS", "6")]);
    assert_eq!(from_flag.max_clients, 7);
    let printed = stdout(&binary(&["--config", config, "--check-config"], &[]));
    assert!(
        !printed.contains("from-file"),
        "a password must never be printed: {printed}"
    );

    std::fs::write(&file, "max_clients = 5\nlisten = 6380\n").unwrap();
    let bad = binary(&["--config", config, "--check-config"], &[]);
    assert_eq!(bad.status.code(), Some(2));
    let message = stderr(&bad);
    assert!(message.contains("line 2") && message.contains("listen"), "{message}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_proxy_started_from_environment_variables_serves() {
    let redis = RedisServer::start(Version::V7_0, &[]);
    let port = support::free_port();
    let admin = support::free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_redis-handover"))
        .env("REDIS_HANDOVER_LISTEN", format!("127.0.0.1:{port}"))
        .env("REDIS_HANDOVER_OLD", redis.addr().to_string())
        .env("REDIS_HANDOVER_ADMIN", format!("127.0.0.1:{admin}"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    support::wait_until("the proxy to listen", std::time::Duration::from_secs(10), || {
        std::net::TcpStream::connect(addr).is_ok()
    });
    assert_eq!(support::Client::connect(addr).run("PING"), Reply::Status("PONG".into()));
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn docker_compose_file_is_valid_yaml_with_old_new_and_the_proxy() {
    let text = std::fs::read_to_string(support::repo_root().join("docker-compose.yml")).unwrap();
    let docs = yaml_rust2::YamlLoader::load_from_str(&text).expect("docker-compose.yml is valid YAML");
    let services = &docs[0]["services"];
    assert_eq!(services["old"]["image"].as_str(), Some("redis:6.2"));
    assert_eq!(services["new"]["image"].as_str(), Some("redis:7.2"));
    assert_eq!(services["proxy"]["build"].as_str(), Some("."));
    let command: Vec<&str> = services["proxy"]["command"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(
        command.windows(2).any(|w| w == ["--old", "old:6379"])
            && command.windows(2).any(|w| w == ["--new", "new:6379"])
    );
    let dockerfile = std::fs::read_to_string(support::repo_root().join("Dockerfile")).unwrap();
    assert!(dockerfile.contains("cargo build --release") && dockerfile.contains("ENTRYPOINT [\"redis-handover\"]"));
}
