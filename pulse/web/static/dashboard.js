// kata-pulse live dashboard: one websocket, one table, no dependencies.
// The protocol is described in docs/stream.md.
"use strict";

(() => {
  const HISTORY_SECONDS = 600;
  const HISTORY_POINTS = 240;
  const RETRY_MIN_MS = 1000;
  const RETRY_MAX_MS = 15000;
  const SVG_NS = "http://www.w3.org/2000/svg";

  // sandbox_id -> {row, cpu: [[t, v]], mem: [[t, v]], tr}
  const sandboxes = new Map();
  const view = { sort: "cpu", descending: true, text: "", namespace: "", state: "" };
  const link = {
    socket: null,
    retryMs: RETRY_MIN_MS,
    retryTimer: null,
    watchdog: null,
    heartbeatMs: 15000,
    lastMessage: 0,
    everConnected: false,
  };
  let renderPending = false;

  const $ = (id) => document.getElementById(id);
  const tbody = document.querySelector("#sandboxes tbody");

  // --- formatting ---------------------------------------------------------------------------

  const IEC = ["B", "KiB", "MiB", "GiB", "TiB"];

  function bytes(value) {
    if (value === null || value === undefined) return "–";
    let n = value;
    let unit = 0;
    while (Math.abs(n) >= 1024 && unit < IEC.length - 1) {
      n /= 1024;
      unit += 1;
    }
    const digits = unit === 0 || n >= 100 ? 0 : 1;
    return `${n.toFixed(digits)} ${IEC[unit]}`;
  }

  function rate(value) {
    return value === null || value === undefined ? "–" : `${bytes(value)}/s`;
  }

  function cores(value) {
    if (value === null || value === undefined) return "–";
    if (value < 10) return `${Math.round(value * 1000)}m`; // millicores, as kubectl top shows
    return value.toFixed(1);
  }

  function age(seconds) {
    if (seconds === null || seconds === undefined) return "never";
    const s = Math.max(0, Date.now() / 1000 - seconds);
    if (s < 60) return `${Math.round(s)}s ago`;
    if (s < 3600) return `${Math.round(s / 60)}m ago`;
    return `${Math.round(s / 3600)}h ago`;
  }

  function sum(a, b) {
    return (a ?? 0) + (b ?? 0);
  }

  // --- connection -----------------------------------------------------------------------------

  function streamUrl() {
    const url = new URL("ws", window.location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    url.search = "";
    url.hash = "";
    return url.toString();
  }

  function setConnection(state, text) {
    const el = $("connection");
    el.dataset.state = state;
    document.body.dataset.connection = state;
    $("connection-text").textContent = text;
  }

  function connect() {
    clearTimeout(link.retryTimer);
    setConnection(link.everConnected ? "reconnecting" : "connecting",
      link.everConnected ? "reconnecting…" : "connecting…");
    let socket;
    try {
      socket = new WebSocket(streamUrl());
    } catch (err) {
      scheduleRetry(`cannot open the stream: ${err}`);
      return;
    }
    link.socket = socket;
    socket.onopen = () => {
      link.lastMessage = Date.now();
      armWatchdog();
    };
    socket.onmessage = (event) => {
      link.lastMessage = Date.now();
      let message;
      try {
        message = JSON.parse(event.data);
      } catch (err) {
        console.warn("kata-pulse: unreadable message", err);
        return;
      }
      handle(message);
    };
    socket.onclose = (event) => {
      if (link.socket !== socket) return;
      link.socket = null;
      clearInterval(link.watchdog);
      const why = event.code === 1006 ? "connection lost" : `closed (${event.code}${event.reason ? ": " + event.reason : ""})`;
      scheduleRetry(link.everConnected ? why : "agent not reachable");
    };
  }

  function scheduleRetry(why) {
    const due = Date.now() + link.retryMs;
    const tick = () => {
      const left = Math.max(0, Math.ceil((due - Date.now()) / 1000));
      setConnection("reconnecting", `${why} · retrying in ${left}s`);
    };
    tick();
    const countdown = setInterval(tick, 500);
    link.retryTimer = setTimeout(() => {
      clearInterval(countdown);
      connect();
    }, link.retryMs);
    link.retryMs = Math.min(RETRY_MAX_MS, link.retryMs * 2);
  }

  function armWatchdog() {
    clearInterval(link.watchdog);
    // A connection silently dropped by a proxy or a sleeping laptop shows no close event;
    // the agent sends at least a heartbeat every heartbeat_seconds, so silence means dead.
    link.watchdog = setInterval(() => {
      if (Date.now() - link.lastMessage > link.heartbeatMs * 2.5 && link.socket) {
        const socket = link.socket;
        link.socket = null;
        socket.close();
        clearInterval(link.watchdog);
        scheduleRetry("no data from the agent");
      }
    }, 1000);
  }

  // --- state ----------------------------------------------------------------------------------

  function pushPoint(series, t, value) {
    if (value === null || value === undefined || t === null || t === undefined) return;
    if (series.length && series[series.length - 1][0] >= t) return;
    series.push([t, value]);
    const oldest = t - HISTORY_SECONDS;
    while (series.length > HISTORY_POINTS || (series.length && series[0][0] < oldest)) series.shift();
  }

  function upsert(row) {
    let entry = sandboxes.get(row.sandbox_id);
    if (!entry) {
      entry = { row, cpu: [], mem: [], tr: null };
      sandboxes.set(row.sandbox_id, entry);
    }
    entry.row = row;
    pushPoint(entry.cpu, row.collected_at, row.cpu_cores);
    pushPoint(entry.mem, row.collected_at, row.memory_working_set_bytes);
  }

  function remove(sandboxId) {
    const entry = sandboxes.get(sandboxId);
    if (!entry) return;
    if (entry.tr) entry.tr.remove();
    sandboxes.delete(sandboxId);
  }

  function handle(message) {
    switch (message.type) {
      case "snapshot": {
        link.everConnected = true;
        link.retryMs = RETRY_MIN_MS;
        if (message.heartbeat_seconds) link.heartbeatMs = message.heartbeat_seconds * 1000;
        const present = new Set(message.sandboxes.map((row) => row.sandbox_id));
        for (const id of [...sandboxes.keys()]) if (!present.has(id)) remove(id);
        for (const row of message.sandboxes) upsert(row);
        setConnection("live", "live");
        break;
      }
      case "added":
      case "update":
        upsert(message.sandbox);
        break;
      case "removed":
        remove(message.sandbox_id);
        break;
      case "heartbeat":
        break;
      default:
        return; // newer agents may send more types; ignore them
    }
    if (message.time) $("updated").textContent = `last message ${new Date(message.time * 1000).toLocaleTimeString()}`;
    scheduleRender();
  }

  // --- rendering ------------------------------------------------------------------------------

  function scheduleRender() {
    if (renderPending) return;
    renderPending = true;
    requestAnimationFrame(() => {
      renderPending = false;
      render();
    });
  }

  const SORT_KEYS = {
    pod: (r) => r.pod || r.sandbox_id,
    namespace: (r) => r.namespace,
    state: (r) => r.state,
    cpu: (r) => r.cpu_cores ?? -1,
    memory: (r) => r.memory_working_set_bytes ?? -1,
    net: (r) => sum(r.network_receive_bytes_per_second, r.network_transmit_bytes_per_second),
    disk: (r) => sum(r.disk_read_bytes_per_second, r.disk_write_bytes_per_second),
    collected: (r) => r.collected_at ?? 0,
  };

  function compare(a, b) {
    const key = SORT_KEYS[view.sort];
    const x = key(a.row);
    const y = key(b.row);
    let order = typeof x === "string" ? x.localeCompare(y) : x - y;
    if (view.descending) order = -order;
    return order || a.row.sandbox_id.localeCompare(b.row.sandbox_id);
  }

  function visible(row) {
    if (view.namespace && row.namespace !== view.namespace) return false;
    if (view.state && row.state !== view.state) return false;
    if (!view.text) return true;
    const text = view.text.toLowerCase();
    return [row.pod, row.namespace, row.sandbox_id].some((v) => (v || "").toLowerCase().includes(text));
  }

  function sparkline(kind) {
    const svg = document.createElementNS(SVG_NS, "svg");
    svg.setAttribute("class", `sparkline ${kind}`);
    svg.setAttribute("viewBox", "0 0 120 26");
    svg.setAttribute("preserveAspectRatio", "none");
    const area = document.createElementNS(SVG_NS, "polygon");
    area.setAttribute("class", "area");
    const line = document.createElementNS(SVG_NS, "polyline");
    line.setAttribute("class", "line");
    const title = document.createElementNS(SVG_NS, "title");
    svg.append(title, area, line);
    return svg;
  }

  // CPU is drawn from zero (idle is the baseline); memory between its own low and high, since a
  // working set rarely moves far from its level and a zero baseline would flatten every change.
  function drawSparkline(svg, series, format, fromZero) {
    const [title, area, line] = svg.children;
    if (series.length < 2) {
      line.setAttribute("points", "");
      area.setAttribute("points", "");
      title.textContent = "collecting…";
      return;
    }
    const now = series[series.length - 1][0];
    const start = Math.max(series[0][0], now - HISTORY_SECONDS);
    const span = Math.max(now - start, 1);
    const shown = series.filter(([t]) => t >= start);
    let low = Infinity;
    let high = -Infinity;
    for (const [, v] of shown) {
      low = Math.min(low, v);
      high = Math.max(high, v);
    }
    if (fromZero) low = Math.min(0, low);
    const range = high - low || Math.abs(high) || 1;
    const points = shown.map(
      ([t, v]) => `${(((t - start) / span) * 118 + 1).toFixed(1)},${(24 - ((v - low) / range) * 22).toFixed(1)}`,
    );
    line.setAttribute("points", points.join(" "));
    const first = points[0].split(",")[0];
    const last = points[points.length - 1].split(",")[0];
    area.setAttribute("points", `${first},26 ${points.join(" ")} ${last},26`);
    const minutes = Math.max(1, Math.round(span / 60));
    title.textContent = `${format(low)} – ${format(high)} over ${minutes} min`;
  }

  function cell(tr, className, numeric) {
    const td = document.createElement("td");
    td.className = className + (numeric ? " num" : "");
    tr.appendChild(td);
    return td;
  }

  function makeRow(entry) {
    const tr = document.createElement("tr");
    tr.dataset.sandboxId = entry.row.sandbox_id;
    const pod = cell(tr, "pod");
    pod.append(document.createElement("span"), document.createElement("span"));
    pod.lastChild.className = "id";
    cell(tr, "namespace");
    const state = cell(tr, "state-cell");
    state.appendChild(document.createElement("span"));
    cell(tr, "cpu", true);
    cell(tr, "spark cpu-spark").appendChild(sparkline("cpu"));
    cell(tr, "memory", true);
    cell(tr, "spark mem-spark").appendChild(sparkline("mem"));
    cell(tr, "net", true);
    cell(tr, "disk", true);
    cell(tr, "collected", true);
    return tr;
  }

  function fillRow(entry) {
    const { row, tr } = entry;
    const [pod, namespace, state, cpu, cpuSpark, memory, memSpark, net, disk, collected] = tr.children;
    pod.firstChild.textContent = row.pod || "(pod unknown)";
    pod.lastChild.textContent = row.sandbox_id.slice(0, 12);
    pod.title = row.sandbox_id;
    namespace.textContent = row.namespace || "–";
    const badge = state.firstChild;
    badge.textContent = row.state;
    badge.className = `state state-${row.state}`;
    badge.title = row.last_error ? `${row.last_error_reason}: ${row.last_error}` : row.runtime_handler || row.runtime;
    cpu.textContent = cores(row.cpu_cores);
    memory.textContent = bytes(row.memory_working_set_bytes);
    net.innerHTML = "";
    net.append(rate(row.network_receive_bytes_per_second), sub(" / "), rate(row.network_transmit_bytes_per_second));
    disk.innerHTML = "";
    disk.append(rate(row.disk_read_bytes_per_second), sub(" / "), rate(row.disk_write_bytes_per_second));
    collected.textContent = age(row.collected_at);
    collected.classList.toggle("stale", row.state !== "up");
    drawSparkline(cpuSpark.firstChild, entry.cpu, cores, true);
    drawSparkline(memSpark.firstChild, entry.mem, bytes, false);
  }

  function sub(text) {
    const span = document.createElement("span");
    span.className = "sub";
    span.textContent = text;
    return span;
  }

  function render() {
    const entries = [...sandboxes.values()];
    const shown = entries.filter((e) => visible(e.row)).sort(compare);
    const shownIds = new Set(shown.map((e) => e.row.sandbox_id));
    for (const entry of entries) {
      if (!shownIds.has(entry.row.sandbox_id) && entry.tr) {
        entry.tr.remove();
      }
    }
    let previous = null;
    for (const entry of shown) {
      if (!entry.tr) entry.tr = makeRow(entry);
      fillRow(entry);
      const wanted = previous ? previous.nextSibling : tbody.firstChild;
      if (wanted !== entry.tr) tbody.insertBefore(entry.tr, wanted);
      previous = entry.tr;
    }
    renderSummary(entries, shown);
  }

  function renderSummary(entries, shown) {
    const rows = entries.map((e) => e.row);
    const count = (state) => rows.filter((r) => r.state === state).length;
    $("count-total").textContent = rows.length;
    $("count-up").textContent = count("up");
    const degraded = count("degraded");
    const other = rows.length - count("up") - degraded;
    $("count-degraded").textContent = degraded;
    $("count-degraded").classList.toggle("state-degraded", degraded > 0);
    $("count-other").textContent = other;
    $("count-other").classList.toggle("state-down", other > 0);
    const cpuTotal = rows.reduce((s, r) => s + (r.cpu_cores ?? 0), 0);
    $("total-cpu").textContent = `${cpuTotal.toFixed(2)} cores`;
    $("total-memory").textContent = bytes(rows.reduce((s, r) => s + (r.memory_working_set_bytes ?? 0), 0));
    $("shown").textContent = shown.length === rows.length ? "" : `${shown.length} of ${rows.length} shown`;
    $("empty").hidden = shown.length > 0;
    $("empty").textContent = rows.length ? "No sandbox matches the filter." : "No sandboxes on this node.";

    const namespaces = [...new Set(rows.map((r) => r.namespace).filter(Boolean))].sort();
    const select = $("namespace");
    const current = [...select.options].slice(1).map((o) => o.value);
    if (namespaces.join("\n") !== current.join("\n")) {
      const keep = select.value;
      select.length = 1;
      for (const ns of namespaces) select.add(new Option(ns, ns));
      select.value = namespaces.includes(keep) ? keep : "";
      view.namespace = select.value;
    }
  }

  // --- controls -------------------------------------------------------------------------------

  function setupControls() {
    $("node").textContent = window.location.host;
    $("filter").addEventListener("input", (e) => {
      view.text = e.target.value.trim();
      scheduleRender();
    });
    $("namespace").addEventListener("change", (e) => {
      view.namespace = e.target.value;
      scheduleRender();
    });
    $("state").addEventListener("change", (e) => {
      view.state = e.target.value;
      scheduleRender();
    });
    for (const th of document.querySelectorAll("th[data-sort]")) {
      th.querySelector("button").addEventListener("click", () => {
        const key = th.dataset.sort;
        if (view.sort === key) view.descending = !view.descending;
        else {
          view.sort = key;
          view.descending = !["pod", "namespace", "state"].includes(key);
        }
        for (const other of document.querySelectorAll("th[data-sort]")) other.setAttribute("aria-sort", "none");
        th.setAttribute("aria-sort", view.descending ? "descending" : "ascending");
        scheduleRender();
      });
    }
    // Ages ("12s ago") move on between messages.
    setInterval(scheduleRender, 5000);
  }

  setupControls();
  connect();
})();
