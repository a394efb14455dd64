//! Settings: defaults, then `handover.toml`, then environment variables (`REDIS_HANDOVER_*`), then command-line
//! flags. Each later source overrides the earlier ones.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Everything the proxy can be told at start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where clients connect (`host:port`).
    pub listen: String,
    /// The OLD Redis server, primary at start (`host:port`).
    pub old: String,
    /// The NEW Redis server, needed only for a handover (`host:port`).
    pub new: Option<String>,
    /// The admin HTTP port (`host:port`), bound to loopback by default.
    pub admin: String,
    /// Connections beyond this many get `-ERR max number of clients reached`.
    pub max_clients: usize,
    /// How long to wait for a backend's TCP connect before answering the client with an error.
    pub connect_timeout_ms: u64,
    /// On SIGTERM/SIGINT, how long in-flight replies may take before the proxy exits anyway.
    pub shutdown_grace_ms: u64,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// Worker threads: 1 runs everything on one thread.
    pub threads: usize,
    /// How sessions reach the primary: `shared` (pipelined connections shared by sessions with the same
    /// connection state; a session gets its own connection for the commands whose effect lives on it) or
    /// `dedicated` (one connection per client, 1:1).
    pub backend_links: BackendLinks,
    /// Drop a client silent this long while nothing is owed to it, or whose request stays incomplete this long
    /// (also when it trickles in); 0 turns it off, like Redis's `timeout 0`.
    pub client_idle_timeout_s: u64,
    /// Drop a client that has taken none of its replies for this long while 4 MiB of them wait; 0 turns it off.
    pub client_output_timeout_s: u64,
    /// What a client's `HELLO 3` gets: `allow` (passed to the primary) or `pin-resp2` (refused, so that the
    /// client stays on RESP2 and sees the same reply shapes before and after the upgrade).
    pub resp3: Resp3Mode,
    /// The user the proxy authenticates as on OLD for its own connections (pre-flight, replication setup).
    pub old_user: Option<String>,
    /// The password for those connections to OLD; also given to NEW as `masterauth` so it can replicate.
    pub old_password: Option<String>,
    /// A file holding `old_password` (its first line), instead of the password itself.
    pub old_password_file: Option<PathBuf>,
    pub new_user: Option<String>,
    pub new_password: Option<String>,
    pub new_password_file: Option<PathBuf>,
    /// The address NEW uses to reach OLD for replication, when it differs from `old` (NAT, containers).
    pub old_replication_addr: Option<String>,
    /// The address OLD uses to reach NEW, for a handover back.
    pub new_replication_addr: Option<String>,
    /// A file holding the admin token: every admin request except `/healthz` must then carry
    /// `Authorization: Bearer <token>`. Required when `admin` binds beyond loopback.
    pub admin_token_file: Option<PathBuf>,
    /// The admin token itself (from `REDIS_HANDOVER_ADMIN_TOKEN` or the file).
    pub admin_token: Option<String>,
    /// Host names (beyond the admin port's own IP address and `localhost`) that admin requests may carry in their
    /// `Host` header; any other name is refused, which stops DNS rebinding.
    pub admin_allowed_hosts: Vec<String>,
    /// A password clients must give the proxy (AUTH or HELLO ... AUTH) before anything else; the proxy then uses
    /// the configured `old_*`/`new_*` credentials toward the servers. Unset: clients' AUTH passes through.
    pub requirepass: Option<String>,
    pub requirepass_file: Option<PathBuf>,
    /// A certificate chain and its key (PEM): with both, the listen port speaks TLS.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// Whether the proxy's connections to the servers use TLS, trusting `backend_tls_ca_file`.
    pub backend_tls: bool,
    pub backend_tls_ca_file: Option<PathBuf>,
    /// The name the servers' certificates are checked against; by default the host of each address.
    pub backend_tls_server_name: Option<String>,
    /// The admin addresses (`host:port`) of the other proxies in front of the same servers, or one name that
    /// resolves to all of them; a handover started on any of them is carried out by all. A proxy skips its own
    /// address. They share the admin token, where one is set.
    pub fleet_peers: Vec<String>,
    /// This proxy's name in the fleet; by default its admin address.
    pub proxy_id: Option<String>,
    /// How long after a switch the former primary keeps following the new one, so that `POST /rollback` can hand
    /// back to it with nothing lost; 0 turns the rollback window off.
    pub rollback_window_s: u64,
    /// The `repl-backlog-size` a handover gives its target, when the target's own is smaller: the span of writes
    /// the former primary can miss (a restart with persistence, a broken link) and still resynchronize partially.
    /// 0 leaves the target's setting alone.
    pub rollback_backlog_bytes: u64,
    /// The share of reads shadow reads send to NEW as well (`0.05` is 5%) when `ctl check --for` (or `POST
    /// /shadow`) names none; 0, the default, means they must name one.
    pub shadow_reads: f64,
    /// When `old` is a node of a Redis Cluster: the ports the proxy presents the shards on, one per shard (in the
    /// order of their first slot; a shard keeps its port across failovers and resharding). Empty: not a cluster.
    pub cluster_ports: Vec<u16>,
    /// The host that `CLUSTER SLOTS`, `SHARDS`, `NODES` and `MOVED` name for those ports; by default the host of
    /// `listen`.
    pub cluster_announce_host: Option<String>,
    /// The NEW nodes a cluster is handed over to (empty, in cluster mode, of the new version): one per shard, in
    /// the order of the shards' first slot.
    pub cluster_new: Vec<String>,
}

