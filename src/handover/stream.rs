//! Reading a newer primary's replication stream for what an older replica of it cannot apply.
//!
//! A replica that cannot apply a command of its master's stream skips it and keeps the link up with its offset
//! equal to the master's: nothing at the link level shows the divergence (REDIS-FACTS.md, "Rollback window";
//! design study `rollback-window.md` §1.3). Redis 6.2 counts such errors (`unexpected_error_replies`), 5.0 does not
//! even log some of them (a `SET ... PXAT` fails with a silent syntax error). So the proxy reads the stream itself,
//! as a replica would, and checks each command against the older version's grammar.

use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::control::{ControlConn, ControlError, Credentials};
use crate::net::{BackendTls, Stream};
use crate::primary::Server;
use crate::protocol::request::{Parsed, RequestParser, write_command};

/// The client name of the stream reader's connection on the primary (it shows in `CLIENT LIST` and as a replica
/// at port 0 in `INFO replication`).
pub const READER_NAME: &str = "redis-handover-stream";
/// How often the reader acknowledges, so the primary keeps it (it drops a silent replica after `repl-timeout`).
const ACK_EVERY: Duration = Duration::from_secs(1);

/// A replica's view of a primary's stream, from a given offset. The commands are parsed in place, as client
/// requests are, with no allocation per command: the stream carries every write the primary takes.
pub struct StreamReader {
    stream: Stream,
    input: BytesMut,
    parser: RequestParser,
    /// The offset of the last byte read.
    pub offset: i64,
    last_ack: tokio::time::Instant,
}

/// What the reader found next.
pub enum Next {
    /// Nothing came within the wait.
    Idle,
    /// A command the follower can apply.
    Fine,
    /// A command the follower cannot apply: it, as a person reads it, and why.
    Unappliable(String, String),
}

impl StreamReader {
    /// Asks `server` for its stream from byte `from` of replication ID `replid` (a partial resync: no RDB). A
    /// primary that answers with a full resync instead (the offset left its backlog) is left at once, before it
    /// could send one.
    pub async fn open(
        server: &Server,
        credentials: &Credentials,
        tls: Option<&BackendTls>,
        replid: &str,
        from: i64,
        timeout: Duration,
    ) -> Result<StreamReader, String> {
        let failed = |e: ControlError| format!("could not follow the stream of {}: {e}", server.addr);
        let mut conn = ControlConn::connect(server, credentials, timeout, tls)
            .await
            .map_err(failed)?;
        conn.ok(&["CLIENT", "SETNAME", READER_NAME], timeout)
            .await
            .map_err(failed)?;
        conn.ok(&["REPLCONF", "capa", "eof", "capa", "psync2"], timeout)
            .await
            .map_err(failed)?;
        let from_text = from.to_string();
        let answer = conn
            .call(&["PSYNC", replid, &from_text], timeout)
            .await
            .map_err(failed)?;
        let text = answer.as_bytes().map(String::from_utf8_lossy).unwrap_or_default();
        if !text.starts_with("CONTINUE") {
            // The connection closes with `conn`: a full sync is cancelled before its RDB is sent.
            return Err(format!(
                "{} would not continue its stream from offset {from} of {replid}: {answer:?}",
                server.addr
            ));
        }
        let (stream, input) = conn.into_parts();
        let mut reader = StreamReader {
            stream,
            input,
            parser: RequestParser::new(),
            offset: from - 1,
            last_ack: tokio::time::Instant::now(),
        };
        reader.ack(timeout).await?;
        Ok(reader)
    }

    /// Reads the next command of the stream, waiting up to `wait`, and checks it against `version`.
    pub async fn next(&mut self, version: (u32, u32, u32), wait: Duration) -> Result<Next, String> {
        let lost = |e: std::io::Error| format!("lost the replication stream: {e}");
        if self.last_ack.elapsed() >= ACK_EVERY {
            self.ack(wait.max(Duration::from_millis(100))).await?;
        }
        loop {
            match self.parser.parse(&self.input) {
                Parsed::Request(len) => {
                    let (verdict, getack) = {
                        // The first arguments are all any check reads (options come before the data).
                        let mut first: [&[u8]; 16] = [&[]; 16];
                        let argc = self.parser.argc().min(first.len());
                        for (i, arg) in first.iter_mut().take(argc).enumerate() {
                            *arg = self.parser.arg(&self.input, i);
                        }
                        let args = &first[..argc];
                        let getack = args.len() >= 2
                            && args[0].eq_ignore_ascii_case(b"REPLCONF")
                            && args[1].eq_ignore_ascii_case(b"GETACK");
                        let verdict = match unappliable(version, args) {
                            Some(why) => Next::Unappliable(shown(args), why),
                            None => Next::Fine,
                        };
                        (verdict, getack)
                    };
                    self.input.advance(len);
                    self.offset += len as i64;
                    if getack {
                        self.ack(wait.max(Duration::from_millis(100))).await?;
                    }
                    return Ok(verdict);
                }
                Parsed::Empty(len) => {
                    // A primary sends a bare newline as a keepalive; it counts in the offset all the same.
                    self.input.advance(len);
                    self.offset += len as i64;
                }
                Parsed::Error(error) => return Err(format!("the replication stream is not RESP: {error:?}")),
                Parsed::Incomplete => {
                    self.input.reserve(64 * 1024);
                    match tokio::time::timeout(wait, self.stream.read_buf(&mut self.input)).await {
                        Err(_) => return Ok(Next::Idle),
                        Ok(Ok(0)) => return Err("lost the replication stream: the primary closed it".into()),
                        Ok(Ok(_)) => {}
                        Ok(Err(error)) => return Err(lost(error)),
                    }
                }
            }
        }
    }

