//! Security defaults: the admin port needs a token beyond loopback, the proxy can require its own password from
//! clients while using configured credentials toward the servers, and no secret reaches a log line or a status.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;
use support::{Client, Harness, Proxy, RedisServer, Reply, Version};

const PROXY_SECRET: &str = "proxy-s3cret-for-clients";
const BACKEND_SECRET: &str = "backend-s3cret-of-redis";
const ADMIN_TOKEN: &str = "admin-t0ken-for-operators";

fn get_status(proxy: &Proxy, token: Option<&str>) -> u16 {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut request = agent.get(&format!("http://{}/status", proxy.admin));
    if let Some(token) = token {
        request = request.header("Authorization", &format!("Bearer {token}"));
    }
    request.call().unwrap().status().as_u16()
}

#[test]
fn the_admin_port_requires_its_token() {
    let redis = RedisServer::start(Version::V7_0, &[]);
    let proxy = Proxy::start(redis.addr(), None, |c| c.admin_token = Some(ADMIN_TOKEN.into()));
    assert_eq!(get_status(&proxy, None), 401);
    assert_eq!(get_status(&proxy, Some("wrong")), 401);
    assert_eq!(get_status(&proxy, Some(ADMIN_TOKEN)), 200);
    let health = ureq::get(&format!("http://{}/healthz", proxy.admin))
        .call()
        .unwrap()
        .status()
        .as_u16();
    assert_eq!(health, 200, "liveness probes need no token");
    let ctl = |token: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_redis-handover"));
        command
            .args(["ctl", "--admin", &proxy.admin.to_string(), "status"])
            .env_remove("REDIS_HANDOVER_ADMIN_TOKEN");
        if let Some(token) = token {
            command.env("REDIS_HANDOVER_ADMIN_TOKEN", token);
        }
        command.output().unwrap()
    };
    let refused = ctl(None);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("admin token"));
    assert!(ctl(Some(ADMIN_TOKEN)).status.success());
}

