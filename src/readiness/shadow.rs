//! Shadow reads: a share of the application's read commands, answered by the primary as always, is also sent to
//! the other server while it follows the primary, and the two replies are compared.
//!
//! Sessions pick the reads ([`Tap::per_million`], a cheap draw per read command) among pure data reads
//! ([`shadowed`]), keep the request, and hand it with the primary's reply to the [`Tap`] at the end of their turn:
//! the client's reply never waits for the other server. One task ([`run`]) sends each to the follower over its own
//! connections (one per db and protocol) and compares the replies, as sets where Redis leaves the order open
//! (`SMEMBERS`, `HGETALL`, ...). A difference may only be the follower's lag: it is checked again up to three
//! times, each time asking the primary anew and the follower once it has applied everything the primary had then,
//! and counts only if it persists.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::command::{Command, CommandId};
use crate::control::{ControlConn, Credentials};
use crate::net::BackendTls;
use crate::primary::Server;
use crate::protocol::value::Value;

/// The pure data reads that may be shadowed: their replies depend only on the data, which replication makes the
/// same on both servers.
const SHADOWED: &[&str] = &[
    "BITCOUNT",
    "BITFIELD_RO",
    "BITPOS",
    "EXISTS",
    "GEODIST",
    "GEOHASH",
    "GEOPOS",
    "GEORADIUSBYMEMBER_RO",
    "GEORADIUS_RO",
    "GEOSEARCH",
    "GET",
    "GETBIT",
    "GETRANGE",
    "HEXISTS",
    "HGET",
    "HGETALL",
    "HKEYS",
    "HLEN",
    "HMGET",
    "HSTRLEN",
    "HVALS",
    "LCS",
    "LINDEX",
    "LLEN",
    "LPOS",
    "LRANGE",
    "MGET",
    "SCARD",
    "SDIFF",
    "SINTER",
    "SINTERCARD",
    "SISMEMBER",
    "SMEMBERS",
    "SMISMEMBER",
    "SORT_RO",
    "STRLEN",
    "SUBSTR",
    "SUNION",
    "TYPE",
    "XINFO",
    "XLEN",
    "XRANGE",
    "XREVRANGE",
    "ZCARD",
    "ZCOUNT",
    "ZDIFF",
    "ZINTER",
    "ZINTERCARD",
    "ZLEXCOUNT",
    "ZMSCORE",
    "ZRANGE",
    "ZRANGEBYLEX",
    "ZRANGEBYSCORE",
    "ZRANK",
    "ZREVRANGE",
    "ZREVRANGEBYLEX",
    "ZREVRANGEBYSCORE",
    "ZREVRANK",
    "ZSCORE",
    "ZUNION",
];

/// Reads left out, and why: their replies differ between two servers holding the same data.
pub const LEFT_OUT: &[(&str, &str)] = &[
    ("RANDOMKEY, SRANDMEMBER, HRANDFIELD, ZRANDMEMBER", "random"),
    (
        "TTL, PTTL, OBJECT, TIME, LASTSAVE",
        "time and each server's own bookkeeping",
    ),
    (
        "INFO, CLIENT, CONFIG, COMMAND, MEMORY, LATENCY, SLOWLOG, DEBUG, ROLE, LOLWUT, ACL, PUBSUB, DBSIZE",
        "server information",
    ),
    ("SCAN, SSCAN, HSCAN, ZSCAN, KEYS", "cursors and hash-table order"),
    (
        "XINFO CONSUMERS, XINFO GROUPS, XINFO STREAM FULL, XPENDING",
        "idle and delivery times",
    ),
    ("DUMP", "the payload carries each version's RDB format"),
    (
        "writes, blocking calls, scripts, commands inside MULTI",
        "they change data or wait: never sent twice",
    ),
];

/// Errors that say the server could not answer now, not what it answers: a sample with one is not compared.
const TRANSIENT: &[&[u8]] = &[
    b"-NOPERM",
    b"-NOAUTH",
    b"-BUSY",
    b"-LOADING",
    b"-MASTERDOWN",
    b"-TRYAGAIN",
];

