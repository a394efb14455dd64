//! A connection from the proxy to a Redis server: connect with a bound, and the buffers of one session's link.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::TcpStream;

use crate::net::{BackendTls, Stream};
use crate::primary::Server;
use crate::protocol::reply::ReplyScanner;
use crate::telemetry::Telemetry;

/// Why a backend could not be used; the text goes to the client in an `-ERR` reply.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("backend {side} {addr} unreachable: {source}")]
    Connect {
        side: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error("backend {side} {addr} unreachable: no answer within {timeout_ms} ms")]
    ConnectTimeout {
        side: &'static str,
        addr: String,
        timeout_ms: u64,
    },
}

/// Opens a connection to `server` within `timeout` (TCP with Nagle's algorithm off, then the TLS handshake when
/// the servers speak TLS).
pub async fn connect(server: &Server, timeout: Duration, tls: Option<&BackendTls>) -> Result<Stream, BackendError> {
    let side = server.side.name();
    let failed = |source| BackendError::Connect {
        side,
        addr: server.addr.to_string(),
        source,
    };
    let attempt = async {
        let stream = TcpStream::connect(&*server.addr).await?;
        stream.set_nodelay(true)?;
        match tls {
            Some(tls) => tls.connect(&server.addr, stream).await,
            None => Ok(Stream::Plain(stream)),
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result.map_err(failed),
        Err(_) => Err(BackendError::ConnectTimeout {
            side,
            addr: server.addr.to_string(),
            timeout_ms: timeout.as_millis() as u64,
        }),
    }
}

/// One session's own connection to its backend: the socket and what was read (what it writes is its core's, see
/// [`crate::session::core::SessionCore::own_out`]).
#[derive(Debug)]
pub struct BackendLink {
    pub stream: Stream,
    pub server: Server,
    /// The primary generation this link was opened for.
    pub generation: u64,
    /// The proxy's end of the connection: the `addr` the server lists for it in `CLIENT LIST`.
    pub local_addr: Option<std::net::SocketAddr>,
    /// Replies read and not yet forwarded.
    pub input: BytesMut,
    pub scanner: ReplyScanner,
    telemetry: Arc<Telemetry>,
}

impl BackendLink {
    pub fn new(stream: Stream, server: Server, generation: u64, telemetry: Arc<Telemetry>) -> Self {
        telemetry.backend_link(server.side, 1);
        BackendLink {
            local_addr: stream.local_addr().ok(),
            stream,
            server,
            generation,
            input: BytesMut::new(),
            scanner: ReplyScanner::new(),
            telemetry,
        }
    }
}

impl Drop for BackendLink {
    fn drop(&mut self) {
        self.telemetry.backend_link(self.server.side, -1);
    }
}
