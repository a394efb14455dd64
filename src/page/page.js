// The admin page: everything it shows comes from the admin port's JSON API (GET /status every second, GET
// /readiness on load and on demand), with the admin token when one is set (from #token=... in the address, or
// asked for, and kept for this tab only).
"use strict";

const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem("redis-handover-token");
const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
if (fromHash) {
  token = fromHash;
  sessionStorage.setItem("redis-handover-token", token);
  history.replaceState(null, "", location.pathname);
}

class NeedsToken extends Error {}

async function api(path) {
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const response = await fetch(path, { headers, cache: "no-store" });
  if (response.status === 401) throw new NeedsToken();
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  for (const child of children) node.append(child instanceof Node ? child : String(child ?? ""));
  return node;
}

function bytes(n) {
  if (n === null || n === undefined) return "-";
  if (n >= 1 << 20) return `${(n / (1 << 20)).toFixed(1)} MiB`;
  if (n >= 1 << 10) return `${(n / 1024).toFixed(1)} KiB`;
  return `${n} bytes`;
}

const when = (ms) => (ms ? new Date(ms).toISOString().replace(".000", "") : "-");

function table(headers, rows) {
  return el("table", {}, el("tr", {}, ...headers.map((h) => el("th", {}, h))),
    ...rows.map((row) => el("tr", {}, ...row.map((cell) => el("td", typeof cell === "number" ? { class: "n" } : {}, cell)))));
}

const COLOURS = { preflight: "#74c0fc", syncing: "#4dabf7", catching_up: "#339af0", paused: "#ff922b",
  in_doubt: "#f76707", switched: "#40c057", synced: "#40c057", aborted: "#fa5252" };

// A handover's timeline as a picture: one bar per phase, on a scale of its whole length.
function timeline(report, title) {
  const spans = report.timeline || [];
  const end = Math.max(1, ...spans.map((s) => s.ended_ms ?? s.started_ms));
  const width = 900, rowHeight = 22, left = 110;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("width", width);
  svg.setAttribute("height", spans.length * rowHeight + 24);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `${title} timeline`);
  spans.forEach((span, i) => {
    const x = left + (span.started_ms / end) * (width - left - 120);
    const length = Math.max(2, (((span.ended_ms ?? end) - span.started_ms) / end) * (width - left - 120));
    const y = i * rowHeight + 4;
    const label = document.createElementNS(svg.namespaceURI, "text");
    label.setAttribute("x", 0);
    label.setAttribute("y", y + 14);
    label.textContent = span.phase;
    const bar = document.createElementNS(svg.namespaceURI, "rect");
    for (const [k, v] of Object.entries({ x, y, width: length, height: 16, fill: COLOURS[span.phase] || "#adb5bd",
      "data-phase": span.phase })) bar.setAttribute(k, v);
    const took = document.createElementNS(svg.namespaceURI, "text");
    took.setAttribute("x", x + length + 6);
    took.setAttribute("y", y + 14);
    took.textContent = span.ended_ms === null || span.ended_ms === undefined
      ? "running" : `${(span.ended_ms - span.started_ms).toFixed(1)} ms`;
    svg.append(label, bar, took);
  });
  const pause = report.pause_ms !== null && report.pause_ms !== undefined ? `, writes paused ${report.pause_ms.toFixed(1)} ms (${report.writes_held} held)` : "";
  return el("div", { class: "timeline" },
    el("p", {}, el("strong", {}, title), ` ${report.from} -> ${report.to}: `,
      el("span", { class: "outcome", "data-outcome": report.outcome }, report.outcome), pause,
      report.reason ? ` — ${report.reason}` : ""),
    svg);
}

function server(view) {
  if (!view || !view.addr) return "-";
  return `${view.addr} ${view.role || ""} ${view.version ? `(Redis ${view.version})` : ""}`;
}

function windowLine(w) {
  if (!w || !w.state) return "none";
  if (w.state === "off") return "off (rollback_window_s = 0)";
  if (w.state === "closed") return `closed at ${when(w.closed_at_unix_ms)}: ${w.reason}`;
  return `${w.state}: ${(w.follower || "").toUpperCase()} ${w.follower_addr} follows, lag ${bytes(w.lag_bytes)}, `
    + `link ${w.link_up ? "up" : "down"}, until ${when(w.until_unix_ms)}`;
}

function scheduledLine(s) {
  if (!s) return "nothing";
  let line = `${s.state}: not before ${when(s.not_before_unix_ms)}`;
  if (s.not_after_unix_ms) line += `, not after ${when(s.not_after_unix_ms)}`;
  if (s.when_writes_below) line += `, under ${s.when_writes_below} writes/s`;
  if (s.writes_per_s !== null && s.writes_per_s !== undefined) line += ` (now ${s.writes_per_s.toFixed(0)}/s)`;
  if (s.blocked) line += ` — BLOCKED: ${s.blocked}`;
  if (s.reason) line += ` — ${s.reason}`;
  return line;
}

