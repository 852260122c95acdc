// sigroute's operator dashboard: polls GET /v1/admin/dashboard and draws it (plain DOM and SVG, no libraries).
"use strict";
(function () {
  const params = new URLSearchParams(location.search);
  const REFRESH_MS = Math.max(250, Number(params.get("refresh") || 2000));
  const KEY = "sigroute-dashboard-key";
  const PALETTE = ["#2563eb", "#16a34a", "#d97706", "#9333ea", "#dc2626", "#0891b2", "#65a30d", "#db2777", "#4b5563"];
  const SVG = "http://www.w3.org/2000/svg";
  const $ = (id) => document.getElementById(id);
  const colors = new Map();
  let timer = null;
  let generation = 0;   // a newer poll (a key just entered) makes the answers of older ones stale

  function color(name) {
    if (!colors.has(name)) colors.set(name, PALETTE[colors.size % PALETTE.length]);
    return colors.get(name);
  }
  function el(tag, attrs, text) {
    const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  function cell(text, attrs) { return el("td", attrs, text); }
  function fmt(x, digits) { return x === null || x === undefined ? "–" : Number(x).toFixed(digits); }
  function pct(x) { return x === null || x === undefined ? "–" : (100 * x).toFixed(1) + "%"; }
  function when(t) { return new Date(t * 1000).toLocaleTimeString(); }
  function fill(tbody, rows) { tbody.replaceChildren(...rows); }

  function showError(message) { const e = $("error"); e.textContent = message; e.hidden = !message; }

  async function poll() {
    clearTimeout(timer);
    const mine = ++generation;
    const key = sessionStorage.getItem(KEY);
    const headers = key ? { Authorization: "Bearer " + key } : {};
    let response;
    try {
      response = await fetch("/v1/admin/dashboard", { headers, cache: "no-store" });
    } catch (err) {
      if (mine !== generation) return;
      $("status").textContent = "gateway unreachable; retrying";
      timer = setTimeout(poll, REFRESH_MS);
      return;
    }
    if (mine !== generation) return;
    if (response.status === 401 || response.status === 403) {
      let message = "refused";
      try { message = (await response.json()).error.message; } catch (e) { /* keep "refused" */ }
      if (mine !== generation) return;
      $("board").hidden = true;
      $("login").hidden = false;
      $("logout").hidden = !key;
      $("status").textContent = "refused";
      showError((key ? "This key may not see the dashboard: " : "An admin key is needed: ") + message);
      return;   // wait for a key
    }
    if (!response.ok) {
      $("status").textContent = "error " + response.status + "; retrying";
      timer = setTimeout(poll, REFRESH_MS);
      return;
    }
    const data = await response.json();
    if (mine !== generation) return;
    showError("");
    $("login").hidden = true;
    $("logout").hidden = !key;
    $("board").hidden = false;
    render(data);
    $("status").textContent = "live · updated " + when(data.generated_at);
    timer = setTimeout(poll, REFRESH_MS);
  }

  function render(d) {
    $("window").textContent = "(last " + Math.round(d.window_s / 60) + " min, " + d.bucket_s + " s buckets)";
    $("rps").textContent = fmt(d.totals.requests_per_s_last_minute, 2);
    $("total").textContent = d.totals.requests;
    $("errors").textContent = d.totals.errors;
    traffic(d);
    decisions(d.decisions);
    learning(d.learning);
    fill($("cache"), d.cache.map((c) => el("tr", { "data-category": c.category }, null)).map((tr, i) => {
      const c = d.cache[i];
      tr.append(cell(c.category), cell(c.lookups, { "data-field": "lookups" }), cell(c.hits, { "data-field": "hits" }),
        cell(pct(c.hit_rate), { "data-field": "hit_rate", "data-value": c.hit_rate }),
        cell(c.entries, { "data-field": "entries" }), cell(c.false_hits, { "data-field": "false_hits" }));
      return tr;
    }));
    fill($("upstreams"), d.upstreams.map((u) => {
      const tr = el("tr", { "data-model": u.model });
      tr.append(cell(u.model), cell(u.breaker, { class: "state-" + u.breaker, "data-field": "breaker" }),
        cell(u.in_flight, { "data-field": "in_flight" }), cell(u.failed_attempts, { "data-field": "failed_attempts" }));
      return tr;
    }));
    const loaded = $("loaded-at");
    loaded.textContent = new Date(d.policy.loaded_at * 1000).toLocaleString();
    loaded.setAttribute("data-value", d.policy.loaded_at);
    $("policy-path").textContent = d.policy.path ? "from " + d.policy.path : "(embedded policy)";
    fill($("policy"), d.policy.decisions.map((p) => {
      const tr = el("tr", { "data-decision": p.name });
      tr.append(cell(p.name), cell(p.priority), cell(p.models.join(", ")), cell(p.algorithm),
        cell(p.cache ? "on" : "off"), cell(p.plugins.join(", ")));
      return tr;
    }));
    fill($("recent"), d.recent.map((r) => {
      const tr = el("tr", { "data-request-id": r.request_id });
      tr.append(cell(when(r.at)), cell(r.request_id), cell(r.api), cell(r.decision), cell(r.model),
        cell(r.cache || ""), cell(r.status), cell(fmt(r.latency_ms, 1)), cell(r.plugins.join(", ")));
      return tr;
    }));
  }

  function traffic(d) {
    const svg = $("traffic");
    svg.replaceChildren();
    const W = 900, H = 180, pad = 20;
    const buckets = d.traffic;
    const top = Math.max(1, ...buckets.map((b) => b.requests));
    const width = (W - pad) / buckets.length;
    svg.append(el("svg:text", { x: 2, y: 12, "font-size": 11, fill: "#6b7280" }, (top / d.bucket_s).toFixed(2) + " /s"));
    const names = new Set();
    buckets.forEach((b, i) => {
      let y = H;
      for (const [decision, n] of Object.entries(b.by_decision)) {
        names.add(decision);
        const h = (H - pad) * n / top;
        y -= h;
        svg.append(el("svg:rect", { x: pad + i * width, y, width: Math.max(1, width - 1), height: h,
          fill: color(decision), "data-decision": decision, "data-count": n, "data-t": b.t }));
      }
    });
    $("traffic-legend").replaceChildren(...[...names].sort().map((n) => {
      const s = el("span", {}); s.append(el("i", { style: "background:" + color(n) }), document.createTextNode(n)); return s;
    }));
  }

  function decisions(rows) {
    fill($("decisions"), rows.map((r) => {
      const tr = el("tr", { "data-decision": r.decision });
      const mix = el("td", { "data-field": "models" });
      const total = Object.values(r.models).reduce((a, b) => a + b, 0) || 1;
      const bar = el("svg:svg", { width: 120, height: 10, viewBox: "0 0 120 10" });
      let x = 0;
      for (const [model, n] of Object.entries(r.models)) {
        const w = 120 * n / total;
        bar.append(el("svg:rect", { x, y: 0, width: w, height: 10, fill: color(model), "data-model": model, "data-count": n }));
        x += w;
      }
      mix.append(bar, document.createTextNode(" " + Object.entries(r.models).map(([m, n]) => m + " " + n).join(", ")));
      tr.append(cell(r.decision), cell(r.requests, { "data-field": "requests" }), mix,
        cell(pct(r.error_rate), { "data-field": "error_rate", "data-value": r.error_rate }),
        cell(pct(r.fallback_rate), { "data-field": "fallback_rate", "data-value": r.fallback_rate }),
        cell(fmt(r.latency_ms.p50, 1), { "data-field": "p50" }), cell(fmt(r.latency_ms.p95, 1), { "data-field": "p95" }),
        cell(fmt(r.cost_usd, 6), { "data-field": "cost_usd", "data-value": r.cost_usd }),
        cell(r.cache_hits, { "data-field": "cache_hits" }));
      return tr;
    }));
  }

  function learning(decisions) {
    const box = $("learning");
    if (!decisions.length) { box.replaceChildren(el("p", { class: "note" }, "No learning decision in this policy.")); return; }
    box.replaceChildren(...decisions.map((dec) => {
      const wrap = el("div", { class: "arms", "data-decision": dec.decision });
      wrap.append(el("h3", {}, dec.decision));
      const W = Math.max(240, 90 * dec.arms.length), H = 170, base = 130;
      const svg = el("svg:svg", { width: W, height: H, viewBox: "0 0 " + W + " " + H, "data-testid": "arms-chart" });
      const values = dec.arms.flatMap((a) => [a.low, a.high]).filter((v) => v !== null);
      const lo = Math.min(0, ...values), hi = Math.max(1, ...values);
      const y = (v) => 10 + (base - 10) * (hi - v) / (hi - lo || 1);
      svg.append(el("svg:line", { x1: 0, x2: W, y1: y(0), y2: y(0), stroke: "#e5e7eb" }));
      dec.arms.forEach((a, i) => {
        const x = 45 + i * 90;
        const g = el("svg:g", { "data-arm": a.model, "data-observations": a.observations, "data-requests": a.requests,
          "data-share": a.share, "data-estimate": a.estimate === null ? "" : a.estimate });
        if (a.estimate !== null) {
          g.append(el("svg:rect", { x: x - 6, y: y(a.high), width: 12, height: Math.max(1, y(a.low) - y(a.high)),
            fill: color(a.model), "fill-opacity": 0.25 }));
          g.append(el("svg:circle", { cx: x, cy: y(a.estimate), r: 4, fill: color(a.model) }));
          g.append(el("svg:text", { x: x + 9, y: y(a.estimate) + 4, "font-size": 10 }, a.estimate.toFixed(3)));
        }
        g.append(el("svg:text", { x, y: base + 14, "font-size": 11, "text-anchor": "middle" }, a.model));
        g.append(el("svg:text", { x, y: base + 28, "font-size": 10, "text-anchor": "middle", fill: "#6b7280" },
          a.observations.toFixed(0) + " learned · " + (100 * a.share).toFixed(0) + "%"));
        svg.append(g);
      });
      wrap.append(svg, shareOverTime(dec));
      return wrap;
    }));
  }

  // each arm's share of the decision's traffic per bucket, as one line per arm
  function shareOverTime(dec) {
    const W = Math.max(240, 90 * dec.arms.length), H = 70;
    const svg = el("svg:svg", { width: W, height: H, viewBox: "0 0 " + W + " " + H, "data-testid": "share-chart" });
    const points = dec.share_over_time;
    svg.append(el("svg:text", { x: 0, y: 10, "font-size": 10, fill: "#6b7280" }, "share over time"));
    if (!points.length) return svg;
    const t0 = points[0].t, t1 = points[points.length - 1].t;
    const x = (t) => (t1 === t0 ? W / 2 : 4 + (W - 8) * (t - t0) / (t1 - t0));
    const y = (share) => H - 4 - (H - 18) * share;
    for (const arm of dec.arms) {
      const coords = points.map((p) => x(p.t).toFixed(1) + "," + y(p.shares[arm.model] || 0).toFixed(1));
      if (coords.length === 1) coords.push((x(t0) + 4).toFixed(1) + "," + coords[0].split(",")[1]);
      svg.append(el("svg:polyline", { points: coords.join(" "), fill: "none", stroke: color(arm.model),
        "stroke-width": 2, "data-arm": arm.model }));
    }
    return svg;
  }

  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("key").value.trim();
    if (key) sessionStorage.setItem(KEY, key); else sessionStorage.removeItem(KEY);
    $("key").value = "";
    poll();
  });
  $("logout").addEventListener("click", () => { sessionStorage.removeItem(KEY); poll(); });
  poll();
})();
