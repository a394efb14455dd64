//! The request grammar Redis accepts from clients, with Redis's own limits and error texts.
//!
//! Redis does not read requests as general RESP: a request is either a multibulk (an array of bulk strings,
//! starting with `*`) or an inline command (a line of space-separated words, as typed into telnet). The parser
//! follows `processMultibulkBuffer` and `processInlineBuffer` in Redis's `networking.c` step by step, so a client
//! sees the same replies and the same protocol errors through the proxy as from Redis itself. It is resumable:
//! a large frame arriving over many reads is scanned once, not from the start on every read.

use std::ops::Range;

use bytes::BufMut;

/// The longest inline request, or count line, Redis buffers before giving up (`PROTO_INLINE_MAX_SIZE`).
pub const INLINE_MAX: usize = 64 * 1024;
/// The largest bulk argument (Redis's default `proto-max-bulk-len`, 512 MB).
pub const MAX_BULK_LEN: i64 = 512 * 1024 * 1024;
/// The most arguments in one request: Redis 5.0 and 6.2 refuse more than 1024*1024 (7.0 allows up to
/// INT_MAX). The proxy keeps the lower limit so that no backend it fronts sees a request it would refuse.
pub const MAX_MULTIBULK_LEN: i64 = 1024 * 1024;

/// A request Redis would refuse with `-ERR Protocol error: ...` and then close the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("Protocol error: too big inline request")]
    TooBigInline,
    #[error("Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
    #[error("Protocol error: too big mbulk count string")]
    TooBigCount,
    #[error("Protocol error: invalid multibulk length")]
    InvalidMultibulkLength,
    #[error("Protocol error: too big bulk count string")]
    TooBigBulkCount,
    #[error("Protocol error: expected '$', got '{}'", char::from(*.0))]
    ExpectedDollar(u8),
    #[error("Protocol error: invalid bulk length")]
    InvalidBulkLength,
}

impl ProtocolError {
    /// Writes the error reply as Redis sends it: `-ERR <text>\r\n`, with CR and LF in the text made spaces.
    pub fn write_reply(&self, out: &mut bytes::BytesMut) {
        let mut text = format!("-ERR {self}").into_bytes();
        if let ProtocolError::ExpectedDollar(byte) = self {
            // Redis prints the offending byte as it is (`%c`), not as a Unicode character.
            let at = text.len() - 2;
            text.truncate(at);
            text.push(*byte);
            text.push(b'\'');
        }
        for byte in &mut text[1..] {
            if *byte == b'\r' || *byte == b'\n' {
                *byte = b' ';
            }
        }
        out.put_slice(&text);
        out.put_slice(b"\r\n");
    }
}

/// What the parser found at the start of the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A complete request of this many bytes; its arguments are in the parser until the next call.
    Request(usize),
    /// This many bytes that make no command (an empty line, `*0`, a negative count): Redis skips them.
    Empty(usize),
    /// More bytes are needed.
    Incomplete,
    /// The client broke the protocol: reply with the error and close its connection.
    Error(ProtocolError),
}

/// Reads one request at a time from the start of a client's input buffer.
///
/// The caller keeps the buffer's first bytes in place until the parser returns `Request` or `Empty`, then drops
/// that many bytes; appending read data at the end in between is fine.
#[derive(Debug, Default)]
pub struct RequestParser {
    /// Bytes of the current multibulk already scanned.
    pos: usize,
    /// Arguments of the current multibulk still to read; zero before its count line is read.
    remaining: u32,
    /// Length of the bulk argument whose header was read and whose body is not complete yet.
    bulk_len: Option<usize>,
    /// Argument ranges: into the caller's buffer for a multibulk, into `inline` for an inline command.
    args: Vec<Range<usize>>,
    /// The unescaped words of the last inline command.
    inline: Vec<u8>,
    is_inline: bool,
}