function fleetLine(f) {
  if (!f || !f.peers || f.peers.length === 0) return "one proxy";
  return `this proxy ${f.proxy_id} (${f.part}); peers: ` + f.peers
    .map((p) => `${p.addr} ${p.reachable ? `${p.phase}, primary ${p.primary}` : "unreachable"}`).join("; ");
}

function showStatus(s) {
  $("phase").textContent = s.phase;
  $("phase").className = `badge ${s.phase}`;
  $("primary").textContent = `${s.primary.side.toUpperCase()} ${s.primary.addr} (Redis ${s.primary.version || "?"}), generation ${s.primary.generation}`;
  $("server-old").textContent = server(s.servers.old);
  $("server-new").textContent = server(s.servers.new);
  $("lag").textContent = bytes(s.lag_bytes);
  $("held").textContent = s.writes_held;
  $("clients").textContent = s.clients;
  $("resp3").textContent = s.resp3;
  $("fence").textContent = s.fence || "none";
  $("window").textContent = windowLine(s.rollback_window);
  $("scheduled").textContent = scheduledLine(s.scheduled);
  $("fleet").textContent = fleetLine(s.fleet);
  $("in-doubt").hidden = !s.in_doubt;
  $("in-doubt").textContent = s.in_doubt ? `In doubt: ${s.in_doubt}` : "";
  $("timeline-current").replaceChildren(...(s.handover ? [timeline(s.handover, "Running")] : []));
  if (s.last_handover) $("timeline-last").replaceChildren(timeline(s.last_handover, "Last"));
  $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
}

function showReadiness(r) {
  const parts = [el("p", {}, "Verdict: ", el("span", { id: "verdict", class: r.ready ? "ready" : "not-ready" },
    r.ready ? "READY" : "NOT READY"), ` — a handover ${r.from} (Redis ${r.from_version || "?"}) -> ${r.to || "none"} (Redis ${r.to_version || "?"})`)];
  if (r.reasons.length) parts.push(el("ul", {}, ...r.reasons.map((x) => el("li", { class: "error" }, x))));
  if (r.warnings.length) parts.push(el("p", {}, "Worth knowing:"), el("ul", {}, ...r.warnings.map((x) => el("li", {}, x))));
  parts.push(el("p", {}, `Clients: ${r.clients.connected.length} connected now (resp3 = ${r.clients.resp3_mode})`),
    table(["library", "version", "connections", "now", "asked RESP3", "got RESP3", "on NEW"], r.clients.libraries.map((l) =>
      [l.lib_name || "(not given)", l.lib_ver || "-", l.connections, l.connected, l.asked_resp3, l.got_resp3, l.protocol_change || ""])));
  parts.push(el("p", {}, `Commands: ${r.commands.total} since the proxy started`),
    table(["command", "sent"], r.commands.counted.slice(0, 12).map((c) => [c.command, c.count])));
  if (r.commands.changes.length) {
    parts.push(el("p", {}, "Changed between the two versions, in commands sent:"),
      table(["command", "sent", "since", "kind", "what"], r.commands.changes.map((c) =>
        [c.subcommand ? `${c.command} ${c.subcommand}` : c.command, c.sent, c.since, c.kind, c.what])));
  }
  if (r.shadow) {
    const s = r.shadow;
    parts.push(el("p", {}, `Shadow reads (${s.fraction * 100}% of reads, ${s.state}): ${s.compared} compared, `
      + `${s.matched} equal, ${s.lagged} equal on a second look, ${s.mismatched} different, ${s.inconclusive} undecided`),
    table(["command", "equal", "lag", "different", "example"], s.by_command.map((c) => [c.command, c.matched, c.lagged,
      c.mismatched, c.examples[0] ? `${c.examples[0].request}: ${c.examples[0].primary} / ${c.examples[0].follower}` : ""])));
  }
  $("readiness").replaceChildren(...parts);
}

function failed(error) {
  if (error instanceof NeedsToken) {
    $("token-form").hidden = false;
    return;
  }
  $("error").hidden = false;
  $("error").textContent = `The admin port did not answer: ${error.message}`;
}

async function refresh() {
  try {
    const status = await api("/status");
    $("error").hidden = true;
    showStatus(status);
    setTimeout(refresh, status.handover ? 300 : 1000);
  } catch (error) {
    failed(error);
    if (!(error instanceof NeedsToken)) setTimeout(refresh, 2000);
  }
}

async function check() {
  $("check").disabled = true;
  try {
    showReadiness(await api("/readiness"));
  } catch (error) {
    failed(error);
  } finally {
    $("check").disabled = false;
  }
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  token = $("token").value;
  sessionStorage.setItem("redis-handover-token", token);
  $("token-form").hidden = true;
  refresh();
  check();
});
$("check").addEventListener("click", check);
refresh();
check();