/// Commands whose reply order Redis leaves open: compared as sets.
const UNORDERED: &[&str] = &["HGETALL", "HKEYS", "HVALS", "SDIFF", "SINTER", "SMEMBERS", "SUNION"];

/// Whether a command may be shadowed, by its place in the command table.
static SHADOWABLE: std::sync::LazyLock<Vec<bool>> = std::sync::LazyLock::new(|| {
    let mut table = vec![false; CommandId::COUNT];
    for name in SHADOWED {
        if let Some(i) = Command::lookup(name.as_bytes()).1.index() {
            table[i] = true;
        }
    }
    table
});

/// Whether the command `id` is one shadow reads may send to the follower (for XINFO, only `XINFO STREAM key`).
pub fn shadowed(id: CommandId) -> bool {
    id.index().is_some_and(|i| SHADOWABLE[i])
}

/// Whether this request may be sent to the follower: a shadowed command, and of XINFO only `XINFO STREAM key`
/// (the other forms show idle and delivery times, which differ on every call).
pub fn shadowed_request(id: CommandId, args: crate::protocol::request::Args<'_>) -> bool {
    static XINFO: std::sync::LazyLock<CommandId> = std::sync::LazyLock::new(|| Command::lookup(b"XINFO").1);
    shadowed(id) && (id != *XINFO || (args.len() == 3 && args.is(1, "STREAM")))
}

/// A read the primary answered, to send to the follower.
#[derive(Debug)]
pub struct Sample {
    /// The request as the client sent it.
    pub request: Bytes,
    /// The primary's reply frame.
    pub reply: Bytes,
    pub db: i64,
    pub protocol: u8,
}

/// How many samples may wait for the comparing task; more are dropped (and counted).
const QUEUE: usize = 4096;
/// The most samples compared in one go (the follower gets them pipelined).
const BATCH: usize = 256;
/// How many times a difference is looked at again, for a look with both servers at one offset.
const RECHECKS: usize = 5;
/// The longest a recheck waits for the follower to apply what the primary had.
const RECHECK_WAIT: Duration = Duration::from_secs(1);
/// Examples kept per command, and the longest text of a request or reply in one.
const EXAMPLES: usize = 3;
const EXAMPLE_CHARS: usize = 200;
/// Every call's bound.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Where sessions hand their samples: shared by all of them.
#[derive(Default)]
pub struct Tap {
    /// The share of reads sampled, per million; 0 while no shadow run is on.
    per_million: AtomicU32,
    sender: Mutex<Option<mpsc::Sender<Sample>>>,
    /// Samples dropped because the comparing task was behind.
    dropped: AtomicU64,
    /// The current or last run's results.
    results: Mutex<Option<ShadowReport>>,
}

impl Tap {
    /// The share of reads to sample, per million (one relaxed load: it runs for every read command).
    pub fn per_million(&self) -> u32 {
        self.per_million.load(Ordering::Relaxed)
    }

