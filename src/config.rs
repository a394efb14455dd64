//! Settings: defaults, then `handover.toml`, then command-line flags (a flag overrides the file).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Everything the proxy can be told at start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// What a client's `HELLO 3` gets: `allow` (passed to the primary) or `pin-resp2` (refused, so that the
    /// client stays on RESP2 and sees the same reply shapes before and after the upgrade).
    pub resp3: Resp3Mode,
    /// The user the proxy authenticates as on OLD for its own connections (pre-flight, replication setup).
    pub old_user: Option<String>,
    /// The password for those connections to OLD; also given to NEW as `masterauth` so it can replicate.
    pub old_password: Option<String>,
    pub new_user: Option<String>,
    pub new_password: Option<String>,
    /// The address NEW uses to reach OLD for replication, when it differs from `old` (NAT, containers).
    pub old_replication_addr: Option<String>,
    /// The address OLD uses to reach NEW, for a handover back.
    pub new_replication_addr: Option<String>,
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
            resp3: Resp3Mode::Allow,
            old_user: None,
            old_password: None,
            new_user: None,
            new_password: None,
            old_replication_addr: None,
            new_replication_addr: None,
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

/// Command-line settings; each one given overrides the file.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Overrides {
    /// A TOML file with any of the settings below (see handover.example.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address clients connect to [default: 127.0.0.1:6380].
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<String>,
    /// The OLD Redis server, primary at start [default: 127.0.0.1:6379].
    #[arg(long, value_name = "HOST:PORT")]
    pub old: Option<String>,
    /// The NEW Redis server to hand over to.
    #[arg(long, value_name = "HOST:PORT")]
    pub new: Option<String>,
    /// The admin HTTP address [default: 127.0.0.1:7380].
    #[arg(long, value_name = "HOST:PORT")]
    pub admin: Option<String>,
    /// Most client connections at once [default: 10000].
    #[arg(long, value_name = "N")]
    pub max_clients: Option<usize>,
    /// Backend connect timeout [default: 1000].
    #[arg(long, value_name = "MS")]
    pub connect_timeout_ms: Option<u64>,
    /// Grace period for in-flight replies on SIGTERM/SIGINT [default: 5000].
    #[arg(long, value_name = "MS")]
    pub shutdown_grace_ms: Option<u64>,
    /// Log format [default: text].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Worker threads; 1 runs everything on one thread [default: 1].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// What HELLO 3 gets: passed on (allow), or refused so clients stay on RESP2 (pin-resp2) [default: allow].
    #[arg(long, value_enum)]
    pub resp3: Option<Resp3Mode>,
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

    /// The file (if any), then the flags given on top of it, then a validity check.
    pub fn load(overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut config = match &overrides.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        let o = overrides.clone();
        if let Some(v) = o.listen {
            config.listen = v;
        }
        if let Some(v) = o.old {
            config.old = v;
        }
        if let Some(v) = o.new {
            config.new = Some(v);
        }
        if let Some(v) = o.admin {
            config.admin = v;
        }
        if let Some(v) = o.max_clients {
            config.max_clients = v;
        }
        if let Some(v) = o.connect_timeout_ms {
            config.connect_timeout_ms = v;
        }
        if let Some(v) = o.shutdown_grace_ms {
            config.shutdown_grace_ms = v;
        }
        if let Some(v) = o.log_format {
            config.log_format = v;
        }
        if let Some(v) = o.threads {
            config.threads = v;
        }
        if let Some(v) = o.resp3 {
            config.resp3 = v;
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: addresses have a port, limits are positive.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let addresses = [
            ("listen", Some(&self.listen)),
            ("old", Some(&self.old)),
            ("new", self.new.as_ref()),
        ];
        for (key, value) in addresses.into_iter().chain([("admin", Some(&self.admin))]) {
            if let Some(value) = value {
                check_address(key, value)?;
            }
        }
        if self.max_clients == 0 {
            return Err(ConfigError::Invalid {
                key: "max_clients",
                reason: "must be at least 1".into(),
            });
        }
        if self.connect_timeout_ms == 0 {
            return Err(ConfigError::Invalid {
                key: "connect_timeout_ms",
                reason: "must be at least 1".into(),
            });
        }
        Ok(())
    }
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

    #[test]
    fn flags_override_the_file() {
        let dir = std::env::temp_dir().join(format!("rh-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("handover.toml");
        std::fs::write(&file, "old = \"10.0.0.1:6379\"\nmax_clients = 5\n").unwrap();
        let overrides = Overrides {
            config: Some(file),
            max_clients: Some(7),
            ..Default::default()
        };
        let config = Config::load(&overrides).unwrap();
        assert_eq!(config.old, "10.0.0.1:6379");
        assert_eq!(config.max_clients, 7);
        assert_eq!(config.listen, "127.0.0.1:6380");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_file_names_line_and_key() {
        let err = Config::from_toml("listen = \"127.0.0.1:1\"\nmax_clientz = 3\n").unwrap_err();
        assert!(err.contains("line 2") && err.contains("max_clientz"), "{err}");
        let err = Config::from_toml("max_clients = \"many\"\n").unwrap_err();
        assert!(err.contains("line 1") && err.contains("max_clients"), "{err}");
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
}
