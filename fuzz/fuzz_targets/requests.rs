//! The client side: arbitrary bytes through the request parser, in two pieces split where the input says, must
//! give exactly the requests and the error they give in one piece; every request is then classified and planned
//! by a session core (HELLO options, blocking-call timeouts, CLIENT subcommands) without a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use redis_handover::command::Command;
use redis_handover::protocol::request::{Parsed, RequestParser};
use redis_handover::session::state::{Blocked, Core, parse_hello};
use redis_handover::telemetry::Telemetry;

/// The requests in `input` (as argument lists) and how it ended, feeding it in two pieces.
fn parse(input: &[u8], split: usize) -> (Vec<Vec<Vec<u8>>>, Option<String>) {
    let mut parser = RequestParser::new();
    static TELEMETRY: std::sync::OnceLock<std::sync::Arc<Telemetry>> = std::sync::OnceLock::new();
    let mut core = Core::new(TELEMETRY.get_or_init(Default::default).clone());
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
                    let blocked = Blocked::of(args).and_then(|b| b.remaining());
                    core.plan(command, args, command.is_write(args.get(1)), blocked);
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
