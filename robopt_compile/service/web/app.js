// robopt web UI: a thin page over /api/v1 (no framework, no build step, works offline).
// The token lives in sessionStorage and goes in the Authorization header (never a cookie),
// so no other site can make the browser act for the user (CSRF).
"use strict";
const $ = (sel) => document.querySelector(sel);
const esc = (v) => String(v ?? "").replace(/[&<>"']/g,
  (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const token = () => sessionStorage.getItem("robopt-token");
let timer = null;

async function api(path, opts = {}) {
  const headers = { Authorization: "Bearer " + token(), ...(opts.headers || {}) };
  if (opts.json !== undefined) {
    headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(opts.json);
  }
  const r = await fetch("/api/v1" + path, { ...opts, headers });
  if (r.status === 401) {
    sessionStorage.removeItem("robopt-token");
    if (!opts.signingIn) signOut();
    throw new Error("the token was refused: check it, or ask an admin for a new one");
  }
  if (!r.ok) {
    let msg = r.statusText;
    try { msg = (await r.json()).error || msg; } catch (e) { /* not JSON */ }
    throw new Error(msg);
  }
  const type = r.headers.get("content-type") || "";
  return type.includes("json") ? r.json() : r;
}

function toast(msg) { const t = $("#toast"); t.textContent = msg; t.hidden = false;
  setTimeout(() => { t.hidden = true; }, 4000); }
function bar(f) { return `<span class="bar" title="${Math.round(f * 100)}%"><span style="width:${
  Math.round(f * 100)}%"></span></span> ${Math.round(f * 100)}%`; }
function when(t) { return esc((t || "").slice(0, 19).replace("T", " ")); }
function stateCell(s) { return `<span class="state-${esc(s)}">${esc(s)}</span>`; }

function signOut() { sessionStorage.removeItem("robopt-token"); location.hash = "#/signin"; }

async function signIn(ev) {
  ev.preventDefault();
  sessionStorage.setItem("robopt-token", $("#token").value.trim());
  try { await api("/me", { signingIn: true }); location.hash = "#/jobs"; route(); }
  catch (e) { $("#signin-error").textContent = e.message; }
}

const pages = {
  signin() {
    $("#nav").hidden = true; $("#who").textContent = "";
    $("#main").innerHTML = `<h1>Sign in</h1><form class="card" id="signin">
      <label for="token">API token</label><input id="token" type="password" autocomplete="off"
      placeholder="rbt_..."><p class="muted">Make one with
      <code>robopt-compile token create --role operator --name you</code>.</p>
      <button type="submit">Sign in</button> <span id="signin-error" class="error"></span></form>`;
    $("#signin").onsubmit = signIn;
  },

  async jobs() {
    const draw = async () => {
      const jobs = await api("/jobs");
      $("#jobs-body").innerHTML = jobs.map((j) => `<tr>
        <td><a href="#/job/${esc(j.id)}">${esc(j.id.slice(0, 12))}</a></td><td>${esc(j.kind)}</td>
        <td>${esc(j.request.label || j.request.source)}</td><td>${esc(j.request.target)}</td>
        <td>${stateCell(j.state)}</td><td>${bar(j.progress)} <span class="muted">${
        esc(j.stage || "")}</span></td><td>${when(j.created)}</td></tr>`).join("")
        || `<tr><td colspan="7" class="muted">No jobs yet: <a href="#/new">start one</a>.</td></tr>`;
    };
    $("#main").innerHTML = `<h1>Jobs</h1><table><thead><tr><th>job</th><th>kind</th>
      <th>source</th><th>board</th><th>state</th><th>progress</th><th>created</th></tr></thead>
      <tbody id="jobs-body"></tbody></table>`;
    await draw();
    timer = setInterval(() => draw().catch(() => {}), 1000);
  },

  async models() {
    const models = await api("/models");
    $("#main").innerHTML = `<h1>Models</h1>
      <form class="card" id="upload"><label for="file">Upload an ONNX policy (.onnx, or a .zip with its external data)</label>
      <input id="file" type="file" accept=".onnx,.zip"> <label for="tags">Tags (comma separated)
      </label><input id="tags" placeholder="arm, v2"><p><button type="submit">Upload</button>
      <span id="upload-error" class="error"></span></p></form>
      <table><thead><tr><th>id</th><th>name</th><th>kind</th><th>source / derived from</th>
      <th>tags</th><th>created</th></tr></thead><tbody>${models.map((m) => `<tr>
      <td><a href="#/model/${esc(m.id)}">${esc(m.id.slice(0, 12))}</a></td><td>${esc(m.name)}</td>
      <td>${esc(m.source_kind || "engine")}</td><td>${m.parent_id ? "from " + esc(
      m.parent_id.slice(0, 12)) : esc(m.source || "")}</td><td>${(m.tags || []).map((t) =>
      `<span class="tag">${esc(t)}</span>`).join("")}</td><td>${when(m.created)}</td></tr>`)
      .join("")}</tbody></table>`;
    $("#upload").onsubmit = async (ev) => {
      ev.preventDefault();
      const f = $("#file").files[0];
      if (!f) { $("#upload-error").textContent = "choose an .onnx file first"; return; }
      const body = new FormData(); body.append("model", f); body.append("tags", $("#tags").value);
      try { const m = await api("/models", { method: "POST", body });
        toast(`uploaded ${m.name}`); location.hash = `#/new/${m.id}`; }
      catch (e) { $("#upload-error").textContent = e.message; }
    };
  },

  async model(id) {
    const m = await api(`/models/${id}`);
    $("#main").innerHTML = `<h1>Model ${esc(m.name)}</h1><div class="card"><p>id ${esc(m.id)}
      · ${esc(m.source_kind || "engine")} · ${esc(m.size_bytes ?? "?")} bytes</p>
      <p>inputs: ${m.inputs.map((i) => esc(`${i.name} ${JSON.stringify(i.shape)} ${i.dtype}`))
      .join(", ") || "-"}</p><p><a href="#/new/${esc(m.id)}">New optimization of this model</a>
      </p></div><h2>Lineage</h2><ol>${m.lineage.map((x) => `<li>${esc(x.model.name)} <span
      class="muted">${x.derived_by ? esc(JSON.stringify(x.derived_by.config || {})) : "original"}
      </span></li>`).join("")}</ol><h2>Derived</h2><ul>${m.children.map((c) => `<li><a href="#/model/${
      esc(c.id)}">${esc(c.name)}</a></li>`).join("") || "<li class=muted>none</li>"}</ul>`;
  },

  async new(modelId) {
    const [models, boards] = await Promise.all([api("/models"), api("/targets")]);
    const sources = models.filter((m) => m.source_kind);
    $("#main").innerHTML = `<h1>New optimization</h1><form class="card" id="newjob">
      <label for="src">Model</label><select id="src">${sources.map((m) => `<option value="${
      esc(m.id)}" ${m.id === modelId ? "selected" : ""}>${esc(m.name)} (${esc(m.id.slice(0, 8))})
      </option>`).join("")}<option value="zoo:state-mlp">zoo:state-mlp</option></select>
      <label for="board">Board</label><select id="board">${boards.targets.map((b) => `<option
      value="${esc(b.name)}" ${b.name === "host" ? "selected" : ""}>${esc(b.name)}</option>`)
      .join("")}</select><p id="board-facts" class="muted"></p>
      <label for="kind">Job</label><select id="kind"><option value="compile">compile with these
      settings</option><option value="plan">let the planner choose (criteria)</option></select>
      <label for="precision">Precision</label><select id="precision"><option value="">board
      default</option><option>fp32</option><option>fp16</option><option>bf16</option>
      <option selected>int8</option></select>
      <label for="calibration">Calibration (int8)</label><select id="calibration"><option>random
      </option><option>task</option><option value="upload">upload a .npz (one array per input,
      samples on the leading axis)</option></select><input type="file" id="calfile" accept=".npz"
      hidden>
      <label for="maxdrop">Max accuracy drop (criterion)</label><input id="maxdrop" value="0.05">
      <label for="latency">Max latency ms (planner)</label><input id="latency" placeholder="none">
      <p><button type="submit">Start</button><span id="new-error" class="error"></span></p></form>`;
    const facts = () => { const b = boards.targets.find((x) => x.name === $("#board").value);
      $("#board-facts").textContent = b ? `${b.description} · ${b.arch} · backends: ${
        Object.keys(b.backends).join(", ")} · precisions: ${b.precisions.join(", ")}` : ""; };
    $("#board").onchange = facts; facts();
    $("#calibration").onchange = () => { $("#calfile").hidden = $("#calibration").value !== "upload"; };
    $("#newjob").onsubmit = async (ev) => {
      ev.preventDefault();
      const src = $("#src").value, kind = $("#kind").value;
      const options = { max_drop: parseFloat($("#maxdrop").value) };
      if ($("#precision").value) options.precision = $("#precision").value;
      if (options.precision === "int8") options.calibration = $("#calibration").value;
      if (options.calibration === "upload") {
        const f = $("#calfile").files[0];
        if (!f) { $("#new-error").textContent = " choose a .npz calibration file"; return; }
        const form = new FormData(); form.append("data", f);
        try { options.calibration = "upload:" + (await api("/calibrations",
          { method: "POST", body: form })).id; }
        catch (e) { $("#new-error").textContent = " " + e.message; return; }
      }
      const body = { kind, target: $("#board").value, options };
      if (src.startsWith("zoo:")) body.source = src; else body.model = src;
      if (kind === "plan") { delete options.precision; body.criteria = {
        max_accuracy_drop: options.max_drop,
        ...($("#latency").value ? { max_latency_ms: parseFloat($("#latency").value) } : {}) }; }
      try { const j = await api("/jobs", { method: "POST", json: body });
        location.hash = `#/job/${j.id}`; }
      catch (e) { $("#new-error").textContent = " " + e.message; }
    };
  },

  async job(id) {
    $("#main").innerHTML = `<h1>Job ${esc(id.slice(0, 12))}</h1><div class="card" id="head"></div>
      <h2>Stages</h2><div id="timeline"></div><div id="result"></div>
      <h2>Events</h2><pre class="log" id="events"></pre>`;
    const draw = async () => {
      const j = await api(`/jobs/${id}`);
      $("#head").innerHTML = `<p>${stateCell(j.state)} · ${bar(j.progress)} ${esc(j.stage || "")}
        · ${esc(j.request.label || j.request.source)} → ${esc(j.request.target)} · attempt ${j.attempts}</p>
        ${j.error ? `<p class="error">${esc(j.error)}</p>` : ""}<p>
        ${["queued", "running"].includes(j.state) ? `<button id="cancel" class="secondary">Cancel
        </button>` : ""}${["failed", "cancelled", "interrupted"].includes(j.state) ?
        `<button id="resume">Resume</button>` : ""}</p>`;
      if ($("#cancel")) $("#cancel").onclick = () => api(`/jobs/${id}/cancel`, { method: "POST" });
      if ($("#resume")) $("#resume").onclick = () => api(`/jobs/${id}/resume`, { method: "POST" });
      if (j.session_id) {
        const s = await api(`/sessions/${j.session_id}`);
        $("#timeline").innerHTML = timeline(s.steps);
        $("#events").textContent = s.events.map((e) => `${e.time.slice(11, 19)} ${e.type} ${
          JSON.stringify(e.payload).slice(0, 160)}`).join("\n");
      }
      if (j.state === "finished" && !$("#report")) showResult(j);
      return j;
    };
    const j = await draw();
    if (!["finished", "failed", "cancelled", "interrupted"].includes(j.state)) {
      timer = setInterval(async () => { const x = await draw().catch(() => null);
        if (x && !["queued", "running"].includes(x.state)) clearInterval(timer); }, 700);
    }
  },

  async compare(a, b) {
    const jobs = (await api("/jobs?state=finished")).slice(0, 50);
    const opt = (sel) => jobs.map((j) => `<option value="${esc(j.id)}" ${j.id === sel ?
      "selected" : ""}>${esc(j.id.slice(0, 8))} ${esc(j.request.label || j.request.source)} ${esc(
      j.result.precision || "")}</option>`).join("");
    $("#main").innerHTML = `<h1>Compare sessions</h1><p><select id="ca">${opt(a)}</select>
      <select id="cb">${opt(b)}</select> <button id="go">Compare</button></p>
      <div class="grid2" id="sides"></div>`;
    $("#go").onclick = () => { location.hash = `#/compare/${$("#ca").value}/${$("#cb").value}`; };
    if (a && b) {
      const rows = await Promise.all([a, b].map((x) => api(`/jobs/${x}`)));
      $("#sides").innerHTML = rows.map((j) => `<div class="card"><h2>${esc(j.id.slice(0, 12))}
        </h2><table>${[["source", j.request.label || j.request.source], ["board", j.request.target],
        ["backend", j.result.backend], ["precision", j.result.precision],
        ["verdict", (j.result.verdict || {}).status], ["seconds", j.result.seconds],
        ["criteria failures", (j.result.criteria_failures || []).join("; ") || "none"],
        ["estimated latency ms", ((j.result.report || {}).summary || {}).estimated_latency_ms]]
        .map(([k, v]) => `<tr><th>${esc(k)}</th><td>${esc(v)}</td></tr>`).join("")}</table>
        </div>`).join("");
    }
  },

  async notifications() {
    const [feed, hooks] = await Promise.all([api("/notifications"), api("/webhooks")]);
    $("#main").innerHTML = `<h1>Notifications</h1><form class="card" id="hook"><label
      for="url">Webhook URL</label><input id="url" placeholder="http://127.0.0.1:9000/hook">
      <button type="submit">Subscribe</button><span id="hook-msg"></span></form>
      <p class="muted">Webhooks: ${hooks.filter((h) => h.active).map((h) => esc(h.url))
      .join(", ") || "none"}</p><table><thead><tr><th>time</th><th>event</th><th>job</th>
      <th>details</th><th>deliveries</th></tr></thead><tbody>${feed.map((n) => `<tr><td>${
      when(n.time)}</td><td>${esc(n.kind)}</td><td>${n.job_id ? `<a href="#/job/${esc(n.job_id)}">${
      esc(n.job_id.slice(0, 8))}</a>` : ""}</td><td>${esc(JSON.stringify(n.payload).slice(0, 100))}
      </td><td>${n.deliveries.map((d) => `<span class="state-${d.state === "dead" ? "failed" :
      "finished"}">${esc(d.state)}</span> (${d.attempts})`).join(" ")}</td></tr>`).join("")}
      </tbody></table>`;
    $("#hook").onsubmit = async (ev) => {
      ev.preventDefault();
      try { const h = await api("/webhooks", { method: "POST", json: { url: $("#url").value } });
        $("#hook-msg").textContent = ` secret (shown once): ${h.secret}`; }
      catch (e) { $("#hook-msg").textContent = " " + e.message; }
    };
  },

  async devices() {
    const [devs, jobs] = await Promise.all([api("/devices"), api("/jobs?state=finished")]);
    const bundles = jobs.filter((j) => j.kind === "compile");
    $("#main").innerHTML = `<h1>Devices</h1><p class="muted">Robots running
      <code>robopt-bench serve</code>; a benchmark job uploads a finished bundle to one (the
      same registry and queue as <code>robopt-bench devices</code>; a robot that dropped a job
      is marked down for 30 s).</p>
      <form class="card" id="dev"><label for="dname">Name</label><input id="dname">
      <label for="durl">URL</label><input id="durl" placeholder="http://robot.local:8470">
      <label for="dtoken">Its token</label><input id="dtoken" type="password">
      <label for="dboard">Board</label><input id="dboard" value="host">
      <p><button type="submit">Register</button><span id="dev-msg" class="error"></span></p>
      </form><table><thead><tr><th>name</th><th>board</th><th>url</th><th>last seen</th>
      <th>health</th><th>benchmark a bundle</th></tr></thead><tbody>${devs.map((d) => `<tr>
      <td>${esc(d.name)}${d.down ? ' <span class="error">down</span>' : ""}</td><td>${esc(
      d.board)}</td><td>${esc(d.url)}</td><td>${when(
      d.last_seen)}<br><span class="error">${esc(d.last_error || "")}</span></td><td><button
      class="secondary" data-health="${esc(d.id)}">Check</button><span id="h-${esc(d.id)}"></span>
      </td><td><select id="b-${esc(d.id)}">${bundles.map((j) => `<option value="${esc(j.id)}">${
      esc(j.id.slice(0, 8))} ${esc(j.request.label || j.request.source)} ${esc(
      j.result.precision || "")}</option>`).join("")}</select><button data-bench="${esc(d.id)}">
      Run</button></td></tr>`).join("")}</tbody></table>`;
    document.querySelectorAll("[data-health]").forEach((b) => { b.onclick = async () => {
      const h = await api(`/devices/${b.dataset.health}/health`);
      $(`#h-${b.dataset.health}`).textContent = h.reachable ? " reachable" : ` ${h.error}`; }; });
    document.querySelectorAll("[data-bench]").forEach((b) => { b.onclick = async () => {
      const j = await api("/jobs", { method: "POST", json: { kind: "bench", device:
        b.dataset.bench, bundle_job: $(`#b-${b.dataset.bench}`).value, runs: 100 } });
      location.hash = `#/job/${j.id}`; }; });
    $("#dev").onsubmit = async (ev) => {
      ev.preventDefault();
      try { await api("/devices", { method: "POST", json: { name: $("#dname").value,
        url: $("#durl").value, token: $("#dtoken").value, board: $("#dboard").value } });
        route(); }
      catch (e) { $("#dev-msg").textContent = " " + e.message; }
    };
  },

  async boards() {
    const t = await api("/targets");
    $("#main").innerHTML = `<h1>Boards</h1><table><thead><tr><th>board</th><th>description</th>
      <th>arch</th><th>backends</th><th>precisions</th></tr></thead><tbody>${t.targets.map((b) =>
      `<tr><td>${esc(b.name)}</td><td>${esc(b.description)}</td><td>${esc(b.arch)}</td><td>${
      Object.entries(b.backends).map(([k, v]) => `${esc(k)}: ${esc(typeof v === "object" ?
      v.status || JSON.stringify(v) : v)}`).join("<br>")}</td><td>${esc(b.precisions.join(", "))}
      </td></tr>`).join("")}</tbody></table>`;
  },
};

function timeline(steps) {
  // One bar per stage, its length the stage's seconds (an SVG drawn from the session's steps).
  const secs = steps.map((s) => s.finished ? (Date.parse(s.finished) - Date.parse(s.started)) /
    1000 : 0);
  const max = Math.max(0.001, ...secs), h = 18, w = 520;
  return `<svg width="${w + 260}" height="${steps.length * h + 4}" role="img"
    aria-label="stage timeline">${steps.map((s, i) => `<text x="0" y="${i * h + 13}">${
    esc(s.name)}</text><rect x="110" y="${i * h + 3}" height="${h - 6}" width="${
    Math.max(2, (secs[i] / max) * w)}" fill="${s.state === "finished" ? "#2563eb" : s.state ===
    "running" ? "#93c5fd" : "#b91c1c"}"></rect><text x="${115 + (secs[i] / max) * w}" y="${
    i * h + 13}">${secs[i].toFixed(2)} s ${esc(s.state)}</text>`).join("")}</svg>`;
}

