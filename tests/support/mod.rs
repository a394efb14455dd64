//! Test support: real Redis servers of each version on free ports, the proxy in-process, and a raw RESP client.
//!
//! Every process a test starts is stopped when its handle is dropped, also when the test fails.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use redis_handover::config::Config;
use redis_handover::handover::{Phase, Report, Status};
use redis_handover::server::{self, Listeners};

/// How long a test waits for any one reply before failing.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// The Redis versions the tests run against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    V5_0,
    V6_2,
    V7_0,
}

pub const ALL_VERSIONS: [Version; 3] = [Version::V5_0, Version::V6_2, Version::V7_0];

impl Version {
    pub fn name(self) -> &'static str {
        match self {
            Version::V5_0 => "5.0",
            Version::V6_2 => "6.2",
            Version::V7_0 => "7.0",
        }
    }

    /// The redis-server binary of this version; fails the test, naming the install command, when missing.
    pub fn binary(self) -> PathBuf {
        let path = match self {
            Version::V7_0 => PathBuf::from("/usr/bin/redis-server"),
            _ => repo_root().join(".cache/redis").join(self.name()).join("redis-server"),
        };
        assert!(
            path.exists(),
            "Redis {} is not installed at {}: run scripts/install-redis.sh (or scripts/test.sh, which runs it)",
            self.name(),
            path.display()
        );
        path
    }

    /// RESP3, HELLO and ACL users exist from 6.0 on.
    pub fn has_resp3(self) -> bool {
        self >= Version::V6_2
    }
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A free TCP port on 127.0.0.1 (free when asked; the caller binds it at once).
///
/// Taken below Linux's ephemeral range (32768-60999), from a counter this process walks: a port handed out here
/// and bound a moment later cannot meanwhile become the local port of some connection (every outgoing connection
/// takes an ephemeral port), nor be handed to another test of this process. Port 0 would be: a test that chose
/// its fleet's admin ports in advance once found one taken by a connection.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    walk_ports(&NEXT, 20_000, 12_000, bindable)
        .unwrap_or_else(|| TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port())
}

/// A free port for a Redis Cluster node, whose cluster bus listens on port + 10000: taken from 22000-22767, so that
/// its bus port (32000-32767) is neither one [`free_port`] hands out nor in Linux's ephemeral range.
pub fn free_cluster_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    walk_ports(&NEXT, 22_000, 768, |port| bindable(port) && bindable(port + 10_000))
        .expect("a free port pair for a cluster node in 22000-22767")
}

