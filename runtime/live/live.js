// aimg live page: renders the daemon's event stream (docs/daemon.md) and sends its control calls.
// Plain browser JavaScript, no build step and no external fetches: the robot computer may be
// offline. Everything shown comes from GET /events; the buttons POST with the bearer token.
"use strict";

(() => {
  const TOKEN_KEY = "aimg.token";
  const LATENCY_PLANS = 60;       // plans kept for the latency plot
  const RATE_WINDOW_S = 120;      // seconds of status events kept for the rate plots
  const MAX_EVENTS = 100;         // safety events listed
  const STALE_AFTER_S = 3;        // no status for this long while connected: say so
  const RECONNECT_MS = 2000;      // after the browser gives up on the stream
  const VIEW_MAX_VH = 44;         // camera views at most this tall, so plans and plots fit too
  const COLOURS = {
    path: "#4ea1ff", plan: "#ffd166", halo: "rgba(0, 0, 0, 0.65)", grid: "#243040",
    axis: "#7f8c99", servo: "#4ea1ff", camera: "#4cc38a", plans: "#ffd166",
    latency: "#ffd166", p50: "#7f8c99", box: "#e6e6e6",
  };
  const AXIS_COLOURS = ["#ff4d4d", "#4cd964", "#4d7cff"];  // tool x, y, z

  const $ = (id) => document.getElementById(id);
  const dpr = () => window.devicePixelRatio || 1;

  // ---------------------------------------------------------------- token
  // The token arrives in the URL fragment (never sent to the server), lives in sessionStorage
  // (this tab only) and leaves the address bar at once, so it is not bookmarked or shared.

  function takeTokenFromFragment() {
    const params = new URLSearchParams(location.hash.slice(1));
    const token = params.get("token");
    if (token) {
      sessionStorage.setItem(TOKEN_KEY, token);
      history.replaceState(null, "", location.pathname + location.search);
    }
  }

  const getToken = () => sessionStorage.getItem(TOKEN_KEY) || "";

  function showTokenBox(show) {
    $("token-box").hidden = !show;
    $("token-change").hidden = show || !getToken();
    if (show) $("token").focus();
  }

  function saveToken(event) {
    event.preventDefault();
    const token = $("token").value.trim();
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    $("token").value = "";
    showTokenBox(false);
    clearError();
    notice("token set");
  }

  // ---------------------------------------------------------------- control calls

  function detailText(body, status) {
    const detail = body && body.detail;
    if (typeof detail === "string") return detail;
    if (Array.isArray(detail)) {
      return detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
    }
    return status ? `HTTP ${status}` : "no answer";
  }

  function showError(text) {
    const el = $("error");
    el.textContent = text;
    el.dataset.time = String(Date.now());
    $("notice").textContent = "";
  }
  const clearError = () => { $("error").textContent = ""; };
  const notice = (text) => { $("notice").textContent = text; };

  /** POST `path` with the token; shows the daemon's `detail` on failure, returns the body or null. */
  async function post(path, body) {
    const token = getToken();
    if (!token) {
      showError(`${path} not sent: no token. Paste it below, or open the link \`aimg ctl page\` prints.`);
      showTokenBox(true);
      return null;
    }
    const headers = { Authorization: `Bearer ${token}` };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(path, {
        method: "POST", headers, body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
      });
    } catch (err) {
      showError(`${path} failed: the daemon is not reachable (${err.message}).`);
      return null;
    }
    let data = null;
    try { data = await response.json(); } catch (_) { /* an empty or non-JSON body */ }
    if (!response.ok) {
      showError(`${path}: ${response.status} ${detailText(data, response.status)}`);
      if (response.status === 401) showTokenBox(true);
      return null;
    }
    clearError();
    return data || {};
  }

  async function startTask(event) {
    event.preventDefault();
    const instruction = $("instruction").value.trim();
    if (!instruction) {
      showError("type an instruction first, e.g. \"pick up the red cube\"");
      return;
    }
    const data = await post("/tasks", { instruction });
    if (data && data.task) notice(`${data.task.id} started`);
  }

  async function stopTask() {
    const data = await post("/stop");
    if (data) notice(data.stopped ? `${data.stopped} stopping` : "no task was running");
  }

  async function estop() {
    const data = await post("/estop");
    if (data) notice("e-stop sent");
    else $("error").textContent = `E-STOP NOT CONFIRMED: ${$("error").textContent}`;
  }

  async function reset() {
    const data = await post("/reset");
    if (data) notice(`reset: ${data.state}`);
  }

  // ---------------------------------------------------------------- camera views

  const views = new Map();  // name -> {canvas, caption, img, data, pending, decoding}

  function ensureView(name) {
    let view = views.get(name);
    if (view) return view;
    const figure = document.createElement("figure");
    figure.className = "view";
    const canvas = document.createElement("canvas");
    canvas.dataset.view = name;
    canvas.dataset.planPoints = "0";
    canvas.dataset.pathPoints = "0";
    const caption = document.createElement("figcaption");
    const label = document.createElement("span");
    label.textContent = name;
    const info = document.createElement("span");
    info.className = "mono";
    caption.append(label, info);
    figure.append(canvas, caption);
    $("views").append(figure);
    $("views-empty").hidden = true;
    view = { canvas, info, img: null, data: null, pending: null, decoding: false };
    views.set(name, view);
    resizeObserver.observe(canvas);
    return view;
  }

  function onFrame(message) {
    for (const [name, data] of Object.entries(message.views || {})) {
      const view = ensureView(name);
      view.pending = data;
      if (!view.decoding) decodeNext(view);
    }
  }

  // One decode per view at a time; frames that arrive meanwhile replace each other.
  function decodeNext(view) {
    const data = view.pending;
    if (!data) return;
    view.pending = null;
    view.decoding = true;
    const img = new Image();
    const done = (ok) => {
      view.decoding = false;
      if (ok) {
        view.img = img;
        view.data = data;
        drawView(view);
      }
      decodeNext(view);
    };
    img.onload = () => done(true);
    img.onerror = () => done(false);
    img.src = data.image;
  }

  function polyline(ctx, points, sx, sy) {
    ctx.beginPath();
    points.forEach(([u, v], i) => (i ? ctx.lineTo(u * sx, v * sy) : ctx.moveTo(u * sx, v * sy)));
    ctx.stroke();
  }

  function drawView(view) {
    const { canvas, img, data } = view;
    if (!img || !data) return;
    const width = data.width || img.naturalWidth;
    const height = data.height || img.naturalHeight;
    canvas.style.aspectRatio = `${width} / ${height}`;
    canvas.parentElement.style.maxWidth = `calc(${VIEW_MAX_VH}vh * ${width / height})`;
    const cssWidth = canvas.clientWidth || width;
    const w = Math.max(1, Math.round(cssWidth * dpr()));
    const h = Math.max(1, Math.round((cssWidth * height / width) * dpr()));
    if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
    const ctx = canvas.getContext("2d");
    ctx.imageSmoothingEnabled = true;
    ctx.drawImage(img, 0, 0, w, h);
    // Image pixel coordinates have their origin at the top-left corner, like the canvas.
    const sx = w / width;
    const sy = h / height;
    const unit = Math.max(1, w / 400);
    const path = data.path_px || [];
    const plan = data.plan_px || [];
    const box = data.box_px || [];
    const axes = data.axes_px || [];
    ctx.lineJoin = "round";
    ctx.lineCap = "round";
    // The calibration at a glance: the workspace box on the table, the tool's axes on the
    // gripper (x red, y green, z blue); off, and the camera has moved or is miscalibrated.
    ctx.strokeStyle = COLOURS.box;
    ctx.globalAlpha = 0.6;
    ctx.lineWidth = 1 * unit;
    for (const edge of box) polyline(ctx, edge, sx, sy);
    ctx.globalAlpha = 1;
    if (axes.length === 4) {
      ctx.lineWidth = 2 * unit;
      AXIS_COLOURS.forEach((colour, k) => {
        ctx.strokeStyle = colour;
        polyline(ctx, [axes[0], axes[k + 1]], sx, sy);
      });
    }
    if (path.length > 1) {
      ctx.strokeStyle = COLOURS.halo;
      ctx.lineWidth = 4.5 * unit;
      polyline(ctx, path, sx, sy);
      ctx.strokeStyle = COLOURS.path;
      ctx.lineWidth = 2.5 * unit;
      polyline(ctx, path, sx, sy);
    }
    if (plan.length) {
      ctx.strokeStyle = COLOURS.plan;
      ctx.globalAlpha = 0.7;
      ctx.lineWidth = 1 * unit;
      polyline(ctx, plan, sx, sy);
      ctx.globalAlpha = 1;
      for (const [u, v] of plan) {
        ctx.beginPath();
        ctx.arc(u * sx, v * sy, 3.2 * unit, 0, 2 * Math.PI);
        ctx.fillStyle = COLOURS.plan;
        ctx.fill();
        ctx.lineWidth = 1 * unit;
        ctx.strokeStyle = COLOURS.halo;
        ctx.stroke();
      }
    }
    canvas.dataset.planPoints = String(plan.length);
    canvas.dataset.boxEdges = String(box.length);
    canvas.dataset.toolAxes = String(axes.length ? 3 : 0);
    canvas.dataset.pathPoints = String(path.length);
    view.info.textContent = `${width}×${height} · path ${path.length} · plan ${plan.length}`;
  }

  // ---------------------------------------------------------------- plans

  let planCount = 0;
  const latencies = [];  // [plan_id, latency_s], last LATENCY_PLANS

  function onPlan(plan) {
    planCount += 1;
    $("plan-count").textContent = String(planCount);
    latencies.push([plan.plan_id, plan.latency_s]);
    if (latencies.length > LATENCY_PLANS) latencies.shift();
    const waypoints = (plan.waypoints || []).length;
    $("plan-meta").textContent =
      `plan ${plan.plan_id} of ${plan.task_id} · ${fmt(plan.latency_s, 2)} s · ${waypoints} waypoints`;
    const strips = $("strips");
    for (const [name, src] of Object.entries(plan.action_images || {})) {
      let figure = strips.querySelector(`figure[data-view="${CSS.escape(name)}"]`);
      if (!figure) {
        figure = document.createElement("figure");
        figure.className = "strip";
        figure.dataset.view = name;
        const caption = document.createElement("figcaption");
        caption.textContent = `${name} (frame 0 left)`;
        figure.append(caption, document.createElement("img"));
        strips.append(figure);
      }
      const img = figure.querySelector("img");
      img.src = src;
      img.alt = `predicted action images of view ${name}, plan ${plan.plan_id}`;
      figure.dataset.planId = String(plan.plan_id);
    }
    drawLatencyChart();
  }

  // ---------------------------------------------------------------- status

  let state = "";
  let lastStatus = null;
  let lastStatusAt = 0;
  const rates = [];  // [t_s, servo, camera, plans]

  function fmt(value, digits = 1) {
    return typeof value === "number" && Number.isFinite(value) ? value.toFixed(digits) : "—";
  }

  function duration(seconds) {
    if (typeof seconds !== "number") return "—";
    const s = Math.floor(seconds);
    if (s < 60) return `${fmt(seconds, 1)} s`;
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    return h ? `${h} h ${String(m).padStart(2, "0")} min` : `${m} min ${String(s % 60).padStart(2, "0")} s`;
  }

  function setText(id, text, cls) {
    const el = $(id);
    el.textContent = text;
    if (cls !== undefined) el.className = cls;
  }

  function taskSummary(task) {
    if (!task) return "—";
    const outcome = task.outcome ? `${task.outcome}` : task.state;
    const reason = task.reason ? `: ${task.reason}` : "";
    return `${task.id} "${task.instruction}" ${outcome}${reason} · ${duration(task.elapsed_s)}`
      + ` · ${task.plans} plans${task.episode ? ` · ${task.episode}` : ""}`;
  }

  function onStatus(status) {
    lastStatus = status;
    lastStatusAt = performance.now();
    if (connection === "stale") setConnection("live");
    setState(status.state || "", status.last_error);

    const model = status.model || {};
    setText("model", model.path ? `${model.path} (${model.backend})` : "");
    setText("uptime", typeof status.uptime_s === "number" ? `up ${duration(status.uptime_s)}` : "");

    const task = status.task;
    setText("task-instruction", task ? task.instruction : "—");
    setText("task-state", task ? `${task.id} ${task.state}` : "no task");
    setText("task-elapsed", task ? duration(task.elapsed_s) : "—");
    setText("task-plans", task ? String(task.plans) : "—");
    setText("task-limits", task
      ? `max ${duration(task.max_duration_s)}${task.deadman_s ? ` · dead-man ${fmt(task.deadman_s)} s` : ""}`
      : "—");
    const last = status.last_task;
    setText("last-task", taskSummary(last),
      last && last.outcome && last.outcome !== "succeeded" ? "warn" : (last ? "good" : ""));

    const arm = status.arm || {};
    const pos = arm.position_m;
    setText("arm-position", Array.isArray(pos)
      ? pos.map((x) => (x * 1000).toFixed(1).padStart(7)).join(" ") : "—", "mono");
    setText("arm-gripper", fmt(arm.gripper, 2), "mono");
    const grip = typeof arm.gripper === "number" ? Math.min(1, Math.max(0, arm.gripper)) : 0;
    $("arm-gripper-bar").style.width = `${grip * 100}%`;
    setText("arm-error", arm.error_code === undefined ? "—" : String(arm.error_code),
      arm.error_code ? "mono bad" : "mono");
    const servo = status.servo || {};
    const realtime = servo.realtime === true ? "realtime"
      : servo.realtime === false ? "not realtime" : (servo.realtime || "");
    setText("servo-mode", [servo.mode || "—", realtime,
      typeof servo.overruns === "number" ? `${servo.overruns} overruns` : ""]
      .filter(Boolean).join(" · "));
    setText("servo-jitter", typeof servo.jitter_ms_p99 === "number" ? `${fmt(servo.jitter_ms_p99, 2)} ms` : "—");
    setText("plan-age", typeof status.plan_age_s === "number" ? `${fmt(status.plan_age_s, 1)} s` : "—");
    const lat = status.latency_s;
    setText("latency", lat
      ? `last ${fmt(lat.last, 2)} · p50 ${fmt(lat.p50, 2)} · p95 ${fmt(lat.p95, 2)} s` : "no plan yet");

    renderProcesses(status.processes || {});
    setText("last-error", status.last_error || "none", status.last_error ? "bad" : "muted");
    const calibration = status.calibration || {};
    setText(
      "calibration",
      calibration.summary || "—",
      calibration.ok === false ? "bad" : calibration.ok ? "good" : "muted",
    );
    for (const event of status.events || []) addSafetyEvent(event);

    const r = status.rates_hz || {};
    const t = Date.now() / 1000;
    rates.push([t, r.servo, r.camera, r.plans]);
    while (rates.length && rates[0][0] < t - RATE_WINDOW_S) rates.shift();
    drawRateCharts();
    drawLatencyChart();
  }

  function setState(newState, lastError) {
    state = newState;
    const stateEl = $("state");
    stateEl.textContent = state;
    stateEl.dataset.state = state;
    document.body.dataset.state = state;
    $("estop-banner").hidden = state !== "estopped";
    const faultBanner = $("fault-banner");
    faultBanner.hidden = state !== "fault";
    if (state === "fault") {
      faultBanner.textContent = `Fault: ${lastError || "a process died"}. Press Reset to restart it.`;
    }
    const busy = ["running", "stopping", "starting", "shutting_down", "estopped", "fault"];
    $("start").disabled = busy.includes(state);
    $("start").title = busy.includes(state) ? `the daemon is ${state}` : "start a task";
  }

  function renderProcesses(processes) {
    const body = $("processes").querySelector("tbody");
    body.replaceChildren();
    for (const [name, p] of Object.entries(processes)) {
      const row = document.createElement("tr");
      row.dataset.process = name;
      row.dataset.alive = String(Boolean(p.alive));
      const dot = document.createElement("span");
      dot.className = p.alive ? "dot alive" : "dot";
      dot.title = p.alive ? "alive" : "not running";
      const cells = [dot, name, p.state || "", p.pid ?? "—", String(p.restarts ?? 0)];
      for (const value of cells) {
        const cell = document.createElement("td");
        if (value instanceof Node) cell.append(value); else cell.textContent = String(value);
        row.append(cell);
      }
      if (p.restarts) row.lastChild.className = "warn";
      body.append(row);
    }
  }

  // ---------------------------------------------------------------- safety events

  const safetyEvents = new Map();  // key -> event

  function addSafetyEvent(event) {
    const key = `${event.time_unix}|${event.kind}|${event.message}`;
    if (safetyEvents.has(key)) return;
    safetyEvents.set(key, event);
    const sorted = [...safetyEvents.entries()].sort((a, b) => b[1].time_unix - a[1].time_unix);
    for (const [old] of sorted.slice(MAX_EVENTS)) safetyEvents.delete(old);
    renderSafetyEvents(sorted.slice(0, MAX_EVENTS).map(([, e]) => e));
  }

  // Runs of one kind (servo overruns come in bursts) collapse into one row with a count, so a
  // burst never pushes an e-stop out of sight; the row shows the newest message of its run.
  function renderSafetyEvents(events) {
    const list = $("events");
    list.replaceChildren();
    const runs = [];
    for (const event of events) {
      const last = runs[runs.length - 1];
      if (last && last.event.kind === event.kind) last.count += 1;
      else runs.push({ event, count: 1 });
    }
    for (const { event, count } of runs) {
      const item = document.createElement("li");
      item.dataset.kind = event.kind;
      item.dataset.count = String(count);
      if (event.severity) item.dataset.severity = event.severity;
      const kind = document.createElement("span");
      kind.className = "kind";
      kind.textContent = count > 1 ? `${event.kind} ×${count}` : event.kind;
      const time = document.createElement("span");
      time.className = "time";
      const when = new Date(event.time_unix * 1000);
      time.textContent = when.toLocaleTimeString([], { hour12: false });
      time.title = when.toString();
      const message = document.createElement("span");
      message.className = "message";
      message.textContent = event.message;
      item.append(kind, time, message);
      list.append(item);
    }
    $("events-empty").hidden = events.length > 0;
  }

  // ---------------------------------------------------------------- task events

  function onTask(task) {
    if (task.state === "ended") {
      notice(`${task.id} ended: ${task.outcome || "ended"}${task.reason ? ` (${task.reason})` : ""}`);
    } else {
      notice(`${task.id} ${task.state}: "${task.instruction}"`);
    }
  }

  // ---------------------------------------------------------------- charts

  function niceStep(span, divisions) {
    const raw = span / divisions;
    const power = 10 ** Math.floor(Math.log10(raw));
    const unit = raw / power;
    return power * (unit <= 1 ? 1 : unit <= 2 ? 2 : unit <= 5 ? 5 : 10);
  }

  function prepareCanvas(canvas) {
    const w = Math.max(1, Math.round(canvas.clientWidth * dpr()));
    const h = Math.max(1, Math.round(canvas.clientHeight * dpr()));
    if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr(), 0, 0, dpr(), 0, 0);
    ctx.clearRect(0, 0, canvas.clientWidth, canvas.clientHeight);
    return { ctx, width: canvas.clientWidth, height: canvas.clientHeight };
  }

  /**
   * A small line chart: `series` is [{points: [[x, y], ...], colour, dots?, dashed?}], y from 0.
   * `title` is drawn top-left, `xLabels` ([x, text]) under the axis.
   */
  function lineChart(canvas, { series, xMin, xMax, title, xLabels = [], yMinSpan = 1 }) {
    const { ctx, width, height } = prepareCanvas(canvas);
    const left = 34;
    const right = 6;
    const top = 16;
    const bottom = xLabels.length ? 14 : 4;
    const plotW = width - left - right;
    const plotH = height - top - bottom;
    let yMax = yMinSpan;
    for (const s of series) for (const [, y] of s.points) if (Number.isFinite(y)) yMax = Math.max(yMax, y);
    const step = niceStep(yMax * 1.1, Math.max(1, Math.floor(plotH / 28)));
    yMax = Math.ceil((yMax * 1.1) / step) * step;
    const X = (x) => left + ((x - xMin) / Math.max(1e-9, xMax - xMin)) * plotW;
    const Y = (y) => top + plotH - (y / yMax) * plotH;

    ctx.font = "11px system-ui, sans-serif";
    ctx.lineWidth = 1;
    ctx.textBaseline = "middle";
    ctx.textAlign = "right";
    for (let y = 0; y <= yMax + 1e-9; y += step) {
      ctx.strokeStyle = COLOURS.grid;
      ctx.beginPath();
      ctx.moveTo(left, Math.round(Y(y)) + 0.5);
      ctx.lineTo(left + plotW, Math.round(Y(y)) + 0.5);
      ctx.stroke();
      ctx.fillStyle = COLOURS.axis;
      ctx.fillText(step < 1 ? y.toFixed(step < 0.1 ? 2 : 1) : String(Math.round(y)), left - 4, Y(y));
    }
    ctx.textBaseline = "top";
    ctx.textAlign = "center";
    for (const [x, text] of xLabels) ctx.fillText(text, Math.min(Math.max(X(x), left + 12), left + plotW - 12), top + plotH + 2);

    for (const s of series) {
      const pts = s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
      ctx.strokeStyle = s.colour;
      ctx.fillStyle = s.colour;
      ctx.lineWidth = 1.5;
      ctx.setLineDash(s.dashed ? [4, 3] : []);
      ctx.beginPath();
      pts.forEach(([x, y], i) => (i ? ctx.lineTo(X(x), Y(y)) : ctx.moveTo(X(x), Y(y))));
      ctx.stroke();
      ctx.setLineDash([]);
      if (s.dots) for (const [x, y] of pts) { ctx.beginPath(); ctx.arc(X(x), Y(y), 2, 0, 2 * Math.PI); ctx.fill(); }
    }
    ctx.textAlign = "left";
    ctx.textBaseline = "top";
    let tx = left;
    for (const [text, colour] of title) {
      ctx.fillStyle = colour;
      ctx.fillText(text, tx, 1);
      tx += ctx.measureText(text).width + 12;
    }
  }

  function drawLatencyChart() {
    const canvas = $("plot-latency");
    const lat = lastStatus && lastStatus.latency_s;
    const last = latencies.length ? latencies[latencies.length - 1] : null;
    const xMin = latencies.length ? latencies[0][0] : 0;
    const xMax = last ? Math.max(last[0], xMin + 1) : 1;
    const series = [{ points: latencies, colour: COLOURS.latency, dots: true }];
    if (lat && Number.isFinite(lat.p50)) {
      series.push({ points: [[xMin, lat.p50], [xMax, lat.p50]], colour: COLOURS.p50, dashed: true });
    }
    const title = [[last ? `last ${fmt(last[1], 2)} s` : "no plans yet", COLOURS.latency]];
    if (lat) title.push([`p50 ${fmt(lat.p50, 2)} · p95 ${fmt(lat.p95, 2)} s`, COLOURS.p50]);
    const xLabels = latencies.length
      ? [[xMin, `plan ${xMin}`], [xMax, `plan ${last[0]}`]] : [];
    lineChart(canvas, { series, xMin, xMax, title, xLabels, yMinSpan: 0.1 });
    canvas.dataset.points = String(latencies.length);
  }

  function drawRateCharts() {
    const now = Date.now() / 1000;
    const charts = [
      ["plot-servo", 1, "servo", "Hz", COLOURS.servo, 10],
      ["plot-camera", 2, "camera", "Hz", COLOURS.camera, 1],
      ["plot-plans", 3, "plans", "/s", COLOURS.plans, 0.1],
    ];
    for (const [id, column, name, unit, colour, minSpan] of charts) {
      const points = rates.map((row) => [row[0] - now, row[column]]);
      const latest = rates.length ? rates[rates.length - 1][column] : undefined;
      const digits = latest !== undefined && latest < 10 ? 2 : 0;
      lineChart($(id), {
        series: [{ points, colour }],
        xMin: -RATE_WINDOW_S, xMax: 0,
        title: [[`${name} ${fmt(latest, digits)} ${unit}`, colour]],
        xLabels: id === "plot-plans" ? [[-RATE_WINDOW_S, "−2 min"], [-60, "−1 min"], [0, "now"]] : [],
        yMinSpan: minSpan,
      });
      $(id).dataset.points = String(points.length);
    }
  }

  // ---------------------------------------------------------------- the event stream

  let source = null;
  let connection = "connecting";

  function setConnection(kind, text) {
    connection = kind;
    document.body.dataset.conn = kind;
    const el = $("conn");
    el.dataset.conn = kind;
    el.textContent = text || {
      connecting: "connecting…", live: "live", disconnected: "disconnected — retrying",
      stale: "no status",
    }[kind];
  }

  function listen(name, handler) {
    source.addEventListener(name, (event) => {
      let data;
      try { data = JSON.parse(event.data); } catch (err) {
        console.warn(`bad ${name} event`, err);
        return;
      }
      handler(data);
    });
  }

  function connect() {
    if (source) source.close();
    source = new EventSource("/events");
    source.onopen = () => setConnection("live");
    source.onerror = () => {
      setConnection("disconnected");
      // The browser retries by itself while CONNECTING; once CLOSED it has given up.
      if (source.readyState === EventSource.CLOSED) setTimeout(connect, RECONNECT_MS);
    };
    listen("status", onStatus);
    listen("frame", onFrame);
    listen("plan", onPlan);
    listen("safety", addSafetyEvent);
    listen("task", onTask);
    listen("state", (data) => setState(data.state || "", lastStatus && lastStatus.last_error));
  }

  function watchStaleness() {
    if (connection !== "live" && connection !== "stale") return;
    const age = (performance.now() - lastStatusAt) / 1000;
    if (lastStatusAt && age > STALE_AFTER_S) setConnection("stale", `no status for ${Math.round(age)} s`);
  }

  // ---------------------------------------------------------------- start

  const resizeObserver = new ResizeObserver((entries) => {
    for (const entry of entries) {
      const view = views.get(entry.target.dataset.view);
      if (view) drawView(view);
    }
  });

  function redrawCharts() {
    drawLatencyChart();
    drawRateCharts();
  }

  function init() {
    takeTokenFromFragment();
    showTokenBox(!getToken());
    $("task-form").addEventListener("submit", startTask);
    $("stop").addEventListener("click", stopTask);
    $("estop").addEventListener("click", estop);
    $("reset").addEventListener("click", reset);
    $("token-box").addEventListener("submit", saveToken);
    $("token-change").addEventListener("click", () => showTokenBox(true));
    window.addEventListener("resize", redrawCharts);
    renderSafetyEvents([]);
    redrawCharts();
    connect();
    setInterval(watchStaleness, 1000);
  }

  init();
})();
