//! A fleet of proxies in front of the same servers, on real servers: a handover started on one proxy is carried
//! out by all of them, with the consistency checker writing through each; a peer that cannot be reached before
//! the fence stops the handover with nothing changed; one lost after the fence finds the outcome on the servers;
//! two handovers started at once end with one primary.

mod support;

use std::time::Duration;

use redis_handover::handover::{Phase, Status};
use redis_handover::primary::Side;
use serde_json::json;
use support::{FaultyLink, Load, Proxy, ProxyProcess, RedisServer, Reply, Version};

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
    fn assert_all_on(self, side: Side, what: &str) -> Vec<f64> {
        for (i, proxy) in self.proxies.iter().enumerate() {
            assert_eq!(proxy.status().primary.side, side, "{what}: proxy {}", i + 1);
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
            let peers = p.status().fleet.peers;
            peers.len() == 2 && peers.iter().all(|peer| peer.reachable)
        })
    });
    let report = fleet.proxies[1].handover(json!({ "max_pause_ms": 3000 }));
    assert_eq!(report.outcome, Phase::Switched, "{report:#?}");
    let lines = report.fleet.join("; ");
    assert!(
        lines.contains("2 peers held") && lines.contains("2 peers moved"),
        "{lines}"
    );
    assert!(report.warnings.is_empty(), "{report:#?}");
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
    let pause = report.pause_ms.unwrap();
    let waits = fleet.assert_all_on(Side::New, &format!("{} -> 7.0", old.name()));
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
    assert_eq!(report.outcome, Phase::Aborted, "{report:#?}");
    let reason = report.reason.as_deref().unwrap_or_default();
    assert!(reason.contains("the fleet did not agree"), "{reason}");
    // Refused before any server was touched: NEW is not even a replica.
    assert_eq!(new.direct().run("ROLE").items()[0], Reply::bulk("master"));
    assert_eq!(old.direct().run("SET direct 1"), Reply::ok());
    for proxy in &proxies {
        assert_eq!(proxy.status().primary.side, Side::Old);
        assert_eq!(proxy.status().fleet.part, "idle");
    }
    for load in loads {
        let report = load.stop_and_verify();
        assert_eq!((report.lost, report.failed_batches), (0, 0), "{report:#?}");
    }

    // The operator leaves the unreachable peer out: the others hand over.
    let report = proxies[0].handover(json!({ "exclude_peers": [relay.addr.to_string()] }));
    assert_eq!(report.outcome, Phase::Switched, "{report:#?}");
    let lines = report.fleet.join("; ");
    assert!(
        lines.contains("left out at the operator's request") && lines.contains("1 peers held"),
        "{lines}"
    );
    assert_eq!(proxies[1].status().primary.side, Side::New);
    assert_eq!(
        old.direct().run("CONFIG GET min-replicas-to-write").items()[1],
        Reply::bulk("2147483647")
    );
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
    assert_eq!(report.outcome, Phase::Switched, "{report:#?}");
    let warnings = report.warnings.join("; ");
    assert!(warnings.contains("did not confirm the switch"), "{warnings}");
    support::wait_until("the lost peer to switch by itself", Duration::from_secs(15), || {
        proxies[2].status().primary.side == Side::New && proxies[2].status().fleet.part == "idle"
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
        let report = proxy.wait_for_handover_end(Duration::from_secs(60));
        let outcome = report.outcome.name().to_string();
        if report.outcome != Phase::Switched {
            println!(
                "two handovers at once: one ended {outcome}: {}",
                report.reason.as_deref().unwrap_or_default()
            );
        }
        outcome
    };
    let outcomes = [outcome(a, first), outcome(b, second)];
    // The one started first goes on; the other gives way (or is refused) before touching a server.
    let switched = outcomes.iter().filter(|o| *o == "switched").count();
    assert_eq!(switched, 1, "{outcomes:?}");
    println!("two handovers at once: {outcomes:?}");
    fleet.assert_all_on(Side::New, "two handovers at once");
}