function pareto(measured) {
  // Plans measured by the planner: p50 latency against accuracy drop (the report's plot).
  const pts = measured.filter((m) => m.accuracy_drop !== null && m.latency_ms);
  if (!pts.length) return "";
  const xs = pts.map((m) => m.latency_ms.p50), ys = pts.map((m) => m.accuracy_drop);
  const X = (v) => 50 + (v / Math.max(...xs)) * 400, Y = (v) => 230 - (v / Math.max(1e-9,
    ...ys)) * 200;
  return `<h2>Plans: latency vs accuracy drop</h2><svg width="520" height="260" role="img"
    aria-label="pareto plot"><line x1="50" y1="230" x2="460" y2="230" stroke="#999"/>
    <line x1="50" y1="20" x2="50" y2="230" stroke="#999"/><text x="200" y="255">p50 latency (ms)
    </text><text x="0" y="15">drop</text>${pts.map((m, i) => `<circle cx="${X(xs[i])}" cy="${
    Y(ys[i])}" r="5" fill="#2563eb"><title>${esc(m.candidate.label || "")}</title></circle>
    <text x="${X(xs[i]) + 7}" y="${Y(ys[i]) - 4}">${esc((m.candidate || {}).label ||
    "")}</text>`).join("")}</svg>`;
}

