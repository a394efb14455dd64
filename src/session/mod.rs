//! One client's session: its connection, its own link to the primary (1:1), and the state Redis keeps for it.
//!
//! A session runs as one task. Its loop reads what the client sent, forwards each complete request to the
//! backend as the frame's raw bytes (many frames per write when a pipeline arrives), and streams the backend's
//! replies back in order. It parses only what it must observe: the command name, and the arguments of commands
//! that change the session's state (see [`state`]).

pub mod state;

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio_util::io::poll_read_buf;

use crate::backend::{self, BackendLink};
use crate::command::Command;
use crate::protocol::reply::Scanned;
use crate::protocol::request::{Parsed, RequestParser};
use crate::server::Shared;
use state::Core;

/// Room made in a read buffer before each read.
const READ_CHUNK: usize = 16 * 1024;
/// Requests waiting for the backend beyond this stop the session reading more from its client.
const MAX_BACKEND_OUTPUT: usize = 1 << 20;

/// Why a session ended other than by its client closing the connection cleanly.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("client connection error: {0}")]
    Client(#[from] std::io::Error),
    #[error("client stopped accepting data")]
    ClientGone,
}

/// What the loop does after handling the client's input.
enum Next {
    /// Wait for the sockets.
    Wait,
    /// A request needs a backend link first.
    Connect,
    /// Drop the client at once (an HTTP request sent to the Redis port).
    CloseNow,
}

/// One client connection and everything the proxy keeps for it.
pub struct Session {
    shared: Arc<Shared>,
    client: TcpStream,
    client_in: BytesMut,
    client_eof: bool,
    parser: RequestParser,
    link: Option<BackendLink>,
    /// Why the backend link failed, found while polling; handled once the replies read before it are out.
    link_failure: Option<String>,
    core: Core,
    /// Answer what is pending, then close (after a protocol error, QUIT, or a lost backend link that held
    /// state the client relied on).
    closing: bool,
    /// The proxy is shutting down: take no new requests, finish the ones in flight.
    draining: bool,
}

impl Session {
    pub fn new(client: TcpStream, shared: Arc<Shared>) -> Self {
        Session {
            shared,
            client,
            client_in: BytesMut::new(),
            client_eof: false,
            parser: RequestParser::new(),
            link: None,
            link_failure: None,
            core: Core::new(),
            closing: false,
            draining: false,
        }
    }

    /// Serves the client until it leaves, breaks the protocol, or the proxy shuts down.
    pub async fn run(mut self) {
        match self.serve().await {
            Ok(()) => tracing::debug!("session closed"),
            Err(error) => tracing::debug!(%error, "session ended"),
        }
    }

    async fn serve(&mut self) -> Result<(), SessionError> {
        let shutdown = self.shared.shutdown.clone();
        loop {
            match self.handle_requests() {
                Next::Wait => {}
                Next::Connect => {
                    self.connect().await;
                    continue;
                }
                Next::CloseNow => return Ok(()),
            }
            if self.finished() {
                return Ok(());
            }
            tokio::select! {
                biased;
                polled = poll_fn(|cx| self.poll_io(cx)) => polled?,
                () = shutdown.cancelled(), if !self.draining => self.draining = true,
            }
            self.handle_replies();
        }
    }

    /// Forwards every complete request in the client's input, or answers it locally.
    fn handle_requests(&mut self) -> Next {
        if self.closing || self.draining {
            return Next::Wait;
        }
        loop {
            if self.link.as_ref().is_some_and(|l| l.output.len() >= MAX_BACKEND_OUTPUT) {
                return Next::Wait;
            }
            match self.parser.parse(&self.client_in) {
                Parsed::Incomplete => return Next::Wait,
                Parsed::Empty(n) => self.client_in.advance(n),
                Parsed::Error(error) => {
                    tracing::info!(%error, "protocol error from client; closing it after the reply");
                    let mut reply = BytesMut::new();
                    error.write_reply(&mut reply);
                    self.core.push_local(reply.freeze());
                    self.client_in.clear();
                    self.closing = true;
                    return Next::Wait;
                }
                Parsed::Request(n) => {
                    let args = self.parser.args(&self.client_in);
                    let command = Command::classify(args.get(0).unwrap_or_default());
                    match command {
                        Command::SecurityWarning => {
                            tracing::warn!("possible SECURITY ATTACK detected: HTTP sent to the Redis port; dropped");
                            return Next::CloseNow;
                        }
                        Command::Quit => {
                            self.client_in.advance(n);
                            self.core.push_local(Bytes::from_static(b"+OK\r\n"));
                            self.closing = true;
                            return Next::Wait;
                        }
                        _ => {}
                    }
                    let Some(link) = self.link.as_mut() else {
                        return Next::Connect;
                    };
                    self.core.plan(command, args);
                    if self.parser.is_inline() {
                        self.parser.encode_multibulk(&self.client_in, &mut link.output);
                    } else {
                        link.output.extend_from_slice(&self.client_in[..n]);
                    }
                    self.client_in.advance(n);
                }
            }
        }
    }