    /// Hands samples to the comparing task; those it has no room for are dropped.
    pub fn send(&self, samples: impl Iterator<Item = Sample>) {
        let sender = crate::links::lock(&self.sender);
        let Some(sender) = sender.as_ref() else {
            return;
        };
        for sample in samples {
            if sender.try_send(sample).is_err() {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The current or last run's results.
    pub fn report(&self) -> Option<ShadowReport> {
        let mut report = crate::links::lock(&self.results).clone()?;
        report.dropped = self.dropped.load(Ordering::Relaxed);
        Some(report)
    }

    /// Changes the run's results.
    pub fn update(&self, change: impl FnOnce(&mut ShadowReport)) {
        if let Some(report) = crate::links::lock(&self.results).as_mut() {
            change(report);
        }
    }

    /// Records a new run, unless one is on; `false` when one is.
    pub fn begin(&self, report: ShadowReport) -> bool {
        let mut results = crate::links::lock(&self.results);
        if results.as_ref().is_some_and(|r| r.state.is_on()) {
            return false;
        }
        self.dropped.store(0, Ordering::Relaxed);
        *results = Some(report);
        true
    }

    /// Starts sampling `fraction` of the reads; the receiver of the samples.
    pub(crate) fn open(&self, fraction: f64) -> mpsc::Receiver<Sample> {
        let (sender, receiver) = mpsc::channel(QUEUE);
        *crate::links::lock(&self.sender) = Some(sender);
        self.per_million
            .store((fraction * 1_000_000.0).round() as u32, Ordering::Relaxed);
        receiver
    }

    /// Stops sampling.
    fn close(&self) {
        self.per_million.store(0, Ordering::Relaxed);
        crate::links::lock(&self.sender).take();
    }

    /// The Prometheus lines of the shadow reads: compared and differing replies, by command.
    pub fn metrics(&self) -> String {
        use std::fmt::Write;
        let Some(report) = self.report() else {
            return String::new();
        };
        let mut out = String::new();
        let name = "redis_handover_shadow_reads_total";
        let _ = writeln!(
            out,
            "# HELP {name} Reads sent to the follower as well, by command and result (match, mismatch, or lag: a \
             difference gone on a second look).\n# TYPE {name} counter"
        );
        for command in &report.by_command {
            for (result, n) in [
                ("match", command.matched),
                ("mismatch", command.mismatched),
                ("lag", command.lagged),
            ] {
                let _ = writeln!(out, "{name}{{command=\"{}\",result=\"{result}\"}} {n}", command.command);
            }
        }
        let dropped = "redis_handover_shadow_reads_dropped_total";
        let _ = writeln!(
            out,
            "# HELP {dropped} Sampled reads not compared: the comparing task was behind.\n# TYPE {dropped} counter\n\
             {dropped} {}",
            report.dropped
        );
        out
    }
}

/// Where a shadow run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShadowState {
    /// The follower is being synced first (a handover's first phases, with no switch).
    Syncing,
    Running,
    Finished,
    /// Ended early: why is in `stopped_because`.
    Stopped,
}

impl ShadowState {
    pub fn name(self) -> &'static str {
        match self {
            ShadowState::Syncing => "syncing",
            ShadowState::Running => "running",
            ShadowState::Finished => "finished",
            ShadowState::Stopped => "stopped",
        }
    }

    fn is_on(self) -> bool {
        matches!(self, ShadowState::Syncing | ShadowState::Running)
    }
}

/// A shadow run's results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShadowReport {
    pub state: ShadowState,
    /// The share of reads sampled.
    pub fraction: f64,
    /// The server that answers clients, and the follower that got the copies.
    pub primary: String,
    pub follower: String,
    pub started_at_unix_ms: u64,
    pub until_unix_ms: u64,
    /// Replies compared, equal at once, equal on a second look (the follower lagged), different, and different
    /// at first with no later look at one offset on both (writes kept landing in between).
    pub compared: u64,
    pub matched: u64,
    pub lagged: u64,
    pub mismatched: u64,
    pub inconclusive: u64,
    /// Samples not compared: the primary refused the client (NOPERM, NOAUTH), or the follower could not be asked.
    pub skipped: u64,
    pub dropped: u64,
    pub by_command: Vec<ShadowCommand>,
    /// What is never shadowed, and why.
    pub left_out: Vec<String>,
    pub stopped_because: Option<String>,
}

/// One command's shadow reads.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ShadowCommand {
    pub command: String,
    pub matched: u64,
    pub lagged: u64,
    pub mismatched: u64,
    pub inconclusive: u64,
    /// A few of the differences.
    pub examples: Vec<Example>,
}

/// A difference: the request and both replies, as text.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Example {
    pub request: String,
    pub primary: String,
    pub follower: String,
}

impl ShadowReport {
    /// A run about to begin.
    pub fn new(fraction: f64, primary: String, follower: String, duration: Duration) -> ShadowReport {
        let now = crate::handover::schedule::now_ms();
        ShadowReport {
            state: ShadowState::Syncing,
            fraction,
            primary,
            follower,
            started_at_unix_ms: now,
            until_unix_ms: now + duration.as_millis() as u64,
            compared: 0,
            matched: 0,
            lagged: 0,
            mismatched: 0,
            inconclusive: 0,
            skipped: 0,
            dropped: 0,
            by_command: Vec::new(),
            left_out: LEFT_OUT.iter().map(|(what, why)| format!("{what}: {why}")).collect(),
            stopped_because: None,
        }
    }

