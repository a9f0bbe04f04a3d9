// Live calls dashboard: server-sent events in, a table of calls and one call's detail out.
// Updates arrive coalesced from the server and are applied at most once per animation frame.
"use strict";

const LABELS = ["POSITIVE", "NEUTRAL", "NEGATIVE"];
const COLORS = { POSITIVE: "#16a34a", NEUTRAL: "#64748b", NEGATIVE: "#dc2626" };
const calls = new Map(); // id -> summary
const rows = new Map(); // id -> <tr>
let selected = null;
let clockSkewMs = 0; // server clock - browser clock
let pending = null; // {reset, calls: Map, removed: Set}
let detailLoading = false;
let detailStale = false;

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "style") node.setAttribute("style", value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  return node;
}

function ago(ms) {
  const s = Math.max(0, Math.round((Date.now() + clockSkewMs - ms) / 1000));
  if (s < 60) return `${s} s ago`;
  const m = Math.floor(s / 60);
  return `${m} min ${s % 60} s ago`;
}

// --- incoming events ------------------------------------------------------------------------

function queue(reset, changed, removed) {
  if (!pending || reset) pending = { reset, calls: new Map(), removed: new Set() };
  for (const call of changed) { pending.calls.set(call.id, call); pending.removed.delete(call.id); }
  for (const id of removed) { pending.calls.delete(id); pending.removed.add(id); }
  requestAnimationFrame(flush);
}

function connect() {
  const source = new EventSource("/api/stream");
  source.addEventListener("snapshot", (event) => {
    const data = JSON.parse(event.data);
    clockSkewMs = data.now_ms - Date.now();
    $("topic").textContent = data.topic || "";
    setConnection("live");
    queue(true, data.calls, []);
  });
  source.addEventListener("update", (event) => {
    const data = JSON.parse(event.data);
    clockSkewMs = data.now_ms - Date.now();
    queue(false, data.calls, data.removed);
  });
  source.onopen = () => setConnection("live");
  source.onerror = () => setConnection("offline"); // EventSource reconnects by itself
}

function setConnection(state) {
  const conn = $("conn");
  conn.dataset.state = state;
  conn.textContent = state === "live" ? "live" : state === "offline" ? "reconnecting" : "connecting";
}

// --- table ----------------------------------------------------------------------------------

function flush() {
  if (!pending) return;
  const { reset, calls: changed, removed } = pending;
  pending = null;
  const body = $("call-rows");
  if (reset) {
    for (const id of [...calls.keys()]) if (!changed.has(id)) removeCall(id);
  }
  for (const id of removed) removeCall(id);
  for (const call of changed.values()) {
    const known = calls.has(call.id);
    calls.set(call.id, call);
    let row = rows.get(call.id);
    if (!row) {
      row = el("tr", { "data-call-id": call.id });
      row.addEventListener("click", () => select(call.id));
      rows.set(call.id, row);
    }
    fillRow(row, call);
    if (known && !reset) { row.classList.remove("flash"); void row.offsetWidth; row.classList.add("flash"); }
    if (call.id === selected) loadDetail();
  }
  if (changed.size) order(body);
  updateCounts();
}

// The most recently active call on top; rows already in place are not touched.
function order(body) {
  const sorted = [...calls.values()].sort((a, b) => b.last_seen_ms - a.last_seen_ms || (a.id < b.id ? -1 : 1));
  let cursor = body.firstChild;
  for (const call of sorted) {
    const row = rows.get(call.id);
    if (row === cursor) cursor = cursor.nextSibling;
    else body.insertBefore(row, cursor);
  }
}

function removeCall(id) {
  calls.delete(id);
  const row = rows.get(id);
  if (row) row.remove();
  rows.delete(id);
  if (id === selected) closeDetail();
}

