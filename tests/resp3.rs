//! HELLO and RESP3: every HELLO form gets Redis's own reply; `pin-resp2` refuses HELLO 3 with the text clients
//! take as "stay on RESP2"; RESP3 replies pass through byte for byte; each session keeps its protocol across a
//! handover; real clients (redis-py, node-redis) behave as the README's client table says.

mod support;

use redis_handover::handover::Phase;
use serde_json::json;
use support::{ALL_VERSIONS, Client, Harness, Proxy, RedisServer, Reply, Version};

/// Reads one raw reply (with the connection's `id` masked, since it differs between connections).
fn raw_reply(client: &mut Client) -> String {
    client.protocol = 3;
    let reply = client.read_raw_frame();
    let text = String::from_utf8_lossy(&reply).into_owned();
    match text.find("$2\r\nid\r\n:") {
        Some(at) => {
            let start = at + "$2\r\nid\r\n:".len();
            let end = start + text[start..].find("\r\n").unwrap();
            format!("{}N{}", &text[..start], &text[end..])
        }
        None => text,
    }
}

const HELLO_FORMS: [&str; 12] = [
    "HELLO 3 AUTH a-user-name-long-enough-to-pass-the-limit-of-128-characters-in-the-list xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx SETNAME n",
    "HELLO",
    "hello 2",
    "HELLO 3",
    "HeLLo 3 SETNAME app-1",
    "HELLO 3 AUTH default anything",
    "HELLO 3 AUTH default anything SETNAME app-2",
    "HELLO 2 AUTH default anything SETNAME app-3",
    "HELLO 4",
    "HELLO 3 AUTH onlyuser",
    "HELLO three",
    "HELLO 2 SETNAME",
];

#[test]
fn every_hello_form_gets_redis_reply_or_the_pinned_refusal() {
    // Pinned, HELLO 3 gets exactly what Redis 5.0 (which has no HELLO) answers to the same bytes.
    let redis5 = RedisServer::start(Version::V5_0, &[]);
    for version in ALL_VERSIONS {
        let redis = RedisServer::start(version, &[]);
        let proxy = Proxy::start(redis.addr(), None, |_| {});
        for pinned in [false, true] {
            let mode = if pinned { "pin-resp2" } else { "allow" };
            let (status, _) = proxy.put_resp3(mode);
            assert_eq!(status, 200);
            for form in HELLO_FORMS {
                for inline in [false, true] {
                    let send = |c: &mut Client| {
                        if inline {
                            c.write_raw(format!("{form}\r\n").as_bytes());
                        } else {
                            let args: Vec<&str> = form.split(' ').collect();
                            c.send(&args);
                        }
                    };
                    let mut direct = redis.direct();
                    send(&mut direct);
                    let expected = raw_reply(&mut direct);
                    let mut through = proxy.client();
                    send(&mut through);
                    let got = raw_reply(&mut through);
                    let asks_for_3 = form.to_ascii_uppercase().starts_with("HELLO 3");
                    if pinned && asks_for_3 {
                        let mut old5 = redis5.direct();
                        send(&mut old5);
                        let refusal = raw_reply(&mut old5);
                        assert!(refusal.starts_with("-ERR unknown command `"), "{refusal}");
                        assert_eq!(got, refusal, "{version:?} {mode} {form:?} inline={inline}");
                    } else {
                        assert_eq!(got, expected, "{version:?} {mode} {form:?} inline={inline}");
                    }
                }
            }
        }
    }
}

