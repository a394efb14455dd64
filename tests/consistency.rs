//! Nothing acknowledged is lost: the consistency checker (SETs of unique keys, INCR counters, list appends,
//! every acknowledged result logged) runs through many handovers and verifies everything on the final primary.

mod support;

use std::time::{Duration, Instant};

use redis_handover::consistency::{self, Report, Writers};
use redis_handover::handover::Phase;
use redis_handover::primary::Side;
use serde_json::json;
use support::{Harness, RedisServer, Reply, Version};

/// Runs checker writers against `addr` while `during` runs, then verifies through `addr`.
fn with_writers(addr: std::net::SocketAddr, writers: usize, during: impl FnOnce()) -> Report {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let addr = addr.to_string();
    let running = runtime.block_on(async { Writers::start(&addr, writers, "cc") });
    std::thread::sleep(Duration::from_millis(200));
    during();
    std::thread::sleep(Duration::from_millis(200));
    runtime.block_on(async {
        let logs = running.stop().await;
        consistency::verify(&addr, "cc", &logs)
            .await
            .expect("verification reads")
    })
}

#[test]
fn twenty_handovers_back_and_forth_lose_no_acknowledged_write() {
    let h = Harness::start(Version::V6_2, Version::V6_2);
    let mut pauses = Vec::new();
    let started = Instant::now();
    let report = with_writers(h.proxy.addr, 8, || {
        for round in 0..20 {
            let outcome = h.proxy.handover(json!({ "max_pause_ms": 2000 }));
            assert_eq!(outcome.outcome, Phase::Switched, "handover {round}: {outcome:#?}");
            let expected = if round % 2 == 0 { Side::New } else { Side::Old };
            assert_eq!(h.proxy.status().primary.side, expected, "handover {round}");
            pauses.push(outcome.pause_ms.unwrap());
        }
    });
    pauses.sort_by(f64::total_cmp);
    println!(
        "20 handovers 6.2 <-> 6.2 in {:.1} s: pause median {:.1} ms, max {:.1} ms; {} acknowledged writes checked, {} lost, \
         {} extra, longest wait {:.1} ms",
        started.elapsed().as_secs_f64(),
        pauses[pauses.len() / 2],
        pauses[pauses.len() - 1],
        report.acknowledged_writes,
        report.lost,
        report.extra,
        report.longest_wait_ms
    );
    assert_eq!(report.lost, 0, "{report:#?}");
    assert_eq!(
        (report.failed_batches, report.reconnects, report.extra),
        (0, 0, 0),
        "{report:#?}"
    );
    assert!(report.acknowledged_writes > 10_000, "{report:#?}");
}

#[test]
fn a_6_2_to_7_0_handover_under_the_checker_loses_nothing() {
    let h = Harness::start(Version::V6_2, Version::V7_0);
    let report = with_writers(h.proxy.addr, 8, || {
        assert_eq!(h.proxy.handover(json!({})).outcome, Phase::Switched);
    });
    assert_eq!(
        (report.lost, report.failed_batches, report.extra),
        (0, 0, 0),
        "{report:#?}"
    );
    assert_eq!(h.proxy.status().primary.version.as_deref(), Some("7.0.15"));
}

#[test]
fn the_checker_reports_writes_that_disappeared() {
    let redis = RedisServer::start(Version::V7_0, &[]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let addr = redis.addr().to_string();
    let logs = runtime.block_on(async {
        let writers = Writers::start(&addr, 2, "cc");
        tokio::time::sleep(Duration::from_millis(200)).await;
        writers.stop().await
    });
    let mut direct = redis.direct();
    assert_eq!(direct.run("DEL cc:k:0:3"), Reply::Int(1));
    assert!(!direct.run("DECR cc:c:1").is_error());
    assert_eq!(direct.run("LREM cc:l:0 1 2"), Reply::Int(1));
    let report = runtime.block_on(consistency::verify(&addr, "cc", &logs)).unwrap();
    assert_eq!(report.lost, 3, "{report:#?}");
    assert_eq!(report.lost_examples.len(), 3);
}
