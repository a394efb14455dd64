//! Moving one proxy's sessions to a promoted server: what the driver of a handover does for its own sessions, and
//! what every other proxy of a fleet does for its own when told to switch.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::control::{ControlConn, ControlError};
use crate::shared::Shared;

/// The bound on one control call outside the pause.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the settling sessions are looked at.
const POLL: Duration = Duration::from_millis(1);

/// Finds, in the source's `CLIENT LIST`, the client ids of the blocked connections of `generation` whose sessions
/// do not know them (their user may not run `CLIENT ID`), by the address of the proxy's end of each connection,
/// and adds them to `known`. Returns how many blocked connections are still not identified.
pub(super) async fn identify_blocked(
    shared: &Shared,
    source: &mut ControlConn,
    generation: u64,
    known: &mut HashMap<SocketAddr, i64>,
) -> Result<usize, ControlError> {
    let unknown = |known: &HashMap<_, _>| {
        shared
            .moves
            .blocked_on(generation)
            .iter()
            .filter(|b| b.id.is_none() && b.addr.is_none_or(|addr| !known.contains_key(&addr)))
            .count()
    };
    if unknown(known) == 0 {
        return Ok(0);
    }
    let list = source.call(&["CLIENT", "LIST", "TYPE", "normal"], CALL_TIMEOUT).await?;
    let text = String::from_utf8_lossy(list.as_bytes().unwrap_or_default()).into_owned();
    known.extend(parse_client_list(&text));
    Ok(unknown(known))
}

/// Ends, on the source, the blocked calls of this proxy's sessions of `generation`, as if they timed out
/// (`CLIENT UNBLOCK id TIMEOUT`): their sessions issue them again on the new primary with the time they had left.
/// Returns what could not be done.
pub(super) async fn end_blocked_calls(
    shared: &Shared,
    source: &mut ControlConn,
    generation: u64,
    known: &mut HashMap<SocketAddr, i64>,
    wait: Duration,
) -> Vec<String> {
    let mut warnings = Vec::new();
    if let Err(error) = identify_blocked(shared, source, generation, known).await {
        warnings.push(format!("could not list the former primary's clients: {error}"));
    }
    let blocked = shared.moves.blocked_on(generation);
    let ids = blocked
        .iter()
        .filter_map(|b| b.id.or_else(|| b.addr.and_then(|addr| known.get(&addr).copied())));
    for id in ids.collect::<Vec<_>>() {
        if let Err(error) = source
            .call(&["CLIENT", "UNBLOCK", &id.to_string(), "TIMEOUT"], wait)
            .await
        {
            warnings.push(format!("could not end blocked call of backend client {id}: {error}"));
        }
    }
    warnings
}

/// Loads on the new primary the scripts clients used: a promoted replica's script cache starts empty on 7.0
/// (REDIS-FACTS.md, "Scripts"). Returns what could not be done.
pub(super) async fn load_scripts(shared: &Shared, target: &mut ControlConn) -> Vec<String> {
    let mut warnings = Vec::new();
    for body in shared.scripts.all() {
        let body = String::from_utf8_lossy(&body).into_owned();
        if let Err(error) = target.ok(&["SCRIPT", "LOAD", &body], CALL_TIMEOUT).await {
            warnings.push(format!("could not load a script on NEW: {error}"));
        }
    }
    warnings
}

/// Waits, until `settle_by`, for the sessions with subscriptions, tracking or blocked calls to move to the
/// primary of `generation`, so that they are there before any write reaches it. Returns a warning for those that
/// had not.
pub(super) async fn settle(shared: &Shared, generation: u64, settle_by: Instant) -> Option<String> {
    while shared.moves.unsettled(generation) > 0 && Instant::now() < settle_by {
        tokio::time::sleep(POLL).await;
    }
    let unsettled = shared.moves.unsettled(generation);
    (unsettled > 0)
        .then(|| format!("{unsettled} sessions with subscriptions or blocked calls had not moved when writes resumed"))
}

/// The `addr` and `id` of each line of a `CLIENT LIST` reply.
fn parse_client_list(text: &str) -> impl Iterator<Item = (SocketAddr, i64)> + '_ {
    text.lines().filter_map(|line| {
        let field = |name: &str| {
            line.split(' ')
                .find_map(|f| f.strip_prefix(name).and_then(|rest| rest.strip_prefix('=')))
        };
        Some((field("addr")?.parse().ok()?, field("id")?.parse().ok()?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_list_lines_give_address_and_id() {
        let text = "id=7 addr=127.0.0.1:51234 laddr=127.0.0.1:6379 fd=8 name= cmd=blpop\n\
                    id=9 addr=[::1]:40000 fd=9 cmd=client|list\nnot a client line\n";
        let found: Vec<_> = parse_client_list(text).collect();
        assert_eq!(
            found,
            vec![
                ("127.0.0.1:51234".parse().unwrap(), 7),
                ("[::1]:40000".parse().unwrap(), 9)
            ]
        );
    }
}
