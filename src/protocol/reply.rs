//! Framing of the replies a Redis server sends: RESP2 and RESP3, found without decoding or allocating.
//!
//! The proxy forwards reply bytes as they are; it only needs to know where each reply ends, so that it can
//! match replies to requests, and whether a frame is a RESP3 push (which answers no request). The scanner is
//! resumable: a large reply arriving over many reads is scanned once.

/// Where the next reply in a buffer ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scanned {
    /// A complete frame of `len` bytes; `push` when it is a RESP3 push (`>`), possibly after an attribute.
    Frame {
        len: usize,
        push: bool,
    },
    Incomplete,
    /// Bytes that are not RESP: the backend link cannot be trusted any more.
    Invalid,
}

/// Finds the end of one reply at a time at the start of a backend's input buffer.
///
/// Like [`crate::protocol::request::RequestParser`], the caller keeps the frame's bytes in place until the
/// scanner returns `Frame`, then drops that many bytes.
#[derive(Debug, Default)]
pub struct ReplyScanner {
    /// Bytes of the current frame scanned so far (always at an element boundary).
    pos: usize,
    /// Elements still owed to the innermost open context (the whole frame, or a streamed aggregate).
    remaining: usize,
    /// `remaining` of each enclosing context while a streamed aggregate (`*?`) is open.
    streams: Vec<usize>,
    /// The first type byte of the frame that is not an attribute, once seen.
    kind: Option<u8>,
}

impl ReplyScanner {
    pub fn new() -> Self {
        Self::default()
    }

    /// Looks for the end of the reply at the start of `buf`.
    pub fn scan(&mut self, buf: &[u8]) -> Scanned {
        if self.pos == 0 {
            self.remaining = 1;
            self.streams.clear();
            self.kind = None;
        }
        loop {
            if self.remaining == 0 && self.streams.is_empty() {
                let frame = Scanned::Frame {
                    len: self.pos,
                    push: self.kind == Some(b'>'),
                };
                self.pos = 0;
                return frame;
            }
            match self.element(&buf[self.pos..]) {
                Step::Done(n) => self.pos += n,
                Step::Incomplete => return Scanned::Incomplete,
                Step::Invalid => {
                    self.pos = 0;
                    return Scanned::Invalid;
                }
            }
        }
    }

    /// Reads one element header (and the body of a string) and updates what is still owed, once the element
    /// is complete: on `Incomplete` nothing changes, so the next call starts at the same element.
    fn element(&mut self, buf: &[u8]) -> Step {
        let Some(&kind) = buf.first() else {
            return Step::Incomplete;
        };
        let Some(line_end) = memchr::memchr(b'\n', buf) else {
            return Step::Incomplete;
        };
        if line_end < 2 || buf[line_end - 1] != b'\r' {
            return Step::Invalid;
        }
        let header = &buf[1..line_end - 1];
        let after_header = line_end + 1;
        if kind == b'.' {
            // The end of a streamed aggregate.
            if self.remaining != 0 || !header.is_empty() {
                return Step::Invalid;
            }
            let Some(outer) = self.streams.pop() else {
                return Step::Invalid;
            };
            self.remaining = outer;
            return Step::Done(after_header);
        }
        // An attribute (`|`) annotates the element after it and takes no slot of its own.
        let takes_slot = kind != b'|';
        if takes_slot && self.remaining == 0 && self.streams.is_empty() {
            return Step::Invalid;
        }
        let (step, children, opens_stream) = match kind {
            b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => (Step::Done(after_header), 0, false),
            b'$' | b'!' | b'=' if header == b"?" => (streamed_string(buf, after_header), 0, false),
            b'$' | b'!' | b'=' => match length(header) {
                Some(None) => (Step::Done(after_header), 0, false),
                Some(Some(len)) if buf.len() >= after_header + len + 2 => {
                    (Step::Done(after_header + len + 2), 0, false)
                }
                Some(Some(_)) => (Step::Incomplete, 0, false),
                None => (Step::Invalid, 0, false),
            },
            b'*' | b'~' | b'>' | b'%' | b'|' if header == b"?" => (Step::Done(after_header), 0, true),
            b'*' | b'~' | b'>' | b'%' | b'|' => {
                let per_entry = if matches!(kind, b'%' | b'|') { 2 } else { 1 };
                match length(header) {
                    Some(None) => (Step::Done(after_header), 0, false),
                    Some(Some(len)) => (Step::Done(after_header), len * per_entry, false),
                    None => (Step::Invalid, 0, false),
                }
            }
            _ => (Step::Invalid, 0, false),
        };
        if let Step::Done(_) = step {
            if takes_slot {
                if self.kind.is_none() {
                    self.kind = Some(kind);
                }
                self.remaining = self.remaining.saturating_sub(1);
            }
            if opens_stream {
                self.streams.push(self.remaining);
                self.remaining = 0;
            } else {
                self.remaining += children;
            }
        }
        step
    }
}