impl RequestParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Looks for one request at the start of `buf`.
    pub fn parse(&mut self, buf: &[u8]) -> Parsed {
        if self.pos == 0 {
            self.args.clear();
            self.is_inline = false;
            match buf.first() {
                None => return Parsed::Incomplete,
                Some(b'*') => {}
                Some(_) => return self.parse_inline(buf),
            }
        }
        let parsed = self.parse_multibulk(buf);
        if !matches!(parsed, Parsed::Incomplete) {
            self.pos = 0;
            self.remaining = 0;
            self.bulk_len = None;
        }
        parsed
    }

    /// How many arguments (command name included) the last complete request has.
    pub fn argc(&self) -> usize {
        self.args.len()
    }

    /// Argument `i` of the last complete request; `buf` is the buffer that was parsed.
    pub fn arg<'a>(&'a self, buf: &'a [u8], i: usize) -> &'a [u8] {
        let range = self.args[i].clone();
        if self.is_inline {
            &self.inline[range]
        } else {
            &buf[range]
        }
    }

    /// The arguments of the last complete request, read from `buf` (the buffer that was parsed).
    pub fn args<'a>(&'a self, buf: &'a [u8]) -> Args<'a> {
        Args { parser: self, buf }
    }

    /// Whether the last request was an inline command (its bytes are not RESP and must be re-encoded).
    pub fn is_inline(&self) -> bool {
        self.is_inline
    }

    /// Appends the last request to `out` as a RESP multibulk.
    pub fn encode_multibulk(&self, buf: &[u8], out: &mut bytes::BytesMut) {
        write_array_header(out, b'*', self.argc());
        for i in 0..self.argc() {
            write_bulk(out, self.arg(buf, i));
        }
    }

    fn parse_multibulk(&mut self, buf: &[u8]) -> Parsed {
        if self.remaining == 0 {
            let Some(cr) = memchr::memchr(b'\r', &buf[1..]).map(|i| i + 1) else {
                return if buf.len() > INLINE_MAX {
                    Parsed::Error(ProtocolError::TooBigCount)
                } else {
                    Parsed::Incomplete
                };
            };
            // Redis wants the byte after '\r' to be in the buffer, and does not check that it is '\n'.
            if cr + 2 > buf.len() {
                return Parsed::Incomplete;
            }
            let count = match string_to_i64(&buf[1..cr]) {
                Some(count) if count <= MAX_MULTIBULK_LEN => count,
                _ => return Parsed::Error(ProtocolError::InvalidMultibulkLength),
            };
            self.pos = cr + 2;
            if count <= 0 {
                return Parsed::Empty(self.pos);
            }
            self.remaining = count as u32;
        }
        while self.remaining > 0 {
            let len = match self.bulk_len {
                Some(len) => len,
                None => {
                    let rest = &buf[self.pos..];
                    let Some(cr) = memchr::memchr(b'\r', rest) else {
                        return if rest.len() > INLINE_MAX {
                            Parsed::Error(ProtocolError::TooBigBulkCount)
                        } else {
                            Parsed::Incomplete
                        };
                    };
                    if cr + 2 > rest.len() {
                        return Parsed::Incomplete;
                    }
                    if rest[0] != b'$' {
                        return Parsed::Error(ProtocolError::ExpectedDollar(rest[0]));
                    }
                    let len = match string_to_i64(&rest[1..cr]) {
                        Some(len) if (0..=MAX_BULK_LEN).contains(&len) => len as usize,
                        _ => return Parsed::Error(ProtocolError::InvalidBulkLength),
                    };
                    self.pos += cr + 2;
                    self.bulk_len = Some(len);
                    len
                }
            };
            // The body is followed by two bytes that Redis skips without looking at them.
            if buf.len() - self.pos < len + 2 {
                return Parsed::Incomplete;
            }
            self.args.push(self.pos..self.pos + len);
            self.pos += len + 2;
            self.bulk_len = None;
            self.remaining -= 1;
        }
        Parsed::Request(self.pos)
    }

    fn parse_inline(&mut self, buf: &[u8]) -> Parsed {
        let Some(newline) = memchr::memchr(b'\n', buf) else {
            return if buf.len() > INLINE_MAX {
                Parsed::Error(ProtocolError::TooBigInline)
            } else {
                Parsed::Incomplete
            };
        };
        let mut line = &buf[..newline];
        if let [rest @ .., b'\r'] = line {
            line = rest;
        }
        self.inline.clear();
        if split_args(line, &mut self.inline, &mut self.args).is_err() {
            return Parsed::Error(ProtocolError::UnbalancedQuotes);
        }
        if self.args.is_empty() {
            return Parsed::Empty(newline + 1);
        }
        self.is_inline = true;
        Parsed::Request(newline + 1)
    }
}

/// The arguments of one request, command name first.
#[derive(Clone, Copy)]
pub struct Args<'a> {
    parser: &'a RequestParser,
    buf: &'a [u8],
}

impl<'a> Args<'a> {
    pub fn len(&self) -> usize {
        self.parser.argc()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Argument `i`, or `None` past the end.
    pub fn get(&self, i: usize) -> Option<&'a [u8]> {
        (i < self.len()).then(|| self.parser.arg(self.buf, i))
    }

    /// Whether argument `i` exists and equals `word` in any letter case.
    pub fn is(&self, i: usize, word: &str) -> bool {
        self.get(i).is_some_and(|a| a.eq_ignore_ascii_case(word.as_bytes()))
    }

    /// Whether the request came as an inline command (its bytes are not RESP).
    pub fn is_inline(&self) -> bool {
        self.parser.is_inline()
    }