fn bindable(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// The next port of `first..first + count` that `free` accepts, walking `next`; each test process starts at its
/// own place, so that two running at once rarely meet.
fn walk_ports(next: &AtomicU32, first: u32, count: u32, free: impl Fn(u16) -> bool) -> Option<u16> {
    let _ = next.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % count,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    (0..count)
        .map(|_| (first + next.fetch_add(1, Ordering::Relaxed) % count) as u16)
        .find(|&port| free(port))
}

/// A real redis-server process, stopped and its data folder removed on drop.
pub struct RedisServer {
    pub version: Version,
    pub port: u16,
    child: Child,
    dir: PathBuf,
    args: Vec<String>,
}

impl RedisServer {
    /// Starts a server with no persistence on a free loopback port, with `extra` config arguments
    /// (for example `["--requirepass", "secret"]`), and waits until it answers.
    pub fn start(version: Version, extra: &[&str]) -> RedisServer {
        Self::start_with(version, None, extra)
    }

    /// Starts a server on a given port (a server that comes back where the proxy expects it).
    pub fn start_on(version: Version, port: u16, extra: &[&str]) -> RedisServer {
        Self::start_with(version, Some(port), extra)
    }

    /// Starts a server that speaks only TLS on its port (`tls` holds the file arguments), ready once it accepts
    /// connections.
    pub fn start_tls(version: Version, tls: &[&str]) -> RedisServer {
        Self::start_inner(version, None, tls, true)
    }

    /// Starts a Redis 7.0 Sentinel on a free port that monitors `master` (as `watched`, quorum 1): it connects
    /// to the master at once, under the client names Sentinel uses.
    pub fn start_sentinel(master: SocketAddr) -> RedisServer {
        Self::launch(Version::V7_0, free_port, false, "rh-sentinel", |port, dir| {
            // Sentinel needs a configuration file it can rewrite.
            let conf = dir.join("sentinel.conf");
            let text = format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nlogfile sentinel.log\nsentinel monitor watched {} {} 1\n",
                dir.display(),
                master.ip(),
                master.port()
            );
            std::fs::write(&conf, text).unwrap();
            vec![conf.display().to_string(), "--sentinel".to_string()]
        })
    }

    fn start_with(version: Version, fixed_port: Option<u16>, extra: &[&str]) -> RedisServer {
        Self::start_inner(version, fixed_port, extra, false)
    }

    /// Starts a Redis Cluster node (`extra` has its cluster settings) on a port from [`free_cluster_port`].
    pub fn start_cluster_node(version: Version, extra: &[&str]) -> RedisServer {
        Self::start_args(version, free_cluster_port, extra, false)
    }

    fn start_inner(version: Version, fixed_port: Option<u16>, extra: &[&str], tls_only: bool) -> RedisServer {
        match fixed_port {
            Some(port) => Self::start_args(version, || port, extra, tls_only),
            None => Self::start_args(version, free_port, extra, tls_only),
        }
    }

    fn start_args(version: Version, pick: impl Fn() -> u16, extra: &[&str], tls_only: bool) -> RedisServer {
        Self::launch(version, pick, tls_only, "rh-redis", |port, dir| {
            let port_args: &[&str] = if tls_only {
                &["--port", "0", "--tls-port"]
            } else {
                &["--port"]
            };
            let mut args: Vec<String> = port_args.iter().map(|s| s.to_string()).collect();
            args.push(port.to_string());
            args.extend(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"].map(String::from));
            args.extend([
                "--dir".into(),
                dir.display().to_string(),
                "--logfile".into(),
                "redis.log".into(),
            ]);
            if version >= Version::V7_0 {
                args.extend(["--enable-debug-command".into(), "yes".into()]);
            }
            args.extend(extra.iter().map(|s| s.to_string()));
            args
        })
    }

    /// Starts the server with the arguments `args` gives for a port and a data folder, on a port `pick` gives,
    /// trying again on another one when the one picked was taken meanwhile.
    fn launch(
        version: Version,
        pick: impl Fn() -> u16,
        tls_only: bool,
        name: &str,
        args: impl Fn(u16, &Path) -> Vec<String>,
    ) -> RedisServer {
        let binary = version.binary();
        for _attempt in 0..5 {
            let port = pick();
            let dir = std::env::temp_dir().join(format!("{name}-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let args = args(port, &dir);
            let child = Command::new(&binary)
                .args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
            let mut server = RedisServer {
                version,
                port,
                child,
                dir,
                args,
            };
            if server.wait_ready(tls_only) {
                return server;
            }
            drop(server);
        }
        panic!("Redis {} did not start", version.name());
    }

    fn wait_ready(&mut self, tls_only: bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            // What answers must be this server: another test's server may hold the port (free ports are picked
            // by several tests at once), and then this one fails to start while the port still answers.
            if !self.listens_itself() {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            if tls_only && TcpStream::connect(self.addr()).is_ok() {
                return true;
            }
            if let Ok(mut stream) = TcpStream::connect(self.addr()) {
                stream.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
                let mut buf = [0u8; 64];
                if stream.write_all(b"PING\r\n").is_ok() && stream.read(&mut buf).is_ok_and(|n| n > 0) {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Whether the socket listening on this server's port belongs to this server's process (Linux: the listening
    /// socket's inode in /proc/net/tcp among the process's open files).
    fn listens_itself(&self) -> bool {
        let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
            return false;
        };
        let local = format!(":{:04X}", self.port);
        let inodes: Vec<String> = table
            .lines()
            .skip(1)
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let listening = fields.get(3) == Some(&"0A");
                (listening && fields.get(1)?.ends_with(&local)).then(|| fields.get(9).map(|i| i.to_string()))?
            })
            .collect();
        let Ok(fds) = std::fs::read_dir(format!("/proc/{}/fd", self.child.id())) else {
            return false;
        };
        fds.flatten().any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|target| {
                inodes
                    .iter()
                    .any(|i| target.to_string_lossy() == format!("socket:[{i}]"))
            })
        })
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// A client connected straight to this server, bypassing the proxy.
    pub fn direct(&self) -> Client {
        Client::connect(self.addr())
    }

    /// Freezes the server (SIGSTOP): it keeps its connections but answers nothing, as a stalled host would.
    pub fn stall(&self) {
        signal(&self.child, "-STOP");
    }

    /// Lets a stalled server go on (SIGCONT).
    pub fn resume(&self) {
        signal(&self.child, "-CONT");
    }

    /// Starts the server again after a kill, on the same port with the same data folder and arguments.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new(self.version.binary())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("restart redis-server");
        self.child = child;
        assert!(self.wait_ready(false), "Redis did not come back");
    }

    /// Stops the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        self.resume();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The proxy, running in-process on its own runtime thread, on free ports; shut down on drop.
pub struct Proxy {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    port: AdminPort,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Whether this run of the tests gives the proxies one backend connection per client
/// (`REDIS_HANDOVER_TEST_BACKEND_LINKS=dedicated`) rather than shared links, the default (see [`Proxy::start`]).
pub fn dedicated_links() -> bool {
    std::env::var("REDIS_HANDOVER_TEST_BACKEND_LINKS").is_ok_and(|m| m == "dedicated")
}

impl Proxy {
    /// Starts `n` proxies in front of `old` and `new` as one fleet: each lists every admin address in
    /// `fleet_peers` (and skips its own), plus `extra_peers` (relays in front of some of them).
    pub fn start_fleet(
        n: usize,
        old: SocketAddr,
        new: SocketAddr,
        configure: impl Fn(usize, &mut Config),
    ) -> Vec<Proxy> {
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let peers: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        ports
            .iter()
            .enumerate()
            .map(|(i, &port)| {
                Proxy::start_inner(old, Some(new), Some(port), |c| {
                    c.fleet_peers = peers.clone();
                    c.proxy_id = Some(format!("proxy-{}", i + 1));
                    configure(i, c);
                })
            })
            .collect()
    }

    /// Starts the proxy with its admin port on `admin_port` (for a fleet whose peers must know it in advance).
    pub fn start_with_admin(
        old: SocketAddr,
        new: SocketAddr,
        admin_port: u16,
        configure: impl FnOnce(&mut Config),
    ) -> Proxy {
        Proxy::start_inner(old, Some(new), Some(admin_port), configure)
    }

    /// Starts the proxy in front of `old` (and `new`), with `configure` changing the settings first.
    pub fn start(old: SocketAddr, new: Option<SocketAddr>, configure: impl FnOnce(&mut Config)) -> Proxy {
        Proxy::start_inner(old, new, None, configure)
    }

    fn start_inner(
        old: SocketAddr,
        new: Option<SocketAddr>,
        admin_port: Option<u16>,
        configure: impl FnOnce(&mut Config),
    ) -> Proxy {
        let mut config = Config {
            old: old.to_string(),
            new: new.map(|a| a.to_string()),
            shutdown_grace_ms: 2_000,
            ..Config::default()
        };
        // The test command runs the suite once more with every proxy in the other mode.
        if let Ok(mode) = std::env::var("REDIS_HANDOVER_TEST_BACKEND_LINKS") {
            config.backend_links = match mode.as_str() {
                "shared" => redis_handover::config::BackendLinks::Shared,
                "dedicated" => redis_handover::config::BackendLinks::Dedicated,
                other => panic!("REDIS_HANDOVER_TEST_BACKEND_LINKS must be shared or dedicated, not {other:?}"),
            };
        }
        configure(&mut config);
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let proxy = server::bind("127.0.0.1:0").await.unwrap();
                let admin = tokio::net::TcpListener::bind(("127.0.0.1", admin_port.unwrap_or(0)))
                    .await
                    .unwrap();
                ready_tx
                    .send((proxy.local_addr().unwrap(), admin.local_addr().unwrap()))
                    .unwrap();
                let shutdown = async move {
                    let _ = stop_rx.await;
                };
                server::run(
                    Listeners {
                        proxy,
                        admin: Some(admin),
                    },
                    config,
                    shutdown,
                )
                .await
                .unwrap();
            });
        });
        let (addr, admin) = ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("proxy did not start");
        Proxy {
            addr,
            admin,
            port: AdminPort(admin),
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    /// Shuts the proxy down and waits for it (bounded by its grace period).
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs `command` (its output piped as the caller set it: a pipe must stay small, as it is read at the end) to
/// its end and returns its output; past `timeout` it is killed and the test fails. (Its exit is polled: the
/// standard library has no wait with a bound.)
pub fn output_within(command: &mut Command, timeout: Duration) -> std::process::Output {
    let mut child = command.spawn().unwrap_or_else(|e| panic!("start {command:?}: {e}"));
    let deadline = Instant::now() + timeout;
    while child.try_wait().expect("the child's status").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("the child's output");
            panic!(
                "{command:?} did not end within {timeout:?}: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("the child's output")
}

/// `redis-handover ctl --admin ADMIN args...`, the real binary (built for the tests), with no admin address from
/// the environment.
pub fn ctl(admin: SocketAddr, args: &[&str]) -> std::process::Output {
    let admin = admin.to_string();
    let mut all = vec!["ctl", "--admin", &admin];
    all.extend_from_slice(args);
    std::process::Command::new(env!("CARGO_BIN_EXE_redis-handover"))
        .args(&all)
        .env_remove("REDIS_HANDOVER_ADMIN")
        .output()
        .expect("run redis-handover ctl")
}

/// A reply, decoded by redis-protocol (not by the proxy's own code).
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    Nil,
    Array(Vec<Reply>),
    Map(Vec<(Reply, Reply)>),
    Set(Vec<Reply>),
    Push(Vec<Reply>),
    Other(String),
}

impl Reply {
    pub fn ok() -> Reply {
        Reply::Status("OK".into())
    }

    pub fn bulk(s: impl AsRef<[u8]>) -> Reply {
        Reply::Bulk(s.as_ref().to_vec())
    }

    /// A string reply's text (status or bulk).
    pub fn text(&self) -> String {
        match self {
            Reply::Status(s) | Reply::Error(s) => s.clone(),
            Reply::Bulk(b) => String::from_utf8_lossy(b).into_owned(),
            Reply::Int(i) => i.to_string(),
            other => panic!("not a string reply: {other:?}"),
        }
    }

    pub fn items(&self) -> &[Reply] {
        match self {
            Reply::Array(items) | Reply::Push(items) | Reply::Set(items) => items,
            other => panic!("not an array: {other:?}"),
        }
    }

    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }

    fn from_resp2(frame: redis_protocol::resp2::types::OwnedFrame) -> Reply {
        use redis_protocol::resp2::types::OwnedFrame as F;
        match frame {
            F::SimpleString(s) => Reply::Status(String::from_utf8_lossy(&s).into_owned()),
            F::Error(e) => Reply::Error(e),
            F::Integer(i) => Reply::Int(i),
            F::BulkString(b) => Reply::Bulk(b),
            F::Array(items) => Reply::Array(items.into_iter().map(Reply::from_resp2).collect()),
            F::Null => Reply::Nil,
        }
    }

    fn from_resp3(frame: redis_protocol::resp3::types::OwnedFrame) -> Reply {
        use redis_protocol::resp3::types::OwnedFrame as F;
        match frame {
            F::SimpleString { data, .. } => Reply::Status(String::from_utf8_lossy(&data).into_owned()),
            F::SimpleError { data, .. } => Reply::Error(data),
            F::BlobError { data, .. } => Reply::Error(String::from_utf8_lossy(&data).into_owned()),
            F::Number { data, .. } => Reply::Int(data),
            F::BlobString { data, .. } => Reply::Bulk(data),
            F::Null => Reply::Nil,
            F::Array { data, .. } => Reply::Array(data.into_iter().map(Reply::from_resp3).collect()),
            F::Push { data, .. } => Reply::Push(data.into_iter().map(Reply::from_resp3).collect()),
            F::Set { data, .. } => Reply::Set(data.into_iter().map(Reply::from_resp3).collect()),
            F::Map { data, .. } => Reply::Map(
                data.into_iter()
                    .map(|(k, v)| (Reply::from_resp3(k), Reply::from_resp3(v)))
                    .collect(),
            ),
            other => Reply::Other(format!("{other:?}")),
        }
    }
}

/// A blocking RESP client over a plain socket: what any Redis client library does, with nothing hidden.
pub struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
    /// How replies are decoded: 2 or 3 (set it after a successful `HELLO 3`).
    pub protocol: u8,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            buf: Vec::new(),
            protocol: 2,
        }
    }

    /// Sends one command as a multibulk.
    pub fn send<A: AsRef<[u8]>>(&mut self, args: &[A]) {
        self.write_raw(&encode(args));
    }

    pub fn write_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to proxy");
    }

    /// Sends a command and reads its reply.
    pub fn cmd<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Reply {
        self.send(args);
        self.read()
    }

    /// Runs a command written as words separated by spaces.
    pub fn run(&mut self, line: &str) -> Reply {
        let args: Vec<&str> = line.split(' ').collect();
        self.cmd(&args)
    }

    /// Reads one reply, failing the test after [`REPLY_TIMEOUT`].
    pub fn read(&mut self) -> Reply {
        self.read_within(REPLY_TIMEOUT)
            .unwrap_or_else(|| panic!("no reply within {REPLY_TIMEOUT:?}"))
    }

    /// Reads one reply, or `None` if none comes within `timeout`. Panics if the connection closes.
    pub fn read_within(&mut self, timeout: Duration) -> Option<Reply> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(reply) = self.decode() {
                return Some(reply);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            let mut chunk = [0u8; 64 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!(
                    "connection closed while waiting for a reply; unread: {:?}",
                    String::from_utf8_lossy(&self.buf)
                ),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                // A signal (SIGCHLD when a test kills a server) interrupted the read: read again.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    return None;
                }
                Err(e) => panic!("read error: {e}"),
            }
        }
    }

    /// Reads everything until the other side closes (within `timeout`), returning the raw bytes and
    /// whether it closed.
    pub fn read_until_closed(&mut self, timeout: Duration) -> (Vec<u8>, bool) {
        let deadline = Instant::now() + timeout;
        let mut all = std::mem::take(&mut self.buf);
        loop {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return (all, false);
            };
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            let mut chunk = [0u8; 64 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return (all, true),
                Ok(n) => all.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (all, true),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return (all, false),
            }
        }
    }

    /// Reads one complete reply frame as raw bytes (framed by redis-protocol's RESP3 decoder, or as a RESP2
    /// null), failing the test after [`REPLY_TIMEOUT`].
    pub fn read_raw_frame(&mut self) -> Vec<u8> {
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            let used = if self.buf.starts_with(b"$-1\r\n") || self.buf.starts_with(b"*-1\r\n") {
                Some(5)
            } else {
                match redis_protocol::resp3::decode::complete::decode(&self.buf) {
                    Ok(Some((_, used))) => Some(used),
                    Ok(None) => None,
                    Err(e) => panic!("bad RESP from proxy: {e:?}: {:?}", String::from_utf8_lossy(&self.buf)),
                }
            };
            if let Some(used) = used {
                return self.buf.drain(..used).collect();
            }
            let left = deadline
                .checked_duration_since(Instant::now())
                .expect("no reply in time");
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            let mut chunk = [0u8; 64 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!("connection closed while waiting for a reply"),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => panic!("read error: {e}"),
            }
        }
    }

    fn decode(&mut self) -> Option<Reply> {
        if self.buf.is_empty() {
            return None;
        }
        let (reply, used) = if self.protocol >= 3 {
            let (frame, used) = redis_protocol::resp3::decode::complete::decode(&self.buf)
                .unwrap_or_else(|e| panic!("bad RESP3 from proxy: {e:?}: {:?}", String::from_utf8_lossy(&self.buf)))?;
            (Reply::from_resp3(frame), used)
        } else {
            let (frame, used) = redis_protocol::resp2::decode::decode(&self.buf)
                .unwrap_or_else(|e| panic!("bad RESP2 from proxy: {e:?}: {:?}", String::from_utf8_lossy(&self.buf)))?;
            (Reply::from_resp2(frame), used)
        };
        self.buf.drain(..used);
        Some(reply)
    }
}