/// What the proxy does with `HELLO 3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Resp3Mode {
    /// HELLO goes to the primary as it is.
    #[default]
    Allow,
    /// `HELLO 3` is refused with an error that makes clients fall back to RESP2.
    PinResp2,
}

impl Resp3Mode {
    pub fn name(self) -> &'static str {
        match self {
            Resp3Mode::Allow => "allow",
            Resp3Mode::PinResp2 => "pin-resp2",
        }
    }
}

/// How sessions reach the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendLinks {
    /// Shared pipelined links while a session holds no connection state; its own connection while it does.
    #[default]
    Shared,
    /// One backend connection per client.
    Dedicated,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:6380".into(),
            old: "127.0.0.1:6379".into(),
            new: None,
            admin: "127.0.0.1:7380".into(),
            max_clients: 10_000,
            connect_timeout_ms: 1_000,
            shutdown_grace_ms: 5_000,
            log_format: LogFormat::Text,
            threads: 1,
            backend_links: BackendLinks::Shared,
            client_idle_timeout_s: 0,
            client_output_timeout_s: 60,
            resp3: Resp3Mode::Allow,
            old_user: None,
            old_password: None,
            old_password_file: None,
            new_user: None,
            new_password: None,
            new_password_file: None,
            old_replication_addr: None,
            new_replication_addr: None,
            admin_token_file: None,
            admin_token: None,
            admin_allowed_hosts: Vec::new(),
            requirepass: None,
            requirepass_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            backend_tls: false,
            backend_tls_ca_file: None,
            backend_tls_server_name: None,
            fleet_peers: Vec::new(),
            proxy_id: None,
            rollback_window_s: 3600,
            rollback_backlog_bytes: 64 << 20,
            shadow_reads: 0.0,
            cluster_ports: Vec::new(),
            cluster_announce_host: None,
            cluster_new: Vec::new(),
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid setting {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

/// Settings given on the command line or in the environment; each one given overrides the file.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Overrides {
    /// A TOML file with any of the settings below (see handover.example.toml).
    #[arg(long, env = "REDIS_HANDOVER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address clients connect to [default: 127.0.0.1:6380].
    #[arg(long, env = "REDIS_HANDOVER_LISTEN", value_name = "HOST:PORT")]
    pub listen: Option<String>,
    /// The OLD Redis server, primary at start [default: 127.0.0.1:6379].
    #[arg(long, env = "REDIS_HANDOVER_OLD", value_name = "HOST:PORT")]
    pub old: Option<String>,
    /// The NEW Redis server to hand over to.
    #[arg(long, env = "REDIS_HANDOVER_NEW", value_name = "HOST:PORT")]
    pub new: Option<String>,
    /// The admin HTTP address [default: 127.0.0.1:7380].
    #[arg(long, env = "REDIS_HANDOVER_ADMIN", value_name = "HOST:PORT")]
    pub admin: Option<String>,
    /// Most client connections at once [default: 10000].
    #[arg(long, env = "REDIS_HANDOVER_MAX_CLIENTS", value_name = "N")]
    pub max_clients: Option<usize>,
    /// Backend connect timeout [default: 1000].
    #[arg(long, env = "REDIS_HANDOVER_CONNECT_TIMEOUT_MS", value_name = "MS")]
    pub connect_timeout_ms: Option<u64>,
    /// Grace period for in-flight replies on SIGTERM/SIGINT [default: 5000].
    #[arg(long, env = "REDIS_HANDOVER_SHUTDOWN_GRACE_MS", value_name = "MS")]
    pub shutdown_grace_ms: Option<u64>,
    /// Log format [default: text].
    #[arg(long, env = "REDIS_HANDOVER_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Worker threads; 1 runs everything on one thread [default: 1].
    #[arg(long, env = "REDIS_HANDOVER_THREADS", value_name = "N")]
    pub threads: Option<usize>,
    /// Backend connections shared by sessions, or one per client [default: shared].
    #[arg(long, env = "REDIS_HANDOVER_BACKEND_LINKS", value_enum)]
    pub backend_links: Option<BackendLinks>,
    /// Drop clients idle (or stuck mid-request) this long; 0 = never [default: 0].
    #[arg(long, env = "REDIS_HANDOVER_CLIENT_IDLE_TIMEOUT", value_name = "S")]
    pub client_idle_timeout: Option<u64>,
    /// Drop clients that stop reading their replies for this long; 0 = never [default: 60].
    #[arg(long, env = "REDIS_HANDOVER_CLIENT_OUTPUT_TIMEOUT", value_name = "S")]
    pub client_output_timeout: Option<u64>,
    /// What HELLO 3 gets: passed on (allow), or refused so clients stay on RESP2 (pin-resp2) [default: allow].
    #[arg(long, env = "REDIS_HANDOVER_RESP3", value_enum)]
    pub resp3: Option<Resp3Mode>,
    /// User for the proxy's own connections to OLD.
    #[arg(long, env = "REDIS_HANDOVER_OLD_USER", value_name = "USER")]
    pub old_user: Option<String>,
    /// Password for the proxy's own connections to OLD (only from the environment, never a flag).
    #[arg(skip)]
    pub old_password: Option<String>,
    /// A file holding the password for OLD.
    #[arg(long, env = "REDIS_HANDOVER_OLD_PASSWORD_FILE", value_name = "FILE")]
    pub old_password_file: Option<PathBuf>,
    /// User for the proxy's own connections to NEW.
    #[arg(long, env = "REDIS_HANDOVER_NEW_USER", value_name = "USER")]
    pub new_user: Option<String>,
    #[arg(skip)]
    pub new_password: Option<String>,
    /// A file holding the password for NEW.
    #[arg(long, env = "REDIS_HANDOVER_NEW_PASSWORD_FILE", value_name = "FILE")]
    pub new_password_file: Option<PathBuf>,
    /// The address NEW replicates from, when it differs from --old.
    #[arg(long, env = "REDIS_HANDOVER_OLD_REPLICATION_ADDR", value_name = "HOST:PORT")]
    pub old_replication_addr: Option<String>,
    /// The address OLD replicates from for a handover back, when it differs from --new.
    #[arg(long, env = "REDIS_HANDOVER_NEW_REPLICATION_ADDR", value_name = "HOST:PORT")]
    pub new_replication_addr: Option<String>,
    /// A file holding the admin token (required when --admin binds beyond loopback).
    #[arg(long, env = "REDIS_HANDOVER_ADMIN_TOKEN_FILE", value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    #[arg(skip)]
    pub admin_token: Option<String>,
    /// Host names admin requests may carry in `Host`, besides the admin address and localhost (comma-separated).
    #[arg(
        long,
        env = "REDIS_HANDOVER_ADMIN_ALLOWED_HOSTS",
        value_name = "NAMES",
        value_delimiter = ','
    )]
    pub admin_allowed_hosts: Option<Vec<String>>,
    /// A file holding the password clients must give the proxy.
    #[arg(long, env = "REDIS_HANDOVER_REQUIREPASS_FILE", value_name = "FILE")]
    pub requirepass_file: Option<PathBuf>,
    #[arg(skip)]
    pub requirepass: Option<String>,
    /// TLS certificate chain (PEM) for the listen port.
    #[arg(long, env = "REDIS_HANDOVER_TLS_CERT_FILE", value_name = "FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// TLS private key (PEM) for the listen port.
    #[arg(long, env = "REDIS_HANDOVER_TLS_KEY_FILE", value_name = "FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// Connect to the servers with TLS.
    #[arg(long, env = "REDIS_HANDOVER_BACKEND_TLS")]
    pub backend_tls: bool,
    /// The certificate authorities (PEM) trusted for the servers' certificates.
    #[arg(long, env = "REDIS_HANDOVER_BACKEND_TLS_CA_FILE", value_name = "FILE")]
    pub backend_tls_ca_file: Option<PathBuf>,
    /// The name the servers' certificates must carry [default: the host of each address].
    #[arg(long, env = "REDIS_HANDOVER_BACKEND_TLS_SERVER_NAME", value_name = "NAME")]
    pub backend_tls_server_name: Option<String>,
    /// The admin address of another proxy of the fleet (repeat it), or one name resolving to all of them.
    #[arg(
        long = "peer",
        env = "REDIS_HANDOVER_FLEET_PEERS",
        value_name = "HOST:PORT",
        value_delimiter = ','
    )]
    pub fleet_peers: Option<Vec<String>>,
    /// This proxy's name in the fleet [default: its admin address].
    #[arg(long, env = "REDIS_HANDOVER_PROXY_ID", value_name = "NAME")]
    pub proxy_id: Option<String>,
    /// How long the former primary follows the new one after a switch, for a rollback (0: off) [default: 3600].
    #[arg(long, env = "REDIS_HANDOVER_ROLLBACK_WINDOW_S", value_name = "SECONDS")]
    pub rollback_window_s: Option<u64>,
    /// The least repl-backlog-size a handover gives its target (0: leave it) [default: 67108864].
    #[arg(long, env = "REDIS_HANDOVER_ROLLBACK_BACKLOG_BYTES", value_name = "BYTES")]
    pub rollback_backlog_bytes: Option<u64>,
    /// The share of reads shadow reads use when ctl check --for names none (0.05 is 5%) [default: 0].
    #[arg(long, env = "REDIS_HANDOVER_SHADOW_READS", value_name = "FRACTION")]
    pub shadow_reads: Option<f64>,
    /// A port to present a shard of the cluster on (repeat it, or `7001,7002,7003`), when OLD is a cluster node.
    #[arg(
        long = "cluster-port",
        env = "REDIS_HANDOVER_CLUSTER_PORTS",
        value_name = "PORT",
        value_delimiter = ','
    )]
    pub cluster_ports: Option<Vec<u16>>,
    /// The host that cluster answers and redirections name [default: the listen address's host].
    #[arg(long, env = "REDIS_HANDOVER_CLUSTER_ANNOUNCE_HOST", value_name = "HOST")]
    pub cluster_announce_host: Option<String>,
    /// A NEW node a cluster is handed over to (repeat it, one per shard in the order of their first slot).
    #[arg(
        long = "cluster-new",
        env = "REDIS_HANDOVER_CLUSTER_NEW",
        value_name = "HOST:PORT",
        value_delimiter = ','
    )]
    pub cluster_new: Option<Vec<String>>,
}