    fn command(&mut self, name: &str) -> &mut ShadowCommand {
        let at = match self.by_command.iter().position(|c| c.command == name) {
            Some(at) => at,
            None => {
                self.by_command.push(ShadowCommand {
                    command: name.to_string(),
                    ..ShadowCommand::default()
                });
                self.by_command.len() - 1
            }
        };
        &mut self.by_command[at]
    }
}

/// The outcome of one sample.
#[derive(Debug, PartialEq)]
enum Verdict {
    Match,
    Lagged,
    Mismatch(Example),
    /// Different, and writes kept landing between the looks: no look saw both servers at one offset.
    Inconclusive,
    Skipped,
}

/// What the comparing task needs of the two servers.
pub struct Servers {
    pub primary: Server,
    pub follower: Server,
    pub primary_credentials: Credentials,
    pub follower_credentials: Credentials,
    pub tls: Option<BackendTls>,
}

/// Connections to one server, one per db and protocol, plus one for INFO.
struct Pool {
    server: Server,
    credentials: Credentials,
    tls: Option<BackendTls>,
    conns: HashMap<(i64, u8), ControlConn>,
    info: Option<ControlConn>,
}

impl Pool {
    fn new(server: Server, credentials: Credentials, tls: Option<BackendTls>) -> Pool {
        Pool {
            server,
            credentials,
            tls,
            conns: HashMap::new(),
            info: None,
        }
    }

