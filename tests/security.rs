//! Security defaults: the admin port needs a token beyond loopback, the proxy can require its own password from
//! clients while using configured credentials toward the servers, and no secret reaches a log line or a status.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use redis_handover::handover::{Phase, Status};
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
    assert_eq!(h.proxy.handover(json!({})).outcome, Phase::Switched);
    assert_eq!(c.run("GET k"), Reply::bulk("v"));
    assert!(c.run("INFO server").text().contains("redis_version:7.0.15"));
    assert!(matches!(resp3.run("HGETALL none"), Reply::Map(_)));
    assert_eq!(
        h.proxy.client().run("GET k"),
        Reply::Error("NOAUTH Authentication required.".into())
    );
}

/// Five keys on `redis`, then `DEL` of all five through `client`: the reply counts the keys deleted.
fn delete_five(redis: &RedisServer, client: &mut Client) -> Reply {
    let mut direct = redis.direct();
    for key in ["a", "b", "c", "d", "e"] {
        assert_eq!(direct.cmd(&["SET", key, "1"]), Reply::ok());
    }
    client.cmd(&["DEL", "a", "b", "c", "d", "e"])
}

#[test]
fn a_refused_hello_auth_authenticates_nobody_and_leaves_the_next_command_whole() {
    let redis = RedisServer::start(Version::V7_0, &[]);
    let proxy = Proxy::start(redis.addr(), None, |c| {
        c.requirepass = Some(PROXY_SECRET.into());
        c.resp3 = redis_handover::config::Resp3Mode::PinResp2;
    });
    let mut c = proxy.client();
    let refused = c.cmd(&["HELLO", "3", "AUTH", "default", PROXY_SECRET]);
    assert!(refused.text().starts_with("ERR unknown command `HELLO`"), "{refused:?}");
    // Redis 5.0, which has no HELLO, authenticates nobody with it.
    assert_eq!(c.run("PING"), Reply::Error("NOAUTH Authentication required.".into()));
    assert_eq!(c.cmd(&["AUTH", PROXY_SECRET]), Reply::ok());
    assert_eq!(delete_five(&redis, &mut c), Reply::Int(5));
    // A HELLO 2 with AUTH is still forwarded without the AUTH, and only that HELLO loses it.
    let mut d = proxy.client();
    assert!(!d.cmd(&["HELLO", "2", "AUTH", "default", PROXY_SECRET]).is_error());
    assert_eq!(delete_five(&redis, &mut d), Reply::Int(5));
}

