//! The per-command hot path: reading requests, classifying commands, framing replies, on realistic inputs.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use redis_handover::command::Command;
use redis_handover::protocol::reply::{ReplyScanner, Scanned};
use redis_handover::protocol::request::{Parsed, RequestParser, write_command};
use redis_handover::session::state::parse_hello;

fn requests(c: &mut Criterion) {
    let mut group = c.benchmark_group("request");
    let mut small = bytes::BytesMut::new();
    write_command(&mut small, &[b"SET", b"key:000000001234", b"xxx"]);
    let mut pipeline = bytes::BytesMut::new();
    for i in 0..1000 {
        let key = format!("key:{i:012}");
        write_command(&mut pipeline, &[b"GET", key.as_bytes()]);
    }
    let mut big = bytes::BytesMut::new();
    write_command(&mut big, &[b"SET", b"big", &vec![b'x'; 1 << 20]]);
    for (name, input) in [
        ("set_small", &small),
        ("get_pipeline_1000", &pipeline),
        ("set_1mb", &big),
    ] {
        group.throughput(Throughput::Bytes(input.len() as u64));
        group.bench_function(name, |b| {
            let mut parser = RequestParser::new();
            b.iter(|| {
                let mut buf = &input[..];
                let mut writes = 0;
                while let Parsed::Request(n) = parser.parse(buf) {
                    let args = parser.args(buf);
                    let command = Command::classify(args.get(0).unwrap());
                    writes += usize::from(command.is_write(args.get(1)));
                    buf = &buf[n..];
                }
                writes
            })
        });
    }
    group.finish();
}

fn replies(c: &mut Criterion) {
    let mut group = c.benchmark_group("reply");
    let ok = b"+OK\r\n".repeat(1000);
    let mut lrange = b"*100\r\n".to_vec();
    for _ in 0..100 {
        lrange.extend_from_slice(b"$3\r\nxxx\r\n");
    }
    let mut big = format!("${}\r\n", 1 << 20).into_bytes();
    big.extend(vec![b'x'; 1 << 20]);
    big.extend_from_slice(b"\r\n");
    for (name, input) in [("ok_x1000", &ok), ("lrange_100", &lrange), ("bulk_1mb", &big)] {
        group.throughput(Throughput::Bytes(input.len() as u64));
        group.bench_function(name, |b| {
            let mut scanner = ReplyScanner::new();
            b.iter(|| {
                let mut buf = &input[..];
                while let Scanned::Frame { len, .. } = scanner.scan(buf) {
                    buf = &buf[len..];
                }
                buf.len()
            })
        });
    }
    group.finish();
}

fn hello(c: &mut Criterion) {
    let mut group = c.benchmark_group("hello");
    let forms: [&[u8]; 3] = [
        b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n",
        b"HELLO 3 AUTH default secret SETNAME app\r\n",
        b"hello\r\n",
    ];
    for (name, input) in ["multibulk", "inline_auth_setname", "bare"].into_iter().zip(forms) {
        group.bench_function(name, |b| {
            let mut parser = RequestParser::new();
            b.iter(|| {
                let Parsed::Request(_) = parser.parse(input) else {
                    panic!("not a request")
                };
                parse_hello(parser.args(input)).map(|h| h.protocol)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, requests, replies, hello);
criterion_main!(benches);