    /// Acknowledges offset 0: the primary keeps the reader, and a `WAIT` after a write never counts it (Redis
    /// counts replicas by the offset they acknowledged).
    async fn ack(&mut self, timeout: Duration) -> Result<(), String> {
        self.last_ack = tokio::time::Instant::now();
        let mut out = BytesMut::new();
        write_command(&mut out, &[b"REPLCONF", b"ACK", b"0"]);
        match tokio::time::timeout(timeout, self.stream.write_all(&out)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(format!("lost the replication stream: {error}")),
            Err(_) => Err("the primary did not take the stream reader's ACK in time".into()),
        }
    }
}

/// Write commands newer than Redis 5.0, with the version that brought them (from each command's `since` in
/// Redis's command reference). A primary propagates some of them as they are (`LMOVE`, `COPY`), others rewritten
/// (`GETDEL` as `DEL`); either way an older replica cannot run the ones it does not know.
const NEWER_COMMANDS: &[(&str, (u32, u32, u32))] = &[
    ("BLMOVE", (6, 2, 0)),
    ("COPY", (6, 2, 0)),
    ("GEOSEARCHSTORE", (6, 2, 0)),
    ("GETDEL", (6, 2, 0)),
    ("GETEX", (6, 2, 0)),
    ("LMOVE", (6, 2, 0)),
    ("XAUTOCLAIM", (6, 2, 0)),
    ("ZDIFFSTORE", (6, 2, 0)),
    ("ZRANGESTORE", (6, 2, 0)),
    ("BLMPOP", (7, 0, 0)),
    ("BZMPOP", (7, 0, 0)),
    ("FUNCTION", (7, 0, 0)),
    ("LMPOP", (7, 0, 0)),
    ("SPUBLISH", (7, 0, 0)),
    ("ZMPOP", (7, 0, 0)),
];

/// The newest RDB version a Redis server of `version` reads (`RDB_VERSION` in rdb.h: 9 up to 6.2, 10 in 7.0, 11 in
/// 7.2, 12 in 7.4).
fn rdb_version(version: (u32, u32, u32)) -> u16 {
    match version {
        v if v < (7, 0, 0) => 9,
        v if v < (7, 2, 0) => 10,
        v if v < (7, 4, 0) => 11,
        _ => 12,
    }
}

/// Whether the proxy knows what a primary of `version` writes to its stream well enough to check it: up to 7.0,
/// the newest version it fronts. A newer primary may send commands [`unappliable`] does not know.
pub fn knows_stream_of(version: (u32, u32, u32)) -> bool {
    version < (7, 1, 0)
}

