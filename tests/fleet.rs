//! A fleet of proxies in front of the same servers, on real servers: a handover started on one proxy is carried
//! out by all of them, with the consistency checker writing through each; a peer that cannot be reached before
//! the fence stops the handover with nothing changed; one lost after the fence finds the outcome on the servers;
//! two handovers started at once end with one primary.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{FaultyLink, Load, Proxy, RedisServer, Reply, Version};

/// Three proxies in front of OLD and NEW, with the checker's writers on each.
struct Fleet {
    old: RedisServer,
    new: RedisServer,
    proxies: Vec<Proxy>,
    loads: Vec<Load>,
}

impl Fleet {
    fn start(old: Version) -> Fleet {
        let old = RedisServer::start(old, &[]);
        let new = RedisServer::start(Version::V7_0, &[]);
        let proxies = Proxy::start_fleet(3, old.addr(), new.addr(), |_, _| {});
        let loads = proxies
            .iter()
            .enumerate()
            .map(|(i, proxy)| Load::start_named(proxy, 4, &format!("fleet{i}")))
            .collect();
        Fleet {
            old,
            new,
            proxies,
            loads,
        }
    }

    /// Every proxy on `side`; every acknowledged write found; the longest wait per proxy.
    fn assert_all_on(self, side: &str, what: &str) -> Vec<f64> {
        for (i, proxy) in self.proxies.iter().enumerate() {
            assert_eq!(proxy.status()["primary"]["side"], side, "{what}: proxy {}", i + 1);
        }
        let reader = self.proxies[0].addr.to_string();
        let mut waits = Vec::new();
        for (i, load) in self.loads.into_iter().enumerate() {
            let report = load.stop_and_verify_through(&reader);
            assert_eq!(report.lost, 0, "{what}: proxy {}: {report:#?}", i + 1);
            assert!(report.acknowledged_writes > 0, "{what}: proxy {}", i + 1);
            assert_eq!(report.reconnects, 0, "{what}: proxy {}: {report:#?}", i + 1);
            assert_eq!(report.failed_batches, 0, "{what}: proxy {}: {report:#?}", i + 1);
            println!(
                "{what}: proxy {}: {} acknowledged writes checked, 0 lost, longest wait {:.1} ms",
                i + 1,
                report.acknowledged_writes,
                report.longest_wait_ms
            );
            waits.push(report.longest_wait_ms);
        }
        waits
    }
}

fn fleet_hands_over_together(old: Version) {
    let fleet = Fleet::start(old);
    support::wait_until("every proxy to see its peers", Duration::from_secs(10), || {
        fleet.proxies.iter().all(|p| {
            let peers = p.status()["fleet"]["peers"].clone();
            peers
                .as_array()
                .is_some_and(|a| a.len() == 2 && a.iter().all(|v| v["reachable"] == true))
        })
    });
    let report = fleet.proxies[1].handover(json!({ "max_pause_ms": 3000 }));
    assert_eq!(report["outcome"], "switched", "{report:#}");
    let lines = report["fleet"].to_string();
    assert!(
        lines.contains("2 peers held") && lines.contains("2 peers moved"),
        "{lines}"
    );
    assert!(report["warnings"].as_array().unwrap().is_empty(), "{report:#}");
    // Writes through every proxy land on NEW now, and OLD is fenced.
    for (i, proxy) in fleet.proxies.iter().enumerate() {
        assert!(
            matches!(proxy.client().run("INCR after-switch"), Reply::Int(_)),
            "proxy {}",
            i + 1
        );
    }
    assert_eq!(fleet.new.direct().run("GET after-switch"), Reply::bulk("3"));
    assert!(fleet.old.direct().run("SET stray 1").is_error());
    let pause = report["pause_ms"].as_f64().unwrap();
    let waits = fleet.assert_all_on("new", &format!("{} -> 7.0", old.name()));
    println!(
        "fleet of 3, OLD {} -> NEW 7.0: pause {pause:.1} ms, longest client wait per proxy {:?} ms",
        old.name(),
        waits.iter().map(|w| format!("{w:.1}")).collect::<Vec<_>>()
    );
}

#[test]
fn a_fleet_of_three_hands_over_6_2_to_7_0_together_under_load() {
    fleet_hands_over_together(Version::V6_2);
}

#[test]
fn a_fleet_of_three_hands_over_5_0_to_7_0_together_under_load() {
    fleet_hands_over_together(Version::V5_0);
}

