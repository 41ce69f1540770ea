"""The live page served at ``/``: one self-contained HTML document (no map tiles, no CDN, nothing
loaded from elsewhere). It draws the lines from GTFS stop coordinates (``/lines``), the vehicles on
them (``/vehicles``), and after a click on a stop its arrivals (``/stops/{id}/arrivals``), counting
down each second and refreshed every few seconds."""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>mbta_ray live</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
  body { font: 14px system-ui, sans-serif; margin: 0; display: flex; height: 100vh; }
  #map { flex: 1; background: #fafafa; }
  #side { width: 340px; padding: 12px; border-left: 1px solid #ddd; overflow-y: auto; }
  .stop { fill: #fff; stroke: #333; stroke-width: 1; cursor: pointer; }
  .stop.selected { fill: #ffd400; }
  .vehicle { stroke: #000; stroke-width: 1.5; }
  table { border-collapse: collapse; width: 100%; }
  td, th { text-align: left; padding: 2px 4px; border-bottom: 1px solid #eee; }
  #status { color: #666; font-size: 12px; }
</style>
</head>
<body>
<svg id="map" role="img" aria-label="lines and vehicles"></svg>
<div id="side">
  <h3>mbta_ray live</h3>
  <div id="status">loading...</div>
  <h4 id="stop-title">Click a stop</h4>
  <table id="arrivals"><thead><tr><th>route</th><th>trip</th><th>in</th><th>at</th></tr></thead>
  <tbody></tbody></table>
</div>
<script>
const COLORS = {Red: "#DA291C", Mattapan: "#DA291C", Orange: "#ED8B00", Blue: "#003DA5"};
const color = r => COLORS[r] || (r.startsWith("Green") ? "#00843D" : "#7C878E");
const svg = document.getElementById("map");
const NS = "http://www.w3.org/2000/svg";
let project = null, selected = null, arrivals = [], fetchedAt = 0, lineKey = "";

function el(name, attrs, parent) {
  const e = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  parent.appendChild(e);
  return e;
}

function drawLines(lines) {
  const key = JSON.stringify(lines.map(l => l.stops.map(s => s.stop_id)));
  if (key === lineKey) return;
  lineKey = key;
  svg.querySelectorAll(".line, .stop").forEach(e => e.remove());
  const pts = lines.flatMap(l => l.stops);
  if (!pts.length) return;
  const lat = pts.map(p => p.lat), lon = pts.map(p => p.lon);
  const [x0, x1, y0, y1] = [Math.min(...lon), Math.max(...lon), Math.min(...lat), Math.max(...lat)];
  const w = svg.clientWidth || 800, h = svg.clientHeight || 600, pad = 20;
  const k = Math.min((w - 2 * pad) / ((x1 - x0) * 0.74 || 1), (h - 2 * pad) / ((y1 - y0) || 1));
  project = (la, lo) => [pad + (lo - x0) * 0.74 * k, h - pad - (la - y0) * k];
  const layer = document.getElementById("lines") || el("g", {id: "lines"}, svg);
  for (const l of lines) {
    const d = l.stops.map(s => project(s.lat, s.lon).join(",")).join(" ");
    el("polyline", {class: "line", points: d, fill: "none", stroke: color(l.route_id), "stroke-width": 3}, layer);
  }
  const seen = new Set();
  for (const s of pts) {
    if (seen.has(s.stop_id)) continue;
    seen.add(s.stop_id);
    const [x, y] = project(s.lat, s.lon);
    const c = el("circle", {class: "stop", cx: x, cy: y, r: 4, "data-stop": s.stop_id}, layer);
    el("title", {}, c).textContent = (s.name || s.stop_id) + " (" + s.stop_id + ")";
    c.addEventListener("click", () => choose(s));
  }
  svg.appendChild(document.getElementById("vehicles") || el("g", {id: "vehicles"}, svg));
}

function drawVehicles(vehicles) {
  const layer = document.getElementById("vehicles") || el("g", {id: "vehicles"}, svg);
  layer.innerHTML = "";
  if (!project) return;
  for (const v of vehicles) {
    if (v.latitude == null || v.longitude == null) continue;
    const [x, y] = project(v.latitude, v.longitude);
    const c = el("circle", {class: "vehicle", cx: x, cy: y, r: 6, fill: color(v.route_id), "data-vehicle": v.vehicle_id}, layer);
    el("title", {}, c).textContent = v.route_id + " " + v.trip_id + " " + v.status + " " + v.stop_id;
  }
}

async function choose(stop) {
  selected = stop;
  document.querySelectorAll(".stop.selected").forEach(e => e.classList.remove("selected"));
  const dot = document.querySelector('[data-stop="' + CSS.escape(stop.stop_id) + '"]');
  if (dot) dot.classList.add("selected");
  document.getElementById("stop-title").textContent = (stop.name || stop.stop_id) + " (" + stop.stop_id + ")";
  await loadArrivals();
}

async function loadArrivals() {
  if (!selected) return;
  const r = await fetch("/stops/" + encodeURIComponent(selected.stop_id) + "/arrivals");
  if (!r.ok) return;
  arrivals = (await r.json()).arrivals;
  fetchedAt = Date.now();
  showArrivals();
}

function showArrivals() {
  const body = document.querySelector("#arrivals tbody");
  body.innerHTML = "";
  const gone = (Date.now() - fetchedAt) / 1000;
  for (const a of arrivals) {
    const left = Math.max(0, a.seconds_away - gone);
    const tr = document.createElement("tr");
    tr.className = "arrival";
    for (const text of [a.route_id, a.trip_id, Math.floor(left / 60) + ":" + String(Math.floor(left % 60)).padStart(2, "0"),
                        a.predicted_arrival.slice(11, 19)]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.appendChild(td);
    }
    body.appendChild(tr);
  }
  if (!arrivals.length && selected) body.innerHTML = "<tr><td colspan=4>no predictions now</td></tr>";
}

async function refresh() {
  try {
    const [lines, vehicles, health] = await Promise.all(
      ["/lines", "/vehicles", "/live/healthz"].map(u => fetch(u).then(r => r.ok ? r.json() : null)));
    if (lines) drawLines(lines.lines);
    if (vehicles) drawVehicles(vehicles.vehicles);
    if (health) document.getElementById("status").textContent =
      "feed " + health.status + (health.reason ? " (" + health.reason + ")" : "") +
      " - " + (vehicles ? vehicles.vehicles.length : 0) + " vehicles at " + (vehicles ? vehicles.at : "?");
    await loadArrivals();
  } catch (e) {
    document.getElementById("status").textContent = "cannot reach the service: " + e;
  }
}

refresh();
setInterval(refresh, 5000);
setInterval(showArrivals, 1000);
</script>
</body>
</html>
"""