    /// Appends the request to `out` as a RESP multibulk.
    pub fn encode(&self, out: &mut bytes::BytesMut) {
        self.parser.encode_multibulk(self.buf, out);
    }
}

/// Splits an inline command line into words as Redis's `sdssplitargs` does: blanks separate words, and a word
/// may be "double quoted" (with \n \r \t \b \a \\ \" and \xHH escapes) or 'single quoted' (with \' only). A
/// closing quote must be followed by a blank or the end of the line. A NUL byte ends the line, as in C.
fn split_args(line: &[u8], words: &mut Vec<u8>, ranges: &mut Vec<Range<usize>>) -> Result<(), ()> {
    let at = |i: usize| line.get(i).copied().unwrap_or(0);
    let is_space = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c);
    // A closing quote must be followed by a blank or the end of the line; where the word then continues.
    let closing_quote = |p: usize| {
        if at(p + 1) != 0 && !is_space(at(p + 1)) {
            Err(())
        } else {
            Ok(p + 1)
        }
    };
    // The end of the line inside quotes: unbalanced.
    let inside_quotes = |c: u8| if c == 0 { Err(()) } else { Ok(c) };
    let mut p = 0;
    loop {
        while at(p) != 0 && is_space(at(p)) {
            p += 1;
        }
        if at(p) == 0 {
            return Ok(());
        }
        let start = words.len();
        let (mut in_double, mut in_single) = (false, false);
        loop {
            let c = at(p);
            if in_double {
                if c == b'\\' && at(p + 1) == b'x' && is_hex(at(p + 2)) && is_hex(at(p + 3)) {
                    words.push(hex_value(at(p + 2)) * 16 + hex_value(at(p + 3)));
                    p += 3;
                } else if c == b'\\' && at(p + 1) != 0 {
                    p += 1;
                    words.push(match at(p) {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 0x08,
                        b'a' => 0x07,
                        other => other,
                    });
                } else if c == b'"' {
                    p = closing_quote(p)?;
                    break;
                } else {
                    words.push(inside_quotes(c)?);
                }
            } else if in_single {
                if c == b'\\' && at(p + 1) == b'\'' {
                    p += 1;
                    words.push(b'\'');
                } else if c == b'\'' {
                    p = closing_quote(p)?;
                    break;
                } else {
                    words.push(inside_quotes(c)?);
                }
            } else {
                match c {
                    b' ' | b'\n' | b'\r' | b'\t' | 0 => break,
                    b'"' => in_double = true,
                    b'\'' => in_single = true,
                    _ => words.push(c),
                }
            }
            p += 1;
        }
        ranges.push(start..words.len());
    }
}

fn is_hex(b: u8) -> bool {
    b.is_ascii_hexdigit()
}

fn hex_value(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

/// Parses an integer exactly as Redis's `string2ll`: optional '-', no '+', no leading zeros, no blanks.
pub fn string_to_i64(s: &[u8]) -> Option<i64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    if s == b"0" {
        return Some(0);
    }
    let (negative, digits) = match s {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, s),
    };
    match digits.first() {
        Some(b'1'..=b'9') => {}
        _ => return None,
    }
    let mut value: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    if negative {
        if value > i64::MAX as u64 + 1 {
            return None;
        }
        Some((value as i64).wrapping_neg())
    } else {
        i64::try_from(value).ok()
    }
}

/// Appends an aggregate header such as `*3\r\n`.
pub fn write_array_header(out: &mut bytes::BytesMut, kind: u8, len: usize) {
    out.put_u8(kind);
    out.put_slice(itoa::Buffer::new().format(len).as_bytes());
    out.put_slice(b"\r\n");
}