#[test]
fn a_hello_auth_that_could_not_reach_the_server_leaves_the_next_command_whole() {
    let port = support::free_port();
    let proxy = Proxy::start(format!("127.0.0.1:{port}").parse().unwrap(), None, |c| {
        c.requirepass = Some(PROXY_SECRET.into());
    });
    let mut c = proxy.client();
    let failed = c.cmd(&["HELLO", "2", "AUTH", "default", PROXY_SECRET]);
    assert!(failed.text().contains("unreachable"), "{failed:?}");
    let redis = RedisServer::start_on(Version::V7_0, port, &[]);
    assert_eq!(c.cmd(&["AUTH", PROXY_SECRET]), Reply::ok());
    assert_eq!(delete_five(&redis, &mut c), Reply::Int(5));
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

/// Sends one HTTP/1.1 request to the admin port exactly as written (a browser's or curl's headers); returns the
/// status code and the whole response.
fn raw_http(admin: std::net::SocketAddr, head: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(admin).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut request = format!("{head} HTTP/1.1\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    (code, response)
}

type Headers = Vec<(&'static str, String)>;

/// What a web page open in a browser can make the browser send to the admin port: cross-site "simple" POSTs
/// (text/plain and form bodies, no preflight), with its own Origin or `null` (sandboxed frames, file: pages), and
/// DNS-rebinding requests that carry the attacker's host name. Each is refused with 403 and no handover starts;
/// what terminals send (ctl, curl, a Prometheus scrape) still works, with and without an admin token.
fn browser_attacks_are_refused(token: Option<&str>) {
    let h = Harness::start_with(Version::V7_0, &[], Version::V7_0, &[], |c| {
        c.admin_token = token.map(str::to_string);
        c.admin_allowed_hosts = vec!["handover-admin.example".into()];
    });
    let admin = h.proxy.admin;
    let own_host = admin.to_string();
    let evil_host = format!("evil.example:{}", admin.port());
    let bearer = token.map(|t| format!("Bearer {t}"));
    let with_token = |mut headers: Headers| {
        if let Some(bearer) = &bearer {
            headers.push(("Authorization", bearer.clone()));
        }
        headers
    };
    let send = |head: &str, headers: Headers, body: &str| {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        raw_http(admin, head, &headers, body)
    };
    let attacks: Vec<(&str, &str, Headers, &str)> = vec![
        (
            "cross-site text/plain POST with a rebinding host",
            "POST /handover",
            vec![
                ("Host", evil_host.clone()),
                ("Origin", "http://evil.example".into()),
                ("Content-Type", "text/plain".into()),
            ],
            "{}",
        ),
        (
            "cross-site text/plain POST to the admin's own host",
            "POST /handover",
            vec![
                ("Host", own_host.clone()),
                ("Origin", "http://evil.example".into()),
                ("Content-Type", "text/plain".into()),
            ],
            "{}",
        ),
        (
            "Origin: null (a sandboxed frame)",
            "POST /handover",
            vec![
                ("Host", own_host.clone()),
                ("Origin", "null".into()),
                ("Content-Type", "text/plain".into()),
            ],
            "{}",
        ),
        (
            "a form post",
            "POST /handover",
            vec![
                ("Host", own_host.clone()),
                ("Origin", "http://evil.example".into()),
                ("Content-Type", "application/x-www-form-urlencoded".into()),
            ],
            "max_pause_ms=1000",
        ),
        (
            "an abort from another site",
            "POST /handover/abort",
            vec![("Host", own_host.clone()), ("Origin", "https://evil.example".into())],
            "",
        ),
        (
            "a rebinding read of /status",
            "GET /status",
            vec![("Host", evil_host.clone())],
            "",
        ),
        (
            "a rebinding read of /metrics",
            "GET /metrics",
            vec![("Host", evil_host.clone())],
            "",
        ),
        (
            "a rebinding liveness probe",
            "GET /healthz",
            vec![("Host", evil_host.clone())],
            "",
        ),
    ];
    for (what, head, headers, body) in attacks {
        let (code, response) = send(head, with_token(headers), body);
        assert_eq!(code, 403, "{what}: {response}");
        let lower = response.to_ascii_lowercase();
        assert!(
            !lower.contains("access-control-allow"),
            "{what}: no CORS headers: {response}"
        );
        assert!(lower.contains("x-frame-options: deny"), "{what}: {response}");
    }
    let status = status_with(&h.proxy, token);
    assert_eq!(status.phase, Phase::Idle, "no handover started: {status:#?}");
    assert!(status.last_handover.is_none(), "no handover ran: {status:#?}");

    // What terminals and the page itself send still works.
    let (code, response) = send(
        "GET /metrics",
        with_token(vec![
            ("Host", own_host.clone()),
            ("User-Agent", "Prometheus/2.45.0".into()),
            ("Accept", "text/plain;version=0.0.4".into()),
        ]),
        "",
    );
    assert_eq!(code, 200, "a Prometheus scrape: {response}");
    assert!(response.contains("redis_handover_"), "{response}");
    assert!(
        response
            .to_ascii_lowercase()
            .contains("content-security-policy: default-src 'self'; frame-ancestors 'none'"),
        "{response}"
    );
    for host in [
        format!("localhost:{}", admin.port()),
        format!("handover-admin.example:{}", admin.port()),
    ] {
        let (code, response) = send("GET /status", with_token(vec![("Host", host.clone())]), "");
        assert_eq!(code, 200, "Host {host}: {response}");
    }
    let (code, response) = send(
        "GET /status",
        with_token(vec![
            ("Host", own_host.clone()),
            ("Origin", format!("http://{own_host}")),
        ]),
        "",
    );
    assert_eq!(code, 200, "the admin port's own origin: {response}");
    let mut ctl = Command::new(env!("CARGO_BIN_EXE_redis-handover"));
    ctl.args(["ctl", "--admin", &own_host, "status"])
        .env_remove("REDIS_HANDOVER_ADMIN_TOKEN");
    if let Some(token) = token {
        ctl.env("REDIS_HANDOVER_ADMIN_TOKEN", token);
    }
    let out = ctl.output().unwrap();
    assert!(
        out.status.success(),
        "ctl status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, response) = send(
        "POST /handover",
        with_token(vec![
            ("Host", own_host.clone()),
            ("User-Agent", "curl/7.88.1".into()),
            ("Accept", "*/*".into()),
        ]),
        "",
    );
    assert_eq!(code, 202, "curl -XPOST /handover: {response}");
    wait_until_switched(&h, token);
}

/// `GET /status` with the admin token, if there is one.
fn status_with(proxy: &Proxy, token: Option<&str>) -> Status {
    let mut request = ureq::get(&format!("http://{}/status", proxy.admin));
    if let Some(token) = token {
        request = request.header("Authorization", &format!("Bearer {token}"));
    }
    request.call().unwrap().body_mut().read_json().unwrap()
}

fn wait_until_switched(h: &Harness, token: Option<&str>) {
    let status = support::wait_for("the handover started with curl to end", Duration::from_secs(60), || {
        let status = status_with(&h.proxy, token);
        match (&status.handover, status.last_handover) {
            (None, Some(last)) => Ok(last),
            _ => Err(format!("phase {}", status.phase.name())),
        }
    });
    assert_eq!(status.outcome, Phase::Switched, "{status:#?}");
}

#[test]
fn a_web_page_cannot_start_a_handover_or_read_the_admin_port() {
    browser_attacks_are_refused(None);
}

#[test]
fn with_an_admin_token_browser_requests_are_still_refused() {
    browser_attacks_are_refused(Some(ADMIN_TOKEN));
}
