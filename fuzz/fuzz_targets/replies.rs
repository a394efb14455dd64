//! The backend side: arbitrary bytes through the reply framer, in two pieces split where the input says, must
//! frame exactly as in one piece, and never report a frame longer than the bytes it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use redis_handover::protocol::reply::{ReplyScanner, Scanned};

fn frames(input: &[u8], split: usize) -> (Vec<(usize, bool)>, bool) {
    let mut scanner = ReplyScanner::new();
    let mut buf = Vec::new();
    let mut frames = Vec::new();
    for piece in [&input[..split], &input[split..]] {
        buf.extend_from_slice(piece);
        loop {
            match scanner.scan(&buf) {
                Scanned::Frame { len, push } => {
                    assert!(len > 0 && len <= buf.len());
                    frames.push((len, push));
                    buf.drain(..len);
                }
                Scanned::Incomplete => break,
                Scanned::Invalid => return (frames, true),
            }
        }
    }
    (frames, false)
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, input)) = data.split_first() else { return };
    let split = usize::from(split) % (input.len() + 1);
    assert_eq!(frames(input, split), frames(input, input.len()), "a split changed the framing");
});