/// A fleet whose driver (proxy 1) is a process of its own, to be killed or stalled, with two followers in this
/// process and the checker writing through them; NEW replicates from OLD through a relay that can slow it.
struct DriverFleet {
    old: RedisServer,
    new: RedisServer,
    replication: FaultyLink,
    driver: ProxyProcess,
    followers: Vec<Proxy>,
    loads: Vec<Load>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Stop {
    Kill,
    Stall,
}

impl DriverFleet {
    fn start() -> DriverFleet {
        let old = RedisServer::start(Version::V6_2, &[]);
        let new = RedisServer::start(Version::V7_0, &[]);
        let replication = FaultyLink::start(old.addr());
        let ports: Vec<u16> = (0..3).map(|_| support::free_port()).collect();
        let peers: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let followers: Vec<Proxy> = (1..3)
            .map(|i| {
                Proxy::start_with_admin(old.addr(), new.addr(), ports[i], |c| {
                    c.fleet_peers = peers.clone();
                    c.proxy_id = Some(format!("proxy-{}", i + 1));
                    c.old_replication_addr = Some(replication.addr.to_string());
                })
            })
            .collect();
        let mut args = vec![
            "--proxy-id".to_string(),
            "proxy-1".into(),
            "--old-replication-addr".into(),
            replication.addr.to_string(),
        ];
        for peer in &peers {
            args.extend(["--peer".to_string(), peer.clone()]);
        }
        let driver = ProxyProcess::start(old.addr(), new.addr(), ports[0], &args);
        let loads = followers
            .iter()
            .enumerate()
            .map(|(i, f)| Load::start_named(f, 2, &format!("driver{i}")))
            .collect();
        DriverFleet {
            old,
            new,
            replication,
            driver,
            followers,
            loads,
        }
    }

    fn start_handover(&self, max_pause_ms: u64) {
        let (code, answer) = self.driver.post("/handover", json!({ "max_pause_ms": max_pause_ms }));
        assert_eq!(code, 202, "{answer}");
    }

    fn stop_driver(&mut self, stop: Stop) {
        match stop {
            Stop::Kill => self.driver.kill(),
            Stop::Stall => self.driver.stall(),
        }
    }