function fillRow(row, call) {
  const latest = call.latest;
  row.dataset.label = latest.label;
  row.classList.toggle("selected", call.id === selected);
  const meter = el("span", { class: "meter" }, meterBar(latest.polarity, latest.label));
  row.replaceChildren(
    el("td", { class: "c-call" }, el("div", { class: "call-id" }, call.id),
      el("div", { class: "user" }, call.user || "—", call.ended ? el("span", { class: "ended" }, "ended") : "")),
    el("td", { class: "c-text" }, latest.text),
    el("td", { class: "c-sent" }, el("span", { class: `badge ${latest.label}` }, latest.label.toLowerCase()), meter),
    el("td", { class: "c-keys" }, ...call.keywords.slice(0, 4).map((k) => el("span", { class: "chip" }, k))),
    el("td", { class: "c-age", "data-seen": call.last_seen_ms }, ago(call.last_seen_ms)),
  );
}

function meterBar(polarity, label) {
  const width = Math.abs(polarity) * 50;
  const left = polarity >= 0 ? 50 : 50 - width;
  return el("i", { style: `left:${left}%;width:${Math.max(width, 2)}%;background:${COLORS[label]}` });
}

function updateCounts() {
  const counts = { POSITIVE: 0, NEUTRAL: 0, NEGATIVE: 0 };
  for (const call of calls.values()) counts[call.latest.label] += 1;
  $("count-all").textContent = calls.size;
  for (const label of LABELS) $(`count-${label.toLowerCase()}`).textContent = counts[label];
  $("empty").hidden = calls.size > 0;
}

function tickAges() {
  for (const cell of document.querySelectorAll("td.c-age")) cell.textContent = ago(Number(cell.dataset.seen));
}

// --- one call -------------------------------------------------------------------------------

function select(id) {
  selected = id;
  for (const [rowId, row] of rows) row.classList.toggle("selected", rowId === id);
  $("detail").hidden = false;
  document.querySelector(".layout").classList.add("with-detail");
  loadDetail();
}

function closeDetail() {
  selected = null;
  $("detail").hidden = true;
  document.querySelector(".layout").classList.remove("with-detail");
  for (const row of rows.values()) row.classList.remove("selected");
}

async function loadDetail() {
  if (detailLoading) { detailStale = true; return; }
  detailLoading = true;
  const id = selected;
  try {
    const response = await fetch(`/api/calls/${encodeURIComponent(id)}`);
    if (response.ok && id === selected) renderDetail(await response.json());
  } finally {
    detailLoading = false;
    if (detailStale && selected) { detailStale = false; loadDetail(); }
  }
}

function renderDetail(call) {
  $("detail-title").textContent = call.id;
  const mean = call.mean_polarity >= 0 ? `+${call.mean_polarity.toFixed(2)}` : call.mean_polarity.toFixed(2);
  $("detail-sub").textContent = `${call.user || "no user id"} · ${call.turns} turns · mean polarity ${mean}`;
  $("timeline").replaceChildren(timeline(call.transcript));
  $("transcript").replaceChildren(...call.transcript.map(turnItem));
  renderCallView(call);
}

// --- a call with speakers: two lanes, the conversation, and the summary once it ended ----------