enum Step {
    Done(usize),
    Incomplete,
    Invalid,
}

/// A length header: `Some(None)` for the RESP2 null (-1), `Some(Some(n))` for n >= 0.
fn length(header: &[u8]) -> Option<Option<usize>> {
    match crate::protocol::request::string_to_i64(header)? {
        -1 => Some(None),
        n if n >= 0 => usize::try_from(n).ok().map(Some),
        _ => None,
    }
}

/// A streamed string (`$?`): chunks `;<len>\r\n<bytes>\r\n` ending with `;0\r\n`.
fn streamed_string(buf: &[u8], mut pos: usize) -> Step {
    loop {
        let rest = &buf[pos..];
        let Some(line_end) = memchr::memchr(b'\n', rest) else {
            return Step::Incomplete;
        };
        if rest[0] != b';' || line_end < 2 || rest[line_end - 1] != b'\r' {
            return Step::Invalid;
        }
        let Some(Some(len)) = length(&rest[1..line_end - 1]) else {
            return Step::Invalid;
        };
        pos += line_end + 1;
        if len == 0 {
            return Step::Done(pos);
        }
        if buf.len() < pos + len + 2 {
            return Step::Incomplete;
        }
        pos += len + 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(input: &[u8]) -> Vec<(usize, bool)> {
        let mut scanner = ReplyScanner::new();
        let mut buf = input;
        let mut out = Vec::new();
        while let Scanned::Frame { len, push } = scanner.scan(buf) {
            out.push((len, push));
            buf = &buf[len..];
        }
        assert!(buf.is_empty(), "left over: {:?}", String::from_utf8_lossy(buf));
        out
    }

    #[test]
    fn resp2_replies() {
        let input = b"+OK\r\n-ERR x\r\n:12\r\n$3\r\nfoo\r\n$-1\r\n*-1\r\n*2\r\n$1\r\na\r\n*1\r\n:1\r\n*0\r\n";
        let lens: Vec<usize> = frames(input).iter().map(|f| f.0).collect();
        assert_eq!(lens, vec![5, 8, 5, 9, 5, 5, 19, 4]);
    }

    #[test]
    fn resp3_types_and_push() {
        let input = b"%2\r\n+a\r\n:1\r\n+b\r\n#t\r\n~1\r\n,1.5\r\n_\r\n(123\r\n=7\r\ntxt:abc\r\n!3\r\nERR\r\n>3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nm\r\n";
        let got = frames(input);
        assert_eq!(got.len(), 7);
        assert_eq!(got.iter().filter(|f| f.1).count(), 1);
        assert!(got[6].1);
    }

    #[test]
    fn attribute_belongs_to_the_following_reply() {
        let input = b"|1\r\n+key\r\n+val\r\n:5\r\n";
        assert_eq!(frames(input), vec![(input.len(), false)]);
    }

    #[test]
    fn streamed_aggregates_and_strings() {
        let input = b"*?\r\n:1\r\n*2\r\n:2\r\n:3\r\n$?\r\n;2\r\nab\r\n;0\r\n.\r\n+OK\r\n";
        assert_eq!(frames(input), vec![(input.len() - 5, false), (5, false)]);
    }

    #[test]
    fn resumes_at_every_cut() {
        let input = b"*3\r\n$5\r\nhello\r\n%1\r\n+k\r\n$3\r\nabc\r\n:7\r\n";
        let mut scanner = ReplyScanner::new();
        for cut in 0..input.len() {
            assert_eq!(scanner.scan(&input[..cut]), Scanned::Incomplete, "cut at {cut}");
        }
        assert_eq!(
            scanner.scan(input),
            Scanned::Frame {
                len: input.len(),
                push: false
            }
        );
    }

    #[test]
    fn garbage_is_invalid() {
        assert_eq!(ReplyScanner::new().scan(b"hello\r\n"), Scanned::Invalid);
        assert_eq!(ReplyScanner::new().scan(b"$x\r\n"), Scanned::Invalid);
        assert_eq!(ReplyScanner::new().scan(b"+OK\n"), Scanned::Invalid);
    }
}