    /// Sends `requests` in one write on the connection of `db` and `protocol`; their replies, in order.
    async fn call_many(&mut self, db: i64, protocol: u8, requests: &[&[u8]]) -> Result<Vec<Bytes>, String> {
        let key = (db, protocol);
        if self.conns.get(&key).is_none_or(ControlConn::is_broken) {
            let mut conn = ControlConn::connect(&self.server, &self.credentials, CALL_TIMEOUT, self.tls.as_ref())
                .await
                .map_err(|e| e.to_string())?;
            if protocol >= 3 {
                conn.call_raw(b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n", CALL_TIMEOUT)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            if db != 0 {
                let mut select = bytes::BytesMut::new();
                crate::protocol::request::write_command(&mut select, &[b"SELECT", db.to_string().as_bytes()]);
                conn.call_raw(&select, CALL_TIMEOUT).await.map_err(|e| e.to_string())?;
            }
            self.conns.insert(key, conn);
        }
        let conn = self.conns.get_mut(&key).expect("inserted above");
        conn.call_raw_many(requests, CALL_TIMEOUT)
            .await
            .map_err(|e| e.to_string())
    }

    /// The server's replication offset: what a primary has written, or what a follower has applied.
    async fn offset(&mut self) -> Result<i64, String> {
        if self.info.as_ref().is_none_or(ControlConn::is_broken) {
            let conn = ControlConn::connect(&self.server, &self.credentials, CALL_TIMEOUT, self.tls.as_ref())
                .await
                .map_err(|e| e.to_string())?;
            self.info = Some(conn);
        }
        let info = self
            .info
            .as_mut()
            .expect("connected above")
            .info("replication", CALL_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        let key = if info.get("role").map(String::as_str) == Some("slave") {
            "slave_repl_offset"
        } else {
            "master_repl_offset"
        };
        info.get(key)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("no {key} in INFO replication"))
    }
}

/// Compares the samples until `until` or `stop`; the results go to `tap`.
pub async fn run(
    tap: &Tap,
    servers: Servers,
    fraction: f64,
    until: Instant,
    stop: tokio_util::sync::CancellationToken,
    primary_generation: impl Fn() -> u64,
) {
    let generation = primary_generation();
    let mut primary = Pool::new(servers.primary, servers.primary_credentials, servers.tls.clone());
    let mut follower = Pool::new(servers.follower, servers.follower_credentials, servers.tls);
    let mut samples = tap.open(fraction);
    tap.update(|r| r.state = ShadowState::Running);
    tracing::info!(fraction, "shadow reads started");
    let mut batch = Vec::with_capacity(BATCH);
    let stopped = loop {
        let received = tokio::select! {
            n = samples.recv_many(&mut batch, BATCH) => n,
            () = tokio::time::sleep_until(until.into()) => break None,
            () = stop.cancelled() => break Some("stopped by the operator".to_string()),
        };
        if received == 0 {
            break None;
        }
        if primary_generation() != generation {
            break Some("the primary changed (a handover switched): the follower no longer follows".into());
        }
        compare_batch(tap, &mut primary, &mut follower, &mut batch).await;
    };
    tap.close();
    // What was sampled before the end is still compared (at most the queue's length).
    if primary_generation() == generation {
        while let Ok(sample) = samples.try_recv() {
            batch.push(sample);
        }
        compare_batch(tap, &mut primary, &mut follower, &mut batch).await;
    }
    tap.update(|report| {
        report.state = if stopped.is_some() {
            ShadowState::Stopped
        } else {
            ShadowState::Finished
        };
        report.stopped_because = stopped;
        report
            .by_command
            .sort_by_key(|c| std::cmp::Reverse((c.mismatched, c.matched + c.lagged)));
    });
    tracing::info!("shadow reads ended");
}

/// Compares a batch of samples (emptying it): the follower gets each db and protocol's requests in one write, and
/// the outcomes are added to the run's results.
async fn compare_batch(tap: &Tap, primary: &mut Pool, follower: &mut Pool, batch: &mut Vec<Sample>) {
    let mut groups: BTreeMap<(i64, u8), Vec<usize>> = BTreeMap::new();
    for (i, sample) in batch.iter().enumerate() {
        groups.entry((sample.db, sample.protocol)).or_default().push(i);
    }
    let mut replies: Vec<Option<Bytes>> = vec![None; batch.len()];
    for ((db, protocol), indexes) in groups {
        let requests: Vec<&[u8]> = indexes.iter().map(|&i| &batch[i].request[..]).collect();
        if let Ok(got) = follower.call_many(db, protocol, &requests).await {
            for (&i, reply) in indexes.iter().zip(got) {
                replies[i] = Some(reply);
            }
        }
    }
    for (sample, reply) in batch.drain(..).zip(replies) {
        let name = command_name(&sample.request);
        let verdict = match reply {
            Some(reply) => judge(primary, follower, &sample, &name, reply).await,
            None => Verdict::Skipped,
        };
        count(tap, &name, verdict);
    }
}

/// Adds one sample's outcome to the run's results.
fn count(tap: &Tap, name: &str, verdict: Verdict) {
    tap.update(|report| {
        if verdict == Verdict::Skipped {
            report.skipped += 1;
            return;
        }
        report.compared += 1;
        let line = report.command(name);
        match verdict {
            Verdict::Match => line.matched += 1,
            Verdict::Lagged => line.lagged += 1,
            Verdict::Inconclusive => line.inconclusive += 1,
            Verdict::Mismatch(example) => {
                line.mismatched += 1;
                if line.examples.len() < EXAMPLES && !line.examples.iter().any(|e| e.request == example.request) {
                    line.examples.push(example);
                }
            }
            Verdict::Skipped => {}
        }
        let sums = report.by_command.iter().fold((0, 0, 0, 0), |(m, l, x, i), c| {
            (m + c.matched, l + c.lagged, x + c.mismatched, i + c.inconclusive)
        });
        (report.matched, report.lagged, report.mismatched, report.inconclusive) = sums;
    });
}

/// Compares a sample's reply from the primary with the follower's; a difference is looked at again before it
/// counts.
async fn judge(primary: &mut Pool, follower: &mut Pool, sample: &Sample, name: &str, reply: Bytes) -> Verdict {
    let transient = |frame: &[u8]| TRANSIENT.iter().any(|t| frame.starts_with(t));
    if transient(&sample.reply) || transient(&reply) {
        return Verdict::Skipped;
    }
    if same(name, sample.protocol, &sample.reply, &reply) {
        return Verdict::Match;
    }
    for _ in 0..RECHECKS {
        let Ok((primary_reply, written)) = pinned(primary, sample).await else {
            return Verdict::Skipped;
        };
        let deadline = Instant::now() + RECHECK_WAIT;
        loop {
            match follower.offset().await {
                Ok(applied) if applied >= written => break,
                Ok(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(5)).await,
                _ => return Verdict::Skipped,
            }
        }
        let Ok((follower_reply, applied)) = pinned(follower, sample).await else {
            return Verdict::Skipped;
        };
        if applied != written {
            // A write landed in between: this look does not compare one dataset with itself.
            continue;
        }
        if same(name, sample.protocol, &primary_reply, &follower_reply) {
            return Verdict::Lagged;
        }
        return Verdict::Mismatch(Example {
            request: request_text(&sample.request),
            primary: reply_text(&primary_reply, sample.protocol),
            follower: reply_text(&follower_reply, sample.protocol),
        });
    }
    Verdict::Inconclusive
}

/// The sample's request answered in a transaction with `INFO replication`: the reply, and the server's replication
/// offset at that very point (what a primary had written, or a follower had applied).
async fn pinned(pool: &mut Pool, sample: &Sample) -> Result<(Bytes, i64), String> {
    const MULTI: &[u8] = b"*1\r\n$5\r\nMULTI\r\n";
    const INFO: &[u8] = b"*2\r\n$4\r\nINFO\r\n$11\r\nreplication\r\n";
    const EXEC: &[u8] = b"*1\r\n$4\r\nEXEC\r\n";
    let replies = pool
        .call_many(sample.db, sample.protocol, &[MULTI, &sample.request, INFO, EXEC])
        .await?;
    let exec = replies.last().ok_or("no EXEC reply")?;
    let (reply, info) =
        exec_parts(exec).ok_or_else(|| format!("EXEC answered {}", reply_text(exec, sample.protocol)))?;
    let text = match Value::decode(&info, sample.protocol) {
        Some(Value::Str(text)) => text,
        _ => return Err("INFO replication did not answer a string".into()),
    };
    let info = crate::control::parse_info(&text);
    let key = if info.get("role").map(String::as_str) == Some("slave") {
        "slave_repl_offset"
    } else {
        "master_repl_offset"
    };
    let offset = info
        .get(key)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no {key} in INFO replication"))?;
    Ok((reply, offset))
}

/// The two reply frames inside an EXEC reply of two commands (`*2\r\n<frame><frame>`).
fn exec_parts(frame: &[u8]) -> Option<(Bytes, Bytes)> {
    let body = frame.strip_prefix(b"*2\r\n")?;
    let mut scanner = crate::protocol::reply::ReplyScanner::new();
    let crate::protocol::reply::Scanned::Frame { len: first, .. } = scanner.scan(body) else {
        return None;
    };
    let crate::protocol::reply::Scanned::Frame { len: second, .. } = scanner.scan(&body[first..]) else {
        return None;
    };
    (first + second == body.len()).then(|| {
        (
            Bytes::copy_from_slice(&body[..first]),
            Bytes::copy_from_slice(&body[first..]),
        )
    })
}

/// Whether two replies to `name` say the same: byte for byte, or as sets where the order is open.
fn same(name: &str, protocol: u8, a: &[u8], b: &[u8]) -> bool {
    if a == b {
        return true;
    }
    if !UNORDERED.contains(&name) {
        return false;
    }
    match (Value::decode(a, protocol), Value::decode(b, protocol)) {
        (Some(a), Some(b)) => {
            let prepare = |v| if name == "HGETALL" { pairs(v) } else { v };
            unordered(prepare(a)) == unordered(prepare(b))
        }
        _ => false,
    }
}

/// A reply with its elements (or field and value pairs) in a canonical order.
fn unordered(value: Value) -> Vec<String> {
    let mut items: Vec<String> = match value {
        Value::Array(items) if items.iter().all(|i| !matches!(i, Value::Array(_))) => {
            items.iter().map(|i| format!("{i:?}")).collect()
        }
        Value::Map(entries) => entries.iter().map(|(k, v)| format!("{k:?}={v:?}")).collect(),
        other => vec![format!("{other:?}")],
    };
    items.sort();
    items
}

/// For HGETALL in RESP2 (a flat array of fields and values), the pairs: the order of fields is open, not the
/// pairing.
fn pairs(value: Value) -> Value {
    match value {
        Value::Array(items) if items.len() % 2 == 0 => {
            let mut items = items.into_iter();
            let mut entries = Vec::new();
            while let (Some(k), Some(v)) = (items.next(), items.next()) {
                entries.push((k, v));
            }
            Value::Map(entries)
        }
        other => other,
    }
}

/// The command's name, upper case, from a raw request (RESP or inline).
fn command_name(request: &[u8]) -> String {
    let mut parser = crate::protocol::request::RequestParser::new();
    match parser.parse(request) {
        crate::protocol::request::Parsed::Request(_) => {
            String::from_utf8_lossy(parser.args(request).get(0).unwrap_or_default()).to_ascii_uppercase()
        }
        _ => "?".into(),
    }
}

/// A request as words, as redis-cli shows them (quoted where needed), cut at [`EXAMPLE_CHARS`].
fn request_text(request: &[u8]) -> String {
    let mut parser = crate::protocol::request::RequestParser::new();
    let text = match parser.parse(request) {
        crate::protocol::request::Parsed::Request(_) => {
            let args = parser.args(request);
            (0..args.len())
                .map(|i| word(args.get(i).unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(" ")
        }
        _ => String::from_utf8_lossy(request).into_owned(),
    };
    cut(text)
}

/// A reply in a compact form (`[a, 1, (nil)]`, `{field: value}`), cut at [`EXAMPLE_CHARS`].
fn reply_text(frame: &[u8], protocol: u8) -> String {
    fn render(value: &Value, out: &mut String) {
        match value {
            Value::Str(s) => out.push_str(&word(s)),
            Value::Int(n) => out.push_str(&n.to_string()),
            Value::Error(e) => {
                out.push_str("(error) ");
                out.push_str(e);
            }
            Value::Null => out.push_str("(nil)"),
            Value::Other(o) => out.push_str(o),
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    render(item, out);
                }
                out.push(']');
            }
            Value::Map(entries) => {
                out.push('{');
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    render(k, out);
                    out.push_str(": ");
                    render(v, out);
                }
                out.push('}');
            }
        }
    }
    let mut text = String::new();
    match Value::decode(frame, protocol) {
        Some(value) => render(&value, &mut text),
        None => text = String::from_utf8_lossy(frame).replace("\r\n", " "),
    }
    cut(text)
}