/// Two proxies, and a third whose admin port the others reach through a relay that can fail.
fn fleet_with_a_relayed_peer() -> (RedisServer, RedisServer, Vec<Proxy>, FaultyLink) {
    let old = RedisServer::start(Version::V6_2, &[]);
    let new = RedisServer::start(Version::V7_0, &[]);
    let third_admin = support::free_port();
    let relay = FaultyLink::start_on(
        format!("127.0.0.2:{third_admin}").parse().unwrap(),
        format!("127.0.0.1:{third_admin}").parse().unwrap(),
    );
    let relayed = format!("{}", relay.addr);
    let mut proxies = Proxy::start_fleet(2, old.addr(), new.addr(), |_, c| c.fleet_peers.push(relayed.clone()));
    let others: Vec<String> = proxies.iter().map(|p| p.admin.to_string()).collect();
    proxies.push(Proxy::start_with_admin(old.addr(), new.addr(), third_admin, |c| {
        c.fleet_peers = others;
        c.proxy_id = Some("proxy-3".into());
    }));
    (old, new, proxies, relay)
}

#[test]
fn a_peer_unreachable_before_the_fence_stops_the_handover_with_nothing_changed() {
    let (old, new, proxies, relay) = fleet_with_a_relayed_peer();
    let loads: Vec<Load> = proxies
        .iter()
        .enumerate()
        .map(|(i, p)| Load::start_named(p, 2, &format!("unreachable{i}")))
        .collect();
    relay.cut();
    let report = proxies[0].handover(json!({}));
    assert_eq!(report["outcome"], "aborted", "{report:#}");
    let reason = report["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("the fleet did not agree"), "{reason}");
    // Refused before any server was touched: NEW is not even a replica.
    assert_eq!(new.direct().run("ROLE").items()[0], Reply::bulk("master"));
    assert_eq!(old.direct().run("SET direct 1"), Reply::ok());
    for proxy in &proxies {
        assert_eq!(proxy.status()["primary"]["side"], "old");
        assert_eq!(proxy.status()["fleet"]["part"], "idle");
    }
    for load in loads {
        let report = load.stop_and_verify();
        assert_eq!((report.lost, report.failed_batches), (0, 0), "{report:#?}");
    }
}

#[test]
fn a_peer_lost_after_the_fence_switches_by_itself_when_its_lease_runs_out() {
    let (_old, new, proxies, relay) = fleet_with_a_relayed_peer();
    let loads: Vec<Load> = proxies
        .iter()
        .enumerate()
        .map(|(i, p)| Load::start_named(p, 2, &format!("lost{i}")))
        .collect();
    // The third proxy gets HOLD, then the driver cannot reach it any more: no SWITCH, no RELEASE.
    relay.cut_before(b"/fleet/switch");
    let report = proxies[0].handover(json!({ "max_pause_ms": 1000 }));
    assert_eq!(report["outcome"], "switched", "{report:#}");
    let warnings = report["warnings"].to_string();
    assert!(warnings.contains("did not confirm the switch"), "{warnings}");
    support::wait_until("the lost peer to switch by itself", Duration::from_secs(15), || {
        proxies[2].status()["primary"]["side"] == "new" && proxies[2].status()["fleet"]["part"] == "idle"
    });
    assert_eq!(proxies[2].client().run("SET via-lost-peer 1"), Reply::ok());
    assert_eq!(new.direct().run("GET via-lost-peer"), Reply::bulk("1"));
    let reader = proxies[0].addr.to_string();
    for (i, load) in loads.into_iter().enumerate() {
        let report = load.stop_and_verify_through(&reader);
        assert_eq!(report.lost, 0, "proxy {}: {report:#?}", i + 1);
        assert_eq!(report.failed_batches, 0, "proxy {}: {report:#?}", i + 1);
        println!(
            "a peer lost after the fence: proxy {}: {} writes checked, 0 lost, longest wait {:.1} ms",
            i + 1,
            report.acknowledged_writes,
            report.longest_wait_ms
        );
    }
}

#[test]
fn two_handovers_started_at_once_end_with_one_primary() {
    let fleet = Fleet::start(Version::V6_2);
    let (a, b) = (&fleet.proxies[0], &fleet.proxies[2]);
    let (first, second) = std::thread::scope(|scope| {
        let first = scope.spawn(|| a.post("/handover", json!({})));
        let second = scope.spawn(|| b.post("/handover", json!({})));
        (first.join().unwrap(), second.join().unwrap())
    });
    let outcome = |proxy: &Proxy, (code, answer): (u16, serde_json::Value)| {
        if code != 202 {
            return format!("refused: {answer}");
        }
        proxy.wait_for_handover_end(Duration::from_secs(60))["outcome"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let outcomes = [outcome(a, first), outcome(b, second)];
    let switched = outcomes.iter().filter(|o| *o == "switched").count();
    assert!(switched <= 1, "{outcomes:?}");
    let side = if switched == 1 { "new" } else { "old" };
    println!("two handovers at once: {outcomes:?}");
    fleet.assert_all_on(side, "two handovers at once");
}
