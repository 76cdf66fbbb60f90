// Shadowcat's live view: sessions and messages as they flow (/api/events), and the tapes.
// Everything a message carries is shown through textContent: a body is never markup.
"use strict";

const MAX_ROWS = 5000; // messages kept in the page; the oldest go first
const SLOW_MS = 100;

const state = {
  events: [], // every message event kept, oldest first
  byKey: new Map(), // session + direction + id -> request event, to name answers
  session: null, // the session the list is narrowed to
  selected: null, // the selected event's seq
  paused: false,
  held: [], // events that arrived while paused
  missed: 0,
  methods: new Set(),
  tape: null,
  tapePos: 0,
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function parse(text) {
  try {
    return JSON.parse(text);
  } catch (_) {
    return undefined;
  }
}

// What a message is about: a tool, prompt or resource named in its params.
function targetOf(msg) {
  const p = msg && msg.params;
  if (!p || typeof p !== "object") return "";
  if (typeof p.name === "string") return p.name;
  if (typeof p.uri === "string") return p.uri;
  return "";
}

function time(ms) {
  const d = new Date(ms);
  return d.toLocaleTimeString([], { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
}

function size(n) {
  if (n < 1024) return n + " B";
  if (n < 1024 * 1024) return (n / 1024).toFixed(1) + " KiB";
  return (n / 1024 / 1024).toFixed(1) + " MiB";
}

function latency(us) {
  if (us === null || us === undefined) return "";
  if (us < 1000) return us + " µs";
  return (us / 1000).toFixed(1) + " ms";
}

const arrow = (direction) => (direction === "to_server" || direction === "c2s" ? "→" : "←");

// ---- live feed ----

function enrich(ev) {
  ev.msg = parse(ev.body.text);
  const key = ev.session + "|" + ev.id;
  if (ev.kind === "request") {
    ev.name = targetOf(ev.msg);
    state.byKey.set(ev.direction + key, ev);
  } else if (ev.kind === "response" || ev.kind === "error") {
    const back = ev.direction === "to_client" ? "to_server" : "to_client";
    const request = state.byKey.get(back + key);
    ev.name = request ? request.name : "";
    if (request) state.byKey.delete(back + key);
  } else {
    ev.name = targetOf(ev.msg);
  }
  ev.isError = ev.kind === "error" || !!(ev.msg && ev.msg.result && ev.msg.result.isError === true);
  ev.acted = ev.outcome !== "forwarded" || ev.decisions.length > 0;
  if (ev.method) state.methods.add(ev.method);
  return ev;
}

function keep(ev) {
  state.events.push(ev);
  if (state.events.length > MAX_ROWS) {
    const gone = state.events.splice(0, state.events.length - MAX_ROWS);
    for (const g of gone) {
      const row = document.querySelector(`#messages tr[data-seq="${g.seq}"]`);
      if (row) row.remove();
    }
  }
}

function matches(ev) {
  if (state.session && ev.session !== state.session) return false;
  const method = $("method").value;
  if (method && ev.method !== method) return false;
  const status = $("status-filter").value;
  if (status === "error" && !ev.isError) return false;
  if (status === "acted" && !ev.acted) return false;
  if (status === "slow" && !(ev.latency_us >= SLOW_MS * 1000)) return false;
  const minMs = Number($("min-latency").value);
  if (minMs > 0 && !(ev.latency_us >= minMs * 1000)) return false;
  const q = $("search").value.trim().toLowerCase();
  if (q) {
    const hay = [ev.method, ev.name, ev.id, ev.session, ev.trace, ev.body.text].join(" ").toLowerCase();
    if (!hay.includes(q)) return false;
  }
  return true;
}

function outcomeText(ev) {
  const parts = [ev.outcome];
  for (const d of ev.decisions) {
    const details = Object.fromEntries(d.details);
    if (d.what === "rule") {
      const audit = details["shadowcat.mode"] === "audit";
      parts.push((audit ? "would " : "") + details["shadowcat.action"] + " (" + details["shadowcat.rule"] + ")");
    } else {
      parts.push(d.what);
    }
  }
  return parts.join(", ");
}

function messageRow(ev) {
  const row = el(
    "tr",
    { "data-seq": String(ev.seq), class: [ev.isError ? "error" : "", ev.acted ? "acted" : ""].join(" ").trim() },
    el("td", {}, time(ev.at_ms)),
    el("td", { title: ev.session }, ev.session),
    el("td", {}, arrow(ev.direction)),
    el("td", { class: "kind" }, ev.kind),
    el("td", { class: "method" }, ev.method || ""),
    el("td", { class: "name", title: ev.name }, ev.name),
    el("td", { class: "id" }, ev.id || ""),
    el("td", {}, size(ev.body.size)),
    el("td", { class: "latency" }, latency(ev.latency_us)),
    el("td", { class: "outcome" }, outcomeText(ev)),
  );
  row.addEventListener("click", () => select(ev.seq));
  if (ev.seq === state.selected) row.classList.add("selected");
  return row;
}

function show(ev) {
  if (!matches(ev)) return;
  const body = $("messages").tBodies[0];
  body.append(messageRow(ev));
  if ($("follow").checked) body.lastChild.scrollIntoView({ block: "nearest" });
}

function redraw() {
  const body = $("messages").tBodies[0];
  body.replaceChildren(...state.events.filter(matches).map(messageRow));
  const select = $("method");
  const chosen = select.value;
  const known = new Set([...select.options].map((o) => o.value));
  for (const m of [...state.methods].sort()) {
    if (!known.has(m)) select.append(el("option", { value: m }, m));
  }
  select.value = chosen;
  counts();
}

function counts() {
  const shown = $("messages").tBodies[0].rows.length;
  $("shown").textContent = `${shown} shown of ${state.events.length}` + (state.paused ? `, ${state.held.length} held` : "");
  $("counts").textContent = `${state.events.length} messages` + (state.missed ? `, ${state.missed} missed (the page fell behind)` : "");
}

function arrived(ev) {
  enrich(ev);
  if (state.paused) {
    state.held.push(ev);
    if (state.held.length > MAX_ROWS) state.held.shift();
    counts();
    return;
  }
  keep(ev);
  if (ev.method && ![...$("method").options].some((o) => o.value === ev.method)) {
    $("method").append(el("option", { value: ev.method }, ev.method));
  }
  show(ev);
  if (!sessionKnown(ev.session)) loadSessions();
  counts();
}

function connect() {
  const source = new EventSource("/api/events");
  source.addEventListener("open", () => {
    $("status").textContent = "live";
    $("status").dataset.state = "live";
  });
  source.addEventListener("message", (e) => {
    const ev = parse(e.data);
    if (ev) arrived(ev);
  });
  source.addEventListener("missed", (e) => {
    const m = parse(e.data);
    state.missed += m ? m.count : 0;
    counts();
  });
  source.addEventListener("error", () => {
    $("status").textContent = "disconnected, retrying…";
    $("status").dataset.state = "down";
  });
}

// ---- the selected message ----

let traceUrl = null; // `--ui-trace-url`: where a trace id links to

// A trace id, linked to the trace viewer when one is configured. Ids are 32 hex digits (the
// feed and tapes write nothing else); anything else is shown, never linked.
function traceView(trace) {
  const id = el("code", {}, trace);
  if (traceUrl && /^[0-9a-f]{32}$/.test(trace)) {
    const link = el("a", { href: traceUrl.replaceAll("{trace_id}", trace), target: "_blank", rel: "noopener noreferrer", class: "trace-link" }, id);
    return el("div", { class: "trace" }, "trace ", link);
  }
  return el("div", { class: "trace" }, "trace ", id);
}

function jsonTree(value, key) {
  const label = key === undefined ? null : el("span", { class: "k" }, JSON.stringify(key) + ": ");
  if (value === null || typeof value !== "object") {
    const cls = typeof value === "string" ? "s" : typeof value === "number" ? "n" : "b";
    return el("div", { class: "row" }, label, el("span", { class: cls }, JSON.stringify(value)));
  }
  const entries = Array.isArray(value) ? value.map((v, i) => [i, v]) : Object.entries(value);
  const open = Array.isArray(value) ? "[" : "{";
  const close = Array.isArray(value) ? "]" : "}";
  const details = el("details", { open: true });
  details.append(el("summary", {}, label, `${open} ${entries.length} ${close}`));
  for (const [k, v] of entries) details.append(jsonTree(v, Array.isArray(value) ? undefined : k));
  return details;
}

function bodyView(body) {
  const value = body.truncated ? undefined : parse(body.text);
  if (value === undefined) {
    return el("pre", { class: "raw" }, body.text + (body.truncated ? "\n…(cut: the message is " + size(body.size) + ")" : ""));
  }
  return el("div", { class: "json" }, jsonTree(value));
}

// A line diff of two pretty-printed messages: lines only on the left are removed, only on the
// right added (longest common subsequence; messages shown here are at most 16 KiB).
function diffView(before, after) {
  const a = JSON.stringify(parse(before.text) ?? before.text, null, 2).split("\n");
  const b = JSON.stringify(parse(after.text) ?? after.text, null, 2).split("\n");
  const n = a.length, m = b.length;
  const lcs = Array.from({ length: n + 1 }, () => new Uint16Array(m + 1));
  for (let i = n - 1; i >= 0; i--)
    for (let j = m - 1; j >= 0; j--)
      lcs[i][j] = a[i] === b[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
  const left = el("pre", {}), right = el("pre", {});
  let i = 0, j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && a[i] === b[j]) {
      left.append(el("div", {}, a[i++]));
      right.append(el("div", {}, b[j++]));
    } else if (j < m && (i >= n || lcs[i][j + 1] >= lcs[i + 1][j])) {
      right.append(el("div", { class: "add" }, b[j++]));
    } else {
      left.append(el("div", { class: "del" }, a[i++]));
    }
  }
  return el("div", { class: "diff" }, left, right);
}

function select(seq) {
  state.selected = seq;
  for (const row of document.querySelectorAll("#messages tr.selected")) row.classList.remove("selected");
  const row = document.querySelector(`#messages tr[data-seq="${seq}"]`);
  if (row) row.classList.add("selected");
  const ev = state.events.find((e) => e.seq === seq);
  const detail = $("detail");
  if (!ev) {
    detail.replaceChildren(el("p", { class: "muted" }, "Select a message."));
    return;
  }
  const parts = [
    el("h3", {}, `${ev.kind} ${ev.method || ""} ${ev.name || ""}`.trim()),
    el("div", {}, `${time(ev.at_ms)} · ${ev.session} · ${ev.direction === "to_server" ? "client → server" : "server → client"} · ${size(ev.body.size)}` + (ev.latency_us != null ? ` · answered in ${latency(ev.latency_us)}` : "")),
  ];
  if (ev.trace) parts.push(traceView(ev.trace));
  if (ev.decisions.length) {
    parts.push(el("h3", {}, "What the proxy did"));
    for (const d of ev.decisions) {
      const details = Object.fromEntries(d.details);
      const audit = details["shadowcat.mode"] === "audit";
      const text = d.what === "rule"
        ? `${audit ? "would " : ""}${details["shadowcat.action"]} — rule ${details["shadowcat.rule"]}${audit ? " (audit)" : ""}`
        : d.what + " " + d.details.map(([k, v]) => `${k.replace("shadowcat.", "")}=${v}`).join(" ");
      parts.push(el("span", { class: "badge" + (audit ? " audit" : "") }, text));
    }
  }
  const error = ev.msg && ev.msg.error;
  if (error) {
    parts.push(el("h3", {}, "Error"));
    parts.push(el("div", {}, `${error.code}: ${error.message}`));
    if (error.data !== undefined) parts.push(el("div", { class: "json" }, jsonTree(error.data)));
  }
  if (ev.before) {
    parts.push(el("h3", {}, "Changed (as it came | as it went on)"));
    parts.push(diffView(ev.before, ev.body));
  }
  parts.push(el("h3", {}, ev.outcome === "modified" ? "As it went on" : "Message"));
  parts.push(bodyView(ev.body));
  if (ev.answer) {
    parts.push(el("h3", {}, "The proxy's answer"));
    parts.push(bodyView(ev.answer));
  }
  detail.replaceChildren(...parts);
}

// ---- a session's messages as a tape ----

// The messages this page saw of `session`, as a tape (docs/tapes.md, format 1): each as it went
// on, and an answer the proxy gave after the message it answers, as recording writes them.
// Bodies are as the page has them (masked); one cut at 16 KiB cannot be written whole and is
// left out (counted in `skipped`).
function exportTape(session) {
  const events = state.events.filter((e) => e.session === session);
  const row = sessionRows.get(session) || {};
  const first = events.length ? events[0].at_ms : Date.now();
  const id = Array.from(crypto.getRandomValues(new Uint8Array(8)), (b) => b.toString(16).padStart(2, "0")).join("");
  const lines = [{
    type: "header", format: 1, id, name: "exported from the live view",
    created: new Date(first).toISOString(), mode: row.transport === "stdio" ? "forward" : "reverse",
    clientTransport: row.transport || "stdio", serverTransport: /^https?:/.test(row.upstream || "") ? "http" : "stdio",
    upstream: row.upstream || undefined, session,
  }];
  let skipped = 0;
  let last = 0;
  const frame = (ev, body, dir) => {
    const msg = body.truncated ? undefined : parse(body.text);
    if (msg === undefined) { skipped++; return; }
    last = Math.max(last, (ev.at_ms - first) * 1000);
    lines.push({ type: "frame", t: last, dir, session, msg });
  };
  for (const ev of events) {
    const dir = ev.direction === "to_server" ? "c2s" : "s2c";
    frame(ev, ev.body, dir);
    if (ev.answer) frame(ev, ev.answer, dir === "c2s" ? "s2c" : "c2s");
  }
  lines.push({ type: "end", t: last, reason: "exported" });
  return { text: lines.map((l) => JSON.stringify(l)).join("\n") + "\n", frames: lines.length - 2, skipped };
}

function downloadTape() {
  if (!state.session) return;
  const tape = exportTape(state.session);
  const link = el("a", { href: URL.createObjectURL(new Blob([tape.text], { type: "application/jsonl" })), download: `${state.session}.jsonl` });
  document.body.append(link);
  link.click();
  link.remove();
  $("shown").textContent = `exported ${tape.frames} messages` + (tape.skipped ? ` (${tape.skipped} too large to export left out)` : "");
}
window.shadowcatExport = exportTape;

// ---- sessions ----

let sessionsLoading = null;
const knownSessions = new Set();
const sessionRows = new Map(); // digest -> its record

function sessionKnown(s) {
  return knownSessions.has(s);
}

function sessionRow(r, ended) {
  const msgs = (r.frames_from_client || 0) + (r.frames_from_server || 0);
  const client = r.client_info ? `${r.client_info.name || ""} ${r.client_info.version || ""}`.trim() : "";
  const row = el(
    "tr",
    { "data-session": r.session, class: r.session === state.session ? "selected" : "" },
    el("td", {}, r.session),
    el("td", {}, ended ? (r.end_reason ? `ended (${r.end_reason})` : "ended") : r.state),
    el("td", {}, r.transport),
    el("td", { title: r.upstream || "" }, r.upstream || ""),
    el("td", {}, client),
    el("td", {}, r.protocol_version || ""),
    el("td", {}, String(msgs)),
    el("td", {}, String(r.pending || 0)),
    el("td", {}, r.principal || ""),
  );
  row.addEventListener("click", () => {
    state.session = state.session === r.session ? null : r.session;
    for (const other of document.querySelectorAll("#sessions tr.selected")) other.classList.remove("selected");
    if (state.session) row.classList.add("selected");
    $("export").disabled = !state.session;
    redraw();
  });
  return row;
}

function loadSessions() {
  if (sessionsLoading) return sessionsLoading;
  sessionsLoading = fetch("/api/sessions")
    .then((r) => r.json())
    .then((data) => {
      knownSessions.clear();
      sessionRows.clear();
      const rows = [];
      for (const r of data.live) { knownSessions.add(r.session); sessionRows.set(r.session, r); rows.push(sessionRow(r, false)); }
      for (const r of data.ended) { knownSessions.add(r.session); sessionRows.set(r.session, r); rows.push(sessionRow(r, true)); }
      $("sessions").tBodies[0].replaceChildren(...rows);
    })
    .catch(() => {})
    .finally(() => { sessionsLoading = null; });
  return sessionsLoading;
}

// ---- tapes ----

function loadTapes() {
  fetch("/api/tapes")
    .then((r) => r.json())
    .then((tapes) => {
      state.tapeFiles = tapes.map((t) => t.file);
      $("tape-list").tBodies[0].replaceChildren(
        ...tapes.map((t) => {
          const row = el(
            "tr",
            { "data-file": t.file },
            el("td", {}, t.file),
            el("td", {}, t.name || ""),
            el("td", {}, t.created),
            el("td", {}, t.session),
            el("td", {}, String(t.frames)),
            el("td", {}, t.duration_ms < 1000 ? t.duration_ms + " ms" : (t.duration_ms / 1000).toFixed(1) + " s"),
            el("td", {}, t.end || "(no end)"),
          );
          row.addEventListener("click", () => openTape(t.file));
          return row;
        }),
      );
    })
    .catch(() => {});
}

function openTape(file) {
  fetch("/api/tapes/" + encodeURIComponent(file))
    .then((r) => r.json())
    .then((tape) => {
      state.tape = tape;
      $("tape").hidden = false;
      $("compare").hidden = true;
      const others = (state.tapeFiles || []).filter((f) => f !== tape.file);
      $("compare-with").replaceChildren(el("option", { value: "" }, "another tape…"), ...others.map((f) => el("option", { value: f }, f)));
      $("tape-title").textContent = `${tape.name || tape.file} (${tape.total} messages${tape.total > tape.frames.length ? `, first ${tape.frames.length} shown` : ""})`;
      $("tape-frames").tBodies[0].replaceChildren(
        ...tape.frames.map((f, i) => {
          const row = el(
            "tr",
            { "data-index": String(i) },
            el("td", {}, String(i + 1)),
            el("td", {}, (f.t / 1000).toFixed(1) + " ms"),
            el("td", {}, arrow(f.dir)),
            el("td", {}, f.kind),
            el("td", {}, f.method || ""),
            el("td", {}, f.id || ""),
            el("td", {}, size(f.bytes)),
            el("td", {}, latency(f.latency)),
          );
          row.addEventListener("click", () => step(i));
          return row;
        }),
      );
      step(0);
    })
    .catch(() => {});
}

function step(i) {
  const tape = state.tape;
  if (!tape || tape.frames.length === 0) return;
  state.tapePos = Math.max(0, Math.min(i, tape.frames.length - 1));
  const f = tape.frames[state.tapePos];
  for (const row of document.querySelectorAll("#tape-frames tr.selected")) row.classList.remove("selected");
  const row = document.querySelector(`#tape-frames tr[data-index="${state.tapePos}"]`);
  if (row) { row.classList.add("selected"); row.scrollIntoView({ block: "nearest" }); }
  $("tape-pos").textContent = `${state.tapePos + 1} / ${tape.frames.length}`;
  const parts = [
    el("h3", {}, `${f.kind} ${f.method || ""}`.trim()),
    el("div", {}, `${(f.t / 1000).toFixed(1)} ms · ${f.dir === "c2s" ? "client → server" : "server → client"} · ${size(f.bytes)}` + (f.latency != null ? ` · answered in ${latency(f.latency)}` : "")),
  ];
  if (f.trace) parts.push(traceView(f.trace));
  parts.push(bodyView({ text: f.body, truncated: f.truncated, size: f.bytes }));
  $("tape-detail").replaceChildren(...parts);
}

// ---- two tapes compared ----

// A value as text with object keys sorted and `_meta` left out: what two recordings of one
// request share whatever their ids, key order or trace context.
function stable(v) {
  if (v === null || typeof v !== "object") return JSON.stringify(v);
  if (Array.isArray(v)) return "[" + v.map(stable).join(",") + "]";
  return "{" + Object.keys(v).filter((k) => k !== "_meta").sort().map((k) => JSON.stringify(k) + ":" + stable(v[k])).join(",") + "}";
}

// A tape's client requests in order, each with its answer (`null` if none came).
function answersOf(tape) {
  const out = [];
  const open = new Map();
  for (const f of tape.frames) {
    const m = f.truncated ? undefined : parse(f.body);
    if (!m || m.id === undefined || m.id === null) continue;
    if (f.dir === "c2s" && m.method) {
      const entry = { key: m.method + " " + stable(m.params), method: m.method, name: targetOf(m), answer: null };
      open.set(JSON.stringify(m.id), entry);
      out.push(entry);
    } else if (f.dir === "s2c" && !m.method) {
      const entry = open.get(JSON.stringify(m.id));
      if (entry) { entry.answer = m; open.delete(JSON.stringify(m.id)); }
    }
  }
  return out;
}

// What an answer says, without its id.
function said(answer) {
  if (!answer) return null;
  const rest = Object.assign({}, answer);
  delete rest.id;
  delete rest.jsonrpc;
  return rest;
}

// Each request of `a` paired with the first unpaired one of `b` with the same method and
// params (ids and `_meta` aside), as `tape verify` pairs a tape with a live server's answers.
function compareTapes(a, b) {
  const right = answersOf(b);
  const used = new Set();
  return answersOf(a).map((l) => {
    const i = right.findIndex((r, j) => !used.has(j) && r.key === l.key);
    if (i < 0) return { l, r: null, status: "only here" };
    used.add(i);
    const r = right[i];
    return { l, r, status: stable(said(l.answer)) === stable(said(r.answer)) ? "same" : "changed" };
  });
}

function compareWith(file) {
  const box = $("compare");
  if (!file || !state.tape) { box.hidden = true; return; }
  fetch("/api/tapes/" + encodeURIComponent(file))
    .then((r) => r.json())
    .then((other) => {
      const rows = compareTapes(state.tape, other);
      const count = (s) => rows.filter((r) => r.status === s).length;
      const parts = [el("div", { id: "compare-summary" }, `against ${other.file}: ${count("same")} same, ${count("changed")} changed, ${count("only here")} not in it`)];
      for (const row of rows.filter((r) => r.status !== "same")) {
        parts.push(el("h3", { class: row.status === "changed" ? "changed" : "" }, `${row.status}: ${row.l.method} ${row.l.name}`.trim()));
        if (row.r) {
          parts.push(diffView({ text: JSON.stringify(said(row.l.answer)) }, { text: JSON.stringify(said(row.r.answer)) }));
        }
      }
      box.replaceChildren(...parts);
      box.hidden = false;
    })
    .catch(() => {});
}

// ---- wiring ----

function tab(name) {
  $("live").hidden = name !== "live";
  $("tapes").hidden = name !== "tapes";
  for (const [id, on] of [["tab-live", name === "live"], ["tab-tapes", name === "tapes"]]) {
    $(id).classList.toggle("active", on);
    $(id).setAttribute("aria-pressed", String(on));
  }
  if (name === "tapes") loadTapes();
}

document.addEventListener("DOMContentLoaded", () => {
  $("tab-live").addEventListener("click", () => tab("live"));
  $("tab-tapes").addEventListener("click", () => tab("tapes"));
  $("refresh").addEventListener("click", loadSessions);
  $("tapes-refresh").addEventListener("click", loadTapes);
  for (const id of ["search", "method", "status-filter", "min-latency"]) $(id).addEventListener("input", redraw);
  $("pause").addEventListener("click", () => {
    state.paused = !state.paused;
    $("pause").textContent = state.paused ? "Resume" : "Pause";
    $("pause").setAttribute("aria-pressed", String(state.paused));
    if (!state.paused) {
      for (const ev of state.held) keep(ev);
      state.held = [];
      redraw();
    }
    counts();
  });
  $("clear").addEventListener("click", () => {
    state.events = [];
    state.selected = null;
    redraw();
    select(null);
  });
  $("export").addEventListener("click", downloadTape);
  $("compare-with").addEventListener("input", () => compareWith($("compare-with").value));
  $("tape-prev").addEventListener("click", () => step(state.tapePos - 1));
  $("tape-next").addEventListener("click", () => step(state.tapePos + 1));
  document.addEventListener("keydown", (e) => {
    if ($("tapes").hidden || e.target.tagName === "INPUT") return;
    if (e.key === "ArrowDown" || e.key === "j") step(state.tapePos + 1);
    if (e.key === "ArrowUp" || e.key === "k") step(state.tapePos - 1);
  });
  fetch("/api/config").then((r) => r.json()).then((c) => { traceUrl = c.trace_url || null; }).catch(() => {});
  loadSessions();
  setInterval(loadSessions, 2000);
  connect();
  counts();
});
