//! Scheduled handovers: at a given time, inside a maintenance window, and at a quiet moment.
//!
//! `POST /handover/schedule` (`ctl handover --at TIME --window 'Sun 03:00-04:00' --when-writes-below N`) records
//! a [`Scheduled`] handover and checks at once whether its pre-flight would refuse (ElastiCache's "blocked
//! upgrade"), saying why and what to do. A task waits for the start; with `when_writes_below` it then watches the
//! writes clients send through this proxy and the transactions open, and starts the handover at the first moment
//! with fewer than N writes/s over [`QUIET_SPAN`] and no MULTI open. A window that closes first runs nothing and
//! says why. Times are UTC.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::Request;

/// How far back the write rate of a quiet moment is measured.
pub const QUIET_SPAN: Duration = Duration::from_secs(3);
/// How long a schedule with no window tries again while another handover runs.
const RETRY_RUNNING: Duration = Duration::from_secs(600);
/// How far in the past an `--at` time may be (a clock's second, a slow command line) before it is refused.
const PAST_SLACK_MS: u64 = 5_000;
/// How often a watching schedule samples the writes.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// A request to schedule a handover: when, and its options.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Plan {
    /// Not before this time: RFC 3339 (`2026-11-30T03:00:00Z`), `HH:MM[:SS]` (the next such time, UTC), or `+`
    /// and a duration (`+90s`, `+10m`).
    pub at: Option<String>,
    /// Only inside this window: `[DAY] HH:MM[:SS]-HH:MM[:SS]` in UTC (`Sun 03:00-04:00`, `22:30-23:00`); without a
    /// day, every day. The next such window (or the current one).
    pub window: Option<String>,
    /// Wait for a moment with fewer writes per second than this (over the last 3 s) and no MULTI open.
    pub when_writes_below: Option<u64>,
    /// The handover's own options.
    pub handover: Request,
}

/// What a schedule is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleState {
    /// Before its start time.
    Waiting,
    /// Inside its time, waiting for a quiet moment.
    Watching,
    /// The handover was started.
    Started,
    /// Its window passed without a quiet moment, or the handover could not start.
    Missed,
    Cancelled,
}

impl ScheduleState {
    /// The state as `GET /status` names it.
    pub fn name(self) -> &'static str {
        match self {
            ScheduleState::Waiting => "waiting",
            ScheduleState::Watching => "watching",
            ScheduleState::Started => "started",
            ScheduleState::Missed => "missed",
            ScheduleState::Cancelled => "cancelled",
        }
    }
}

/// A scheduled handover, as `GET /status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Scheduled {
    /// Its number among the handovers scheduled since the proxy started.
    pub id: u64,
    pub state: ScheduleState,
    /// When it was scheduled, and the earliest and latest start (Unix time, ms).
    pub scheduled_at_unix_ms: u64,
    pub not_before_unix_ms: u64,
    pub not_after_unix_ms: Option<u64>,
    /// The window as given.
    pub window: Option<String>,
    pub when_writes_below: Option<u64>,
    /// Writes per second through this proxy over the last [`QUIET_SPAN`], and the lowest seen, while watching.
    pub writes_per_s: Option<f64>,
    pub lowest_writes_per_s: Option<f64>,
    /// Transactions (MULTI) open now, while watching.
    pub transactions_open: Option<usize>,
    /// Why the pre-flight would refuse the handover, found when it was scheduled: it will not run as things are.
    pub blocked: Option<String>,
    /// Why it was missed or cancelled.
    pub reason: Option<String>,
    /// When the handover was started (Unix time, ms).
    pub started_at_unix_ms: Option<u64>,
    /// The handover's options.
    pub handover: Request,
}

/// Now, in Unix ms.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

const DAY_MS: u64 = 86_400_000;
/// The days of the week from Sunday, as a window may name them.
const DAYS: [(&str, &str); 7] = [
    ("sun", "sunday"),
    ("mon", "monday"),
    ("tue", "tuesday"),
    ("wed", "wednesday"),
    ("thu", "thursday"),
    ("fri", "friday"),
    ("sat", "saturday"),
];

/// The day of the week of a Unix time in ms, 0 for Sunday (1970-01-01 was a Thursday).
fn weekday(ms: u64) -> u64 {
    (ms / DAY_MS + 4) % 7
}

