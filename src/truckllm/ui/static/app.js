/* TruckLLM dashboard: the core. Signs in with the admin key (kept in sessionStorage, sent
   as the admin API's bearer), routes #page hashes to the renderers in pages.js, refreshes
   the page in view. No innerHTML anywhere: every value reaches the DOM as text. */
"use strict";
(function () {
  const STORE = "truckllm.admin_key";
  const params = new URLSearchParams(location.search);
  const refreshMs = Math.max(200, Number(params.get("refresh")) || 5000);
  const pages = {};
  let timer = null;
  let current = null; // {name, state}
  let clockSkew = 0; // server clock minus ours, seconds

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.className = v;
      else if (k === "text") el.textContent = v;
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  class AuthError extends Error {}

  async function api(path, opts) {
    const key = sessionStorage.getItem(STORE);
    if (!key) throw new AuthError("not signed in");
    const init = Object.assign({ headers: {}, cache: "no-store" }, opts || {});
    init.headers = Object.assign({ Authorization: "Bearer " + key }, init.headers);
    const resp = await fetch("../admin/v1/" + path, init);
    if (resp.status === 401) throw new AuthError("the admin key was refused");
    let body = null;
    try { body = await resp.json(); } catch (e) { body = null; }
    if (!resp.ok && !(opts && opts.acceptErrors)) {
      const msg = body && body.error ? body.error.message : resp.status + " " + resp.statusText;
      throw new Error(msg);
    }
    if (body && typeof body.now === "number") clockSkew = body.now - Date.now() / 1000;
    return { status: resp.status, body };
  }

  function serverNow() { return Date.now() / 1000 + clockSkew; }

  // -- formatting ---------------------------------------------------------------------------
  const nf = new Intl.NumberFormat("en-US");
  function num(v) { return v === null || v === undefined ? "–" : nf.format(v); }
  function ms(v) {
    if (v === null || v === undefined) return "–";
    return v >= 1000 ? (v / 1000).toFixed(2) + " s" : (v >= 10 ? v.toFixed(0) : v.toFixed(2)) + " ms";
  }
  function pct(v) { return v === null || v === undefined ? "–" : (v * 100).toFixed(v < 0.1 ? 2 : 1) + " %"; }
  function usd(v) {
    if (v === null || v === undefined || v === "") return "–";
    const n = Number(v);
    return "$" + (n !== 0 && Math.abs(n) < 0.01 ? n.toFixed(6) : n.toFixed(2));
  }
  function left(until) {
    if (!until) return "";
    const s = Math.max(0, until - serverNow());
    return s >= 90 ? Math.round(s / 60) + " min" : s.toFixed(s < 10 ? 1 : 0) + " s";
  }
  function clock(t) { return new Date(t * 1000).toLocaleTimeString(); }

  // -- charts (uPlot) -----------------------------------------------------------------------
  const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#65a30d", "#64748b"];
  function chart(box, title, xs, series, opts) {
    box.replaceChildren();
    if (!window.uPlot || !xs.length) {
      box.append(h("p", { class: "muted", text: title + ": no data in this window yet" }));
      return null;
    }
    const width = Math.max(280, box.clientWidth || 600);
    const o = {
      title, width, height: (opts && opts.height) || 220,
      scales: { x: { time: true } },
      series: [{}].concat(series.map((s, i) => ({
        label: s.label, stroke: s.color || PALETTE[i % PALETTE.length], width: 2,
        fill: opts && opts.fill ? (s.color || PALETTE[i % PALETTE.length]) + "33" : undefined,
        value: s.fmt ? (u, v) => s.fmt(v) : undefined, spanGaps: true,
      }))),
      axes: [{}, { size: 60, values: opts && opts.axis ? (u, vals) => vals.map(opts.axis) : undefined }],
      legend: { live: true },
    };
    return new window.uPlot(o, [xs].concat(series.map((s) => s.data)), box);
  }

  // -- navigation ---------------------------------------------------------------------------
  function setStatus(text, bad) {
    const el = document.getElementById("status");
    el.textContent = text;
    el.className = bad ? "error" : "muted";
  }

  async function refresh() {
    if (!current) return;
    const page = current;
    try {
      await pages[page.name].update(page.state);
      if (!page.state.drawn) {
        page.state.drawn = true; // the page's data is drawn: bench/ui_load.py reads the mark
        await new Promise((done) => requestAnimationFrame(() => setTimeout(done, 0)));
        performance.mark("truckllm:rendered:" + page.name);
      }
      if (page === current) setStatus("updated " + new Date().toLocaleTimeString());
    } catch (e) {
      if (e instanceof AuthError) { signOut(e.message); return; }
      setStatus(String(e.message || e), true);
    }
  }

  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(async () => { await refresh(); schedule(); }, refreshMs);
  }

  async function show() {
    if (!sessionStorage.getItem(STORE)) { signOut(""); return; }
    const name = (location.hash || "#overview").slice(1).split("?")[0];
    const pageName = pages[name] ? name : "overview";
    document.getElementById("login").hidden = true;
    document.getElementById("nav").hidden = false;
    document.getElementById("logout").hidden = false;
    for (const a of document.querySelectorAll("#nav a")) {
      a.classList.toggle("active", a.dataset.page === pageName);
    }
    const root = document.getElementById("page");
    root.replaceChildren();
    const state = { root };
    current = { name: pageName, state };
    pages[pageName].mount(state);
    await refresh();
    schedule();
  }

  function signOut(message) {
    clearTimeout(timer);
    current = null;
    sessionStorage.removeItem(STORE);
    document.getElementById("page").replaceChildren();
    document.getElementById("login").hidden = false;
    document.getElementById("nav").hidden = true;
    document.getElementById("logout").hidden = true;
    document.getElementById("login-error").textContent = message || "";
    setStatus("");
  }

  async function signIn(ev) {
    ev.preventDefault();
    const input = document.getElementById("login-key");
    sessionStorage.setItem(STORE, input.value.trim());
    try {
      await api("stats");
    } catch (e) {
      signOut(e instanceof AuthError ? "That is not the admin key." : String(e.message || e));
      return;
    }
    input.value = "";
    await show();
  }

  window.TL = { h, api, pages, chart, num, ms, pct, usd, left, clock, serverNow, refresh, PALETTE };

  document.addEventListener("DOMContentLoaded", () => {
    document.getElementById("login").addEventListener("submit", signIn);
    document.getElementById("logout").addEventListener("click", () => signOut(""));
    window.addEventListener("hashchange", show);
    show();
  });
})();
