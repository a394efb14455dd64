//! The proxy's own connections to a Redis server, for the handover: one command at a time, every call bounded.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::backend::{self, BackendError};
use crate::net::{BackendTls, Stream};
use crate::primary::Server;
use crate::protocol::reply::{ReplyScanner, Scanned};
use crate::protocol::request::write_command;
use crate::protocol::value::Value;

/// Why a control call failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Connect(#[from] BackendError),
    #[error("{side} {addr}: {source}")]
    Io {
        side: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error("{side} {addr} did not answer {command} within {timeout_ms} ms")]
    Timeout {
        side: &'static str,
        addr: String,
        command: String,
        timeout_ms: u64,
    },
    #[error("{side} {addr} answered {command} with an error: {message}")]
    Refused {
        side: &'static str,
        addr: String,
        command: String,
        message: String,
    },
    #[error("{side} {addr} sent a reply that is not RESP")]
    Protocol { side: &'static str, addr: String },
    #[error("the connection to {side} {addr} is no longer usable after a failed call")]
    Unusable { side: &'static str, addr: String },
}

/// Credentials the proxy uses for its own connections to a server.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub user: Option<String>,
    pub password: Option<String>,
}

/// One control connection.
pub struct ControlConn {
    stream: Stream,
    /// What the connection is to, for error messages: `old`, `new`, or `proxy`.
    label: &'static str,
    addr: Arc<str>,
    input: BytesMut,
    scanner: ReplyScanner,
    /// Set when a call timed out or failed: the request/reply pairing can no longer be trusted.
    broken: bool,
    /// The server's id for this connection, once [`ControlConn::identify`] learned it.
    id: Option<i64>,
}

/// The client name of the handover's control connections on the servers, by which the proxy finds and closes
/// them (`CLIENT KILL`): a closed connection's commands not yet read never run.
pub const CONTROL_NAME: &str = "redis-handover-control";

impl ControlConn {
    /// Connects and authenticates, each step within `timeout`.
    pub async fn connect(
        server: &Server,
        credentials: &Credentials,
        timeout: Duration,
        tls: Option<&BackendTls>,
    ) -> Result<Self, ControlError> {
        let stream = backend::connect(server, timeout, tls).await?;
        let (label, addr) = (server.side.name(), server.addr.clone());
        let mut conn = ControlConn {
            stream,
            label,
            addr,
            input: BytesMut::new(),
            scanner: ReplyScanner::new(),
            broken: false,
            id: None,
        };
        if let Some(password) = &credentials.password {
            match &credentials.user {
                Some(user) => conn.ok(&["AUTH", user, password], timeout).await?,
                None => conn.ok(&["AUTH", password], timeout).await?,
            };
        }
        Ok(conn)
    }