/// `HH:MM[:SS]` as ms into the day.
fn time_of_day(text: &str) -> Result<u64, String> {
    let parts: Vec<&str> = text.trim().split(':').collect();
    let number = |s: &str, max: u64| s.parse::<u64>().ok().filter(|&n| n < max && s.len() == 2);
    let (h, m, s) = match parts.as_slice() {
        [h, m] => (number(h, 24), number(m, 60), Some(0)),
        [h, m, s] => (number(h, 24), number(m, 60), number(s, 60)),
        _ => (None, None, None),
    };
    match (h, m, s) {
        (Some(h), Some(m), Some(s)) => Ok(((h * 60 + m) * 60 + s) * 1000),
        _ => Err(format!("expected a time of day HH:MM or HH:MM:SS (UTC), not {text:?}")),
    }
}

/// The time `--at` names, in Unix ms, as of `now`.
pub fn parse_at(text: &str, now: u64) -> Result<u64, String> {
    let text = text.trim();
    if let Some(after) = text.strip_prefix('+') {
        let duration = humantime::parse_duration(after.trim())
            .map_err(|e| format!("expected +DURATION (+90s, +10m), not {text:?}: {e}"))?;
        return Ok(now + duration.as_millis() as u64);
    }
    if text.contains('T') || text.contains(' ') && text.contains('-') {
        let at = humantime::parse_rfc3339_weak(text)
            .map_err(|e| format!("expected an RFC 3339 time (2026-11-30T03:00:00Z), not {text:?}: {e}"))?;
        return Ok(at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64));
    }
    let of_day = time_of_day(text)
        .map_err(|_| format!("expected an RFC 3339 time, HH:MM[:SS] (UTC) or +DURATION for the start, not {text:?}"))?;
    let today = now - now % DAY_MS + of_day;
    Ok(if today >= now { today } else { today + DAY_MS })
}

/// The next window `[DAY] HH:MM[:SS]-HH:MM[:SS]` (UTC) as of `now`: its start and end in Unix ms. The window in
/// progress, if `now` is inside one, starting now.
pub fn parse_window(text: &str, now: u64) -> Result<(u64, u64), String> {
    let bad = || format!("expected a window [DAY] HH:MM-HH:MM in UTC (Sun 03:00-04:00), not {text:?}");
    let trimmed = text.trim();
    let (day, times) = match trimmed.split_once(' ') {
        Some((day, times)) => {
            let lower = day.to_ascii_lowercase();
            let index = DAYS
                .iter()
                .position(|(short, long)| lower == *short || lower == *long)
                .ok_or_else(bad)?;
            (Some(index as u64), times)
        }
        None => (None, trimmed),
    };
    let (start, end) = times.split_once('-').ok_or_else(bad)?;
    let (start, end) = (time_of_day(start)?, time_of_day(end)?);
    if start == end {
        return Err(format!("the window {text:?} is empty"));
    }
    let length = if end > start { end - start } else { DAY_MS - start + end };
    // The window that began on the day before `now` may still be open (one that crosses midnight).
    let first_day = now - now % DAY_MS - DAY_MS;
    for offset in 0..9 {
        let begins = first_day + offset * DAY_MS + start;
        let ends = begins + length;
        if ends <= now || day.is_some_and(|d| weekday(begins) != d) {
            continue;
        }
        return Ok((begins.max(now), ends));
    }
    Err(bad())
}

/// The Unix ms of an RFC 3339 text, for the status and `ctl`.
pub fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// When a plan may start and must have started by: `(not_before, not_after)`.
pub fn bounds(plan: &Plan, now: u64) -> Result<(u64, Option<u64>), String> {
    let at = plan.at.as_deref().map(|a| parse_at(a, now)).transpose()?;
    if let Some(at) = at.filter(|&at| at + PAST_SLACK_MS < now) {
        return Err(format!(
            "--at {} is in the past ({}); nothing was scheduled",
            plan.at.as_deref().unwrap_or_default(),
            rfc3339(at)
        ));
    }
    if plan.when_writes_below == Some(0) {
        return Err("--when-writes-below 0 can never be met: give at least 1 (writes per second)".into());
    }
    let window = plan
        .window
        .as_deref()
        .map(|w| parse_window(w, at.unwrap_or(now)))
        .transpose()?;
    Ok(match (at, window) {
        (at, Some((begins, ends))) => (begins.max(at.unwrap_or(0)), Some(ends)),
        (Some(at), None) => (at, None),
        (None, None) => (now, None),
    })
}