function clock(ms) {
  const s = Math.round(ms / 1000);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

function renderCallView(call) {
  const speakers = call.speakers || [];
  const stereo = speakers.length > 0 && call.transcript.some((t) => t.speaker);
  $("call-view").hidden = !stereo;
  $("transcript-section").hidden = stereo;
  if (stereo) {
    $("lanes").replaceChildren(lanes(call, speakers));
    $("conversation").replaceChildren(...call.transcript.map((t) => bubble(t, speakers)));
  }
  const summary = call.call_summary;
  $("summary-card").hidden = !summary;
  if (summary) $("summary-card").replaceChildren(...summaryCard(summary));
  else $("summary-card").replaceChildren();
}

function lanes(call, speakers) {
  const W = 560, L = 78, R = 8, LANE = 30, GAP = 8, T = 4, B = 18;
  const H = T + speakers.length * (LANE + GAP) + B;
  const end = Math.max(1, call.call_summary ? call.call_summary.duration_ms : 0, ...call.transcript.map((t) => t.end_ms));
  const x = (ms) => L + (ms / end) * (W - L - R);
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "turns per speaker over time" });
  speakers.forEach((speaker, i) => {
    const y = T + i * (LANE + GAP);
    chart.append(svg("rect", { class: `lane lane-${i % 2}`, x: L, y, width: W - L - R, height: LANE, rx: 4, "data-speaker": speaker }));
    const label = svg("text", { class: "lane-label", x: L - 8, y: y + LANE / 2 + 4, "text-anchor": "end" });
    label.textContent = speaker;
    chart.append(label);
  });
  for (const turn of call.transcript) {
    const lane = speakers.indexOf(turn.speaker);
    if (lane < 0) continue;
    const bar = svg("rect", {
      class: `turn-bar ${turn.label}`, x: x(turn.start_ms), y: T + lane * (LANE + GAP) + 4,
      width: Math.max(2, x(turn.end_ms) - x(turn.start_ms)), height: LANE - 8, rx: 3,
      fill: COLORS[turn.label], "data-speaker": turn.speaker, "data-utterance": turn.utterance, "data-label": turn.label,
    });
    const tip = svg("title");
    tip.textContent = `${turn.speaker} ${clock(turn.start_ms)} ${turn.label.toLowerCase()}: ${turn.text}`;
    bar.append(tip);
    chart.append(bar);
  }
  for (let i = 0; i <= 4; i += 1) {
    const tick = svg("text", { x: L + (i * (W - L - R)) / 4, y: H - 4, "text-anchor": "middle" });
    tick.textContent = clock((i * end) / 4);
    chart.append(tick);
  }
  return chart;
}

function bubble(turn, speakers) {
  const lane = Math.max(0, speakers.indexOf(turn.speaker));
  return el("li", { class: `turn lane-${lane % 2}`, "data-speaker": turn.speaker || "", "data-utterance": turn.utterance, "data-label": turn.label },
    el("div", { class: "who" }, el("b", {}, turn.speaker || "—"), ` ${clock(turn.start_ms)} `,
      el("span", { class: `badge ${turn.label}` }, turn.label.toLowerCase())),
    explained(turn));
}

function moodBadge(mood) {
  if (!mood) return el("span", { class: "badge none" }, "—");
  const sign = mood.polarity >= 0 ? "+" : "";
  return el("span", { class: `badge ${mood.label}`, title: `mean polarity ${sign}${mood.polarity.toFixed(2)} over ${mood.turns} turns` },
    `${mood.label.toLowerCase()} ${sign}${mood.polarity.toFixed(2)}`);
}

function summaryCard(summary) {
  const head = el("div", { class: "summary-head" }, el("h3", {}, "Call summary"),
    el("p", { class: "muted" }, `${clock(summary.duration_ms)} · silence ${Math.round(summary.silence_share * 100)} % · `
      + `${summary.finals} of ${summary.finals_expected} finals · ended ${summary.reason}`));
  const rows = summary.speakers.map((s) => el("tr", { "data-speaker": s.speaker },
    el("td", {}, el("b", {}, s.speaker)), el("td", {}, s.turns), el("td", {}, `${clock(s.talk_ms)} (${Math.round(s.talk_share * 100)} %)`),
    el("td", { class: "overall" }, moodBadge(s.sentiment.overall)),
    el("td", {}, moodBadge(s.sentiment.first_third), " → ", moodBadge(s.sentiment.last_third))));
  const table = el("table", { class: "speakers" },
    el("thead", {}, el("tr", {}, ...["Speaker", "Turns", "Talk time", "Overall", "First → last third"].map((h) => el("th", {}, h)))),
    el("tbody", {}, ...rows));
  const moments = summary.speakers.filter((s) => s.most_negative).map((s) =>
    el("div", { class: "moment", "data-speaker": s.speaker },
      el("div", { class: "who" }, `Most negative · ${s.speaker} at ${clock(s.most_negative.start_ms)} `,
        el("span", { class: `badge ${s.most_negative.label}` }, s.most_negative.polarity.toFixed(2))),
      explained(s.most_negative)));
  const extract = el("ol", { class: "extract" }, ...summary.summary.sentences.map((s) =>
    el("li", { "data-utterance": s.utterance }, el("b", {}, `${s.speaker} ${clock(s.start_ms)}`), ` ${s.text}`)));
  return [head, table, ...moments, el("h4", {}, "Extractive summary (the call's most central sentences)"), extract];
}

