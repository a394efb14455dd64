//! The client side: arbitrary bytes through the request parser, in two pieces split where the input says, must
//! give exactly the requests and the error they give in one piece; every request is then decided by a session core
//! on shared links (interceptions, pins, HELLO options, blocking-call timeouts, CLIENT subcommands) without a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use redis_handover::command::Command;
use redis_handover::links::LinkKey;
use redis_handover::primary::Side;
use redis_handover::protocol::request::{Parsed, RequestParser};
use redis_handover::session::core::{Links, Request, SessionCore, Verdict};
use redis_handover::session::state::{Blocked, parse_hello};
use redis_handover::shared::Shared;

/// The requests in `input` (as argument lists) and how it ended, feeding it in two pieces.
fn parse(input: &[u8], split: usize) -> (Vec<Vec<Vec<u8>>>, Option<String>) {
    let mut parser = RequestParser::new();
    static ENV: std::sync::OnceLock<Shared> = std::sync::OnceLock::new();
    let env = ENV.get_or_init(|| Shared::new(Default::default()).expect("no TLS"));
    let mut core = SessionCore::new(env, 1_000_000_000_000);
    // The session's shared link, and whether it has a connection of its own (as the driver would give it).
    let (mut link, mut own): (Option<LinkKey>, Option<u64>) = (None, None);
    let mut buf = Vec::new();
    let mut requests = Vec::new();
    for piece in [&input[..split], &input[split..]] {
        buf.extend_from_slice(piece);
        loop {
            match parser.parse(&buf) {
                Parsed::Request(n) => {
                    assert!(n > 0 && n <= buf.len());
                    let args = parser.args(&buf);
                    let command = Command::classify(args.get(0).unwrap_or_default());
                    let _ = parse_hello(args);
                    let _ = Blocked::of(args).and_then(|b| b.remaining());
                    let _ = command.is_write(args.get(1));
                    let links = Links {
                        own,
                        shared: link.as_ref().map(|key| (key, false)),
                    };
                    match core.on_request(env, links, Request { args, raw: &buf[..n] }) {
                        Verdict::Moved { key, .. } => link = Some(key),
                        Verdict::Connect => {
                            core.on_own_link(env, Side::Old, None);
                            own = Some(env.primary.generation());
                        }
                        Verdict::CloseNow | Verdict::Close => return (requests, None),
                        Verdict::Taken | Verdict::Wait => {}
                    }
                    // What a server would answer: a reply to every request, so that the core never waits for ever
                    // (after MONITOR, replies settle nothing: the loop is bounded).
                    for _ in 0..core.ledger.pending.len() {
                        core.on_own_frame(b"+OK\r\n", false, false);
                    }
                    core.own_out.clear();
                    core.shared_out.clear();
                    core.shared_count = 0;
                    core.ledger.client_out.clear();
                    requests.push((0..args.len()).map(|i| args.get(i).unwrap().to_vec()).collect());
                    buf.drain(..n);
                }
                Parsed::Empty(n) => {
                    assert!(n > 0 && n <= buf.len());
                    buf.drain(..n);
                }
                Parsed::Incomplete => break,
                Parsed::Error(error) => return (requests, Some(error.to_string())),
            }
        }
    }
    (requests, None)
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, input)) = data.split_first() else { return };
    let split = usize::from(split) % (input.len() + 1);
    assert_eq!(parse(input, split), parse(input, input.len()), "a split changed the parse");
});
