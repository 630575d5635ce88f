// ambient-mesh dashboard: polls /api/state and draws it. Layout by cytoscape.js
// (vendored, pinned: cytoscape.min.js, MIT, see cytoscape.LICENSE).
"use strict";

const fmt = {
  rate: (v) => (v >= 100 ? v.toFixed(0) : v >= 1 ? v.toFixed(1) : v.toFixed(2)),
  pct: (v) => (v === null || v === undefined ? "-" : (100 * v).toFixed(1) + "%"),
  ms: (v) => (v === null || v === undefined ? "-" : v.toFixed(1)),
  bytes: (v) => (v >= 1e6 ? (v / 1e6).toFixed(1) + " MB" : v >= 1e3 ? (v / 1e3).toFixed(1) + " kB" : v.toFixed(0) + " B"),
};

let cy = null;
let layoutKey = "";
let sortKey = "namespace";
let sortDir = 1;
let lastState = null;

function edgeLabel(e) {
  // Two lines: how it travels, then what flows.
  const how = [];
  if (e.mtls) how.push("mTLS");
  if (e.waypoint) how.push("via waypoint");
  if (e.denied) how.push(`✖ ${e.denied} denied`);
  const what = [];
  if (e.requests) {
    what.push(`${fmt.rate(e.rps)}/s`);
    if (e.protocol !== "tcp") what.push(fmt.pct(e.success), `p99 ${fmt.ms(e.p99_ms)}ms`);
    what.push(`${fmt.bytes(e.bytes_per_s)}/s`);
  }
  return [how.join(" · "), what.join(" · ")].filter((l) => l).join("\n");
}

function elements(state) {
  const els = [];
  const namespaces = new Set(state.graph.nodes.map((n) => n.namespace));
  for (const ns of namespaces) els.push({ group: "nodes", data: { id: "ns:" + ns, label: ns }, classes: "namespace" });
  for (const n of state.graph.nodes) {
    const icon = n.kind === "service" ? "◆ " : n.kind === "waypoint" ? "waypoint " : "";
    els.push({ group: "nodes", data: { id: n.id, parent: "ns:" + n.namespace, label: icon + n.name }, classes: n.kind });
  }
  for (const e of state.graph.edges) {
    const cls = [e.protocol, e.mtls ? "mtls" : "plain", e.denied ? "denied" : "", e.waypoint ? "via-waypoint" : ""];
    els.push({ group: "edges", data: { id: e.id, source: e.source, target: e.target, label: edgeLabel(e) }, classes: cls.join(" ").trim() });
  }
  return els;
}

// One cytoscape breadthfirst layout per namespace, each in its own box, side by side
// (cose on compound nodes let namespaces overlap).
function layoutNamespaces() {
  let x = 0;
  // Callers first: namespaces that receive the least traffic from others go left.
  const inbound = (ns) => ns.children().incomers("edge").filter((e) => e.source().parent().id() !== ns.id()).length;
  const order = cy.nodes(".namespace").sort((a, b) => inbound(a) - inbound(b) || a.id().localeCompare(b.id()));
  for (const ns of order) {
    const members = ns.children();
    const height = members.length > 1 ? 520 : 60;
    const width = 220 * Math.max(1, Math.ceil(Math.sqrt(members.length)));
    const roots = members.filter((n) => n.incomers("node").intersection(members).empty());
    members.union(members.edgesWith(members)).layout({
      name: "breadthfirst", directed: true, roots, spacingFactor: 1.1, avoidOverlap: true,
      boundingBox: { x1: x, y1: 0, w: width, h: height },
    }).run();
    x += width + 160;
  }
  cy.fit(undefined, 30);
}

function drawGraph(state) {
  const els = elements(state);
  const key = els.map((e) => e.data.id).sort().join("|");
  const box = document.getElementById("graph");
  if (!cy) {
    cy = cytoscape({
      container: box,
      style: [
        { selector: "node", style: { label: "data(label)", "font-size": 14, "text-valign": "bottom", "background-color": "#4a7bd0", width: 22, height: 22 } },
        { selector: "node.service", style: { shape: "diamond", "background-color": "#7a5bd0" } },
        { selector: "node.waypoint", style: { shape: "hexagon", "background-color": "#d08a2a" } },
        { selector: ".namespace", style: { "background-color": "#eef2f8", "border-color": "#9ab", "border-width": 1, "text-valign": "top", "font-weight": "bold", "font-size": 13 } },
        { selector: "edge", style: { label: "data(label)", "font-size": 13, "curve-style": "bezier", "target-arrow-shape": "triangle", width: 2, "line-color": "#8a8", "target-arrow-color": "#8a8", "text-background-color": "#fff", "text-background-opacity": 0.85, "text-background-padding": 2, "text-wrap": "wrap" } },
        { selector: "edge.plain", style: { "line-style": "dashed", "line-color": "#aaa", "target-arrow-color": "#aaa" } },
        { selector: "edge.denied", style: { "line-color": "#d00", "target-arrow-color": "#d00", color: "#c00", "line-style": "solid" } },
      ],
    });
    window.cy = cy;
  }
  if (key !== layoutKey) {
    cy.elements().remove();
    cy.add(els);
    layoutNamespaces();
    layoutKey = key;
  } else {
    for (const e of els) cy.getElementById(e.data.id).data("label", e.data.label);
  }
  box.dataset.renderedEdges = String(cy.edges().length);
  box.dataset.renderedNodes = String(cy.nodes().not(".namespace").length);
}

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