    /// Opens a link to the current primary and restores the session's state on it. If the primary cannot be
    /// reached, every complete request received so far is answered with an error naming it; the next request
    /// tries again.
    async fn connect(&mut self) {
        let primary = self.shared.primary.current();
        let timeout = Duration::from_millis(self.shared.config.connect_timeout_ms);
        match backend::connect(&primary.server, timeout).await {
            Ok(stream) => {
                let mut link = BackendLink::new(stream, primary.server.clone(), primary.generation);
                self.core.restore_on(&mut link.output);
                tracing::debug!(backend = %primary.server.addr, "backend link open");
                self.link = Some(link);
            }
            Err(error) => {
                tracing::warn!(%error, "backend connect failed");
                let reply = error_reply(&error.to_string());
                loop {
                    match self.parser.parse(&self.client_in) {
                        Parsed::Request(n) => {
                            self.client_in.advance(n);
                            self.core.push_local(reply.clone());
                        }
                        Parsed::Empty(n) => self.client_in.advance(n),
                        Parsed::Incomplete | Parsed::Error(_) => break,
                    }
                }
            }
        }
    }

    /// Passes every complete reply from the backend to the client, then deals with a failed link.
    fn handle_replies(&mut self) {
        if let Some(link) = self.link.as_mut() {
            loop {
                match link.scanner.scan(&link.input) {
                    Scanned::Incomplete => break,
                    Scanned::Invalid => {
                        self.link_failure = Some("sent bytes that are not RESP".into());
                        break;
                    }
                    Scanned::Frame { len, push } => {
                        self.core.on_frame(&link.input[..len], push);
                        link.input.advance(len);
                    }
                }
            }
        }
        if let Some(reason) = self.link_failure.take() {
            self.drop_link(&reason);
        }
    }

    /// Forgets the backend link: pending requests get an error, and a session whose state lived on that link
    /// (a transaction, subscriptions, ...) is closed after the errors, as a direct connection would have been.
    fn drop_link(&mut self, reason: &str) {
        let Some(link) = self.link.take() else { return };
        let message = format!("backend {} {} {reason}", link.server.side.name(), link.server.addr);
        tracing::warn!(%message, pending = self.core.pending.len(), "backend link lost");
        if self.core.backend_lost(&error_reply(&message)) {
            self.closing = true;
        }
    }

    /// Whether the session has nothing left to do.
    fn finished(&self) -> bool {
        if self.client_eof {
            // Redis drops a client as soon as it reads its EOF; requests read before it still run.
            return self.link.as_ref().is_none_or(|l| l.output.is_empty());
        }
        (self.closing || self.draining) && self.core.pending.is_empty() && self.core.client_out.is_empty()
    }

    fn wants_client_input(&self) -> bool {
        !self.client_eof
            && !self.closing
            && !self.draining
            && self.link.as_ref().is_none_or(|l| l.output.len() < MAX_BACKEND_OUTPUT)
    }

    /// Moves bytes on both connections as far as they will go without waiting; ready once anything moved.
    fn poll_io(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SessionError>> {
        let mut progress = false;
        while !self.core.client_out.is_empty() {
            match Pin::new(&mut self.client).poll_write(cx, &self.core.client_out) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(SessionError::ClientGone)),
                Poll::Ready(Ok(n)) => {
                    self.core.client_out.advance(n);
                    progress = true;
                }
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error.into())),
                Poll::Pending => break,
            }
        }
        if let Some(link) = self.link.as_mut().filter(|_| self.link_failure.is_none()) {
            while !link.output.is_empty() {
                match Pin::new(&mut link.stream).poll_write(cx, &link.output) {
                    Poll::Ready(Ok(n)) if n > 0 => {
                        link.output.advance(n);
                        progress = true;
                    }
                    Poll::Ready(Ok(_)) => {
                        self.link_failure = Some("closed the connection".into());
                        progress = true;
                        break;
                    }
                    Poll::Ready(Err(error)) => {
                        self.link_failure = Some(format!("connection error: {error}"));
                        progress = true;
                        break;
                    }
                    Poll::Pending => break,
                }
            }
            if self.link_failure.is_none() {
                make_room(&mut link.input);
                match poll_read_buf(Pin::new(&mut link.stream), cx, &mut link.input) {
                    Poll::Ready(Ok(0)) => {
                        self.link_failure = Some("closed the connection".into());
                        progress = true;
                    }
                    Poll::Ready(Ok(_)) => progress = true,
                    Poll::Ready(Err(error)) => {
                        self.link_failure = Some(format!("connection error: {error}"));
                        progress = true;
                    }
                    Poll::Pending => {}
                }
            }
        }
        if self.wants_client_input() {
            make_room(&mut self.client_in);
            match poll_read_buf(Pin::new(&mut self.client), cx, &mut self.client_in) {
                Poll::Ready(Ok(0)) => {
                    self.client_eof = true;
                    progress = true;
                }
                Poll::Ready(Ok(_)) => progress = true,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error.into())),
                Poll::Pending => {}
            }
        }
        if progress { Poll::Ready(Ok(())) } else { Poll::Pending }
    }
}

/// Makes sure a read has room for a useful amount of data.
fn make_room(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
}

/// An `-ERR` reply with `message`, as Redis writes errors (no CR or LF inside).
pub fn error_reply(message: &str) -> Bytes {
    let clean: String = message
        .chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect();
    Bytes::from(format!("-ERR {clean}\r\n"))
}

/// Decrements the client count when a session task ends, however it ends.
pub struct ClientSlot(pub Arc<Shared>);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::Relaxed);
    }
}