/// An argument or string as text: quoted when empty or holding spaces, quotes or unprintable bytes.
fn word(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    if !text.is_empty() && text.chars().all(|c| c.is_ascii_graphic() && c != '"') {
        return text.into_owned();
    }
    format!("{:?}", text)
}

/// `text` cut at [`EXAMPLE_CHARS`] characters.
fn cut(text: String) -> String {
    match text.char_indices().nth(EXAMPLE_CHARS) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text,
    }
}

/// The commands sent that shadow reads left out, with their counts (for the report's list).
pub fn not_shadowed(counted: &[super::census::Counted]) -> BTreeMap<String, u64> {
    counted
        .iter()
        .filter(|c| !c.command.contains(' '))
        .filter(|c| {
            let (command, id) = Command::lookup(c.command.as_bytes());
            command == Command::Read && !shadowed(id)
        })
        .map(|c| (c.command.clone(), c.count))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pure_data_reads_are_shadowed() {
        for name in SHADOWED {
            let (command, id) = Command::lookup(name.as_bytes());
            assert_eq!(command, Command::Read, "{name} is a read");
            assert!(shadowed(id), "{name}");
        }
        for name in [
            "SET",
            "INFO",
            "CONFIG",
            "RANDOMKEY",
            "SCAN",
            "TTL",
            "DUMP",
            "BLPOP",
            "EVAL",
            "KEYS",
            "XPENDING",
        ] {
            assert!(!shadowed(Command::lookup(name.as_bytes()).1), "{name}");
        }
        let request = |words: &[&str]| {
            let mut raw = bytes::BytesMut::new();
            let words: Vec<&[u8]> = words.iter().map(|w| w.as_bytes()).collect();
            crate::protocol::request::write_command(&mut raw, &words);
            raw
        };
        for (words, expected) in [
            (&["XINFO", "STREAM", "s"][..], true),
            (&["XINFO", "STREAM", "s", "FULL"][..], false),
            (&["XINFO", "GROUPS", "s"][..], false),
            (&["GET", "k"][..], true),
        ] {
            let raw = request(words);
            let mut parser = crate::protocol::request::RequestParser::new();
            parser.parse(&raw);
            let args = parser.args(&raw);
            let id = Command::lookup(args.get(0).unwrap()).1;
            assert_eq!(shadowed_request(id, args), expected, "{words:?}");
        }
    }

    #[test]
    fn a_transaction_s_reply_is_split_into_the_read_s_and_info_s() {
        let exec = b"*2\r\n$1\r\nv\r\n$28\r\n# Replication\r\nrole:master\r\n\r\n";
        let (reply, info) = exec_parts(exec).unwrap();
        assert_eq!(&reply[..], b"$1\r\nv\r\n");
        assert!(info.starts_with(b"$28\r\n"));
        assert_eq!(exec_parts(b"-EXECABORT Transaction discarded\r\n"), None);
        assert_eq!(exec_parts(b"*2\r\n$1\r\nv\r\n"), None);
    }

    #[test]
    fn replies_are_compared_as_sets_where_the_order_is_open() {
        let a = b"*2\r\n$1\r\na\r\n$1\r\nb\r\n";
        let b = b"*2\r\n$1\r\nb\r\n$1\r\na\r\n";
        assert!(same("SMEMBERS", 2, a, b));
        assert!(!same("LRANGE", 2, a, b));
        assert!(same("GET", 2, b"$1\r\nx\r\n", b"$1\r\nx\r\n"));
        assert!(!same("SMEMBERS", 2, a, b"*1\r\n$1\r\na\r\n"));
        let fields = b"*4\r\n$1\r\nf\r\n$1\r\n1\r\n$1\r\ng\r\n$1\r\n2\r\n";
        let swapped = b"*4\r\n$1\r\ng\r\n$1\r\n2\r\n$1\r\nf\r\n$1\r\n1\r\n";
        let mispaired = b"*4\r\n$1\r\nf\r\n$1\r\n2\r\n$1\r\ng\r\n$1\r\n1\r\n";
        assert!(same("HGETALL", 2, fields, swapped));
        assert!(!same("HGETALL", 2, fields, mispaired), "a field keeps its value");
        let map = b"%1\r\n$1\r\nf\r\n$1\r\n1\r\n";
        assert!(same("HGETALL", 3, map, map));
    }

    #[test]
    fn examples_are_short_readable_text() {
        assert_eq!(
            request_text(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\na b\r\n"),
            "SET k \"a b\""
        );
        assert_eq!(reply_text(b"*3\r\n$1\r\na\r\n:1\r\n*-1\r\n", 2), "[a, 1, (nil)]");
        assert_eq!(reply_text(b"%1\r\n$1\r\nf\r\n$0\r\n\r\n", 3), "{f: \"\"}");
        assert_eq!(reply_text(b"-ERR no\r\n", 2), "(error) ERR no");
        assert_eq!(cut("x".repeat(300)).chars().count(), EXAMPLE_CHARS + 1);
        assert_eq!(command_name(b"*2\r\n$3\r\nget\r\n$1\r\nk\r\n"), "GET");
        assert_eq!(command_name(b"xinfo stream s\r\n"), "XINFO");
    }
}