/// Appends a bulk string.
pub fn write_bulk(out: &mut bytes::BytesMut, value: &[u8]) {
    write_array_header(out, b'$', value.len());
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

/// Appends a command as a RESP multibulk.
pub fn write_command(out: &mut bytes::BytesMut, args: &[&[u8]]) {
    write_array_header(out, b'*', args.len());
    for arg in args {
        write_bulk(out, arg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(input: &[u8]) -> (Vec<Vec<Vec<u8>>>, Option<ProtocolError>) {
        let mut parser = RequestParser::new();
        let mut buf = input;
        let mut requests = Vec::new();
        loop {
            match parser.parse(buf) {
                Parsed::Request(n) => {
                    requests.push((0..parser.argc()).map(|i| parser.arg(buf, i).to_vec()).collect());
                    buf = &buf[n..];
                }
                Parsed::Empty(n) => buf = &buf[n..],
                Parsed::Incomplete => return (requests, None),
                Parsed::Error(e) => return (requests, Some(e)),
            }
        }
    }

    fn words(v: &[&str]) -> Vec<Vec<u8>> {
        v.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn multibulk_pipeline() {
        let (reqs, err) = parse_all(b"*1\r\n$4\r\nPING\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n");
        assert_eq!(reqs, vec![words(&["PING"]), words(&["SET", "k", ""])]);
        assert_eq!(err, None);
    }

    #[test]
    fn multibulk_resumes_across_reads() {
        let frame = b"*2\r\n$3\r\nGET\r\n$10\r\n0123456789\r\n";
        let mut parser = RequestParser::new();
        for cut in 0..frame.len() {
            assert_eq!(parser.parse(&frame[..cut]), Parsed::Incomplete, "cut at {cut}");
        }
        assert_eq!(parser.parse(frame), Parsed::Request(frame.len()));
        assert_eq!(parser.arg(frame, 1), b"0123456789");
    }

    #[test]
    fn empty_and_negative_counts_are_skipped() {
        let (reqs, err) = parse_all(b"*0\r\n*-10\r\n\r\n  \r\n*1\r\n$4\r\nPING\r\n");
        assert_eq!(reqs, vec![words(&["PING"])]);
        assert_eq!(err, None);
    }

    #[test]
    fn protocol_errors_match_redis() {
        assert_eq!(
            parse_all(b"*20000000\r\n").1,
            Some(ProtocolError::InvalidMultibulkLength)
        );
        assert_eq!(parse_all(b"*abc\r\n").1, Some(ProtocolError::InvalidMultibulkLength));
        assert_eq!(
            parse_all(b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\nfooz\r\n").1,
            Some(ProtocolError::ExpectedDollar(b'f'))
        );
        assert_eq!(parse_all(b"*1\r\n$-1\r\n").1, Some(ProtocolError::InvalidBulkLength));
        assert_eq!(
            parse_all(b"*1\r\n$536870913\r\n").1,
            Some(ProtocolError::InvalidBulkLength)
        );
        assert_eq!(parse_all(b"*1\r\n$536870912\r\n").1, None);
        assert_eq!(parse_all(b"*1\r\n$01\r\n").1, Some(ProtocolError::InvalidBulkLength));
        assert_eq!(parse_all(&[b'*'; INLINE_MAX + 2]).1, Some(ProtocolError::TooBigCount));
        let mut long_bulk = b"*1\r\n$".to_vec();
        long_bulk.extend(std::iter::repeat_n(b'1', INLINE_MAX + 1));
        assert_eq!(parse_all(&long_bulk).1, Some(ProtocolError::TooBigBulkCount));
        assert_eq!(parse_all(&[b'a'; INLINE_MAX + 1]).1, Some(ProtocolError::TooBigInline));
        assert_eq!(parse_all(b"set \"a b\"c\r\n").1, Some(ProtocolError::UnbalancedQuotes));
        assert_eq!(parse_all(b"set \"a\r\n").1, Some(ProtocolError::UnbalancedQuotes));
    }

    #[test]
    fn error_reply_text() {
        let mut out = bytes::BytesMut::new();
        ProtocolError::ExpectedDollar(b'\n').write_reply(&mut out);
        assert_eq!(&out[..], b"-ERR Protocol error: expected '$', got ' '\r\n");
    }

    #[test]
    fn inline_commands_split_like_redis() {
        let (reqs, err) = parse_all(b"PING\r\nset k \"a\\x41\\n b\" 'it\\'s'\nECHO   x\t y\r\n");
        assert_eq!(err, None);
        assert_eq!(reqs[0], words(&["PING"]));
        assert_eq!(
            reqs[1],
            vec![b"set".to_vec(), b"k".to_vec(), b"aA\n b".to_vec(), b"it's".to_vec()]
        );
        assert_eq!(reqs[2], words(&["ECHO", "x", "y"]));
    }

    #[test]
    fn inline_reencodes_as_multibulk() {
        let mut parser = RequestParser::new();
        let buf = b"get \"a b\"\r\n";
        assert_eq!(parser.parse(buf), Parsed::Request(buf.len()));
        let mut out = bytes::BytesMut::new();
        parser.encode_multibulk(buf, &mut out);
        assert_eq!(&out[..], b"*2\r\n$3\r\nget\r\n$3\r\na b\r\n");
    }

    #[test]
    fn string_to_i64_is_strict() {
        assert_eq!(string_to_i64(b"0"), Some(0));
        assert_eq!(string_to_i64(b"-5"), Some(-5));
        assert_eq!(string_to_i64(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(string_to_i64(b"-9223372036854775808"), Some(i64::MIN));
        for bad in [
            &b""[..],
            b"+1",
            b"01",
            b"-0",
            b" 1",
            b"1 ",
            b"9223372036854775808",
            b"-",
        ] {
            assert_eq!(string_to_i64(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
