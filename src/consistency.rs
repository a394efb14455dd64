//! The consistency checker: proof that nothing acknowledged is lost.
//!
//! Concurrent writers send unique-key SETs, INCRs of a counter of their own and RPUSHes to a list of their own,
//! through the proxy, and log every result that was acknowledged. Afterwards [`verify`] reads everything back
//! (through the proxy, so from the final primary) and checks that every acknowledged SET is there with its value,
//! that each counter equals its acknowledged increments, and that each list holds every acknowledged element in
//! the writer's order. A write that got an error or no reply may or may not have been applied; such writes are
//! counted as "extra" when found, never as lost. Used by the tests, by `redis-handover check-consistency`, and by
//! the soak script.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::control::ControlConn;
use crate::protocol::value::Value;

/// How long one pipeline may wait for its replies before the writer counts it as failed.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// Writes in one pipeline (per kind).
const BATCH: u64 = 5;

/// What one writer had acknowledged.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WriterLog {
    pub id: usize,
    /// `SET <prefix>:k:<id>:<seq> <seq>` acknowledged (every seq below `highest_key` that is not unacknowledged).
    pub keys: u64,
    /// INCRs of `<prefix>:c:<id>` acknowledged.
    pub incrs: u64,
    /// RPUSH `<prefix>:l:<id>` of the elements acknowledged, in order.
    pub list: Vec<u64>,
    /// Batches whose writes got an error or no reply (they may or may not have been applied).
    pub failed_batches: u64,
    /// The first few error messages seen.
    pub errors: Vec<String>,
    /// The longest a batch waited for its replies, in milliseconds.
    pub longest_wait_ms: f64,
    /// Connections opened after a failure.
    pub reconnects: u64,
    /// Sequence numbers used by failed batches: present or not, they are not lost.
    #[serde(skip)]
    unacknowledged_keys: Vec<u64>,
    /// Key sequence numbers used so far (acknowledged or not).
    pub highest_key: u64,
}

/// The verdict.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub writers: usize,
    pub acknowledged_writes: u64,
    /// Acknowledged writes not found (must be 0).
    pub lost: u64,
    /// Unacknowledged writes that were applied anyway (possible after errors).
    pub extra: u64,
    pub failed_batches: u64,
    pub reconnects: u64,
    pub longest_wait_ms: f64,
    /// A few details of what was lost, if anything.
    pub lost_examples: Vec<String>,
    /// The first errors the writers received, if any.
    pub error_examples: Vec<String>,
}

/// Writers running in the background until stopped.
pub struct Writers {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<WriterLog>>,
}

impl Writers {
    /// Starts `count` writers against `addr` (the proxy), each on its own connection, as fast as they can.
    pub fn start(addr: &str, count: usize, prefix: &str) -> Writers {
        Writers::start_paced(addr, count, prefix, None)
    }

    /// The same, at most `rate` writes per second in all (a long soak must not fill the servers' memory).
    pub fn start_paced(addr: &str, count: usize, prefix: &str, rate: Option<u64>) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        // Each batch is 3 * BATCH writes; a writer sends one every `interval`.
        let per_batch = (3 * BATCH) as f64 * count as f64;
        let interval = rate
            .filter(|r| *r > 0)
            .map(|r| Duration::from_secs_f64(per_batch / r as f64));
        let tasks = (0..count)
            .map(|id| {
                let writer = write_until_stopped(addr.to_string(), prefix.to_string(), id, stop.clone(), interval);
                tokio::spawn(writer)
            })
            .collect();
        Writers { stop, tasks }
    }

    /// Stops the writers and returns what each had acknowledged.
    pub async fn stop(self) -> Vec<WriterLog> {
        self.stop.store(true, Ordering::Relaxed);
        let mut logs = Vec::new();
        for task in self.tasks {
            logs.push(task.await.expect("a writer task panicked"));
        }
        logs
    }
}

