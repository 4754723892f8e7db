// The WebAdmin page's script (docs/webadmin.md). The Master renders the domain and the servers;
// this keeps them live from /v1/events, draws the history and plans from the API, and sends the
// operator's orders. Text goes into the page through textContent only, never as HTML.
"use strict";

(function () {
  const body = document.body;
  let pinned = body.dataset.pinned || "";
  let may = new Set((body.dataset.permissions || "").split(" ").filter(Boolean));
  const rows = document.getElementById("server-rows");

  // The server list is in the page already (rendered by the Master): the benchmark's mark.
  performance.mark("steward:servers-rendered");

  const short = (c) => (c || "").slice(0, 7);
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  };
  const say = (text, cls) => {
    const m = document.getElementById("message");
    m.textContent = text;
    m.className = cls || "";
  };

  // Absolute URLs on the page's origin: a page opened as http://user:password@host/ has its
  // credentials in its base URL, and fetch refuses URLs with credentials. The browser sends the
  // ones it cached for the origin.
  const at = (path) => location.origin + path;

  async function api(method, path, payload) {
    const init = { method, credentials: "same-origin", headers: {} };
    if (payload !== undefined) {
      // JSON, as every order must be: the Master refuses simple content types (CSRF).
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(payload);
    }
    const r = await fetch(at(path), init);
    let doc = null;
    try {
      doc = await r.json();
    } catch (_) {
      doc = null;
    }
    return { status: r.status, ok: r.ok, doc };
  }

  // Keep alike with `row` in webadmin/mod.rs.
  function fill(tr, v) {
    const cells = tr.cells;
    const applied = v.applied_commit || "";
    tr.dataset.applied = applied;
    cells[2].textContent = v.state || "";
    cells[2].className = "state s-" + (v.state || "");
    cells[3].textContent = v.mode || "";
    cells[4].textContent = short(applied);
    cells[4].title = applied;
    cells[4].className = "applied" + (applied && applied !== pinned ? " drift" : "");
    cells[5].textContent = (v.pending_restart || []).join(", ");
    cells[6].textContent = (v.failed_applications || []).join(", ");
    cells[7].textContent = v.last_error || "";
  }

  function addRow(v) {
    const tr = document.createElement("tr");
    tr.dataset.server = v.name;
    for (const cls of ["name", "cluster", "state", "mode", "applied", "pending", "failed", "error", "actions"]) {
      tr.appendChild(el("td", cls));
    }
    tr.cells[0].textContent = v.name;
    if (may.has("servers:control")) {
      const b = el("button", "restart", "Restart");
      b.type = "button";
      b.dataset.server = v.name;
      tr.cells[8].appendChild(b);
    }
    rows.appendChild(tr);
    return tr;
  }

  function server(v) {
    if (!rows) return;
    const tr = [...rows.rows].find((r) => r.dataset.server === v.name) || addRow(v);
    fill(tr, v);
  }

  function drift() {
    if (!rows) return;
    for (const tr of rows.rows) {
      const a = tr.dataset.applied || "";
      tr.cells[4].className = "applied" + (a && a !== pinned ? " drift" : "");
    }
  }

  // The hold as the page shows it, for a pin event (which does not carry it).
  let hold = null;

  function domain(d) {
    hold = d.hold || null;
    pinned = d.pinned.commit;
    body.dataset.pinned = pinned;
    const p = document.getElementById("pinned");
    p.textContent = short(pinned);
    p.title = pinned;
    document.getElementById("pinned-at").textContent = d.pinned.at || "";
    const h = d.hold;
    document.getElementById("hold").textContent = h
      ? `held since ${h.since} by ${h.by} (${h.reason})`
      : "not held";
    drift();
  }

  function problem(p) {
    const place = p.line ? `${p.file}:${p.line}:${p.column}` : p.file || "";
    let text = `${place}: ${p.severity || "error"}[${p.code || ""}]: ${p.message || ""}`;
    if (p.hint) text += `\n  = help: ${p.hint}`;
    return text;
  }

  function record(r) {
    const li = el("li", "outcome-" + r.outcome);
    li.dataset.commit = r.commit;
    li.appendChild(el("span", "outcome", r.outcome.toUpperCase()));
    const c = el("code", "commit", short(r.commit));
    c.title = r.commit;
    li.appendChild(c);
    li.appendChild(el("span", "at", r.at));
    li.appendChild(el("span", "source", r.source));
    li.appendChild(el("span", "by", r.pusher || r.author || ""));
    li.appendChild(el("span", "summary", r.summary || ""));
    const plan = el("button", "plan", "Plan");
    plan.type = "button";
    plan.dataset.commit = r.commit;
    li.appendChild(plan);
    if (r.outcome === "pinned" && r.commit !== pinned && may.has("domain:pin")) {
      const b = el("button", "rollback", "Roll back to this");
      b.type = "button";
      b.dataset.commit = r.commit;
      li.appendChild(b);
    }
    if (r.problems && r.problems.length) {
      const ul = el("ul", "problems");
      for (const p of r.problems) ul.appendChild(el("li", "problem", problem(p)));
      if (r.more_problems) ul.appendChild(el("li", "problem", `… and ${r.more_problems} more problem(s)`));
      li.appendChild(ul);
    }
    return li;
  }

  async function loadHistory() {
    const r = await api("GET", "/v1/domain/history?limit=50");
    if (!r.ok) return;
    const ol = document.getElementById("history-list");
    ol.replaceChildren(...r.doc.map(record));
  }

  async function refresh() {
    const d = await api("GET", "/v1/domain");
    if (d.ok) domain(d.doc);
    if (rows) {
      const s = await api("GET", "/v1/servers");
      if (s.ok) {
        const names = new Set(s.doc.map((v) => v.name));
        for (const tr of [...rows.rows]) if (!names.has(tr.dataset.server)) tr.remove();
        s.doc.forEach(server);
      }
    }
    await loadHistory();
    await loadTimers();
  }

  // Timers: one table per server, from GET /v1/timers (the Master asks the running servers).
  // At most this many rows per server: `steward admin timers` lists them all.
  const TIMER_ROWS = 500;

  function timerRow(t) {
    const tr = el("tr");
    tr.dataset.app = t.app;
    tr.dataset.id = t.id;
    const last = t.last
      ? `${t.last.result} ${t.last.scheduled}${t.last.status ? " (" + t.last.status + ")" : ""}`
      : "-";
    const state = t.state === "orphaned" && t.renamed_to ? `orphaned (renamed to ${t.renamed_to}?)` : t.state;
    const cells = [
      ["app", t.app],
      ["timer", t.id],
      ["kind", t.declared ? "declared" : "run-time"],
      ["persistent", t.persistent ? "yes" : "no"],
      ["next", t.next || "-"],
      ["last", last],
      ["retries", t.last ? String(t.last.attempts - 1) : "-"],
      ["state t-" + t.state, state],
    ];
    for (const [cls, text] of cells) tr.appendChild(el("td", cls, text));
    const actions = el("td", "actions");
    // A declared timer lives in domain.toml; the Master refuses to cancel it (unless orphaned).
    if (may.has("servers:control") && (!t.declared || t.state === "orphaned")) {
      const b = el("button", "cancel-timer", "Cancel");
      b.type = "button";
      b.dataset.server = t.server;
      b.dataset.app = t.app;
      b.dataset.id = t.id;
      actions.appendChild(b);
    }
    tr.appendChild(actions);
    return tr;
  }

  async function loadTimers() {
    const box = document.getElementById("timer-tables");
    if (!box) return;
    const note = document.getElementById("timers-note");
    const r = await api("GET", "/v1/timers");
    if (!r.ok) {
      note.textContent = r.status === 403 ? "" : `The Master answered ${r.status}.`;
      return;
    }
    const byServer = new Map();
    for (const t of r.doc.timers) {
      if (!byServer.has(t.server)) byServer.set(t.server, []);
      byServer.get(t.server).push(t);
    }
    const tables = [];
    for (const [server, timers] of byServer) {
      const table = el("table", "timers");
      table.dataset.server = server;
      table.appendChild(el("caption", null, server));
      const head = el("tr");
      for (const h of ["Application", "Timer", "Kind", "Persistent", "Next fire", "Last result", "Retries", "State", ""]) {
        head.appendChild(el("th", null, h));
      }
      table.appendChild(el("thead")).appendChild(head);
      const tbody = el("tbody");
      for (const t of timers.slice(0, TIMER_ROWS)) tbody.appendChild(timerRow(t));
      table.appendChild(tbody);
      tables.push(table);
      if (timers.length > TIMER_ROWS) {
        tables.push(el("p", "more", `… and ${timers.length - TIMER_ROWS} more on ${server} (steward admin timers --server ${server})`));
      }
    }
    box.replaceChildren(...tables);
    const missing = r.doc.unavailable.map((u) => `${u.server}: ${u.error}`);
    note.textContent = (byServer.size ? "" : "No timers. ") + missing.join("; ");
  }

  async function cancelTimer(d) {
    const r = await api("POST", `/v1/servers/${encodeURIComponent(d.server)}/timers/cancel`, { application: d.app, id: d.id });
    if (r.ok) {
      say(`Timer ${d.app}/${d.id} on ${d.server} is cancelled.`, "ok");
    } else {
      const why = r.status === 403 ? "you lack the permission" : (r.doc && r.doc.error) || `the Master answered ${r.status}`;
      say(`Cancelling timer ${d.app}/${d.id} refused: ${why}`, "error");
    }
    await loadTimers();
  }

  function rollout(doc) {
    const steps = doc.steps.map((s) => `${s.server} ${s.state}${s.detail ? " (" + s.detail + ")" : ""}`);
    const text = `Rollout ${doc.id}: ${doc.action} — ${doc.state}${doc.error ? ": " + doc.error : ""}; ${steps.join("; ")}`;
    say(text, "rollout-" + doc.state);
  }

  function live() {
    const status = document.getElementById("live");
    const es = new EventSource(at("/v1/events"));
    let lost = false;
    es.onopen = () => {
      status.textContent = "live";
      status.className = "live on";
      // Whatever happened while the stream was down is read again.
      if (lost) refresh();
      lost = false;
    };
    es.onerror = () => {
      status.textContent = "reconnecting…";
      status.className = "live off";
      lost = true;
    };
    const json = (f) => (e) => f(JSON.parse(e.data));
    es.addEventListener("server", json(server));
    es.addEventListener("pinned", json((r) => {
      pinned = r.commit;
      domain({ pinned: { commit: r.commit, at: r.at }, hold });
      loadHistory();
    }));
    es.addEventListener("rejected", () => loadHistory());
    es.addEventListener("held", () => loadHistory());
    es.addEventListener("domain", json(domain));
    es.addEventListener("rollout", json(rollout));
    es.addEventListener("lagged", () => refresh());
    es.addEventListener("timer", () => loadTimers());
  }

  async function order(what, path, payload) {
    const r = await api("POST", path, payload);
    if (r.status === 202 && r.doc && r.doc.steps) {
      rollout(r.doc);
    } else if (r.ok) {
      say(`${what}: done.`, "ok");
      if (r.doc && r.doc.pinned) refresh();
      else if (r.doc && r.doc.name) domain(r.doc);
    } else {
      const why = r.status === 403 ? "you lack the permission" : (r.doc && r.doc.error) || `the Master answered ${r.status}`;
      let text = `${what} refused: ${why}`;
      if (r.doc && r.doc.problems) text += "\n" + r.doc.problems.map(problem).join("\n");
      say(text, "error");
    }
  }

  async function showPlan(commit) {
    const section = document.getElementById("plan");
    document.getElementById("plan-commit").textContent = commit;
    const pre = document.getElementById("plan-text");
    const r = await api("GET", `/v1/commits/${encodeURIComponent(commit)}/plan`);
    if (r.ok) pre.textContent = r.doc.text;
    else if (r.status === 422) pre.textContent = "No plan: the commit does not validate.\n\n" + r.doc.problems.map(problem).join("\n");
    else if (r.status === 404) pre.textContent = "No plan: the commit never entered the repository (the Master refused it).";
    else pre.textContent = `No plan: the Master answered ${r.status}.`;
    section.hidden = false;
  }

  document.addEventListener("click", (e) => {
    const b = e.target.closest("button");
    if (!b) return;
    const d = b.dataset;
    if (b.classList.contains("restart")) {
      if (confirm(`Restart ${d.server}?`)) order(`Restart ${d.server}`, `/v1/servers/${encodeURIComponent(d.server)}/restart`, {});
    } else if (b.classList.contains("restart-cluster")) {
      if (confirm(`Restart cluster ${d.cluster}, one server at a time?`)) {
        order(`Restart ${d.cluster}`, "/v1/rollouts", { action: "restart", cluster: d.cluster });
      }
    } else if (b.id === "restart-pending") {
      if (confirm("Restart every server with pending restarts, one at a time per cluster?")) {
        order("Restart pending", "/v1/rollouts", { action: "restart", pending: true });
      }
    } else if (b.classList.contains("rollback")) {
      if (confirm(`Roll the domain back to ${short(d.commit)}?`)) order(`Rollback to ${short(d.commit)}`, "/v1/domain/pin", { commit: d.commit });
    } else if (b.id === "hold-button") {
      order("Hold", "/v1/domain/hold", {});
    } else if (b.id === "resume-button") {
      order("Resume", "/v1/domain/resume", {});
    } else if (b.classList.contains("cancel-timer")) {
      if (confirm(`Cancel timer ${d.app}/${d.id} on ${d.server}? It is removed for good.`)) cancelTimer(d);
    } else if (b.id === "timers-reload") {
      loadTimers();
    } else if (b.classList.contains("plan")) {
      showPlan(d.commit);
    }
  });

  window.addEventListener("unhandledrejection", (e) => say(`The page failed: ${e.reason}`, "error"));

  (async function start() {
    // What the user may do, as the Master computes it (it enforces the same on every order).
    const me = await api("GET", "/v1/me");
    if (me.ok) may = new Set(me.doc.permissions);
    if (may.has("events:read")) live();
    else document.getElementById("live").textContent = "not live (no events:read)";
    await loadHistory();
    await loadTimers();
    body.dataset.ready = "true";
  })();
})();