impl Overrides {
    /// Adds what only the environment can give: passwords (`REDIS_HANDOVER_OLD_PASSWORD`, `..._NEW_PASSWORD`),
    /// kept off the command line where every user of the machine could read them.
    pub fn with_environment_secrets(mut self) -> Self {
        self.old_password = std::env::var("REDIS_HANDOVER_OLD_PASSWORD").ok().or(self.old_password);
        self.new_password = std::env::var("REDIS_HANDOVER_NEW_PASSWORD").ok().or(self.new_password);
        self.admin_token = std::env::var("REDIS_HANDOVER_ADMIN_TOKEN").ok().or(self.admin_token);
        self.requirepass = std::env::var("REDIS_HANDOVER_REQUIREPASS").ok().or(self.requirepass);
        self
    }
}

impl Config {
    /// Reads a TOML file; unknown keys and wrong types are errors naming the line and the key.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())
    }

    /// The file (if any), then the environment and flags on top of it, passwords read from their files, then a
    /// validity check.
    pub fn load(overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut config = match &overrides.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        let o = overrides.clone();
        macro_rules! set {
            ($($field:ident),*) => {$(
                if let Some(v) = o.$field { config.$field = v; }
            )*};
        }
        macro_rules! set_option {
            ($($field:ident),*) => {$(
                if let Some(v) = o.$field { config.$field = Some(v); }
            )*};
        }
        set!(
            listen,
            old,
            admin,
            max_clients,
            connect_timeout_ms,
            shutdown_grace_ms,
            log_format,
            threads,
            backend_links,
            resp3,
            admin_allowed_hosts,
            fleet_peers,
            rollback_window_s,
            rollback_backlog_bytes,
            shadow_reads,
            cluster_ports,
            cluster_new
        );
        set_option!(
            new,
            old_user,
            old_password,
            old_password_file,
            new_user,
            new_password,
            new_password_file
        );
        set_option!(
            old_replication_addr,
            new_replication_addr,
            proxy_id,
            cluster_announce_host
        );
        set_option!(admin_token_file, admin_token, requirepass_file, requirepass);
        set_option!(
            tls_cert_file,
            tls_key_file,
            backend_tls_ca_file,
            backend_tls_server_name
        );
        config.backend_tls |= o.backend_tls;
        if let Some(v) = o.client_idle_timeout {
            config.client_idle_timeout_s = v;
        }
        if let Some(v) = o.client_output_timeout {
            config.client_output_timeout_s = v;
        }
        config.old_password = read_password(
            "old_password",
            config.old_password.take(),
            config.old_password_file.as_deref(),
        )?;
        config.new_password = read_password(
            "new_password",
            config.new_password.take(),
            config.new_password_file.as_deref(),
        )?;
        config.admin_token = read_password(
            "admin_token",
            config.admin_token.take(),
            config.admin_token_file.as_deref(),
        )?;
        config.requirepass = read_password(
            "requirepass",
            config.requirepass.take(),
            config.requirepass_file.as_deref(),
        )?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: addresses have a port, limits are positive.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let addresses = [
            ("listen", Some(&self.listen)),
            ("old", Some(&self.old)),
            ("new", self.new.as_ref()),
            ("admin", Some(&self.admin)),
            ("old_replication_addr", self.old_replication_addr.as_ref()),
            ("new_replication_addr", self.new_replication_addr.as_ref()),
        ];
        for (key, value) in addresses {
            if let Some(value) = value {
                check_address(key, value)?;
            }
        }
        for peer in &self.fleet_peers {
            check_address("fleet_peers", peer)?;
        }
        if !(0.0..=1.0).contains(&self.shadow_reads) {
            return Err(ConfigError::Invalid {
                key: "shadow_reads",
                reason: format!(
                    "a share of the reads from 0 to 1 (0.05 is 5%), not {}",
                    self.shadow_reads
                ),
            });
        }
        let mut ports = self.cluster_ports.clone();
        ports.sort_unstable();
        ports.dedup();
        if ports.len() != self.cluster_ports.len() || ports.contains(&0) {
            return Err(ConfigError::Invalid {
                key: "cluster_ports",
                reason: format!("distinct ports from 1 to 65535, not {:?}", self.cluster_ports),
            });
        }
        if !self.cluster_ports.is_empty() && self.new.is_some() {
            return Err(ConfigError::Invalid {
                key: "new",
                reason: "a cluster is handed over to cluster_new, one node per shard: with cluster_ports, leave new \
                         unset"
                    .into(),
            });
        }
        if self.cluster_ports.is_empty() && !self.cluster_new.is_empty() {
            return Err(ConfigError::Invalid {
                key: "cluster_new",
                reason: "cluster_new is for a cluster the proxy fronts: set cluster_ports too".into(),
            });
        }
        for node in &self.cluster_new {
            check_address("cluster_new", node)?;
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            let reason = "tls_cert_file and tls_key_file go together".to_string();
            return Err(ConfigError::Invalid {
                key: "tls_key_file",
                reason,
            });
        }
        if self.backend_tls && self.backend_tls_ca_file.is_none() {
            let reason =
                "backend_tls needs the certificate authority that signed the servers' certificates".to_string();
            return Err(ConfigError::Invalid {
                key: "backend_tls_ca_file",
                reason,
            });
        }
        if !is_loopback_address(&self.admin) && self.admin_token.as_deref().is_none_or(str::is_empty) {
            return Err(ConfigError::Invalid {
                key: "admin_token_file",
                reason: format!(
                    "the admin port binds {}, beyond loopback: anyone who reaches it could start a handover, so an \
                     admin token is required (admin_token_file, or REDIS_HANDOVER_ADMIN_TOKEN)",
                    self.admin
                ),
            });
        }
        for (key, value) in [
            ("max_clients", self.max_clients as u64),
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("threads", self.threads as u64),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid {
                    key,
                    reason: "must be at least 1".into(),
                });
            }
        }
        Ok(())
    }

    /// The same settings with every password replaced by asterisks, for printing.
    pub fn masked(&self) -> Config {
        let mask = |p: &Option<String>| p.as_ref().map(|_| "********".to_string());
        Config {
            old_password: mask(&self.old_password),
            new_password: mask(&self.new_password),
            admin_token: mask(&self.admin_token),
            requirepass: mask(&self.requirepass),
            ..self.clone()
        }
    }

    /// The settings as TOML, as a file would give them.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("the settings serialize")
    }
}