function timeline(turns) {
  const W = 560, H = 180, L = 34, R = 12, T = 12, B = 24;
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "sentiment per turn" });
  const y = (p) => T + ((1 - p) / 2) * (H - T - B);
  const x = (i) => L + (turns.length < 2 ? (W - L - R) / 2 : (i * (W - L - R)) / (turns.length - 1));
  chart.append(svg("rect", { x: L, y: y(1), width: W - L - R, height: y(0) - y(1), fill: "#16a34a", "fill-opacity": 0.05 }));
  chart.append(svg("rect", { x: L, y: y(0), width: W - L - R, height: y(-1) - y(0), fill: "#dc2626", "fill-opacity": 0.05 }));
  for (const p of [1, 0.5, 0, -0.5, -1]) {
    chart.append(svg("line", { class: p === 0 ? "axis" : "grid", x1: L, x2: W - R, y1: y(p), y2: y(p) }));
    const label = svg("text", { x: L - 6, y: y(p) + 3, "text-anchor": "end" });
    label.textContent = p > 0 ? `+${p}` : `${p}`;
    chart.append(label);
  }
  const points = turns.map((t, i) => `${x(i)},${y(t.polarity)}`).join(" ");
  if (turns.length > 1) chart.append(svg("polyline", { class: "line", points }));
  turns.forEach((t, i) => {
    const dot = svg("circle", { cx: x(i), cy: y(t.polarity), r: 5, fill: COLORS[t.label], stroke: "#fff", "stroke-width": 1.5, "data-label": t.label });
    const tip = svg("title");
    tip.textContent = `#${t.utterance} ${t.label.toLowerCase()} (${t.polarity.toFixed(2)}): ${t.text}`;
    dot.append(tip);
    chart.append(dot);
    if (turns.length <= 30 || i % Math.ceil(turns.length / 30) === 0) {
      const tick = svg("text", { x: x(i), y: H - 8, "text-anchor": "middle" });
      tick.textContent = t.utterance;
      chart.append(tick);
    }
  });
  return chart;
}

function turnItem(turn) {
  const text = explained(turn);
  const meta = el("div", { class: "meta" }, el("span", { class: `badge ${turn.label}` }, turn.label.toLowerCase()),
    ` polarity ${turn.polarity.toFixed(2)}`, turn.keywords.length ? ` · ${turn.keywords.join(", ")}` : "");
  return el("li", { "data-utterance": turn.utterance }, el("span", { class: "n" }, `#${turn.utterance}`), el("div", {}, text, meta));
}

// A turn's text with its explaining words highlighted (green pushes positive, red negative).
function explained(turn) {
  const weights = new Map(turn.explanation.map((w) => [w.index, w.weight]));
  const text = el("div", { class: "text" });
  turn.text.trim().split(/\s+/).forEach((token, i) => {
    if (i > 0) text.append(" ");
    const weight = weights.get(i);
    if (weight === undefined) { text.append(token); return; }
    const alpha = (0.18 + Math.min(Math.abs(weight), 1) * 0.55).toFixed(2);
    text.append(el("mark", {
      class: `expl ${weight >= 0 ? "w-pos" : "w-neg"}`, style: `--a:${alpha}`,
      title: `weight ${weight >= 0 ? "+" : ""}${weight.toFixed(2)}`,
    }, token));
  });
  return text;
}

$("detail-close").addEventListener("click", closeDetail);
setInterval(tickAges, 1000);
connect();