/// The rate of writes over the samples `(time, writes so far)` of the last [`QUIET_SPAN`], once they cover it.
pub fn quiet_rate(samples: &std::collections::VecDeque<(std::time::Instant, u64)>) -> Option<f64> {
    let (first, last) = (samples.front()?, samples.back()?);
    let span = last.0.duration_since(first.0);
    (span >= QUIET_SPAN).then(|| (last.1 - first.1) as f64 / span.as_secs_f64())
}

/// Why a handover could not be scheduled.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// The times given do not parse.
    #[error("{0}")]
    Invalid(String),
    /// One is scheduled already.
    #[error("a handover is scheduled already (not before {0}); cancel it first (ctl cancel)")]
    Scheduled(String),
    #[error("no NEW server is configured (--new)")]
    NoTarget,
}

impl super::Handover {
    /// Schedules a handover (see the module's documentation); the pre-flight's checks run at once, and a refusal
    /// is recorded as `blocked`, with what to do.
    pub async fn schedule(self: &Arc<Self>, plan: Plan) -> Result<Scheduled, ScheduleError> {
        let now = now_ms();
        if self.shared().cluster.is_some() {
            return Err(ScheduleError::Invalid(
                super::StartError::Cluster("a cluster's handover cannot be scheduled yet: start it with ctl handover")
                    .to_string(),
            ));
        }
        let (not_before, not_after) = bounds(&plan, now).map_err(ScheduleError::Invalid)?;
        let (source, target) = self.servers().ok_or(ScheduleError::NoTarget)?;
        let cancel = CancellationToken::new();
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let scheduled = Scheduled {
            id,
            state: ScheduleState::Waiting,
            scheduled_at_unix_ms: now,
            not_before_unix_ms: not_before,
            not_after_unix_ms: not_after,
            window: plan.window.clone(),
            when_writes_below: plan.when_writes_below,
            writes_per_s: None,
            lowest_writes_per_s: None,
            transactions_open: None,
            blocked: None,
            reason: None,
            started_at_unix_ms: None,
            handover: plan.handover.clone(),
        };
        {
            let mut slot = lock(&self.schedule);
            if let Some((pending, _)) = slot
                .as_ref()
                .filter(|(s, _)| matches!(s.state, ScheduleState::Waiting | ScheduleState::Watching))
            {
                return Err(ScheduleError::Scheduled(rfc3339(pending.not_before_unix_ms)));
            }
            *slot = Some((scheduled, cancel.clone()));
        }
        tracing::info!(
            not_before = %rfc3339(not_before),
            not_after = ?not_after.map(rfc3339),
            when_writes_below = ?plan.when_writes_below,
            "handover scheduled"
        );
        let run = super::run::Run::new(
            self.clone(),
            source,
            target,
            plan.handover.clone(),
            cancel.clone(),
            false,
        );
        if let Err(refusal) = run.check(false).await {
            let blocked = format!(
                "the pre-flight would refuse the handover now: {refusal}. It will run only if that is fixed before its time (ctl check shows the checks; ctl cancel drops it)"
            );
            tracing::warn!(%blocked, "scheduled handover blocked");
            self.update_schedule(id, |s| s.blocked = Some(blocked));
        }
        let this = self.clone();
        let task_cancel = cancel.clone();
        tokio::spawn(async move { this.run_schedule(id, plan, task_cancel).await });
        Ok(self.scheduled().unwrap_or_else(|| unreachable!("recorded above")))
    }

    /// `ctl cancel`: drops the scheduled handover; the schedule, cancelled, or why there is none to cancel.
    pub fn cancel_schedule(&self) -> Result<Scheduled, String> {
        let mut slot = lock(&self.schedule);
        match slot.as_mut() {
            Some((scheduled, cancel))
                if matches!(scheduled.state, ScheduleState::Waiting | ScheduleState::Watching) =>
            {
                cancel.cancel();
                scheduled.state = ScheduleState::Cancelled;
                scheduled.reason = Some("cancelled by the operator".into());
                tracing::info!("scheduled handover cancelled");
                Ok(scheduled.clone())
            }
            _ => Err("no handover is scheduled".into()),
        }
    }

    /// The scheduled handover, or the last one.
    pub fn scheduled(&self) -> Option<Scheduled> {
        lock(&self.schedule).as_ref().map(|(s, _)| s.clone())
    }