#[test]
fn an_admin_port_beyond_loopback_without_a_token_refuses_to_start() {
    let out = Command::new(env!("CARGO_BIN_EXE_redis-handover"))
        .args(["--admin", "0.0.0.0:7399", "--check-config"])
        .env_remove("REDIS_HANDOVER_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let message = String::from_utf8_lossy(&out.stderr);
    assert!(
        message.contains("admin_token_file") && message.contains("beyond loopback"),
        "{message}"
    );
}

#[test]
fn the_proxy_can_require_its_own_password_and_use_its_credentials_toward_the_servers() {
    let requirepass = ["--requirepass", BACKEND_SECRET];
    let h = Harness::start_with(Version::V6_2, &requirepass, Version::V7_0, &requirepass, |c| {
        c.requirepass = Some(PROXY_SECRET.into());
        c.old_password = Some(BACKEND_SECRET.into());
        c.new_password = Some(BACKEND_SECRET.into());
    });
    let mut c = h.proxy.client();
    assert_eq!(c.run("GET k"), Reply::Error("NOAUTH Authentication required.".into()));
    let wrong = Reply::Error("WRONGPASS invalid username-password pair or user is disabled.".into());
    assert_eq!(c.run("AUTH nope"), wrong);
    assert_eq!(
        c.cmd(&["AUTH", BACKEND_SECRET]),
        wrong,
        "the servers' password is not the proxy's"
    );
    assert!(c.run("HELLO 3").text().starts_with("NOAUTH HELLO must be called"));
    assert_eq!(c.cmd(&["AUTH", PROXY_SECRET]), Reply::ok());
    assert_eq!(c.run("SET k v"), Reply::ok());
    let mut resp3 = h.proxy.client();
    resp3.protocol = 3;
    let hello = resp3.cmd(&["HELLO", "3", "AUTH", "default", PROXY_SECRET, "SETNAME", "r3"]);
    assert!(matches!(hello, Reply::Map(_)), "{hello:?}");
    assert_eq!(resp3.run("CLIENT GETNAME"), Reply::bulk("r3"));
    let cli = support::run_tool(
        "redis-cli",
        &[
            "-p",
            &h.proxy.addr.port().to_string(),
            "-a",
            PROXY_SECRET,
            "--no-auth-warning",
            "GET",
            "k",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&cli.stdout).trim(), "v");
    // Through a handover the sessions stay authenticated: the proxy authenticates their new connections to NEW.
    assert_eq!(h.proxy.handover(json!({}))["outcome"], "switched");
    assert_eq!(c.run("GET k"), Reply::bulk("v"));
    assert!(c.run("INFO server").text().contains("redis_version:7.0.15"));
    assert!(matches!(resp3.run("HGETALL none"), Reply::Map(_)));
    assert_eq!(
        h.proxy.client().run("GET k"),
        Reply::Error("NOAUTH Authentication required.".into())
    );
}

#[test]
fn no_secret_reaches_a_log_line_the_status_or_the_metrics() {
    let requirepass = ["--requirepass", BACKEND_SECRET];
    let old = RedisServer::start(Version::V6_2, &requirepass);
    let new = RedisServer::start(Version::V7_0, &requirepass);
    let (port, admin) = (support::free_port(), support::free_port());
    let mut proxy = Command::new(env!("CARGO_BIN_EXE_redis-handover"))
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admin",
            &format!("127.0.0.1:{admin}"),
        ])
        .args([
            "--old",
            &old.addr().to_string(),
            "--new",
            &new.addr().to_string(),
            "--log-format",
            "json",
        ])
        .env("RUST_LOG", "debug")
        .env("REDIS_HANDOVER_OLD_PASSWORD", BACKEND_SECRET)
        .env("REDIS_HANDOVER_NEW_PASSWORD", BACKEND_SECRET)
        .env("REDIS_HANDOVER_REQUIREPASS", PROXY_SECRET)
        .env("REDIS_HANDOVER_ADMIN_TOKEN", ADMIN_TOKEN)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    support::wait_until("the proxy to listen", Duration::from_secs(10), || {
        std::net::TcpStream::connect(addr).is_ok()
    });
    let mut c = Client::connect(addr);
    assert!(c.cmd(&["AUTH", "a-wrong-guess"]).is_error());
    assert_eq!(c.cmd(&["AUTH", PROXY_SECRET]), Reply::ok());
    assert_eq!(c.cmd(&["SET", "k", "v"]), Reply::ok());
    let handover = Command::new(env!("CARGO_BIN_EXE_redis-handover"))
        .args([
            "ctl",
            "--admin",
            &format!("127.0.0.1:{admin}"),
            "--json",
            "handover",
            "--wait",
        ])
        .env("REDIS_HANDOVER_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap();
    assert!(
        handover.status.success(),
        "{}",
        String::from_utf8_lossy(&handover.stderr)
    );
    let shown = [
        String::from_utf8_lossy(&handover.stdout).into_owned(),
        fetch(admin, "/status"),
        fetch(admin, "/metrics"),
    ];
    assert_eq!(c.cmd(&["GET", "k"]), Reply::bulk("v"));
    drop(c);
    Command::new("kill")
        .args(["-TERM", &proxy.id().to_string()])
        .status()
        .unwrap();
    let log: Vec<String> = BufReader::new(proxy.stderr.take().unwrap())
        .lines()
        .map(Result::unwrap)
        .collect();
    proxy.wait().unwrap();
    assert!(
        log.len() > 10 && log.iter().any(|l| l.contains("primary switched")),
        "the debug log covers the run"
    );
    for secret in [PROXY_SECRET, BACKEND_SECRET, ADMIN_TOKEN] {
        for line in &log {
            assert!(!line.contains(secret), "a log line shows a secret: {line}");
        }
        for text in &shown {
            assert!(!text.contains(secret), "a secret is shown: {text}");
        }
    }
}

fn fetch(admin: u16, path: &str) -> String {
    ureq::get(&format!("http://127.0.0.1:{admin}{path}"))
        .header("Authorization", &format!("Bearer {ADMIN_TOKEN}"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap()
}