async function showResult(j) {
  const r = j.result || {};
  let html = `<h2>Result</h2><div class="card"><p>${esc(r.backend || "")} ${esc(r.precision ||
    "")} · verdict ${esc((r.verdict || {}).status || "")} · ${esc(r.seconds)} s</p><p>${
    (r.criteria_failures || []).map((f) => `<span class="error">${esc(f)}</span>`).join("<br>")
    }</p>`;
  if (r.benchmark) {
    const l = r.benchmark.latency || {};
    html += `<p>on the device: p50 ${esc(l.p50_ms)} ms · p99 ${esc(l.p99_ms)} ms · fidelity ${
      r.benchmark.fidelity && r.benchmark.fidelity.passed ? "passed" : "FAILED"}</p>`;
  }
  if (r.measured) {
    html += pareto(r.measured) + `<table><thead><tr><th>plan</th><th>p50 ms</th><th>drop</th>
      </tr></thead><tbody>${r.measured.map((m) => `<tr><td>${esc(m.candidate.label)}</td><td>${
      esc(m.latency_ms.p50.toFixed(3))}</td><td>${esc(m.accuracy_drop)}</td></tr>`).join("")}
      ${(r.failed || []).map((f) => `<tr><td>${esc(f.plan)}</td><td colspan="2" class="error">
      rejected: ${esc(f.error)}</td></tr>`).join("")}</tbody></table>`;
  }
  if (r.evaluation && r.evaluation.engines) {
    html += `<table><thead><tr><th>engine</th><th>episodes</th><th>success / return</th></tr>
      </thead><tbody>${r.evaluation.engines.map((e) => `<tr><td>${esc(e.label)}</td><td>${
      esc(e.per_seed.seed.length)}</td><td>${esc(JSON.stringify(e.success || e.return || {})
      .slice(0, 80))}</td></tr>`).join("")}</tbody></table>`;
  }
  if (r.bundle) html += `<p><button id="download">Download bundle (.tar.gz)</button>
    <button id="report" class="secondary">Open report</button>
    ${j.kind === "compile" ? `<button id="evaluate" class="secondary">Evaluate in closed loop
    (20 episodes)</button>` : ""}</p>`;
  $("#result").innerHTML = html + `</div><div id="report-view"></div>`;
  if (!r.bundle) return;
  $("#download").onclick = async () => {
    const resp = await api(`/jobs/${j.id}/bundle.tar.gz`);
    const a = document.createElement("a");
    a.href = URL.createObjectURL(await resp.blob());
    a.download = `robopt-${j.id.slice(0, 12)}.tar.gz`; document.body.appendChild(a); a.click();
    a.remove();
  };
  if ($("#evaluate")) $("#evaluate").onclick = async () => {
    try { const e = await api("/jobs", { method: "POST", json: { kind: "evaluate",
      bundle_job: j.id, episodes: 20 } }); location.hash = `#/job/${e.id}`; }
    catch (err) { toast(err.message); }
  };
  $("#report").onclick = async () => {
    const resp = await api(`/jobs/${j.id}/report.html`);
    const frame = document.createElement("iframe");
    frame.className = "report"; frame.title = "report"; frame.sandbox = "";
    frame.srcdoc = await resp.text();
    $("#report-view").replaceChildren(frame);
  };
}

async function route() {
  clearInterval(timer);
  if (!token()) { pages.signin(); return; }
  $("#nav").hidden = false;
  const [name, ...args] = (location.hash.replace(/^#\//, "") || "jobs").split("/");
  const page = pages[name] || pages.jobs;
  try {
    if (name !== "signin") {
      const me = await api("/me");
      $("#who").innerHTML = `${esc(me.name)} (${esc(me.role)}) <a href="#/signin" id="out">sign
        out</a>`;
      $("#out").onclick = signOut;
    }
    await page(...args.map(decodeURIComponent));
  } catch (e) { $("#main").innerHTML = `<p class="error">${esc(e.message)}</p>`; }
}
window.addEventListener("hashchange", route);
route();
