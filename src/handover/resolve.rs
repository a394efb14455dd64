//! Which server is the primary, from what the servers themselves say. A handover leaves its record on the
//! servers: the former primary fenced (`min-replicas-to-write` [`FENCE_REPLICAS`]), or a replica of the promoted
//! one, and the promoted one a master whose second replication ID is the former's ID (`REPLICAOF NO ONE` keeps
//! it, `shiftReplicationId` in replication.c). So a proxy that restarts, or a handover whose promotion went
//! unconfirmed, finds the outcome there, whatever the configuration file says.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{FENCE_REPLICAS, FenceWas, Handover, Phase};
use crate::control::{ControlConn, ControlError};
use crate::primary::{Server, Side};
use crate::protocol::value::Value;

/// What one server said about its replication.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    /// `role:master` (a replica otherwise).
    pub master: bool,
    pub replid: String,
    pub replid2: String,
    /// Whether it carries the proxy's fence.
    pub fenced: bool,
    /// `master_repl_offset`.
    pub offset: i64,
}

/// Reads what [`decide`] needs from one server.
pub async fn look(conn: &mut ControlConn, timeout: Duration) -> Result<Seen, ControlError> {
    let info = conn.info("replication", timeout).await?;
    let fenced = match conn.call(&["CONFIG", "GET", "min-replicas-to-write"], timeout).await? {
        Value::Array(items) => items.get(1).and_then(Value::as_bytes) == Some(FENCE_REPLICAS.as_bytes()),
        Value::Map(entries) => entries.first().and_then(|(_, v)| v.as_bytes()) == Some(FENCE_REPLICAS.as_bytes()),
        // CONFIG renamed or forbidden: the proxy could not have fenced it either.
        _ => false,
    };
    let field = |name: &str| info.get(name).cloned().unwrap_or_default();
    Ok(Seen {
        master: info.get("role").map(String::as_str) == Some("master"),
        replid: field("master_replid"),
        replid2: field("master_replid2"),
        fenced,
        offset: info.get("master_repl_offset").and_then(|v| v.parse().ok()).unwrap_or(0),
    })
}

/// Which of the two servers is the primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The former primary, which is not fenced: no handover happened, or one was undone.
    Former,
    /// The candidate, promoted from the former primary, which is fenced or its replica now.
    Promoted,
    /// The former primary is fenced and the candidate is still a replica: a handover stopped between the fence
    /// and the promotion. Nothing was written anywhere since the fence.
    Stopped,
    /// Neither can be shown: why.
    InDoubt(String),
}

/// Decides from what the former primary and the candidate said (`None`: it could not be reached).
/// `former_replid` stands in for the former's ID when it cannot be reached but its ID is known (the running
/// handover read it during the pause, when it fenced it).
pub fn decide(former: Option<&Seen>, candidate: Option<&Seen>, former_replid: Option<&str>) -> Outcome {
    let former_fenced = former.map_or(former_replid.is_some(), |f| f.fenced || !f.master);
    if let Some(candidate) = candidate.filter(|c| c.master && !c.fenced) {
        let id = former.map(|f| f.replid.as_str()).or(former_replid);
        let promoted_from_former = id.is_some_and(|id| !id.is_empty() && candidate.replid2 == id)
            // A former primary that replicates from the candidate has taken on its ID.
            || former.is_some_and(|f| !f.master && f.replid == candidate.replid);
        if promoted_from_former && former_fenced {
            return Outcome::Promoted;
        }
        if former_fenced {
            return Outcome::InDoubt(
                "OLD is fenced, and NEW is a master that was not promoted from it (its master_replid2 is not \
                 OLD's replication ID)"
                    .into(),
            );
        }
    }
    match (former, candidate) {
        (Some(f), _) if f.master && !f.fenced => Outcome::Former,
        (Some(f), Some(c)) if f.master && f.fenced && !c.master => Outcome::Stopped,
        (None, _) if former_replid.is_none() => Outcome::InDoubt("OLD cannot be reached".into()),
        (_, None) => Outcome::InDoubt("NEW cannot be reached to tell whether it was promoted".into()),
        (_, Some(c)) if !c.master && former.is_none() => {
            Outcome::InDoubt("OLD cannot be reached, and NEW is still a replica".into())
        }
        _ => Outcome::InDoubt("neither server is a master that takes writes".into()),
    }
}