#[test]
fn resp3_types_pass_through_byte_for_byte_and_resp2_sessions_never_see_them() {
    for version in [Version::V6_2, Version::V7_0] {
        let redis = RedisServer::start(version, &[]);
        let proxy = Proxy::start(redis.addr(), None, |_| {});
        let types = [
            "string", "integer", "double", "bignum", "null", "array", "set", "map", "attrib", "verbatim", "true",
            "false",
        ];
        for protocol in ["2", "3"] {
            let mut direct = redis.direct();
            let mut through = proxy.client();
            for c in [&mut direct, &mut through] {
                c.send(&["HELLO", protocol]);
                c.read_raw_frame();
            }
            for kind in types {
                for c in [&mut direct, &mut through] {
                    c.send(&["DEBUG", "PROTOCOL", kind]);
                }
                let expected = direct.read_raw_frame();
                let got = through.read_raw_frame();
                assert_eq!(
                    String::from_utf8_lossy(&got),
                    String::from_utf8_lossy(&expected),
                    "{version:?} RESP{protocol} {kind}"
                );
                if protocol == "2" {
                    assert!(
                        !b",(%~|=#_>".contains(&got[0]),
                        "a RESP2 session got a RESP3 type for {kind}: {got:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn a_resp2_and_a_resp3_session_keep_their_shapes_through_a_handover() {
    let h = Harness::start(Version::V6_2, Version::V7_0);
    let mut resp2 = h.proxy.client();
    let mut resp3 = h.proxy.client();
    resp3.protocol = 3;
    assert!(matches!(resp3.run("HELLO 3"), Reply::Map(_)));
    assert_eq!(resp2.run("HSET h f v"), Reply::Int(1));
    let flat = Reply::Array(vec![Reply::bulk("f"), Reply::bulk("v")]);
    let map = Reply::Map(vec![(Reply::bulk("f"), Reply::bulk("v"))]);
    assert_eq!(resp2.run("HGETALL h"), flat);
    assert_eq!(resp3.run("HGETALL h"), map);
    resp3.send(&["SUBSCRIBE", "c"]);
    assert_eq!(
        resp3.read(),
        Reply::Push(vec![Reply::bulk("subscribe"), Reply::bulk("c"), Reply::Int(1)])
    );
    assert_eq!(h.proxy.handover(json!({})).outcome, Phase::Switched);
    assert_eq!(resp2.run("HGETALL h"), flat, "RESP2 stays RESP2 on NEW");
    assert_eq!(resp3.run("HGETALL h"), map, "RESP3 stays RESP3 on NEW");
    assert_eq!(h.proxy.client().run("PUBLISH c hi"), Reply::Int(1));
    assert_eq!(
        resp3.read(),
        Reply::Push(vec![Reply::bulk("message"), Reply::bulk("c"), Reply::bulk("hi")])
    );
    assert!(resp2.run("INFO server").text().contains("redis_version:7.0.15"));
    // New HELLOs show NEW's version.
    let hello = h.proxy.client().run("HELLO 2");
    assert_eq!(hello.items()[3], Reply::bulk("7.0.15"));
}

#[test]
fn pinning_applies_to_new_hellos_and_sessions_keep_what_they_negotiated() {
    let redis = RedisServer::start(Version::V7_0, &[]);
    let proxy = Proxy::start(redis.addr(), None, |c| {
        c.resp3 = redis_handover::config::Resp3Mode::PinResp2
    });
    assert_eq!(proxy.status().resp3, redis_handover::config::Resp3Mode::PinResp2);
    let mut c = proxy.client();
    assert_eq!(
        c.run("HELLO 3"),
        Reply::Error("ERR unknown command `HELLO`, with args beginning with: `3`, ".into())
    );
    assert_eq!(c.run("HELLO 2 SETNAME still-here").items()[5], Reply::Int(2));
    assert_eq!(c.run("CLIENT GETNAME"), Reply::bulk("still-here"));
    assert_eq!(proxy.put_resp3("allow").0, 200);
    let mut resp3 = proxy.client();
    resp3.protocol = 3;
    assert!(matches!(resp3.run("HELLO 3"), Reply::Map(_)));
    assert_eq!(proxy.put_resp3("pin-resp2").0, 200);
    assert!(
        matches!(resp3.run("HELLO"), Reply::Map(_)),
        "an existing RESP3 session keeps RESP3"
    );
    assert_eq!(proxy.put_resp3("resp4").0, 400);
}

fn run_client(program: &str, args: &[&str]) {
    let out = support::run_tool(program, args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("ok"),
        "{program} {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn redis_py_resp3_session_keeps_maps_and_tracking_across_a_handover() {
    let h = Harness::start(Version::V6_2, Version::V7_0);
    let script = support::repo_root().join("tests/clients/python/resp3_session.py");
    let (port, admin) = (h.proxy.addr.port().to_string(), h.proxy.admin.port().to_string());
    run_client("python3", &[script.to_str().unwrap(), &port, &admin, "allow"]);
    assert_eq!(h.proxy.put_resp3("pin-resp2").0, 200);
    run_client("python3", &[script.to_str().unwrap(), &port, &admin, "pinned"]);
}

#[test]
fn node_redis_resp3_session_keeps_maps_and_pubsub_across_a_handover() {
    let dir = support::repo_root().join("tests/clients/node");
    assert!(
        dir.join("node_modules/redis").exists(),
        "node-redis is not installed: run scripts/test.sh (or npm ci --prefix tests/clients/node)"
    );
    let h = Harness::start(Version::V6_2, Version::V7_0);
    let script = dir.join("resp3_session.mjs");
    let (port, admin) = (h.proxy.addr.port().to_string(), h.proxy.admin.port().to_string());
    run_client("node", &[script.to_str().unwrap(), &port, &admin, "allow"]);
    assert_eq!(h.proxy.put_resp3("pin-resp2").0, 200);
    run_client("node", &[script.to_str().unwrap(), &port, &admin, "pinned"]);
}

#[test]
fn hello_on_redis_5_in_allow_mode_is_the_unknown_command_error() {
    let redis = RedisServer::start(Version::V5_0, &[]);
    let proxy = Proxy::start(redis.addr(), None, |_| {});
    let reply = proxy.client().run("HELLO 3");
    assert!(reply.text().starts_with("ERR unknown command `HELLO`"), "{reply:?}");
}