function drawEdges(state) {
  const body = document.querySelector("#edges tbody");
  body.replaceChildren();
  for (const e of state.graph.edges) {
    const tr = document.createElement("tr");
    tr.className = "edge" + (e.denied ? " denied" : "");
    Object.assign(tr.dataset, { source: e.source, destination: e.target, protocol: e.protocol, mtls: String(e.mtls), waypoint: e.waypoint, rps: String(e.rps), requests: String(e.requests), denied: String(e.denied), policy: e.denied_policy, principal: e.source_principal });
    for (const v of [e.source, e.target, e.protocol, e.mtls ? "mTLS" : "no", e.waypoint || "", fmt.rate(e.rps), fmt.pct(e.success), fmt.ms(e.p99_ms), fmt.bytes(e.bytes_per_s), String(e.requests), e.denied ? `${e.denied} (${e.denied_policy})` : ""]) cell(tr, v);
    body.appendChild(tr);
  }
}

function spark(values) {
  const w = 120, h = 22;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("width", w);
  svg.setAttribute("height", h);
  if (values.length > 1) {
    const max = Math.max(...values, 1e-9);
    const pts = values.map((v, i) => `${(i * w) / (values.length - 1)},${h - 1 - (v / max) * (h - 2)}`);
    const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    line.setAttribute("points", pts.join(" "));
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", "#4a7bd0");
    svg.appendChild(line);
  }
  svg.dataset.points = String(values.length);
  return svg;
}

function drawWorkloads(state) {
  const rows = [...state.workloads];
  rows.sort((a, b) => {
    const x = a[sortKey] ?? -1, y = b[sortKey] ?? -1;
    return (x < y ? -1 : x > y ? 1 : 0) * sortDir;
  });
  const body = document.querySelector("#workloads tbody");
  body.replaceChildren();
  for (const r of rows) {
    const tr = document.createElement("tr");
    tr.className = "workload";
    tr.dataset.workload = `${r.namespace}/${r.workload}`;
    cell(tr, r.namespace);
    cell(tr, r.workload);
    cell(tr, fmt.rate(r.rps));
    cell(tr, fmt.pct(r.success), r.success === null ? "" : r.success >= 0.99 ? "ok" : "bad");
    cell(tr, fmt.ms(r.p99_ms));
    cell(tr, fmt.bytes(r.bytes_per_s) + "/s");
    cell(tr, String(r.denied), r.denied ? "bad" : "");
    cell(tr, "").appendChild(spark(r.spark || []));
    body.appendChild(tr);
  }
  for (const th of document.querySelectorAll("#workloads th[data-key]")) {
    th.classList.toggle("sorted-asc", th.dataset.key === sortKey && sortDir === 1);
    th.classList.toggle("sorted-desc", th.dataset.key === sortKey && sortDir === -1);
  }
}

function drawDenials(state) {
  const body = document.querySelector("#denials tbody");
  body.replaceChildren();
  for (const d of state.denials) {
    const tr = document.createElement("tr");
    tr.className = "denial denied";
    Object.assign(tr.dataset, { source: d.source, destination: d.target, policy: d.policy });
    for (const v of [d.source, d.target, d.policy || "(no policy named)", String(d.count), d.reason]) cell(tr, v);
    body.appendChild(tr);
  }
}

function drawHealth(state) {
  const h = state.health || { checks: [], certificates: [] };
  const badge = document.getElementById("healthy");
  badge.textContent = h.healthy ? "✔ healthy" : `✖ ${(h.problems || []).length} problem(s)`;
  badge.className = h.healthy ? "ok" : "bad";
  const body = document.querySelector("#health tbody");
  body.replaceChildren();
  for (const c of h.checks || []) {
    const tr = document.createElement("tr");
    tr.className = "check";
    tr.dataset.ok = String(c.ok);
    cell(tr, c.ok ? "✔" : "✖", c.ok ? "ok" : "bad");
    cell(tr, c.category);
    cell(tr, c.name);
    cell(tr, c.detail + (c.ok || !c.hint ? "" : ` — fix: ${c.hint}`));
    body.appendChild(tr);
  }
  const certs = document.querySelector("#certificates tbody");
  certs.replaceChildren();
  for (const c of h.certificates || []) {
    const tr = document.createElement("tr");
    cell(tr, c.node);
    cell(tr, c.identity);
    cell(tr, c.expiresIn || "?");
    certs.appendChild(tr);
  }
}

function draw(state) {
  lastState = state;
  document.getElementById("cluster").textContent = state.cluster ? `· ${state.cluster}` : "";
  document.getElementById("source").textContent = state.source || "-";
  document.getElementById("updated").textContent = (state.updated || "never") + (state.stale ? " (stale: the last refresh failed)" : "");
  document.getElementById("refresh").textContent = state.refreshSeconds || 3;
  const problems = document.getElementById("problems");
  problems.replaceChildren(...(state.problems || []).map((p) => Object.assign(document.createElement("li"), { textContent: p })));
  if (!state.graph) return;
  drawGraph(state);
  drawEdges(state);
  drawWorkloads(state);
  drawDenials(state);
  drawHealth(state);
  document.body.dataset.ready = "true";
}

async function poll() {
  try {
    const resp = await fetch("/api/state", { cache: "no-store" });
    draw(await resp.json());
  } catch (err) {
    document.getElementById("problems").replaceChildren(Object.assign(document.createElement("li"), { textContent: `dashboard unreachable: ${err}` }));
  }
  setTimeout(poll, 1000 * ((lastState && lastState.refreshSeconds) || 3));
}

for (const th of document.querySelectorAll("#workloads th[data-key]")) {
  th.addEventListener("click", () => {
    sortDir = sortKey === th.dataset.key ? -sortDir : 1;
    sortKey = th.dataset.key;
    if (lastState) drawWorkloads(lastState);
  });
}
poll();