/// Why a Redis server of `version` cannot apply `args`, a command of a newer primary's replication stream; `None`
/// when it can. The rules are what Redis 7.0 propagates (it rewrites every expiry of `SET` as `PXAT`, keeps the
/// flags of `EXPIRE`, adds `ENTRIESREAD` to stream groups) against what 5.0 and 6.2 parse; the design study
/// `rollback-window.md` §1.3 measured each one.
pub fn unappliable(version: (u32, u32, u32), args: &[&[u8]]) -> Option<String> {
    // Every name checked is short: a longer one is none of them, and needs no copy.
    let first = args.first()?;
    if first.len() > 16 {
        return None;
    }
    let mut upper = [0u8; 16];
    upper[..first.len()].copy_from_slice(first);
    upper[..first.len()].make_ascii_uppercase();
    let name = std::str::from_utf8(&upper[..first.len()]).ok()?;
    let word = |i: usize| args.get(i).map(|a| String::from_utf8_lossy(a).to_ascii_uppercase());
    let words_from = |i: usize| (i..args.len()).filter_map(word).collect::<Vec<_>>();
    let older = |than: (u32, u32, u32)| version < than;
    let (major, minor, _) = version;
    let needs =
        |what: String, since: &str| Some(format!("{what}, which Redis {major}.{minor} does not have ({since})"));
    if let Some((_, since)) = NEWER_COMMANDS.iter().find(|(n, _)| *n == name)
        && older(*since)
    {
        return needs(
            format!("the command {name}"),
            &format!("new in {}.{}", since.0, since.1),
        );
    }
    match name {
        "SET" if args.len() > 3 => {
            let options = words_from(3);
            for (option, since) in [
                ("PXAT", (6, 2, 0)),
                ("EXAT", (6, 2, 0)),
                ("GET", (6, 2, 0)),
                ("KEEPTTL", (6, 0, 0)),
            ] {
                if older(since) && options.iter().any(|o| o == option) {
                    return needs(format!("SET ... {option}"), &format!("new in {}.{}", since.0, since.1));
                }
            }
            None
        }
        "EXPIRE" | "PEXPIRE" | "EXPIREAT" | "PEXPIREAT" if args.len() > 3 && older((7, 0, 0)) => needs(
            format!("{name} ... {}", word(3).unwrap_or_default()),
            "the NX, XX, GT and LT flags are new in 7.0",
        ),
        "ZADD" if older((6, 2, 0)) => {
            // Options come first; the scores and members after them are data.
            let options = words_from(2);
            options
                .iter()
                .take_while(|w| ["NX", "XX", "GT", "LT", "CH", "INCR"].contains(&w.as_str()))
                .find(|w| *w == "GT" || *w == "LT")
                .and_then(|o| needs(format!("ZADD ... {o}"), "new in 6.2"))
        }
        "LPOP" | "RPOP" if args.len() > 2 && older((6, 2, 0)) => needs(format!("{name} with a count"), "new in 6.2"),
        "FLUSHDB" | "FLUSHALL" if older((6, 2, 0)) && word(1).as_deref() == Some("SYNC") => {
            needs(format!("{name} SYNC"), "new in 6.2")
        }
        "XADD" | "XTRIM" if older((6, 2, 0)) => {
            stream_trim_options(&words_from(2)).and_then(|o| needs(format!("{name} ... {o}"), "new in 6.2"))
        }
        "XGROUP" => match word(1).as_deref() {
            Some("CREATECONSUMER") if older((6, 2, 0)) => needs("XGROUP CREATECONSUMER".into(), "new in 6.2"),
            Some(sub @ ("CREATE" | "SETID"))
                if older((7, 0, 0)) && words_from(4).iter().any(|w| w == "ENTRIESREAD") =>
            {
                needs(format!("XGROUP {sub} ... ENTRIESREAD"), "new in 7.0")
            }
            _ => None,
        },
        "XSETID" if args.len() > 3 && older((7, 0, 0)) => {
            needs("XSETID ... ENTRIESADDED/MAXDELETEDID".into(), "new in 7.0")
        }
        "RESTORE" => {
            // A DUMP payload ends with its RDB version (2 bytes, little endian) and a CRC64 (8 bytes).
            let payload = args.get(3)?;
            let at = payload.len().checked_sub(10)?;
            let rdb = u16::from_le_bytes([payload[at], payload[at + 1]]);
            let readable = rdb_version(version);
            (rdb > readable).then(|| {
                format!(
                    "RESTORE of a payload in RDB format {rdb}, which Redis {major}.{minor} cannot read (it reads up to \
                     {readable})"
                )
            })
        }
        _ => None,
    }
}

/// The first option of `XADD`/`XTRIM` newer than 5.0, among the options before the entry ID (the field names
/// and values after it are data).
fn stream_trim_options(words: &[String]) -> Option<&'static str> {
    let mut i = 0;
    while let Some(word) = words.get(i) {
        match word.as_str() {
            "NOMKSTREAM" => return Some("NOMKSTREAM"),
            "MINID" => return Some("MINID"),
            "LIMIT" => return Some("LIMIT"),
            "MAXLEN" => {
                // MAXLEN [=|~] threshold
                i += if matches!(words.get(i + 1).map(String::as_str), Some("=" | "~")) {
                    3
                } else {
                    2
                };
            }
            _ => return None,
        }
    }
    None
}