    /// Waits until both followers are done with the handover and serve from `side`.
    fn wait_for_followers_on(&self, side: Side, what: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let statuses: Vec<Status> = self.followers.iter().map(|f| f.status()).collect();
            if statuses
                .iter()
                .all(|s| s.primary.side == side && s.fleet.part == "idle")
            {
                return;
            }
            let brief: Vec<String> = statuses
                .iter()
                .map(|s| format!("{:?} {:?} {:?}", s.primary.side, s.fleet, s.in_doubt))
                .collect();
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: the followers did not end on {side:?}: {brief:#?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every acknowledged write through the followers found, no client error; the longest waits.
    fn verify(self, what: &str) {
        let reader = self.followers[0].addr.to_string();
        for (i, load) in self.loads.into_iter().enumerate() {
            let report = load.stop_and_verify_through(&reader);
            assert_eq!(report.lost, 0, "{what}: proxy {}: {report:#?}", i + 2);
            assert_eq!(report.failed_batches, 0, "{what}: proxy {}: {report:#?}", i + 2);
            println!(
                "{what}: proxy {}: {} acknowledged writes checked, 0 lost, longest wait {:.1} ms",
                i + 2,
                report.acknowledged_writes,
                report.longest_wait_ms
            );
        }
    }

    /// Makes NEW replicate from OLD through the relay before the handover, then slows the relay by `delay`.
    fn replicate_slowly(&self, delay: Duration) {
        let mut new = self.new.direct();
        let relay = self.replication.addr;
        let replicaof = new.run(&format!("REPLICAOF {} {}", relay.ip(), relay.port()));
        assert!(replicaof.text().starts_with("OK"), "{replicaof:?}");
        support::wait_until("NEW to replicate", Duration::from_secs(30), || {
            new.run("INFO replication").text().contains("master_link_status:up")
        });
        self.replication.delay(delay);
    }

    fn fence(&self) -> Reply {
        self.old.direct().run("CONFIG GET min-replicas-to-write").items()[1].clone()
    }
}

fn driver_stopped_while_peers_hold(stop: Stop) {
    let mut fleet = DriverFleet::start();
    // A transaction open on the third proxy keeps its hold draining, so the driver waits for it before the fence.
    let mut transaction = fleet.followers[1].client();
    assert_eq!(transaction.run("MULTI"), Reply::ok());
    assert_eq!(transaction.run("SET in-tx 1"), Reply::Status("QUEUED".into()));
    fleet.start_handover(2000);
    support::wait_until("the third proxy to hold", Duration::from_secs(30), || {
        fleet.followers[1].status().fleet.part == "held"
    });
    fleet.stop_driver(stop);
    assert_eq!(transaction.run("EXEC"), Reply::Array(vec![Reply::ok()]));
    let what = format!("driver {stop:?} while the peers hold");
    fleet.wait_for_followers_on(Side::Old, &what);
    assert_eq!(fleet.fence(), Reply::bulk("0"), "OLD was never fenced");
    if stop == Stop::Stall {
        // Back from its stall after its budget, the driver fences nothing: it aborts.
        fleet.driver.resume();
        let report = fleet.driver.wait_for_handover_end(Duration::from_secs(30));
        assert_eq!(report.outcome, Phase::Aborted, "{report:#?}");
        assert_eq!(fleet.fence(), Reply::bulk("0"));
    }
    assert_eq!(fleet.new.direct().run("ROLE").items()[0], Reply::bulk("slave"));
    assert_eq!(fleet.followers[0].client().run("SET after 1"), Reply::ok());
    fleet.verify(&what);
}

#[test]
fn the_driver_killed_while_the_peers_hold_leaves_old_primary() {
    driver_stopped_while_peers_hold(Stop::Kill);
}

#[test]
fn the_driver_stalled_while_the_peers_hold_leaves_old_primary_and_aborts_when_it_wakes() {
    driver_stopped_while_peers_hold(Stop::Stall);
}

fn driver_stopped_after_the_fence(stop: Stop) {
    let mut fleet = DriverFleet::start();
    // The driver waits for NEW's offset with OLD fenced.
    fleet.replicate_slowly(Duration::from_millis(1500));
    fleet.start_handover(5000);
    support::wait_until("OLD to be fenced", Duration::from_secs(60), || {
        fleet.fence() == Reply::bulk("2147483647")
    });
    fleet.stop_driver(stop);
    let what = format!("driver {stop:?} after the fence");
    // The peers' leases run out; the servers say OLD fenced and NEW its replica. A stalled driver's control
    // connections are closed after their own lease, then the fence is lifted.
    fleet.wait_for_followers_on(Side::Old, &what);
    assert_eq!(fleet.fence(), Reply::bulk("0"));
    if stop == Stop::Stall {
        fleet.driver.resume();
        let report = fleet.driver.wait_for_handover_end(Duration::from_secs(30));
        assert_eq!(report.outcome, Phase::Aborted, "{report:#?}");
        assert_eq!(fleet.fence(), Reply::bulk("0"), "the driver, back, changed nothing");
    }
    fleet.replication.delay(Duration::ZERO);
    assert_eq!(fleet.new.direct().run("ROLE").items()[0], Reply::bulk("slave"));
    assert_eq!(fleet.followers[1].client().run("SET after 1"), Reply::ok());
    fleet.verify(&what);
}

#[test]
fn the_driver_killed_after_the_fence_leaves_old_primary_unfenced() {
    driver_stopped_after_the_fence(Stop::Kill);
}

#[test]
fn the_driver_stalled_after_the_fence_is_cut_off_and_changes_nothing_when_it_wakes() {
    driver_stopped_after_the_fence(Stop::Stall);
}

fn driver_stopped_after_the_promotion(stop: Stop) {
    let mut fleet = DriverFleet::start();
    fleet.start_handover(2000);
    let mut new = fleet.new.direct();
    support::wait_until("NEW to replicate", Duration::from_secs(60), || {
        new.run("ROLE").items()[0] == Reply::bulk("slave")
    });
    support::wait_until("NEW to be promoted", Duration::from_secs(60), || {
        new.run("ROLE").items()[0] == Reply::bulk("master")
    });
    fleet.stop_driver(stop);
    let what = format!("driver {stop:?} after the promotion");
    fleet.wait_for_followers_on(Side::New, &what);
    if stop == Stop::Stall {
        fleet.driver.resume();
        let report = fleet.driver.wait_for_handover_end(Duration::from_secs(30));
        assert_eq!(report.outcome, Phase::Switched, "{report:#?}");
        assert_eq!(fleet.driver.status().primary.side, Side::New);
    }
    assert!(fleet.old.direct().run("SET stray 1").is_error(), "OLD stays fenced");
    assert_eq!(fleet.followers[0].client().run("SET after 1"), Reply::ok());
    assert_eq!(fleet.new.direct().run("GET after"), Reply::bulk("1"));
    fleet.verify(&what);
}

#[test]
fn the_driver_killed_after_the_promotion_leaves_every_peer_on_new() {
    driver_stopped_after_the_promotion(Stop::Kill);
}

#[test]
fn the_driver_stalled_after_the_promotion_leaves_every_proxy_on_new() {
    driver_stopped_after_the_promotion(Stop::Stall);
}

#[test]
fn a_peer_with_a_slow_link_to_old_and_its_own_address_for_it_hands_over_with_the_others() {
    let old = RedisServer::start(Version::V6_2, &[]);
    let new = RedisServer::start(Version::V7_0, &[]);
    // The third proxy reaches OLD through a relay that delays every chunk, under another address: the fleet
    // knows the servers by their run_id.
    let slow = FaultyLink::start(old.addr());
    slow.delay(Duration::from_millis(20));
    let ports: Vec<u16> = (0..3).map(|_| support::free_port()).collect();
    let peers: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let proxies: Vec<Proxy> = (0..3)
        .map(|i| {
            let old_addr = if i == 2 { slow.addr } else { old.addr() };
            Proxy::start_with_admin(old_addr, new.addr(), ports[i], |c| {
                c.fleet_peers = peers.clone();
                c.proxy_id = Some(format!("proxy-{}", i + 1));
            })
        })
        .collect();
    let loads: Vec<Load> = proxies
        .iter()
        .enumerate()
        .map(|(i, p)| Load::start_named(p, 2, &format!("slow{i}")))
        .collect();
    let report = proxies[0].handover(json!({ "max_pause_ms": 3000 }));
    assert_eq!(report.outcome, Phase::Switched, "{report:#?}");
    let lines = report.fleet.join("; ");
    assert!(
        lines.contains("2 peers held") && lines.contains("2 peers moved"),
        "{lines}"
    );
    for proxy in &proxies {
        assert_eq!(proxy.status().primary.side, Side::New);
    }
    let reader = proxies[0].addr.to_string();
    for (i, load) in loads.into_iter().enumerate() {
        let checked = load.stop_and_verify_through(&reader);
        assert_eq!(
            (checked.lost, checked.failed_batches),
            (0, 0),
            "proxy {}: {checked:#?}",
            i + 1
        );
        println!(
            "a slow link to OLD: proxy {}: {} writes checked, 0 lost, longest wait {:.1} ms",
            i + 1,
            checked.acknowledged_writes,
            checked.longest_wait_ms
        );
    }
    println!("a slow link to OLD: pause {:.1} ms", report.pause_ms.unwrap());
}

#[test]
fn a_proxy_outside_the_fleet_finds_the_switch_on_the_servers_and_follows_it() {
    let old = RedisServer::start(Version::V6_2, &[]);
    let new = RedisServer::start(Version::V7_0, &[]);
    let driver = Proxy::start(old.addr(), Some(new.addr()), |_| {});
    // Not a peer of the driver: nobody tells it about the handover.
    let outsider = Proxy::start(old.addr(), Some(new.addr()), |_| {});
    let load = Load::start_named(&outsider, 2, "outsider");
    // Transactions through it too, one of them WATCHing: a refused EXEC goes again whole (or answers null after
    // a WATCH, which the client retries); no error ever.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let transactions: Vec<_> = [false, true]
        .into_iter()
        .map(|watch| {
            let (stop, addr) = (stop.clone(), outsider.addr);
            std::thread::spawn(move || {
                let mut client = support::Client::connect(addr);
                let key = if watch { "tx-watched" } else { "tx-plain" };
                let (mut done, mut retried) = (0i64, 0u64);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if watch {
                        client.send(&["WATCH", key]);
                    }
                    client.send(&["MULTI"]);
                    client.send(&["INCR", key]);
                    client.send(&["EXEC"]);
                    if watch {
                        assert_eq!(client.read(), Reply::ok());
                    }
                    assert_eq!(client.read(), Reply::ok(), "MULTI");
                    assert_eq!(client.read(), Reply::Status("QUEUED".into()), "INCR");
                    match client.read() {
                        Reply::Array(results) => {
                            done += 1;
                            assert_eq!(results, vec![Reply::Int(done)], "{key}");
                        }
                        Reply::Nil if watch => retried += 1,
                        other => panic!("{key}: EXEC answered {other:?}"),
                    }
                }
                (key, done, retried)
            })
        })
        .collect();
    let report = driver.handover(json!({}));
    assert_eq!(report.outcome, Phase::Switched, "{report:#?}");
    // Its writes meet OLD's fence; the first refusal makes it look at the servers, which say NEW was promoted;
    // the refused writes, and those after them, go to NEW.
    support::wait_until("the outsider to switch by itself", Duration::from_secs(10), || {
        outsider.status().primary.side == Side::New
    });
    assert_eq!(outsider.client().run("SET via-outsider 1"), Reply::ok());
    assert_eq!(new.direct().run("GET via-outsider"), Reply::bulk("1"));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for thread in transactions {
        let (key, done, retried) = thread.join().expect("no transaction saw an error");
        assert_eq!(new.direct().run(&format!("GET {key}")), Reply::bulk(done.to_string()));
        println!("a proxy outside the fleet: {done} transactions on {key}, {retried} answered null after a WATCH");
    }
    let checked = load.stop_and_verify_through(&driver.addr.to_string());
    // The refusals were never shown: the writes were sent again to NEW, in order.
    assert_eq!((checked.lost, checked.failed_batches), (0, 0), "{checked:#?}");
    println!(
        "a proxy outside the fleet: {} writes checked, 0 lost, 0 errors, longest wait {:.1} ms",
        checked.acknowledged_writes, checked.longest_wait_ms
    );
}

#[test]
fn the_driver_killed_before_the_pause_lets_the_claims_lapse_and_another_proxy_hands_over_without_it() {
    let mut fleet = DriverFleet::start();
    // With a lag of 0 asked for, the driver stays in the catch-up.
    fleet.replicate_slowly(Duration::from_millis(1000));
    let (code, answer) = fleet
        .driver
        .post("/handover", json!({ "max_lag_bytes": 0, "max_pause_ms": 2000 }));
    assert_eq!(code, 202, "{answer}");
    support::wait_until("the driver to catch up", Duration::from_secs(30), || {
        fleet.driver.status().phase == Phase::CatchingUp
    });
    assert_eq!(fleet.followers[0].status().fleet.part, "claimed");
    // A claimed peer starts no handover of its own.
    let (code, answer) = fleet.followers[0].post("/handover", json!({}));
    assert_eq!(code, 409, "{answer}");
    fleet.stop_driver(Stop::Kill);
    fleet.replication.delay(Duration::ZERO);
    support::wait_until("the claims to lapse", Duration::from_secs(30), || {
        fleet.followers.iter().all(|f| f.status().fleet.part == "idle")
    });
    // The dead driver is left out of the next handover.
    let dead = fleet.driver.admin.to_string();
    let report = fleet.followers[0].handover(json!({ "exclude_peers": [dead] }));
    assert_eq!(report.outcome, Phase::Switched, "{report:#?}");
    fleet.wait_for_followers_on(Side::New, "the driver killed before the pause");
    fleet.verify("the driver killed before the pause");
}

#[test]
fn a_blocked_call_through_a_proxy_outside_the_fleet_outlives_a_5_0_old_s_demotion() {
    let old = RedisServer::start(Version::V5_0, &[]);
    let new = RedisServer::start(Version::V7_0, &[]);
    let driver = Proxy::start(old.addr(), Some(new.addr()), |_| {});
    let outsider = Proxy::start(old.addr(), Some(new.addr()), |_| {});
    let mut worker = outsider.client();
    worker.send(&["BLPOP", "jobs", "0"]);
    let mut old_admin = old.direct();
    support::wait_until("the worker to block on OLD", Duration::from_secs(10), || {
        old_admin.run("CLIENT LIST").text().contains("cmd=blpop")
    });
    // The 5.0 OLD is made NEW's replica at the switch, which ends the worker's call on it with UNBLOCKED.
    let report = driver.handover(json!({}));
    assert_eq!(report.outcome, Phase::Switched, "{report:#?}");
    support::wait_until("the outsider to switch by itself", Duration::from_secs(10), || {
        outsider.status().primary.side == Side::New
    });
    support::wait_until("the worker to block on NEW", Duration::from_secs(10), || {
        if let Some(reply) = worker.read_within(Duration::from_millis(1)) {
            panic!("the worker got {reply:?}");
        }
        new.direct().run("CLIENT LIST").text().contains("cmd=blpop")
    });
    assert_eq!(driver.client().run("LPUSH jobs j1"), Reply::Int(1));
    assert_eq!(
        worker.read(),
        Reply::Array(vec![Reply::bulk("jobs"), Reply::bulk("j1")]),
        "the call was issued again on NEW, not failed"
    );
}
