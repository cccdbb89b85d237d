// tongban operator console: one plain ES module, no framework, no build step.
// Data comes only from this console's own /api (same origin); every text is set with
// textContent, never parsed as HTML.

const REFRESH_MS = 5000;
const CASE_POLL_MS = 2000;
const MAX_LINES = 1000;
const TERMINAL = new Set(["closed", "withdrawn", "terminated", "revoked"]);

const $ = (id) => document.getElementById(id);

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null) continue;
    if (key === "className") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "testid") node.dataset.testid = value;
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

const cityFormat = new Intl.DateTimeFormat("sv-SE", {
  timeZone: "Asia/Shanghai", year: "numeric", month: "2-digit", day: "2-digit",
  hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false,
});
const cityTime = (iso) => (iso ? cityFormat.format(new Date(iso)) : "");
// With milliseconds: one case's steps often fall within the same second.
function cityTimeMs(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  return `${cityFormat.format(date)}.${String(date.getMilliseconds()).padStart(3, "0")}`;
}

async function getJSON(url) {
  const answer = await fetch(url, { headers: { Accept: "application/json" } });
  let body = null;
  try { body = await answer.json(); } catch { body = null; }
  return { status: answer.status, body };
}

// A case across regions (DESIGN.md §9): "→ LZ 澜州市" taken here and decided there,
// "← LZ 澜州市" adopted from there.
function crossRegion(marker) {
  if (!marker) return "";
  const arrow = marker.role === "origin" ? "→" : "←";
  const city = [marker.partner, marker.partner_name].filter(Boolean).join(" ");
  return el("span", {
    className: "xregion", testid: "cross-region",
    title: marker.role === "origin" ? "taken here, decided by the partner region" : "adopted from the partner region",
  }, `${arrow} ${city}`);
}

function caseLink(caseId) {
  if (!caseId) return "";
  return el("a", { className: "case", href: `#case=${encodeURIComponent(caseId)}`, testid: "case-link" }, caseId);
}

// --------------------------------------------------------------------------- tabs

const TABS = ["stream", "case", "bundles", "sla", "triage", "dlq", "lag", "links"];
let currentTab = "stream";

