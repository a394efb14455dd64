//! The admin page (`GET /` on the admin port) as a person sees it: loaded in headless Chromium (Debian's
//! `chromium`), during a handover and after it, and with an admin token.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use redis_handover::handover::Phase;
use support::{Harness, Proxy, Version};

const CHROMIUM: &str = "/usr/bin/chromium";

/// The page at `url` as Chromium leaves it once its script has run: its DOM, after the first answers of the JSON
/// API (a bounded run: Chromium is killed past a minute).
fn page(url: &str) -> String {
    assert!(
        Path::new(CHROMIUM).exists(),
        "Chromium is not installed: run scripts/install-redis.sh (apt-get install chromium)"
    );
    let profile = tempdir();
    let mut command = Command::new(CHROMIUM);
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            &format!("--user-data-dir={}", profile.display()),
            "--virtual-time-budget=3000",
            "--dump-dom",
            url,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let out = support::output_within(&mut command, Duration::from_secs(60));
    let _ = std::fs::remove_dir_all(&profile);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A fresh directory for one Chromium profile (tests run Chromium in parallel).
fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("rh-chromium-{}-{}", std::process::id(), support::free_port()));
    std::fs::create_dir_all(&dir).expect("a profile directory");
    dir
}

fn url(proxy: &Proxy) -> String {
    format!("http://{}/", proxy.admin)
}

/// The text of the element with `id` in a DOM dump.
fn text_of<'a>(dom: &'a str, id: &str) -> &'a str {
    let Some(at) = dom.find(&format!("id=\"{id}\"")) else {
        return "";
    };
    let start = at + dom[at..].find('>').map_or(0, |i| i + 1);
    let end = start + dom[start..].find('<').unwrap_or(0);
    &dom[start..end]
}

#[test]
fn the_page_shows_the_phase_changing_during_a_handover_and_the_finished_timeline() {
    // OLD 7.0 waits 5 s before a diskless sync starts (repl-diskless-sync-delay): the page is loaded meanwhile.
    let h = Harness::start_with(
        Version::V7_0,
        &["--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "5"],
        Version::V7_0,
        &[],
        |_| {},
    );
    assert_eq!(h.proxy.client().run("SET k 1"), support::Reply::ok());
    let before = page(&url(&h.proxy));
    assert_eq!(text_of(&before, "phase"), "idle", "{before}");
    assert!(before.contains("No handover has run"), "{before}");
    assert!(text_of(&before, "primary").starts_with("OLD 127.0.0.1:"), "{before}");
    assert_eq!(text_of(&before, "verdict"), "READY", "the readiness report: {before}");

    let (code, _) = h.proxy.post("/handover", serde_json::json!({}));
    assert_eq!(code, 202);
    h.proxy.wait_for_phase(Phase::Syncing, Duration::from_secs(30));
    let during = page(&url(&h.proxy));
    assert_eq!(text_of(&during, "phase"), "syncing", "{during}");
    assert!(
        during.contains("data-phase=\"syncing\"") && during.contains(">running<"),
        "the running handover's timeline: {during}"
    );

    let report = h.proxy.wait_for_handover_end(Duration::from_secs(60));
    assert_eq!(report.outcome, Phase::Switched);
    let after = page(&url(&h.proxy));
    assert_eq!(text_of(&after, "phase"), "switched", "{after}");
    assert!(text_of(&after, "primary").starts_with("NEW 127.0.0.1:"), "{after}");
    for phase in ["preflight", "syncing", "catching_up", "paused"] {
        assert!(
            after.contains(&format!("data-phase=\"{phase}\"")),
            "{phase} in the timeline: {after}"
        );
    }
    assert!(after.contains("data-outcome=\"switched\""), "{after}");
    assert!(
        text_of(&after, "window").starts_with("open: OLD"),
        "the rollback window: {after}"
    );
}

#[test]
fn the_page_asks_for_the_admin_token_and_shows_nothing_without_it() {
    let h = Harness::start_with(Version::V7_0, &[], Version::V7_0, &[], |c| {
        c.admin_token = Some("s3cret-token".into())
    });
    let without = page(&url(&h.proxy));
    assert!(
        without.contains("<form id=\"token-form\">"),
        "the form shows: {without}"
    );
    assert_eq!(
        text_of(&without, "phase"),
        "loading",
        "no data without the token: {without}"
    );
    let with = page(&format!("{}#token=s3cret-token", url(&h.proxy)));
    assert_eq!(text_of(&with, "phase"), "idle", "{with}");
    assert!(with.contains("<form id=\"token-form\" hidden"), "{with}");
}