/// A command as a person reads it: its first few arguments, shortened.
pub fn shown(args: &[&[u8]]) -> String {
    let mut words: Vec<String> = args
        .iter()
        .take(6)
        .map(|a| {
            let text = String::from_utf8_lossy(a);
            if text.chars().count() > 24 {
                format!("{}...", text.chars().take(24).collect::<String>())
            } else {
                text.into_owned()
            }
        })
        .collect();
    if args.len() > 6 {
        words.push("...".into());
    }
    words.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<&[u8]> {
        text.split(' ').map(str::as_bytes).collect()
    }

    const V5: (u32, u32, u32) = (5, 0, 6);
    const V6: (u32, u32, u32) = (6, 2, 14);
    const V7: (u32, u32, u32) = (7, 0, 15);

    #[test]
    fn what_7_0_propagates_for_set_with_an_expiry_is_beyond_5_0_only() {
        let set = args("SET k v PXAT 1732000000000");
        let reason = unappliable(V5, &set).expect("5.0 has no PXAT");
        assert!(
            reason.contains("SET ... PXAT") && reason.contains("Redis 5.0"),
            "{reason}"
        );
        assert_eq!(unappliable(V6, &set), None);
        assert!(unappliable(V5, &args("SET k 1.5 KEEPTTL")).is_some());
        assert_eq!(unappliable(V5, &args("SET k v NX")), None);
        assert_eq!(unappliable(V5, &args("SET k v")), None);
    }

    #[test]
    fn expire_flags_are_beyond_every_older_version() {
        let expire = args("PEXPIREAT k 1732000000000 NX");
        assert!(unappliable(V6, &expire).unwrap().contains("PEXPIREAT ... NX"));
        assert!(unappliable(V5, &expire).is_some());
        assert_eq!(unappliable(V7, &expire), None);
        assert_eq!(unappliable(V5, &args("PEXPIREAT k 1732000000000")), None);
    }

    #[test]
    fn newer_commands_and_options() {
        assert!(unappliable(V6, &args("FUNCTION LOAD x")).unwrap().contains("FUNCTION"));
        assert!(unappliable(V5, &args("LMOVE a b LEFT RIGHT")).is_some());
        assert_eq!(unappliable(V6, &args("LMOVE a b LEFT RIGHT")), None);
        assert!(unappliable(V5, &args("LPOP k 2")).is_some());
        assert_eq!(unappliable(V6, &args("LPOP k 2")), None);
        assert!(unappliable(V5, &args("ZADD z GT 1 m")).is_some());
        assert!(unappliable(V5, &args("XADD s MINID = 1-0 2-0 f v")).is_some());
        assert_eq!(unappliable(V5, &args("XADD s MAXLEN = 2 2-0 f v")), None);
        assert_eq!(
            unappliable(V5, &args("XADD s MAXLEN 2 2-0 LIMIT v")),
            None,
            "a field named LIMIT"
        );
        assert!(unappliable(V5, &args("XADD s MAXLEN ~ 2 LIMIT 10 2-0 f v")).is_some());
        assert_eq!(unappliable(V5, &args("ZADD z 1 GT")), None, "a member named GT");
        assert!(unappliable(V5, &args("ZADD z XX GT CH 1 m")).is_some());
        assert!(unappliable(V6, &args("XGROUP CREATE s g 0 ENTRIESREAD 0")).is_some());
        assert_eq!(unappliable(V6, &args("XGROUP CREATE s g 0")), None);
        assert!(unappliable(V6, &args("XSETID s 5-0 ENTRIESADDED 5 MAXDELETEDID 1-0")).is_some());
        assert!(unappliable(V5, &args("FLUSHDB SYNC")).is_some());
        assert_eq!(unappliable(V5, &args("FLUSHDB ASYNC")), None);
        for ok in [
            "HSET k f v",
            "INCR k",
            "DEL k",
            "MULTI",
            "EXEC",
            "SELECT 1",
            "PING",
            "PUBLISH c m",
        ] {
            assert_eq!(unappliable(V5, &args(ok)), None, "{ok}");
        }
    }

    #[test]
    fn restore_payloads_are_judged_by_their_rdb_version() {
        let payload = |rdb: u16| {
            let mut p = vec![0u8, 1, b'x'];
            p.extend_from_slice(&rdb.to_le_bytes());
            p.extend_from_slice(&[0; 8]);
            p
        };
        let (p10, p9) = (payload(10), payload(9));
        let restore = |p: &'static [u8]| -> Vec<&'static [u8]> { vec![b"RESTORE", b"k", b"0", p] };
        let (p10, p9): (&'static [u8], &'static [u8]) = (p10.leak(), p9.leak());
        assert!(unappliable(V6, &restore(p10)).unwrap().contains("RDB format 10"));
        assert_eq!(unappliable(V6, &restore(p9)), None);
        assert_eq!(unappliable(V7, &restore(p10)), None);
    }

    #[test]
    fn commands_are_shown_short() {
        assert_eq!(shown(&args("SET k v PXAT 1")), "SET k v PXAT 1");
        let long = format!("SET {} v", "k".repeat(40));
        assert!(shown(&args(&long)).contains("kkk..."));
    }
}