/// A password given directly or in a file (its first line); both at once is an error.
fn read_password(
    key: &'static str,
    direct: Option<String>,
    file: Option<&Path>,
) -> Result<Option<String>, ConfigError> {
    match (direct, file) {
        (Some(_), Some(_)) => Err(ConfigError::Invalid {
            key,
            reason: "given both directly and as a file".into(),
        }),
        (direct, None) => Ok(direct),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            Ok(Some(text.lines().next().unwrap_or_default().to_string()))
        }
    }
}

/// Whether `host:port` names a loopback address (127.0.0.0/8, ::1, localhost).
pub fn is_loopback_address(addr: &str) -> bool {
    is_loopback_host(addr.rsplit_once(':').map_or(addr, |(host, _)| host))
}

/// Whether a host (name or address, IPv6 with or without brackets) is loopback.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_matches(|c| c == '[' || c == ']');
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Whether two host names name the same host as far as replication goes: equal, or both loopback (a server
/// reports `127.0.0.1` for a master configured as `localhost`).
pub fn same_host(a: &str, b: &str) -> bool {
    a == b || (is_loopback_host(a) && is_loopback_host(b))
}

/// Compares a secret given by a client with the configured one without stopping at the first difference, so the
/// time taken tells nothing about the secret.
pub fn secret_matches(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len() && given.iter().zip(expected).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn check_address(key: &'static str, value: &str) -> Result<(), ConfigError> {
    let port_ok = value
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if port_ok {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            key,
            reason: format!("{value:?} is not host:port"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("rh-config-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(name);
        std::fs::write(&file, text).unwrap();
        file
    }

    #[test]
    fn flags_override_the_file() {
        let file = temp_file("handover.toml", "old = \"10.0.0.1:6379\"\nmax_clients = 5\n");
        let overrides = Overrides {
            config: Some(file),
            max_clients: Some(7),
            ..Default::default()
        };
        let config = Config::load(&overrides).unwrap();
        assert_eq!(config.old, "10.0.0.1:6379");
        assert_eq!(config.max_clients, 7);
        assert_eq!(config.listen, "127.0.0.1:6380");
    }

    #[test]
    fn bad_file_names_line_and_key() {
        let err = Config::from_toml("listen = \"127.0.0.1:1\"\nmax_clientz = 3\n").unwrap_err();
        assert!(err.contains("line 2") && err.contains("max_clientz"), "{err}");
        let err = Config::from_toml("max_clients = \"many\"\n").unwrap_err();
        assert!(err.contains("line 1") && err.contains("max_clients"), "{err}");
    }

    #[test]
    fn an_admin_port_beyond_loopback_needs_a_token() {
        let open = Config {
            admin: "0.0.0.0:7380".into(),
            ..Config::default()
        };
        assert!(matches!(
            open.validate(),
            Err(ConfigError::Invalid {
                key: "admin_token_file",
                ..
            })
        ));
        let guarded = Config {
            admin_token: Some("t0ken".into()),
            ..open
        };
        assert!(guarded.validate().is_ok());
        assert!(
            is_loopback_address("127.0.0.1:1") && is_loopback_address("[::1]:1") && is_loopback_address("localhost:1")
        );
        assert!(!is_loopback_address("10.1.2.3:7380"));
    }

    #[test]
    fn addresses_need_a_port() {
        let config = Config {
            old: "localhost".into(),
            ..Config::default()
        };
        assert!(matches!(
            config.validate(),
            Err(ConfigError::Invalid { key: "old", .. })
        ));
    }

    #[test]
    fn passwords_come_from_files_and_are_masked() {
        let file = temp_file("old.pass", "s3cret\n");
        let overrides = Overrides {
            old_password_file: Some(file.clone()),
            ..Default::default()
        };
        let config = Config::load(&overrides).unwrap();
        assert_eq!(config.old_password.as_deref(), Some("s3cret"));
        let printed = config.masked().to_toml();
        assert!(
            !printed.contains("s3cret") && printed.contains("old_password = \"********\""),
            "{printed}"
        );
        let both = Overrides {
            old_password: Some("x".into()),
            old_password_file: Some(file),
            ..Default::default()
        };
        assert!(matches!(
            Config::load(&both),
            Err(ConfigError::Invalid {
                key: "old_password",
                ..
            })
        ));
    }

    #[test]
    fn the_example_file_is_valid_and_documents_every_setting() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("handover.example.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        Config::from_toml(&text).unwrap();
        let defaults = toml::to_string(&Config {
            new: Some("x:1".into()),
            ..Config::default()
        })
        .unwrap();
        let uncommented: String = text
            .lines()
            .map(|l| l.trim_start_matches("# "))
            .collect::<Vec<_>>()
            .join("\n");
        for line in defaults.lines() {
            let key = line.split(" = ").next().unwrap();
            assert!(
                uncommented.contains(&format!("{key} = ")),
                "handover.example.toml does not document {key}"
            );
        }
        let secrets = [
            "old_password",
            "old_password_file",
            "new_password",
            "new_password_file",
            "old_user",
            "new_user",
        ];
        let guards = ["admin_token", "admin_token_file", "requirepass", "requirepass_file"];
        for key in secrets.into_iter().chain(guards) {
            assert!(
                uncommented.contains(&format!("{key} = ")),
                "handover.example.toml does not document {key}"
            );
        }
    }
}