/// How long a proxy that starts with OLD fenced and NEW still a replica lets another proxy's handover, whose
/// control connections it sees on the servers, finish before it closes them and decides itself.
const DRIVER_LEASE: Duration = Duration::from_secs(5);
/// How long writes are held, while the primary cannot be told at start, before they are refused.
const HOLD_AT_START: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(250);
const LOOK_TIMEOUT: Duration = Duration::from_secs(1);

impl Handover {
    /// Before the proxy serves: which server is the primary, from what the servers say (the configuration names
    /// OLD, but a handover may have switched to NEW before this process started). When they cannot tell yet,
    /// writes are held (then refused) and reads go to OLD until they can, and a handover stopped between the fence
    /// and the promotion by a proxy that is gone is undone.
    pub async fn resolve_at_start(self: &Arc<Self>) {
        self.resolve_primary_at_start().await;
        // Only now: its looks at the servers must start from the primary resolved here.
        tokio::spawn(super::probe(Arc::downgrade(self)));
        if !self.is_running() {
            let this = self.clone();
            tokio::spawn(async move { this.adopt_window().await });
        }
    }

    async fn resolve_primary_at_start(self: &Arc<Self>) {
        let Some((old, new)) = self.pair() else { return };
        let (former, candidate) = tokio::join!(self.look_at_one(&old), self.look_at_one(&new));
        let former = match former {
            Ok(former) => former,
            // Nothing says a handover happened: OLD, as configured (its connections fail until it is back).
            Err(error) => return tracing::warn!(%error, "OLD cannot be reached at start"),
        };
        match decide(Some(&former), candidate.ok().as_ref(), None) {
            Outcome::Former => {}
            Outcome::Promoted => self.adopt(&old, &new),
            Outcome::Stopped | Outcome::InDoubt(_) => {
                self.running.store(true, Ordering::SeqCst);
                self.shared.gate.close();
                let cancel = CancellationToken::new();
                *self.cancel.lock().unwrap_or_else(|e| e.into_inner()) = Some(cancel.clone());
                self.lock().phase = Some(Phase::InDoubt);
                let this = self.clone();
                tokio::spawn(async move {
                    this.recover(old, new, cancel).await;
                    this.shared.gate.open();
                    let mut progress = this.lock();
                    progress.phase = None;
                    progress.in_doubt = None;
                    drop(progress);
                    this.running.store(false, Ordering::SeqCst);
                });
            }
        }
    }

    /// OLD and NEW as configured, when both are.
    fn pair(&self) -> Option<(Server, Server)> {
        let config = &self.shared.config;
        let server = |side, addr: &str| Server {
            side,
            addr: addr.into(),
        };
        Some((
            server(Side::Old, &config.old),
            server(Side::New, config.new.as_deref()?),
        ))
    }

    /// What both servers say, each asked on a new connection.
    pub(super) async fn look_at(&self, old: &Server, new: &Server) -> Outcome {
        let (former, candidate) = tokio::join!(self.look_at_one(old), self.look_at_one(new));
        decide(former.ok().as_ref(), candidate.ok().as_ref(), None)
    }

    async fn look_at_one(&self, server: &Server) -> Result<Seen, ControlError> {
        let mut conn = self.connect(server).await?;
        look(&mut conn, LOOK_TIMEOUT).await
    }

    pub(super) async fn connect(&self, server: &Server) -> Result<ControlConn, ControlError> {
        let credentials = self.credentials(server.side);
        ControlConn::connect(server, &credentials, LOOK_TIMEOUT, self.shared.backend_tls.as_ref()).await
    }

    /// Serves from NEW, found promoted from OLD.
    fn adopt(&self, old: &Server, new: &Server) {
        let primary = self.shared.primary.switch_to(new.clone());
        *self.fenced.lock().unwrap_or_else(|e| e.into_inner()) = Some((Side::Old, FenceWas::default()));
        self.lock().fence = Some(format!(
            "found at start: the former primary {} is fenced (or NEW's replica) and {} was promoted from it",
            old.addr, new.addr
        ));
        tracing::info!(
            primary = %primary.server.addr,
            generation = primary.generation,
            "OLD is fenced and NEW was promoted from it: NEW is the primary"
        );
    }