    /// Connects to any RESP server (the proxy itself, for the consistency checker), within `timeout`.
    pub async fn connect_to(label: &'static str, addr: &str, timeout: Duration) -> Result<Self, ControlError> {
        let io = |source| ControlError::Io {
            side: label,
            addr: addr.to_string(),
            source,
        };
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(stream) => stream.map_err(io)?,
            Err(_) => {
                return Err(io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connect timed out",
                )));
            }
        };
        stream.set_nodelay(true).map_err(io)?;
        let stream = Stream::Plain(stream);
        Ok(ControlConn {
            stream,
            label,
            addr: addr.into(),
            input: BytesMut::new(),
            scanner: ReplyScanner::new(),
            broken: false,
            id: None,
        })
    }

    /// Sends several commands in one write and reads their replies; error replies come back as values.
    pub async fn pipeline(&mut self, commands: &[&[&str]], timeout: Duration) -> Result<Vec<Value>, ControlError> {
        let mut out = BytesMut::new();
        for args in commands {
            let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
            write_command(&mut out, &args);
        }
        let name = commands.first().map(|c| c.join(" ")).unwrap_or_default();
        let frames = self.exchange(&out, commands.len(), name, timeout).await?;
        let values: Option<Vec<Value>> = frames.iter().map(|frame| Value::decode(frame, 2)).collect();
        values.ok_or_else(|| {
            self.broken = true;
            self.protocol()
        })
    }

    /// Names the connection [`CONTROL_NAME`] and learns its id on the server. A server that refuses either (an
    /// ACL user without the CLIENT command) leaves the id unknown.
    pub async fn identify(&mut self, timeout: Duration) -> Result<(), ControlError> {
        let commands: [&[&str]; 2] = [&["CLIENT", "SETNAME", CONTROL_NAME], &["CLIENT", "ID"]];
        let replies = self.pipeline(&commands, timeout).await?;
        self.id = match replies.get(1) {
            Some(Value::Int(id)) => Some(*id),
            _ => None,
        };
        Ok(())
    }

    /// The address the connection goes to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The server's id for this connection, when known.
    pub fn id(&self) -> Option<i64> {
        self.id
    }

    /// Gives the connection up: every later call fails at once (the server closed it, or will).
    pub fn abandon(&mut self) {
        self.broken = true;
    }

    /// Whether the connection can no longer be used (a call timed out or failed): open a new one.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// One request as the client sent it (RESP or inline); its reply frame as the server sent it, in whatever
    /// protocol the connection speaks.
    pub async fn call_raw(&mut self, request: &[u8], timeout: Duration) -> Result<bytes::Bytes, ControlError> {
        let mut replies = self.call_raw_many(&[request], timeout).await?;
        Ok(replies.remove(0))
    }

    /// Several requests as clients sent them, in one write; their reply frames, in order.
    pub async fn call_raw_many(
        &mut self,
        requests: &[&[u8]],
        timeout: Duration,
    ) -> Result<Vec<bytes::Bytes>, ControlError> {
        let name = requests
            .first()
            .map(|r| String::from_utf8_lossy(&r[..r.len().min(40)]).into_owned())
            .unwrap_or_default();
        self.exchange(&requests.concat(), requests.len(), name, timeout).await
    }

    /// Writes `out` (`count` requests, the first named `name` for errors) and reads `count` reply frames, all
    /// within `timeout`.
    async fn exchange(
        &mut self,
        out: &[u8],
        count: usize,
        name: String,
        timeout: Duration,
    ) -> Result<Vec<bytes::Bytes>, ControlError> {
        if self.broken {
            return Err(ControlError::Unusable {
                side: self.label,
                addr: self.addr.to_string(),
            });
        }
        let work = async {
            self.stream.write_all(out).await.map_err(|e| self.io(e))?;
            let mut replies = Vec::with_capacity(count);
            while replies.len() < count {
                let len = self.read_frame().await?;
                replies.push(self.input.split_to(len).freeze());
            }
            Ok(replies)
        };
        let result = match tokio::time::timeout(timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(ControlError::Timeout {
                side: self.label,
                addr: self.addr.to_string(),
                command: name,
                timeout_ms: timeout.as_millis() as u64,
            }),
        };
        // A reply that comes after a timeout, or after a broken read, would be taken for the next command's.
        self.broken = result.is_err();
        result
    }

    /// One command; its reply, which may be an error value.
    pub async fn call(&mut self, args: &[&str], timeout: Duration) -> Result<Value, ControlError> {
        Ok(self.pipeline(&[args], timeout).await?.remove(0))
    }

    /// One command that must succeed: an error reply is an error.
    pub async fn ok(&mut self, args: &[&str], timeout: Duration) -> Result<Value, ControlError> {
        match self.call(args, timeout).await? {
            Value::Error(message) => Err(self.refused(args, message)),
            value => Ok(value),
        }
    }

    /// `INFO section` as a map of its `key:value` lines.
    pub async fn info(&mut self, section: &str, timeout: Duration) -> Result<HashMap<String, String>, ControlError> {
        let value = self.ok(&["INFO", section], timeout).await?;
        Ok(parse_info(value.as_bytes().unwrap_or_default()))
    }

    /// `CONFIG GET name`: the value, or `None` when the server does not know the setting.
    pub async fn config_get(&mut self, name: &str, timeout: Duration) -> Result<Option<String>, ControlError> {
        Ok(match self.ok(&["CONFIG", "GET", name], timeout).await? {
            Value::Array(items) => items
                .get(1)
                .and_then(Value::as_bytes)
                .map(|v| String::from_utf8_lossy(v).into()),
            Value::Map(entries) => entries
                .first()
                .and_then(|(_, v)| v.as_bytes())
                .map(|v| String::from_utf8_lossy(v).into()),
            _ => None,
        })
    }

    /// Builds the error for a command the server refused.
    pub fn refused(&self, args: &[&str], message: String) -> ControlError {
        ControlError::Refused {
            side: self.label,
            addr: self.addr.to_string(),
            command: args.first().copied().unwrap_or_default().to_string(),
            message,
        }
    }

    /// The connection's stream and what was read from it past the last reply: for a connection that goes on to
    /// follow a replication stream.
    pub fn into_parts(self) -> (Stream, BytesMut) {
        (self.stream, self.input)
    }

    /// Reads until a whole reply frame is at the start of the input; its length.
    async fn read_frame(&mut self) -> Result<usize, ControlError> {
        loop {
            match self.scanner.scan(&self.input) {
                Scanned::Frame { len, .. } => return Ok(len),
                Scanned::Invalid => return Err(self.protocol()),
                Scanned::Incomplete => {
                    self.input.reserve(16 * 1024);
                    let n = self.stream.read_buf(&mut self.input).await.map_err(|e| self.io(e))?;
                    if n == 0 {
                        let closed = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed");
                        return Err(self.io(closed));
                    }
                }
            }
        }
    }

    fn io(&self, source: std::io::Error) -> ControlError {
        ControlError::Io {
            side: self.label,
            addr: self.addr.to_string(),
            source,
        }
    }

    fn protocol(&self) -> ControlError {
        ControlError::Protocol {
            side: self.label,
            addr: self.addr.to_string(),
        }
    }
}

/// Parses INFO text: `key:value` lines; section headers and blank lines are skipped.
pub fn parse_info(text: &[u8]) -> HashMap<String, String> {
    String::from_utf8_lossy(text)
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// A Redis version as (major, minor, patch), from `redis_version:6.2.14`.
pub fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let mut parts = text.split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??, parts.next().flatten().unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_and_versions() {
        let info = parse_info(b"# Replication\r\nrole:master\r\nmaster_repl_offset:42\r\n\r\n");
        assert_eq!(info["role"], "master");
        assert_eq!(info["master_repl_offset"], "42");
        assert_eq!(parse_version("6.2.14"), Some((6, 2, 14)));
        assert!(parse_version("7.0.15") > parse_version("6.2.14"));
        assert_eq!(parse_version("x"), None);
    }
}