function showTab(name) {
  currentTab = TABS.includes(name) ? name : "stream";
  for (const section of document.querySelectorAll("section[data-view]")) {
    section.hidden = section.dataset.view !== currentTab;
  }
  for (const link of document.querySelectorAll("nav a[data-tab]")) {
    if (link.dataset.tab === currentTab) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

function route() {
  const hash = decodeURIComponent(location.hash.slice(1));
  if (hash.startsWith("case=")) {
    const caseId = hash.slice(5);
    showTab("case");
    $("case-form").elements.case.value = caseId;
    loadCase(caseId);
  } else if (hash.startsWith("bundle=")) {
    showTab("bundles");
    bundles.open.add(hash.slice(7));
    refreshBundles();
  } else {
    showTab(hash || "stream");
  }
}

// --------------------------------------------------------------------------- live stream

const stream = {
  source: null, paused: false, resumeFrom: null, retry: null,
  seen: new Set(), order: [], shown: 0,
};

function setStatus(state, text) {
  const badge = $("stream-status");
  badge.dataset.state = state;
  badge.textContent = text || state;
}

function streamParams(from) {
  const params = new URLSearchParams();
  const form = $("stream-filters");
  for (const name of ["case", "type", "department", "office", "district", "path", "bundle"]) {
    const value = form.elements[name].value.trim();
    if (value) params.set(name, value);
  }
  const start = from || form.elements.from.value;  // a datetime-local value is city time
  if (start) params.set("from", start);
  return params;
}

function connect(from) {
  clearTimeout(stream.retry);
  if (stream.source) stream.source.close();
  setStatus("connecting");
  const source = new EventSource(`/api/stream?${streamParams(from)}`);
  stream.source = source;
  source.addEventListener("ready", (event) => {
    const ready = JSON.parse(event.data);
    stream.resumeFrom = stream.resumeFrom || ready.now;
    const filters = Object.entries(ready.filters).map(([k, v]) => `${k}=${v.join(",")}`).join(" ");
    setStatus("live", `live · ${ready.partitions} partitions${filters ? " · " + filters : ""}`);
  });
  source.addEventListener("problem", (event) => {
    setStatus("error", `stream: ${JSON.parse(event.data).detail}`);
  });
  source.onmessage = (event) => addLine(JSON.parse(event.data));
  source.onerror = () => {
    source.close();
    if (stream.source !== source || stream.paused) return;
    if ($("stream-status").dataset.state !== "error") setStatus("reconnecting");
    stream.retry = setTimeout(() => connect(stream.resumeFrom), 3000);
  };
}

function addLine(item) {
  if (stream.seen.has(item.id)) return;  // a reconnect replays from the last event's time
  stream.seen.add(item.id);
  stream.order.push(item.id);
  if (stream.order.length > 4 * MAX_LINES) stream.seen.delete(stream.order.shift());
  if (item.time) stream.resumeFrom = item.time;

  const facts = item.facts || {};
  const what = item.family === "dlq" && item.dlq && item.dlq.reason
    ? `dead letter (${item.dlq.source || "?"}): ${item.dlq.reason}` : item.summary;
  const row = el("tr", {
    className: `fam-${item.family}`,
    testid: "stream-line",
    title: `${item.type || "unreadable"} · ${item.topic}/${item.partition}@${item.offset} · ${item.source || ""}`,
    dataset: {
      case: item.case_id || "", type: item.type || "", family: item.family,
      offices: (facts.offices || []).join(","), departments: (facts.departments || []).join(","),
      districts: (facts.districts || []).join(","), path: facts.path || "",
      bundle: item.bundle_id || "",
      partner: (item.cross_region && item.cross_region.partner) || "",
    },
  },
  el("td", {}, cityTimeMs(item.time).slice(5)),
  el("td", {}, item.short_type),
  el("td", {}, caseLink(item.case_id)),
  el("td", {}, (facts.departments || []).join(" ")),
  el("td", {}, facts.path || ""),
  el("td", {}, (facts.offices || []).join(" ")),
  el("td", {}, crossRegion(item.cross_region)),
  el("td", { className: "what" }, what || ""));

  const box = $("stream-box");
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  const body = $("stream-lines");
  body.append(row);
  while (body.rows.length > MAX_LINES) body.deleteRow(0);
  stream.shown += 1;
  $("stream-count").textContent = `${stream.shown} events`;
  if (atBottom) box.scrollTop = box.scrollHeight;
}

function clearLines() {
  $("stream-lines").replaceChildren();
  stream.shown = 0;
  $("stream-count").textContent = "0 events";
}

function wireStream() {
  $("stream-filters").addEventListener("submit", (event) => {
    event.preventDefault();
    stream.paused = false;
    stream.resumeFrom = null;
    $("stream-pause").textContent = "Pause";
    clearLines();
    connect(null);
  });
  $("stream-pause").addEventListener("click", () => {
    stream.paused = !stream.paused;
    $("stream-pause").textContent = stream.paused ? "Resume" : "Pause";
    if (stream.paused) {
      clearTimeout(stream.retry);
      if (stream.source) stream.source.close();
      setStatus("paused");
    } else {
      connect(stream.resumeFrom);  // catch up from where it stopped
    }
  });
  $("stream-clear").addEventListener("click", clearLines);
}

// --------------------------------------------------------------------------- case timeline

const caseState = { id: null, status: null, timer: null };

function fact(name, ...value) {
  return [el("dt", {}, name), el("dd", { testid: `case-${name.replace(/\s+/g, "-")}` }, ...value)];
}

async function loadCase(caseId) {
  clearTimeout(caseState.timer);
  if (caseState.id !== caseId) {
    caseState.id = caseId;
    caseState.status = null;
    $("case-result").hidden = true;
  }
  if (!caseId) return;
  const message = $("case-message");
  let answer;
  try {
    answer = await getJSON(`/api/cases/${encodeURIComponent(caseId)}`);
  } catch (error) {
    answer = { status: 0, body: { detail: String(error) } };
  }
  if (caseState.id !== caseId) return;  // another case was asked for meanwhile
  if (answer.status !== 200) {
    const body = answer.body || {};
    message.textContent = answer.status === 404
      ? `No case ${caseId} at intake (yet).`
      : `Cannot show ${caseId}: ${body.detail || body.title || answer.status}`;
    scheduleCase(caseId);
    return;
  }
  message.textContent = "";
  renderCase(answer.body);
  caseState.status = answer.body.status;
  scheduleCase(caseId);
}

function scheduleCase(caseId) {
  const done = TERMINAL.has(caseState.status);
  caseState.timer = setTimeout(() => {
    if (currentTab === "case" && caseState.id === caseId && document.visibilityState === "visible") loadCase(caseId);
    else scheduleCase(caseId);
  }, done ? REFRESH_MS * 2 : CASE_POLL_MS);
}

function renderCase(view) {
  const route = view.route;
  const applicant = view.applicant;
  $("case-facts").replaceChildren(
    ...fact("case", view.case_id),
    ...fact("status", el("span", { className: `status status-${view.status}`, testid: "case-status-value" }, view.status)),
    ...fact("item", view.item_code),
    ...(view.bundle_id ? fact("bundle", bundleLink(view.bundle_id)) : []),
    ...(view.cross_region ? fact("across regions", crossRegion(view.cross_region), view.cross_region.role === "origin"
      ? " (taken here, decided there)" : " (adopted from there)") : []),
    ...fact("taken", `${view.channel || ""}${view.office_code ? " at " + view.office_code : ""}`),
    ...fact("route", route
      ? `${route.path} · ${route.level} · ${route.handled_by}${route.same_city ? " · same city" : ""} · rule ${route.rule} · catalog v${route.catalog_version}`
      : "not routed"),
    ...(route && route.explanation ? fact("why", route.explanation) : []),
    ...(view.failure ? fact("failure", `${view.failure.code}: ${view.failure.explanation}`) : []),
    ...fact("deadline", view.deadline || (route ? "unknown or not yet accepted" : "")),
    ...(view.missing_materials && view.missing_materials.length ? fact("missing", view.missing_materials.join(", ")) : []),
    ...(applicant ? fact("applicant", `${applicant.name} · ${applicant.id_number} · ${applicant.division_code} (masked)`) : []),
    ...fewerMaterials(view),
  );
  $("timeline-rows").replaceChildren(...view.timeline.map((entry, i) => el("tr",
    { testid: "timeline-row", dataset: { type: entry.type } },
    el("td", { className: "num" }, i + 1),
    el("td", {}, entry.type),
    el("td", {}, cityTimeMs(entry.time)),
    el("td", {}, entry.source),
    el("td", {}, entry.note || ""))));
  $("case-result").hidden = false;
}

// Fewer materials (减材料, DESIGN.md §7): the e-licences that stood in for materials (from
// approval's view), what was deferred and by when, what a held approval waits for, and the
// verification of commitments once approval's view carries it.
function fewerMaterials(view) {
  const approval = view.approval && view.approval.available ? view.approval : null;
  const facts = [];
  const licensed = approval ? approval.licensed_materials || [] : [];
  if (licensed.length) {
    facts.push(...fact("e-licences", ...licensed.map((l) => el("div",
      { testid: "case-licence", dataset: { material: l.material } }, `${l.material} ← ${l.license_id}`))));
  }
  const deferred = view.deferred_materials || [];
  if (deferred.length) {
    facts.push(...fact("deferred", ...deferred.map((d) => el("div",
      { testid: "case-deferral", dataset: { code: d.code, received: String(d.received) } },
      `${d.code} · due ${d.due || "at acceptance"} · ${d.received ? "received" : "not received"}`))));
  }
  if (approval && view.status === "approval_held" && (approval.deferred_outstanding || []).length) {
    facts.push(...fact("held for", `approved ${cityTime(approval.decided_at)}, published when ${approval.deferred_outstanding.join(", ")} arrive; terminated after ${approval.deferred_due || "the due day"}`));
  }
  if (approval && approval.verification) {
    const v = approval.verification;
    facts.push(...fact("verification", el("div", { dataset: { status: v.status } },
      [`${(v.committed_materials || []).join(", ")} committed (告知承诺)`, v.status, v.due && `due ${v.due}`].filter(Boolean).join(" · "))));
  }
  if (view.approval && !view.approval.available && view.route) {
    facts.push(...fact("at approval", view.approval.reason));
  }
  return facts;
}

function wireCase() {
  $("case-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const caseId = event.target.elements.case.value.trim();
    if (caseId) location.hash = `case=${encodeURIComponent(caseId)}`;
  });
}

// --------------------------------------------------------------------------- bundles

// One row per bundle (一件事); a click opens it into its members, as intake sees them now.
const bundles = { open: new Set(), views: new Map() };

function bundleLink(bundleId) {
  return el("a", { className: "case", href: `#bundle=${encodeURIComponent(bundleId)}`, testid: "bundle-link" }, bundleId);
}

async function refreshBundles() {
  const { body } = await getJSON("/api/bundles");
  if (!body || !body.available) { unavailable("bundles-message", body); badge("bundles-badge", ""); return; }
  $("bundles-message").textContent = body.rows.length ? "" : "No bundle seen on bundle.v1 yet.";
  await Promise.all([...bundles.open].map(loadBundle));
  const rows = [];
  for (const b of body.rows) {
    const open = bundles.open.has(b.bundle_id);
    rows.push(el("tr", {
      testid: "bundle-row", className: `bundle ${b.alert === "overdue" ? "bad" : b.alert ? "warn" : ""}`,
      dataset: { bundle: b.bundle_id, status: b.status, open: String(open) },
      title: "open or close its members",
    },
    el("td", {}, open ? "▾" : "▸"),
    el("td", {}, b.bundle_id),
    el("td", {}, `${b.bundle_code} ${b.bundle_name}`),
    el("td", {}, b.office_code || b.channel || ""),
    el("td", {}, b.lead || ""),
    el("td", { className: "num" }, `${b.members_done}/${b.members.length}`),
    el("td", {}, el("span", { className: `status status-${b.status}` }, b.status), b.rating ? ` · ${b.rating}` : ""),
    el("td", {}, cityTime(b.submitted_at))));
    if (open) rows.push(...memberRows(b));
  }
  $("bundle-rows").replaceChildren(...rows);
  for (const row of $("bundle-rows").querySelectorAll("tr[data-bundle]")) {
    row.addEventListener("click", () => toggleBundle(row.dataset.bundle));
  }
  badge("bundles-badge", String(body.rows.filter((b) => b.status === "in_progress").length));
}

async function loadBundle(bundleId) {
  const { status, body } = await getJSON(`/api/bundles/${encodeURIComponent(bundleId)}`).catch(() => ({ status: 0, body: null }));
  bundles.views.set(bundleId, status === 200 ? body : { problem: (body && (body.detail || body.title)) || `intake answered ${status}` });
}

// The members of an open bundle: intake's view (routes, deadline) when it answers, else what
// the board saw on the topics.
function memberRows(board) {
  const view = bundles.views.get(board.bundle_id) || {};
  const members = view.members || board.members;
  const rows = members.map((m) => el("tr", { testid: "bundle-member", className: "member", dataset: { case: m.case_id, status: m.status } },
    el("td", {}),
    el("td", {}, caseLink(m.case_id)),
    el("td", {}, m.item_code),
    el("td", {}, m.route ? `${m.route.level} · ${m.route.path}` : ""),
    el("td", {}, m.route ? m.route.handled_by : ""),
    el("td", {}, (m.after || []).length ? `after ${m.after.join(", ")}` : ""),
    el("td", {}, el("span", { className: `status status-${m.status}` }, m.status)),
    el("td", {}, m.deadline || "")));
  const note = view.problem ? `intake: ${view.problem}`
    : `deadline ${view.deadline || "not yet (no member accepted)"}${(view.excluded || board.excluded || []).length ? ` · left out by the answers: ${(view.excluded || board.excluded).join(", ")}` : ""}`;
  rows.push(el("tr", { className: "member", testid: "bundle-note" }, el("td", {}), el("td", { colspan: 7 }, note)));
  return rows;
}

function toggleBundle(bundleId) {
  if (bundles.open.has(bundleId)) bundles.open.delete(bundleId);
  else bundles.open.add(bundleId);
  refreshBundles();
}

// --------------------------------------------------------------------------- tables

const catalog = { departments: new Map() };

function unavailable(messageId, body) {
  $(messageId).textContent = `unavailable: ${(body && body.reason) || "no answer"}`;
}

function badge(id, text, bad) {
  const node = $(id);
  node.textContent = text;
  node.classList.toggle("bad", Boolean(bad));
}

async function refreshSla() {
  const { body } = await getJSON("/api/sla");
  if (!body || !body.available) {
    unavailable("sla-message", body);
    $("sla-rows").replaceChildren();
    $("clock-rows").replaceChildren();
    badge("sla-badge", "");
    return;
  }
  $("sla-message").textContent = body.rows.length ? "" : "No open cases.";
  const rows = [...body.rows].sort((a, b) => (b.overdue - a.overdue) || (b.warned - a.warned) || String(a.department).localeCompare(b.department));
  $("sla-rows").replaceChildren(...rows.map((r) => el("tr",
    { testid: "sla-row", className: r.overdue > 0 ? "bad" : r.warned > 0 ? "warn" : "" },
    el("td", {}, r.department, catalog.departments.has(r.department) ? ` ${catalog.departments.get(r.department)}` : ""),
    el("td", { className: "num" }, r.open),
    el("td", { className: "num" }, r.warned),
    el("td", { className: "num" }, r.overdue),
    el("td", { className: "num" }, r.unknown_deadline),
    el("td", {}, r.next_deadline || ""))));
  const overdue = body.rows.reduce((n, r) => n + (r.overdue || 0), 0);
  badge("sla-badge", overdue ? `${overdue} overdue` : "", overdue > 0);
  renderClocks(body.cases || [], body.within_days);
}

const OPEN = new Set(["accepted", "supplement_requested"]);

// One row per clock at risk: a case's legal deadline while it is open, the due day of its
// deferred materials (容缺), the verification of its commitments (告知承诺), and any other
// clock approval lists with its step.
function clocksAtRisk(cases) {
  const clocks = [];
  for (const c of cases) {
    if (c.step && c.step !== "decision") clocks.push({ c, clock: c.step, due: c.due || c.deadline, what: "" });
    else if (OPEN.has(c.status)) clocks.push({ c, clock: "decision", due: c.deadline, what: "" });
    if (c.deferred_due && (c.deferred_outstanding || []).length) {
      clocks.push({ c, clock: "deferral", due: c.deferred_due, what: c.deferred_outstanding.join(", ") });
    }
    if (c.verification_due) {
      clocks.push({ c, clock: "verification", due: c.verification_due, what: (c.committed_materials || []).join(", ") });
    }
  }
  return clocks.sort((a, b) => String(a.due || "").localeCompare(String(b.due || "")));
}

function renderClocks(cases, withinDays) {
  const today = cityTime(new Date().toISOString()).slice(0, 10);
  const clocks = clocksAtRisk(cases);
  $("clocks-message").textContent = clocks.length ? "" : `No clock due within ${withinDays ?? 3} days.`;
  $("clock-rows").replaceChildren(...clocks.map(({ c, clock, due, what }) => el("tr",
    { testid: "clock-row", dataset: { case: c.case_id, clock }, className: !due ? "warn" : due < today ? "bad" : "" },
    el("td", {}, caseLink(c.case_id)),
    el("td", {}, c.department || ""),
    el("td", {}, c.status),
    el("td", {}, clock),
    el("td", {}, due || "unknown"),
    el("td", {}, what))));
}

async function refreshTriage() {
  const { body } = await getJSON("/api/triage");
  if (!body || !body.available) { unavailable("triage-message", body); badge("triage-badge", ""); return; }
  $("triage-message").textContent = body.rows.length ? "" : "Nothing waits in triage.";
  $("triage-rows").replaceChildren(...body.rows.map((r) => el("tr", { testid: "triage-row" },
    el("td", {}, caseLink(r.case_id)),
    el("td", {}, r.item_code),
    el("td", {}, `${r.failure.code}: ${r.failure.explanation}`),
    el("td", {}, r.rule),
    el("td", { className: "num" }, r.catalog_version ?? ""),
    el("td", {}, cityTime(r.failed_at)))));
  badge("triage-badge", String(body.rows.length), body.rows.length > 0);
}

async function refreshDlq() {
  const { body } = await getJSON("/api/dlq");
  if (!body || !body.available) { unavailable("dlq-message", body); $("dlq-count").textContent = "?"; return; }
  $("dlq-message").textContent = !body.exists ? "The dead-letter topic does not exist yet."
    : body.count === 0 ? "No dead letters." : "";
  $("dlq-count").textContent = String(body.count);
  $("dlq-noun").textContent = body.count === 1 ? "record" : "records";
  $("dlq-rows").replaceChildren(...body.recent.map((r) => el("tr", { testid: "dlq-row" },
    el("td", {}, cityTime(r.time)),
    el("td", {}, caseLink(r.case_id)),
    el("td", {}, r.type || ""),
    el("td", {}, r.from_topic ? `${r.from_topic}/${r.from_partition}@${r.from_offset}` : ""),
    el("td", {}, r.source || ""),
    el("td", {}, r.reason || ""))));
  badge("dlq-badge", String(body.count), body.count > 0);
}

async function refreshLag() {
  const { body } = await getJSON("/api/lag");
  if (!body || !body.available) { unavailable("lag-message", body); $("lag-total").textContent = "?"; return; }
  $("lag-message").textContent = body.rows.length ? "" : "No consumer group has committed offsets yet.";
  const groups = new Map();
  for (const r of body.rows) {
    const key = `${r.group}\u0000${r.topic}`;
    const g = groups.get(key) || { group: r.group, topic: r.topic, partitions: 0, committed: 0, end: 0, lag: 0, max: 0 };
    g.partitions += 1; g.committed += r.committed; g.end += r.end ?? 0;
    g.lag += r.lag ?? 0; g.max = Math.max(g.max, r.lag ?? 0);
    groups.set(key, g);
  }
  $("lag-rows").replaceChildren(...[...groups.values()].map((g) => el("tr",
    { testid: "lag-row", className: g.lag > 1000 ? "bad" : g.lag > 0 ? "warn" : "" },
    el("td", {}, g.group), el("td", {}, g.topic),
    el("td", { className: "num" }, g.partitions), el("td", { className: "num" }, g.committed),
    el("td", { className: "num" }, g.end), el("td", { className: "num" }, g.lag),
    el("td", { className: "num" }, g.max))));
  $("lag-total").textContent = String(body.total);
  badge("lag-badge", String(body.total), body.total > 1000);
}

async function refreshLinks() {
  const { body } = await getJSON("/api/links");
  if (!body || !body.available) { unavailable("links-message", body); badge("links-badge", "?", true); return; }
  $("links-stale").textContent = String(body.stale_after_s);
  $("links-message").textContent = body.rows.length ? "" : "No partner region: no mirrored topic <alias>.heartbeats, <alias>.xregion.out.v1 or <alias>.catalog.v1 here.";
  const age = (s) => (s === null || s === undefined ? "–" : s.toFixed(1));
  $("link-rows").replaceChildren(...body.rows.map((r) => el("tr",
    { testid: "link-row", className: r.status === "up" ? "" : "bad", dataset: { alias: r.alias, status: r.status } },
    el("td", {}, r.alias),
    el("td", {}, r.partner ? `${r.partner.code} ${r.partner.name || ""} · catalog v${r.partner.version}` : "catalog not yet here"),
    el("td", {}, r.status),
    el("td", { className: "num" }, age(r.heartbeat_age_s)),
    el("td", {}, r.xregion_topic),
    el("td", { className: "num" }, r.xregion_records ?? "–"),
    el("td", { className: "num" }, age(r.xregion_newest_age_s)))));
  const down = body.rows.filter((r) => r.status !== "up").length;
  badge("links-badge", body.rows.length ? `${body.rows.length - down}/${body.rows.length}` : "", down > 0);
}

async function refreshCatalog() {
  const { body } = await getJSON("/api/catalog");
  if (!body || !body.available) { $("catalog-version").textContent = "no catalog yet"; return; }
  $("catalog-version").textContent = `${body.city.name} · catalog v${body.version}`;
  catalog.departments = new Map(body.departments.map((d) => [d.code, d.name]));
  const options = (id, rows, label) => $(id).replaceChildren(...rows.map((r) => el("option", { value: r.code }, label(r))));
  options("departments", body.departments, (d) => `${d.name} (${d.level})`);
  options("offices", body.offices, (o) => `${o.kind} ${o.division}`);
  options("districts", body.districts, (d) => d.name);
}

async function refreshAll() {
  if (document.visibilityState !== "visible") return;
  const results = await Promise.allSettled([refreshSla(), refreshTriage(), refreshDlq(), refreshLag(), refreshBundles(), refreshLinks()]);
  const failed = results.filter((r) => r.status === "rejected").length;
  $("refreshed").textContent = `refreshed ${cityTime(new Date().toISOString())}${failed ? ` (${failed} failed)` : ""}`;
}

async function start() {
  const meta = await getJSON("/api/meta").catch(() => ({ body: null }));
  if (meta.body) {
    $("environment").textContent = meta.body.environment;
    $("event-types").replaceChildren(...meta.body.event_types.map((t) => el("option", { value: t })));
  }
  wireStream();
  wireCase();
  window.addEventListener("hashchange", route);
  route();
  connect(null);
  refreshCatalog();
  refreshAll();
  setInterval(refreshAll, REFRESH_MS);
  setInterval(refreshCatalog, 60_000);
}

start();