    /// Asks the servers until they tell which is the primary. A handover found stopped between the fence and
    /// the promotion is undone (OLD unfenced) once no other proxy's control connection is left on the servers,
    /// or once those have had [`DRIVER_LEASE`] and been closed: a closed connection's unread commands never run,
    /// so a stalled proxy that wakes up can change nothing any more.
    async fn recover(&self, old: Server, new: Server, cancel: CancellationToken) {
        let since = std::time::Instant::now();
        loop {
            if cancel.is_cancelled() {
                match self.unfence(&old).await {
                    Ok(()) => {
                        tracing::warn!("aborted by the operator while in doubt at start: OLD is the primary");
                        return;
                    }
                    Err(error) => tracing::warn!(%error, "could not lift OLD's fence"),
                }
            }
            let outcome = self.look_and_settle(&old, &new, since).await;
            let why = match &outcome {
                Outcome::Former => {
                    tracing::info!("OLD is the primary");
                    return;
                }
                Outcome::Promoted => return self.adopt(&old, &new),
                Outcome::Stopped => format!(
                    "OLD is fenced and NEW is still its replica, and another proxy's handover is connected to them: \
                     it is given {} s to finish",
                    DRIVER_LEASE.as_secs()
                ),
                Outcome::InDoubt(why) => why.clone(),
            };
            // Writes wait for a stopped handover's driver, whose lease bounds the wait; they are refused only when
            // the servers cannot tell at all.
            let doubt = !matches!(outcome, Outcome::Stopped);
            let text = format!(
                "at start: {why}; writes are held, then refused, and reads go to OLD until the servers tell; \
                 `ctl abort --force` makes OLD the primary"
            );
            if self.lock().in_doubt.as_deref() != Some(&text) {
                tracing::warn!(%text, "the primary cannot be told");
                self.lock().in_doubt = Some(text);
            }
            if doubt && since.elapsed() >= HOLD_AT_START && self.shared.gate.refusal().is_none() {
                self.shared.gate.refuse(bytes::Bytes::from_static(
                    b"-TRYAGAIN the proxy cannot tell yet which server is the primary; writes are refused until it can\r\n",
                ));
            }
            if cancel.is_cancelled() {
                tokio::time::sleep(POLL).await;
            } else {
                tokio::select! {
                    _ = tokio::time::sleep(POLL) => {}
                    _ = cancel.cancelled() => {}
                }
            }
        }
    }

    /// Looks at both servers, and undoes a handover found stopped between the fence and the promotion once no
    /// other proxy's control connection is left on the servers, or once those have had [`DRIVER_LEASE`] (from
    /// `since`) and been closed: a closed connection's unread commands never run, so a stalled proxy that wakes
    /// up can change nothing any more. Answers [`Outcome::Stopped`] while that driver's lease runs.
    pub(super) async fn look_and_settle(&self, old: &Server, new: &Server, since: std::time::Instant) -> Outcome {
        match self.look_at(old, new).await {
            Outcome::Stopped => {
                let mut drivers = self.control_connections(old).await;
                drivers.extend(self.control_connections(new).await);
                if !drivers.is_empty() && since.elapsed() < DRIVER_LEASE {
                    return Outcome::Stopped;
                }
                self.close_connections(old, new, &drivers).await;
                match self.look_at(old, new).await {
                    Outcome::Stopped => match self.unfence(old).await {
                        Ok(()) => Outcome::Former,
                        Err(error) => Outcome::InDoubt(format!("OLD's fence could not be lifted: {error}")),
                    },
                    outcome => outcome,
                }
            }
            outcome => outcome,
        }
    }

    /// The ids of the handover control connections on `server` ([`crate::control::CONTROL_NAME`]).
    async fn control_connections(&self, server: &Server) -> Vec<(Side, i64)> {
        let Ok(mut conn) = self.connect(server).await else {
            return Vec::new();
        };
        let Ok(list) = conn.call(&["CLIENT", "LIST"], LOOK_TIMEOUT).await else {
            return Vec::new();
        };
        let text = String::from_utf8_lossy(list.as_bytes().unwrap_or_default()).into_owned();
        text.lines()
            .filter(|line| {
                line.split(' ')
                    .any(|f| f == format!("name={}", crate::control::CONTROL_NAME))
            })
            .filter_map(|line| line.split(' ').find_map(|f| f.strip_prefix("id=")?.parse().ok()))
            .map(|id| (server.side, id))
            .collect()
    }