/// Encodes a command as a RESP multibulk.
pub fn encode<A: AsRef<[u8]>>(args: &[A]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        let arg = arg.as_ref();
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Runs a command-line tool, failing the test with its output if it cannot run.
pub fn run_tool(program: impl AsRef<Path>, args: &[&str]) -> std::process::Output {
    let program = program.as_ref();
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e} (run scripts/install-redis.sh)", program.display()))
}

/// Waits until `condition` holds, checking every 10 ms, failing the test after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    wait_for(what, timeout, || if condition() { Ok(()) } else { Err(String::new()) })
}

/// Waits until `probe` gives a value, checking every 10 ms; after `timeout` the test fails with what the last
/// probe said.
pub fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match probe() {
            Ok(value) => return value,
            Err(last) => last,
        };
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}{}",
            if last.is_empty() {
                String::new()
            } else {
                format!("; last seen: {last}")
            }
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A proxy's admin port, for tests: status, metrics, handovers.
pub struct AdminPort(pub SocketAddr);

impl std::ops::Deref for Proxy {
    type Target = AdminPort;

    fn deref(&self) -> &AdminPort {
        &self.port
    }
}

impl AdminPort {
    fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.0)
    }

    /// `GET /status` on the admin port, read as the typed schema `ctl` reads.
    pub fn status(&self) -> Status {
        ureq::get(&self.admin_url("/status"))
            .call()
            .expect("GET /status")
            .body_mut()
            .read_json()
            .unwrap()
    }

    /// `GET /metrics`: the Prometheus text.
    pub fn metrics(&self) -> String {
        ureq::get(&self.admin_url("/metrics"))
            .call()
            .expect("GET /metrics")
            .body_mut()
            .read_to_string()
            .unwrap()
    }

    /// `GET path`; the HTTP status and the JSON answer.
    pub fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let mut response = agent
            .get(&self.admin_url(path))
            .call()
            .expect("GET from the admin port");
        let status = response.status().as_u16();
        (
            status,
            response.body_mut().read_json().unwrap_or(serde_json::Value::Null),
        )
    }

    /// `POST path` with a JSON body; the HTTP status and the JSON answer.
    pub fn post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let mut response = agent
            .post(&self.admin_url(path))
            .send_json(body)
            .expect("POST to the admin port");
        let status = response.status().as_u16();
        (
            status,
            response.body_mut().read_json().unwrap_or(serde_json::Value::Null),
        )
    }

    /// `PUT /config/resp3` with `mode`; the HTTP status and the JSON answer.
    pub fn put_resp3(&self, mode: &str) -> (u16, serde_json::Value) {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let mut response = agent
            .put(&self.admin_url("/config/resp3"))
            .send(mode)
            .expect("PUT /config/resp3");
        let status = response.status().as_u16();
        (
            status,
            response.body_mut().read_json().unwrap_or(serde_json::Value::Null),
        )
    }

    /// Starts a handover with `options` and waits until it ends; the report of the finished handover.
    pub fn handover(&self, options: serde_json::Value) -> Report {
        let (status, answer) = self.post("/handover", options);
        assert_eq!(status, 202, "POST /handover refused: {answer}");
        self.wait_for_handover_end(Duration::from_secs(60))
    }

    /// Waits until no handover runs, then returns the last one's report.
    pub fn wait_for_handover_end(&self, timeout: Duration) -> Report {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status();
            if let (None, Some(last)) = (&status.handover, &status.last_handover) {
                return last.clone();
            }
            // The status says where it stuck (its phase, what it waits for).
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for the handover to end: {status:#?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until the running handover reaches `phase`.
    pub fn wait_for_phase(&self, phase: Phase, timeout: Duration) {
        wait_until(&format!("phase {}", phase.name()), timeout, || {
            self.status().phase == phase
        });
    }
}

/// A Redis Cluster of real servers: `masters` primaries with the slots split evenly among them, met and agreed
/// (`cluster_state:ok` on every node) before it is handed out. Its servers stop when it is dropped.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

/// A cluster node's settings. The node timeout is long: on a loaded test machine a node slow to answer pings for a
/// few seconds would be marked failed, and the cluster would say CLUSTERDOWN (no test needs failure detection).
const CLUSTER_NODE_ARGS: [&str; 6] = [
    "--cluster-enabled",
    "yes",
    "--cluster-config-file",
    "nodes.conf",
    "--cluster-node-timeout",
    "30000",
];

impl RedisCluster {
    pub fn start(version: Version, masters: u16) -> RedisCluster {
        let args = CLUSTER_NODE_ARGS;
        // The cluster bus listens on port + 10000 (see `free_cluster_port`); a node whose bus port was taken
        // meanwhile fails to start, and starts again on another port.
        let nodes: Vec<RedisServer> = (0..masters)
            .map(|_| RedisServer::start_cluster_node(version, &args))
            .collect();
        let per = 16384 / masters;
        for (i, node) in nodes.iter().enumerate() {
            let i = i as u16;
            let end = if i + 1 == masters { 16383 } else { (i + 1) * per - 1 };
            let mut words = vec!["CLUSTER".to_string(), "ADDSLOTS".to_string()];
            words.extend((i * per..=end).map(|slot| slot.to_string()));
            let mut direct = node.direct();
            assert_eq!(direct.cmd(&words), Reply::ok());
            assert_eq!(
                direct.cmd(&["CLUSTER", "SET-CONFIG-EPOCH", &(i + 1).to_string()]),
                Reply::ok()
            );
        }
        for node in &nodes[1..] {
            let first = nodes[0].addr();
            assert_eq!(
                node.direct()
                    .cmd(&["CLUSTER", "MEET", &first.ip().to_string(), &first.port().to_string()]),
                Reply::ok()
            );
        }
        let cluster = RedisCluster { nodes };
        cluster.wait_agreed();
        cluster
    }

    /// A fresh cluster node of `version`, in no cluster yet (a NEW node for a handover).
    pub fn fresh_node(version: Version) -> RedisServer {
        RedisServer::start_cluster_node(version, &CLUSTER_NODE_ARGS)
    }

    /// Adds a node of `version` as a replica of the node `of`, once it is synced and its primary lists it as its
    /// replica (a failover asked of it before that times out silently); its index among the nodes.
    pub fn add_replica(&mut self, version: Version, of: usize) -> usize {
        let node = RedisServer::start_cluster_node(version, &CLUSTER_NODE_ARGS);
        let first = self.nodes[0].addr();
        assert_eq!(
            node.direct()
                .cmd(&["CLUSTER", "MEET", &first.ip().to_string(), &first.port().to_string()]),
            Reply::ok()
        );
        self.nodes.push(node);
        self.wait_agreed();
        let primary_id = self.nodes[of].direct().run("CLUSTER MYID").text();
        let index = self.nodes.len() - 1;
        let mut replica = self.nodes[index].direct();
        wait_for(
            "the node to know its primary",
            Duration::from_secs(10),
            || match replica.cmd(&["CLUSTER", "REPLICATE", &primary_id]) {
                Reply::Status(_) => Ok(()),
                other => Err(format!("{other:?}")),
            },
        );
        let replica_id = replica.run("CLUSTER MYID").text();
        let mut primary = self.nodes[of].direct();
        wait_for(
            "the replica synced and known to its primary",
            Duration::from_secs(30),
            || {
                let synced = replica.run("INFO replication").text().contains("master_link_status:up");
                let nodes = primary.run("CLUSTER NODES").text();
                let listed = nodes
                    .lines()
                    .any(|l| l.starts_with(&replica_id) && l.contains(&format!("slave {primary_id}")));
                if synced && listed { Ok(()) } else { Err(nodes) }
            },
        );
        index
    }

    /// Waits until every node says `cluster_state:ok` and knows every other node, out of its handshake.
    pub fn wait_agreed(&self) {
        let count = self.nodes.len();
        wait_for("the cluster to agree", Duration::from_secs(30), || {
            for node in &self.nodes {
                let mut direct = node.direct();
                let info = direct.run("CLUSTER INFO").text();
                let known = direct.run("CLUSTER NODES").text();
                let lines = known.lines().filter(|l| !l.trim().is_empty()).count();
                if !info.contains("cluster_state:ok") || lines != count || known.contains("handshake") {
                    return Err(format!("{}: {info} {known}", node.port));
                }
            }
            Ok(())
        })
    }

    /// The node that serves `key`'s slot, asked of the first node.
    pub fn node_of(&self, key: &str) -> &RedisServer {
        let slot = match self.nodes[0].direct().cmd(&["CLUSTER", "KEYSLOT", key]) {
            Reply::Int(slot) => slot,
            other => panic!("CLUSTER KEYSLOT {key}: {other:?}"),
        };
        let slots = self.nodes[0].direct().run("CLUSTER SLOTS");
        for range in slots.items() {
            let parts = range.items();
            let (Reply::Int(start), Reply::Int(end)) = (&parts[0], &parts[1]) else {
                continue;
            };
            if (*start..=*end).contains(&slot) {
                let port = match &parts[2].items()[1] {
                    Reply::Int(port) => *port as u16,
                    other => panic!("{other:?}"),
                };
                return self
                    .nodes
                    .iter()
                    .find(|n| n.port == port)
                    .expect("a node of this cluster");
            }
        }
        panic!("no node serves slot {slot}")
    }
}

/// The servers and the proxy of a handover test: OLD is primary at start, NEW empty.
pub struct Harness {
    pub old: RedisServer,
    pub new: RedisServer,
    pub proxy: Proxy,
}

impl Harness {
    /// OLD of `old` version and NEW of `new` version, with the proxy in front.
    pub fn start(old: Version, new: Version) -> Harness {
        Harness::start_with(old, &[], new, &[], |_| {})
    }

    /// The same with extra Redis arguments for each server and proxy settings.
    pub fn start_with(
        old: Version,
        old_args: &[&str],
        new: Version,
        new_args: &[&str],
        configure: impl FnOnce(&mut redis_handover::config::Config),
    ) -> Harness {
        let old = RedisServer::start(old, old_args);
        let new = RedisServer::start(new, new_args);
        let proxy = Proxy::start(old.addr(), Some(new.addr()), configure);
        Harness { old, new, proxy }
    }
}

/// A TCP relay between real processes that injects network faults a real server cannot be made to show: a delay
/// on every chunk, a cut of every connection, or a cut right after a given command has gone through. It stops
/// when dropped.
pub struct FaultyLink {
    pub addr: SocketAddr,
    state: std::sync::Arc<LinkState>,
}

struct LinkState {
    delay: std::sync::Mutex<Duration>,
    stop: std::sync::atomic::AtomicBool,
    /// Refuse new connections and close the open ones.
    cut: std::sync::atomic::AtomicBool,
    /// Cut everything right after a chunk toward the server containing these bytes has been forwarded (or, with
    /// `drop_trigger`, instead of forwarding it).
    cut_after: std::sync::Mutex<Option<Vec<u8>>>,
    drop_trigger: std::sync::atomic::AtomicBool,
    streams: std::sync::Mutex<Vec<TcpStream>>,
}

impl LinkState {
    fn cut_all(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for stream in self.streams.lock().unwrap().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl FaultyLink {
    pub fn start(upstream: SocketAddr) -> FaultyLink {
        FaultyLink::start_on("127.0.0.1:0".parse().unwrap(), upstream)
    }

    /// A relay listening on `listen`: another loopback address with the upstream's own port makes a relay whose
    /// address an admin port takes for its own (its `Host` check compares the port).
    pub fn start_on(listen: SocketAddr, upstream: SocketAddr) -> FaultyLink {
        let listener = TcpListener::bind(listen).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = std::sync::Arc::new(LinkState {
            delay: std::sync::Mutex::new(Duration::ZERO),
            stop: std::sync::atomic::AtomicBool::new(false),
            cut: std::sync::atomic::AtomicBool::new(false),
            cut_after: std::sync::Mutex::new(None),
            drop_trigger: std::sync::atomic::AtomicBool::new(false),
            streams: std::sync::Mutex::new(Vec::new()),
        });
        let shared = state.clone();
        std::thread::spawn(move || {
            while !shared.stop.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((down, _)) if shared.cut.load(std::sync::atomic::Ordering::SeqCst) => drop(down),
                    Ok((down, _)) => {
                        down.set_nonblocking(false).unwrap();
                        let Ok(up) = TcpStream::connect(upstream) else { continue };
                        {
                            let mut streams = shared.streams.lock().unwrap();
                            streams.push(down.try_clone().unwrap());
                            streams.push(up.try_clone().unwrap());
                        }
                        pump(down.try_clone().unwrap(), up.try_clone().unwrap(), shared.clone(), true);
                        pump(up, down, shared.clone(), false);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        FaultyLink { addr, state }
    }

    /// Delays every chunk by `delay` (a slow network).
    pub fn delay(&self, delay: Duration) {
        *self.state.delay.lock().unwrap() = delay;
    }

    /// Closes every connection and refuses new ones (a cut network).
    pub fn cut(&self) {
        self.state.cut_all();
    }

    /// Lets the next chunk toward the server that contains `pattern` through, then cuts everything.
    pub fn cut_after(&self, pattern: &[u8]) {
        *self.state.cut_after.lock().unwrap() = Some(pattern.to_vec());
    }

    /// Cuts everything when a chunk toward the server contains `pattern`, without letting that chunk through.
    pub fn cut_before(&self, pattern: &[u8]) {
        self.state.drop_trigger.store(true, std::sync::atomic::Ordering::SeqCst);
        *self.state.cut_after.lock().unwrap() = Some(pattern.to_vec());
    }

    /// Ends a cut: new connections go through again.
    pub fn heal(&self) {
        *self.state.cut_after.lock().unwrap() = None;
        self.state.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for FaultyLink {
    fn drop(&mut self) {
        self.state.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.state.cut_all();
    }
}

/// Copies `from` to `to` with the link's current delay; `toward_server` chunks are checked for `cut_after`.
fn pump(mut from: TcpStream, mut to: TcpStream, state: std::sync::Arc<LinkState>, toward_server: bool) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let reader_state = state.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        while !reader_state.stop.load(std::sync::atomic::Ordering::Relaxed) {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
    });
    std::thread::spawn(move || {
        while let Ok((read_at, chunk)) = rx.recv() {
            if state.cut.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
            let delay = *state.delay.lock().unwrap();
            if let Some(wait) = (read_at + delay).checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let trigger = state.cut_after.lock().unwrap().clone();
            let triggered = toward_server && trigger.is_some_and(|p| chunk.windows(p.len()).any(|w| w == p.as_slice()));
            if triggered {
                *state.cut_after.lock().unwrap() = None;
            }
            if triggered && state.drop_trigger.load(std::sync::atomic::Ordering::SeqCst) {
                state.cut_all();
                break;
            }
            if to.write_all(&chunk).is_err() {
                break;
            }
            if triggered {
                std::thread::sleep(Duration::from_millis(20));
                state.cut_all();
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Both);
    });
}

/// The consistency checker's writers running through a proxy, on a runtime of their own: every acknowledged
/// write is looked for once they stop.
pub struct Load {
    runtime: tokio::runtime::Runtime,
    writers: Option<redis_handover::consistency::Writers>,
    addr: String,
    prefix: String,
}

impl Load {
    /// `clients` writers through `proxy`, their keys under `fault`.
    pub fn start(proxy: &Proxy, clients: usize) -> Load {
        Load::start_named(proxy, clients, "fault")
    }

    /// The same with the keys under `prefix` (one per proxy of a fleet).
    pub fn start_named(proxy: &Proxy, clients: usize, prefix: &str) -> Load {
        Load::start_on(proxy.addr, clients, prefix)
    }

    /// `clients` writers through the proxy port `addr` (a shard's, in front of a cluster), their keys under `prefix`.
    pub fn start_on(addr: SocketAddr, clients: usize, prefix: &str) -> Load {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let addr = addr.to_string();
        let writers = runtime.block_on(async { redis_handover::consistency::Writers::start(&addr, clients, prefix) });
        Load {
            runtime,
            writers: Some(writers),
            addr,
            prefix: prefix.to_string(),
        }
    }

    /// Stops the writers and looks for every write they were told succeeded, through the same proxy.
    pub fn stop_and_verify(self) -> redis_handover::consistency::Report {
        let addr = self.addr.clone();
        self.stop_and_verify_through(&addr)
    }

    /// The same, reading through `addr`.
    pub fn stop_and_verify_through(mut self, addr: &str) -> redis_handover::consistency::Report {
        let writers = self.writers.take().unwrap();
        self.runtime.block_on(async {
            let logs = writers.stop().await;
            redis_handover::consistency::verify(addr, &self.prefix, &logs)
                .await
                .expect("verification reads")
        })
    }
}

/// The proxy as a process of its own (the built binary), for what only a process can show: SIGKILL and SIGSTOP.
/// Killed on drop.
pub struct ProxyProcess {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    port: AdminPort,
    child: Child,
    log: PathBuf,
}

impl std::ops::Deref for ProxyProcess {
    type Target = AdminPort;

    fn deref(&self) -> &AdminPort {
        &self.port
    }
}

impl ProxyProcess {
    /// Starts the binary in front of `old` and `new`, its admin port on `admin_port`, with `extra` arguments
    /// (`--peer`, `--proxy-id`, ...), and waits until its admin port answers.
    pub fn start(old: SocketAddr, new: SocketAddr, admin_port: u16, extra: &[String]) -> ProxyProcess {
        let binary = env!("CARGO_BIN_EXE_redis-handover");
        let listen = free_port();
        let log = std::env::temp_dir().join(format!("rh-proxy-{}-{admin_port}.log", std::process::id()));
        let mut args: Vec<String> = [
            "--listen",
            &format!("127.0.0.1:{listen}"),
            "--admin",
            &format!("127.0.0.1:{admin_port}"),
            "--old",
            &old.to_string(),
            "--new",
            &new.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().cloned());
        let child = Command::new(binary)
            .args(&args)
            .env_remove("REDIS_HANDOVER_CONFIG")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
        let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
        let mut process = ProxyProcess {
            addr: SocketAddr::from(([127, 0, 0, 1], listen)),
            admin,
            port: AdminPort(admin),
            child,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if ureq::get(&format!("http://{admin}/healthz")).call().is_ok() {
                return process;
            }
            if let Ok(Some(status)) = process.child.try_wait() {
                panic!("the proxy exited ({status}): {}", process.log());
            }
            assert!(Instant::now() < deadline, "the proxy did not start: {}", process.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    /// What the proxy logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        self.resume();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Freezes the process (SIGSTOP): its connections stay open and it answers nothing.
    pub fn stall(&self) {
        signal(&self.child, "-STOP");
    }

    /// Lets a stalled process go on (SIGCONT).
    pub fn resume(&self) {
        signal(&self.child, "-CONT");
    }
}

/// Sends a signal (`-STOP`, `-CONT`) to a child process; one that has exited already is left alone.
fn signal(child: &Child, which: &str) {
    let _ = Command::new("kill")
        .args([which, &child.id().to_string()])
        .stderr(Stdio::null())
        .status();
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.log);
    }
}