    /// Changes the schedule `id`, if it is still the one recorded and waiting for its time.
    fn update_schedule(&self, id: u64, change: impl FnOnce(&mut Scheduled)) -> bool {
        let mut slot = lock(&self.schedule);
        match slot.as_mut() {
            Some((scheduled, _))
                if scheduled.id == id
                    && matches!(scheduled.state, ScheduleState::Waiting | ScheduleState::Watching) =>
            {
                change(scheduled);
                true
            }
            _ => false,
        }
    }

    /// Waits for the schedule's time (and quiet moment), then starts the handover, or records why it did not.
    async fn run_schedule(self: Arc<Self>, id: u64, plan: Plan, cancel: CancellationToken) {
        let Ok((not_before, not_after)) = lock(&self.schedule)
            .as_ref()
            .map(|(s, _)| (s.not_before_unix_ms, s.not_after_unix_ms))
            .ok_or(())
        else {
            return;
        };
        let wait = Duration::from_millis(not_before.saturating_sub(now_ms()));
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        if let Some(below) = plan.when_writes_below {
            self.update_schedule(id, |s| s.state = ScheduleState::Watching);
            let writes = &self.shared.telemetry.writes_received;
            let mut samples = std::collections::VecDeque::new();
            loop {
                let now = std::time::Instant::now();
                samples.push_back((now, writes.load(Ordering::Relaxed)));
                while samples.len() > 2 && now.duration_since(samples[1].0) >= QUIET_SPAN {
                    samples.pop_front();
                }
                let rate = quiet_rate(&samples);
                let open = self.shared.transactions_open.load(Ordering::Relaxed);
                self.update_schedule(id, |s| {
                    s.writes_per_s = rate;
                    s.transactions_open = Some(open);
                    if let Some(rate) = rate {
                        s.lowest_writes_per_s = Some(s.lowest_writes_per_s.map_or(rate, |l: f64| l.min(rate)));
                    }
                });
                if rate.is_some_and(|r| r < below as f64) && open == 0 {
                    tracing::info!(writes_per_s = ?rate, "a quiet moment: starting the scheduled handover");
                    break;
                }
                if not_after.is_some_and(|end| now_ms() >= end) {
                    let lowest = self.scheduled().and_then(|s| s.lowest_writes_per_s);
                    let reason = format!(
                        "the window {} passed without a moment under {below} writes/s with no MULTI open (the \
                         fewest seen: {}); nothing ran",
                        plan.window.as_deref().unwrap_or("given"),
                        lowest.map_or("none measured".to_string(), |l| format!("{l:.0}/s"))
                    );
                    tracing::warn!(%reason, "scheduled handover missed");
                    self.update_schedule(id, |s| {
                        s.state = ScheduleState::Missed;
                        s.reason = Some(reason);
                    });
                    return;
                }
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(SAMPLE_EVERY) => {}
                }
            }
        } else if not_after.is_some_and(|end| now_ms() >= end) {
            self.update_schedule(id, |s| {
                s.state = ScheduleState::Missed;
                s.reason = Some("its window had passed when it was due; nothing ran".into());
            });
            return;
        }
        // Another handover (or the sync of shadow reads) may be running: tried again each second, until the
        // window closes, or for RETRY_RUNNING without one.
        let retry_until = not_after.unwrap_or_else(|| now_ms() + RETRY_RUNNING.as_millis() as u64);
        loop {
            {
                // Under the schedule's lock, so that a cancel either comes first (nothing starts) or finds it
                // started.
                let mut slot = lock(&self.schedule);
                let Some((scheduled, _)) = slot
                    .as_mut()
                    .filter(|(s, _)| s.id == id && matches!(s.state, ScheduleState::Waiting | ScheduleState::Watching))
                else {
                    return;
                };
                let error = match self.start(plan.handover.clone()) {
                    Ok(()) => {
                        scheduled.state = ScheduleState::Started;
                        scheduled.started_at_unix_ms = Some(now_ms());
                        return;
                    }
                    Err(error) => error,
                };
                if !matches!(error, super::StartError::Running(_)) || now_ms() >= retry_until {
                    tracing::warn!(%error, "the scheduled handover could not start");
                    scheduled.state = ScheduleState::Missed;
                    scheduled.reason = Some(format!("it could not start when due: {error}"));
                    return;
                }
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

/// Locks a mutex, through a poisoning.
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-29 (a Sunday) 22:45:00 UTC.
    const NOW: u64 = 1_795_992_300_000;

    #[test]
    fn the_start_is_read_in_every_form() {
        assert_eq!(weekday(NOW), 0, "a Sunday");
        assert_eq!(parse_at("+90s", NOW), Ok(NOW + 90_000));
        assert_eq!(parse_at("+10m", NOW), Ok(NOW + 600_000));
        assert_eq!(parse_at("23:00", NOW), Ok(NOW + 15 * 60_000));
        assert_eq!(parse_at("22:00", NOW), Ok(NOW + DAY_MS - 45 * 60_000), "tomorrow");
        assert_eq!(parse_at("2026-11-30T03:00:00Z", NOW), Ok(NOW + (4 * 60 + 15) * 60_000));
        assert!(parse_at("soon", NOW).is_err());
        assert!(parse_at("25:00", NOW).is_err());
        assert!(parse_at("+forever", NOW).is_err());
    }

    #[test]
    fn the_next_window_is_found_and_one_in_progress_starts_now() {
        let minutes = |m: u64| m * 60_000;
        assert_eq!(
            parse_window("Mon 03:00-04:00", NOW),
            Ok((NOW + minutes(4 * 60 + 15), NOW + minutes(5 * 60 + 15)))
        );
        assert_eq!(
            parse_window("sunday 03:00-04:00", NOW),
            Ok((
                NOW + minutes(4 * 60 + 15) + 6 * DAY_MS,
                NOW + minutes(5 * 60 + 15) + 6 * DAY_MS
            )),
            "next Sunday: today's has passed"
        );
        assert_eq!(
            parse_window("22:30-23:00", NOW),
            Ok((NOW, NOW + minutes(15))),
            "in progress"
        );
        assert_eq!(
            parse_window("Sun 22:00-01:00", NOW),
            Ok((NOW, NOW + minutes(135))),
            "across midnight"
        );
        assert_eq!(
            parse_window("Sat 23:00-23:30", NOW),
            Ok((NOW + minutes(15) + 6 * DAY_MS, NOW + minutes(45) + 6 * DAY_MS))
        );
        assert_eq!(
            parse_window("22:45:00-22:45:03", NOW),
            Ok((NOW, NOW + 3_000)),
            "seconds may be given"
        );
        for bad in [
            "Someday 03:00-04:00",
            "03:00",
            "03:00-03:00",
            "Sun 3-4",
            "Sun 03:00-4:00",
        ] {
            assert!(parse_window(bad, NOW).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_window_and_a_start_combine() {
        let plan = |at: Option<&str>, window: Option<&str>| Plan {
            at: at.map(str::to_string),
            window: window.map(str::to_string),
            ..Plan::default()
        };
        assert_eq!(bounds(&plan(None, None), NOW), Ok((NOW, None)));
        assert!(
            bounds(&plan(Some("2026-11-29T20:00:00Z"), None), NOW).is_err_and(|e| e.contains("in the past")),
            "a typo in the date must not start a handover at once"
        );
        let never = Plan {
            when_writes_below: Some(0),
            ..Plan::default()
        };
        assert!(bounds(&never, NOW).is_err());
        assert_eq!(bounds(&plan(Some("+1m"), None), NOW), Ok((NOW + 60_000, None)));
        assert_eq!(
            bounds(&plan(Some("+1m"), Some("22:30-23:00")), NOW),
            Ok((NOW + 60_000, Some(NOW + 15 * 60_000)))
        );
        assert_eq!(
            bounds(&plan(Some("+1h"), Some("22:30-23:00")), NOW),
            Ok((NOW + DAY_MS - 15 * 60_000, Some(NOW + DAY_MS + 15 * 60_000))),
            "the window after the start"
        );
    }

    #[test]
    fn the_write_rate_needs_the_whole_span() {
        let t0 = std::time::Instant::now();
        let mut samples = std::collections::VecDeque::new();
        samples.push_back((t0, 100));
        samples.push_back((t0 + Duration::from_secs(2), 150));
        assert_eq!(quiet_rate(&samples), None);
        samples.push_back((t0 + Duration::from_secs(4), 300));
        assert_eq!(quiet_rate(&samples), Some(50.0));
    }
}