    /// Closes the given control connections on the servers they are on.
    async fn close_connections(&self, old: &Server, new: &Server, ids: &[(Side, i64)]) {
        for (side, id) in ids {
            let server = if *side == Side::Old { old } else { new };
            if let Ok(mut conn) = self.connect(server).await {
                let closed = conn
                    .call(&["CLIENT", "KILL", "ID", &id.to_string()], LOOK_TIMEOUT)
                    .await;
                tracing::warn!(server = %server.addr, id, ?closed, "closed another proxy's handover connection");
            }
        }
    }

    /// Lifts the fence from OLD (Redis's defaults: what it had before is not known to this process) and ends
    /// its pause.
    async fn unfence(&self, old: &Server) -> Result<(), ControlError> {
        let mut conn = self.connect(old).await?;
        let was = FenceWas::default();
        let commands: [&[&str]; 3] = [
            &["CONFIG", "SET", "min-replicas-to-write", &was.to_write],
            &["CONFIG", "SET", "min-replicas-max-lag", &was.max_lag],
            &["CLIENT", "UNPAUSE"],
        ];
        let replies = conn.pipeline(&commands, LOOK_TIMEOUT).await?;
        // CLIENT UNPAUSE does not exist before 6.2, whose pause ends by itself.
        if let Some(Value::Error(message)) = replies[..2].iter().find(|r| r.is_error()) {
            return Err(conn.refused(&["CONFIG"], message.clone()));
        }
        tracing::warn!(old = %old.addr, "a handover stopped between the fence and the promotion was undone: OLD unfenced");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn master(replid: &str, replid2: &str, fenced: bool) -> Seen {
        Seen {
            master: true,
            replid: replid.into(),
            replid2: replid2.into(),
            fenced,
            offset: 100,
        }
    }

    fn replica(replid: &str) -> Seen {
        Seen {
            master: false,
            replid: replid.into(),
            replid2: "0000".into(),
            fenced: false,
            offset: 100,
        }
    }

    #[test]
    fn the_servers_tell_which_is_primary() {
        let old = master("aaaa", "0000", false);
        let fenced_old = master("aaaa", "0000", true);
        let new_replica = replica("aaaa");
        let promoted = master("bbbb", "aaaa", false);
        // Before any handover, and after an undone one.
        assert_eq!(decide(Some(&old), Some(&new_replica), None), Outcome::Former);
        assert_eq!(decide(Some(&old), None, None), Outcome::Former);
        assert_eq!(
            decide(Some(&old), Some(&master("cccc", "0000", false)), None),
            Outcome::Former
        );
        // After a switch: OLD fenced, or (5.0) NEW's replica with NEW's ID.
        assert_eq!(decide(Some(&fenced_old), Some(&promoted), None), Outcome::Promoted);
        assert_eq!(decide(Some(&replica("bbbb")), Some(&promoted), None), Outcome::Promoted);
        // OLD unreachable, but its ID and fence are known to the handover that set the fence.
        assert_eq!(decide(None, Some(&promoted), Some("aaaa")), Outcome::Promoted);
        assert!(matches!(
            decide(None, Some(&new_replica), Some("aaaa")),
            Outcome::InDoubt(_)
        ));
        // Stopped between the fence and the promotion.
        assert_eq!(decide(Some(&fenced_old), Some(&new_replica), None), Outcome::Stopped);
        // What cannot be told.
        assert!(matches!(decide(Some(&fenced_old), None, None), Outcome::InDoubt(_)));
        assert!(matches!(
            decide(Some(&fenced_old), Some(&master("cccc", "0000", false)), None),
            Outcome::InDoubt(why) if why.contains("not promoted from it")
        ));
        assert!(matches!(decide(None, Some(&promoted), None), Outcome::InDoubt(_)));
        // An unfenced OLD is the primary even if NEW is a master of its own (a handover back, or an unrelated one).
        assert_eq!(decide(Some(&old), Some(&promoted), None), Outcome::Former);
    }
}