async fn write_until_stopped(
    addr: String,
    prefix: String,
    id: usize,
    stop: Arc<AtomicBool>,
    interval: Option<Duration>,
) -> WriterLog {
    let mut next_batch = tokio::time::Instant::now();
    let mut log = WriterLog {
        id,
        ..WriterLog::default()
    };
    let mut conn: Option<ControlConn> = None;
    let mut next_key = 0u64;
    let mut next_element = 0u64;
    let counter = format!("{prefix}:c:{id}");
    let list = format!("{prefix}:l:{id}");
    while !stop.load(Ordering::Relaxed) {
        if let Some(interval) = interval {
            tokio::time::sleep_until(next_batch).await;
            next_batch += interval;
        }
        if conn.is_none() {
            match ControlConn::connect_to("proxy", &addr, Duration::from_secs(5)).await {
                Ok(c) => conn = Some(c),
                Err(error) => {
                    note_error(&mut log, error.to_string());
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let keys: Vec<(String, String)> = (next_key..next_key + BATCH)
            .map(|seq| (format!("{prefix}:k:{id}:{seq}"), seq.to_string()))
            .collect();
        let elements: Vec<String> = (next_element..next_element + BATCH).map(|e| e.to_string()).collect();
        let mut commands: Vec<Vec<&str>> = Vec::new();
        for j in 0..BATCH as usize {
            commands.push(vec!["SET", &keys[j].0, &keys[j].1]);
            commands.push(vec!["INCR", &counter]);
            commands.push(vec!["RPUSH", &list, &elements[j]]);
        }
        let refs: Vec<&[&str]> = commands.iter().map(Vec::as_slice).collect();
        let sent = Instant::now();
        let replies = conn
            .as_mut()
            .expect("connected above")
            .pipeline(&refs, REPLY_TIMEOUT)
            .await;
        log.longest_wait_ms = log.longest_wait_ms.max(sent.elapsed().as_secs_f64() * 1000.0);
        match replies {
            Ok(replies) => {
                if replies.iter().any(Value::is_error) {
                    log.failed_batches += 1;
                }
                // Each OK reply acknowledges one write; an error reply leaves that write unknown.
                for j in 0..BATCH as usize {
                    let (set, incr, push) = (&replies[3 * j], &replies[3 * j + 1], &replies[3 * j + 2]);
                    if set.is_error() {
                        log.unacknowledged_keys.push(next_key + j as u64);
                        note_error(&mut log, format!("SET: {set:?}"));
                    } else {
                        log.keys += 1;
                    }
                    match incr {
                        Value::Int(n) => {
                            let expected = log.incrs as i64 + 1;
                            if *n != expected {
                                note_error(&mut log, format!("INCR {counter} answered {n}, expected {expected}"));
                            }
                            log.incrs += 1;
                        }
                        other => note_error(&mut log, format!("INCR: {other:?}")),
                    }
                    if push.is_error() {
                        note_error(&mut log, format!("RPUSH: {push:?}"));
                    } else {
                        log.list.push(next_element + j as u64);
                    }
                }
            }
            Err(error) => {
                log.failed_batches += 1;
                log.unacknowledged_keys.extend(next_key..next_key + BATCH);
                note_error(&mut log, error.to_string());
                conn = None;
                log.reconnects += 1;
            }
        }
        next_key += BATCH;
        next_element += BATCH;
        log.highest_key = next_key;
    }
    log
}

fn note_error(log: &mut WriterLog, message: String) {
    if log.errors.len() < 5 {
        log.errors.push(message);
    }
}

/// Reads back through `addr` everything the writers logged and checks it.
pub async fn verify(addr: &str, prefix: &str, logs: &[WriterLog]) -> Result<Report, crate::control::ControlError> {
    let mut conn = ControlConn::connect_to("proxy", addr, Duration::from_secs(5)).await?;
    let mut report = Report {
        writers: logs.len(),
        ..Report::default()
    };
    for log in logs {
        for error in &log.errors {
            if report.error_examples.len() < 5 {
                report.error_examples.push(error.clone());
            }
        }
        report.failed_batches += log.failed_batches;
        report.reconnects += log.reconnects;
        report.longest_wait_ms = report.longest_wait_ms.max(log.longest_wait_ms);
        report.acknowledged_writes += log.keys + log.incrs + log.list.len() as u64;
        let highest = log.highest_key;
        let unacknowledged: std::collections::HashSet<u64> = log.unacknowledged_keys.iter().copied().collect();
        for chunk in (0..highest).collect::<Vec<_>>().chunks(500) {
            let keys: Vec<String> = chunk.iter().map(|seq| format!("{prefix}:k:{}:{seq}", log.id)).collect();
            let mut args = vec!["MGET"];
            args.extend(keys.iter().map(String::as_str));
            let Value::Array(values) = conn.ok(&args, REPLY_TIMEOUT).await? else {
                continue;
            };
            for (seq, value) in chunk.iter().zip(values) {
                let present = value.as_bytes() == Some(seq.to_string().as_bytes());
                match (unacknowledged.contains(seq), present) {
                    (false, false) => lost(&mut report, format!("{prefix}:k:{}:{seq} is {value:?}", log.id)),
                    (true, true) => report.extra += 1,
                    _ => {}
                }
            }
        }
        let counter = format!("{prefix}:c:{}", log.id);
        let value = conn.ok(&["GET", &counter], REPLY_TIMEOUT).await?;
        let count: u64 = value
            .as_bytes()
            .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
            .unwrap_or(0);
        if count < log.incrs {
            lost(
                &mut report,
                format!("{counter} is {count}, {} increments were acknowledged", log.incrs),
            );
            report.lost += log.incrs - count - 1;
        } else {
            // INCRs that got no reply may have been applied.
            report.extra += count - log.incrs;
        }
        let list = format!("{prefix}:l:{}", log.id);
        let Value::Array(items) = conn.ok(&["LRANGE", &list, "0", "-1"], REPLY_TIMEOUT).await? else {
            continue;
        };
        let found: Vec<u64> = items
            .iter()
            .filter_map(|v| std::str::from_utf8(v.as_bytes()?).ok()?.parse().ok())
            .collect();
        // Every acknowledged element, in the writer's order (unacknowledged ones may sit between them).
        let mut at = 0;
        for element in &log.list {
            match found[at..].iter().position(|f| f == element) {
                Some(offset) => {
                    report.extra += offset as u64;
                    at += offset + 1;
                }
                None => lost(
                    &mut report,
                    format!("{list} lacks acknowledged element {element} (or has it out of order)"),
                ),
            }
        }
        report.extra += (found.len() - at) as u64;
    }
    Ok(report)
}

fn lost(report: &mut Report, example: String) {
    report.lost += 1;
    if report.lost_examples.len() < 10 {
        report.lost_examples.push(example);
    }
}

/// `redis-handover check-consistency` options.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The proxy (or any Redis) to write through and read back from.
    #[arg(long, default_value = "127.0.0.1:6380", value_name = "HOST:PORT")]
    pub addr: String,
    /// Concurrent writer connections.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// How long to write; SIGINT or SIGTERM ends the writing sooner (the check still runs).
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// At most this many writes per second in all (unlimited when absent).
    #[arg(long)]
    pub rate: Option<u64>,
    /// The key prefix (keys are `PREFIX:k:*`, `PREFIX:c:*`, `PREFIX:l:*`).
    #[arg(long, default_value = "consistency")]
    pub prefix: String,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs the checker from the command line; the exit code is 0 when nothing acknowledged was lost.
pub fn run_cli(args: CheckArgs) -> i32 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let report = runtime.block_on(async {
        let writers = Writers::start_paced(&args.addr, args.clients, &args.prefix, args.rate);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let terminated = async {
            match term.as_mut() {
                Some(term) => term.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(args.seconds)) => {}
            _ = tokio::signal::ctrl_c() => {}
            _ = terminated => {}
        }
        let logs = writers.stop().await;
        verify(&args.addr, &args.prefix, &logs).await
    });
    match report {
        Ok(report) => {
            if args.json {
                println!("{}", serde_json::to_string(&report).expect("the report serializes"));
            } else {
                println!(
                    "{} acknowledged writes from {} writers checked: {} lost, {} extra (unacknowledged but applied), \
                     {} failed batches, {} reconnects, longest wait {:.1} ms",
                    report.acknowledged_writes,
                    report.writers,
                    report.lost,
                    report.extra,
                    report.failed_batches,
                    report.reconnects,
                    report.longest_wait_ms
                );
                for example in &report.lost_examples {
                    println!("lost: {example}");
                }
            }
            i32::from(report.lost > 0)
        }
        Err(error) => {
            eprintln!("redis-handover check-consistency: {error}");
            2
        }
    }
}
