//! redis-benchmark, the load tool operators use, runs its whole suite through the proxy with correct replies.

mod support;

use support::{Proxy, RedisServer, Reply, Version};

#[test]
fn redis_benchmark_suite_through_the_proxy_pipelined() {
    for version in [Version::V6_2, Version::V7_0] {
        let redis = RedisServer::start(version, &[]);
        let proxy = Proxy::start(redis.addr(), None, |_| {});
        let requests = 20_000;
        let out = support::run_tool(
            "redis-benchmark",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &proxy.addr.port().to_string(),
                "-t",
                "set,get,incr,lpush,rpop,sadd,hset,spop,zadd,lrange_100,mset",
                "-P",
                "16",
                "-c",
                "50",
                "-n",
                &requests.to_string(),
                "-e",
                "--csv",
            ],
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "redis-benchmark failed on {version:?}: {stderr}");
        // With -e redis-benchmark prints every error reply it gets.
        assert!(
            !stdout.contains("ERR") && !stderr.contains("ERR") && !stderr.contains("Error"),
            "{stdout}\n{stderr}"
        );
        for test in [
            "SET",
            "GET",
            "INCR",
            "LPUSH",
            "RPOP",
            "SADD",
            "HSET",
            "SPOP",
            "ZADD",
            "LRANGE_100",
            "MSET",
        ] {
            let row = stdout
                .lines()
                .find(|l| l.starts_with(&format!("\"{test}")))
                .unwrap_or_else(|| panic!("no {test} row: {stdout}"));
            let rps: f64 = row.split(',').nth(1).unwrap().trim_matches('"').parse().unwrap();
            assert!(rps > 0.0, "{row}");
        }
        // Every INCR ran exactly once: the counter equals the number of requests.
        assert_eq!(
            redis.direct().run("GET counter:__rand_int__"),
            Reply::bulk(requests.to_string()),
            "{version:?}"
        );
    }
}
