/* TruckLLM dashboard: the pages. Each has mount(state) (build the fixed parts once) and
   update(state) (read the admin API, redraw), called again every refresh. */
"use strict";
(function () {
  const { h, api, pages, chart, num, ms, pct, usd, left, clock } = window.TL;

  function card(label, id) {
    return h("div", { class: "card stat" }, h("div", { class: "label", text: label }),
      h("div", { class: "value", id, text: "–" }));
  }
  function set(id, text) { const el = document.getElementById(id); if (el) el.textContent = text; }
  function select(id, options, value, onchange) {
    return h("select", { id, onchange },
      options.map(([v, label]) => h("option", { value: v, selected: v === value }, label)));
  }
  function table(head) {
    return h("table", {}, h("thead", {}, h("tr", {}, head.map((c) => h("th", { text: c })))), h("tbody"));
  }

  // -- overview ---------------------------------------------------------------------------
  pages.overview = {
    mount(s) {
      s.window = "900";
      s.root.append(
        h("div", { class: "toolbar" }, h("h1", { text: "Overview" }),
          h("label", {}, "window ", select("ov-window",
            [["300", "5 min"], ["900", "15 min"], ["3600", "1 hour"], ["21600", "6 hours"], ["86400", "24 hours"]],
            s.window, (e) => { s.window = e.target.value; window.TL.refresh(); }))),
        h("div", { class: "grid" },
          card("Requests", "ov-requests"), card("Error rate", "ov-errors"),
          card("Latency p50 / p95", "ov-latency"), card("First token p50 / p95", "ov-ttft"),
          card("Gateway overhead p50 / p95", "ov-overhead"), card("Tokens in / out / cached", "ov-tokens"),
          card("Spend", "ov-spend"), card("Keys", "ov-keys")),
        s.c1 = h("div", { class: "chart", id: "ov-chart-requests" }),
        s.c2 = h("div", { class: "chart", id: "ov-chart-latency" }));
    },
    async update(s) {
      const { body: o } = await api("overview?window=" + s.window);
      set("ov-requests", num(o.requests) + (o.rate_limited ? "  (" + num(o.rate_limited) + " × 429)" : ""));
      set("ov-errors", pct(o.error_rate) + "  (" + num(o.errors) + ")");
      set("ov-latency", ms(o.latency_ms.p50) + " / " + ms(o.latency_ms.p95));
      set("ov-ttft", ms(o.ttft_ms.p50) + " / " + ms(o.ttft_ms.p95));
      set("ov-overhead", ms(o.overhead_ms.p50) + " / " + ms(o.overhead_ms.p95));
      set("ov-tokens", num(o.tokens.prompt) + " / " + num(o.tokens.completion) + " / " + num(o.tokens.cached));
      set("ov-spend", usd(o.cost_usd));
      set("ov-keys", Object.entries(o.keys).map(([k, n]) => n + " " + k).join(", ") || "none");
      const x = o.series.t;
      chart(s.c1, "Requests and errors per minute", x,
        [{ label: "requests", data: o.series.requests }, { label: "errors", data: o.series.errors }]);
      chart(s.c2, "Latency per minute", x,
        [{ label: "p50", data: o.series.p50_ms, fmt: ms }, { label: "p95", data: o.series.p95_ms, fmt: ms }],
        { axis: ms });
    },
  };

  // -- keys -------------------------------------------------------------------------------
  function short(v) {
    if (v === null || v === undefined) return "–";
    const a = Math.abs(v);
    if (a >= 1e6) return Number((v / 1e6).toFixed(a >= 1e7 ? 0 : 2)) + "M";
    if (a >= 1e4) return Number((v / 1e3).toFixed(a >= 1e5 ? 0 : 1)) + "k";
    return num(v);
  }
  function headroom(k) {
    const out = [];
    for (const [name, limit] of Object.entries(k.limits)) {
      if (typeof limit !== "number" || !(name in k.used)) continue;
      out.push(name + " " + short(Math.max(0, Math.round(limit - k.used[name]))) + "/" + short(limit));
    }
    return out.join(" · ") || "no limits";
  }
  function reported(k) {
    const r = k.provider_reported;
    if (!r) return "–";
    const parts = [];
    if (r.remaining_requests !== null) parts.push("req " + short(r.remaining_requests) + (r.limit_requests ? "/" + short(r.limit_requests) : ""));
    if (r.remaining_tokens !== null) parts.push("tok " + short(r.remaining_tokens) + (r.limit_tokens ? "/" + short(r.limit_tokens) : ""));
    return parts.join(" · ") || "–";
  }
  function statusText(k) {
    if (k.status === "cooling") return "cooling " + left(k.until);
    if (k.status === "active") return "active";
    return k.status.replace(/_/g, " ") + (k.reason ? ": " + k.reason : "") + (k.until ? " (" + left(k.until) + ")" : "");
  }
  async function toggle(id, disabled) {
    await api("keys/" + encodeURIComponent(id) + (disabled ? "/enable" : "/disable"), { method: "POST" });
    await window.TL.refresh();
  }
  const KEY_ROWS = 100;
  pages.keys = {
    mount(s) {
      s.filter = "";
      s.root.append(
        h("div", { class: "toolbar" }, h("h1", { text: "Keys" }),
          h("input", { id: "keys-filter", type: "search", placeholder: "filter by key, provider or status",
            oninput: (e) => { s.filter = e.target.value.toLowerCase(); pages.keys.draw(s); } }),
          s.count = h("span", { class: "muted" })),
        h("div", { class: "scroll" }, s.table = table(["key", "provider", "status", "headroom (left/limit)",
          "provider reported", "requests", "429s", "latency", "errors", "spend", ""])));
    },
    async update(s) {
      const { body } = await api("keys");
      // keys that need a look first (not active), then by provider and id as configured
      s.keys = body.data.map((k, i) => [k.status === "active" ? 1 : 0, i, k]).sort((a, b) => a[0] - b[0] || a[1] - b[1]).map((x) => x[2]);
      pages.keys.draw(s);
    },
    draw(s) {
      if (!s.keys) return;
      const rows = [];
      let shown = 0;
      for (const k of s.keys) {
        if (s.filter && !(k.id + " " + k.provider + " " + k.status).toLowerCase().includes(s.filter)) continue;
        if (++shown > KEY_ROWS) continue; // a long list is filtered, not scrolled through
        const disabled = k.status === "disabled";
        rows.push(h("tr", { "data-key": k.id, class: "st-" + k.status },
          h("td", { text: k.id }), h("td", { text: k.provider }),
          h("td", { class: "status" }, h("span", { class: "badge " + k.status, text: statusText(k) })),
          h("td", { class: "wrap", text: headroom(k) }), h("td", { class: "wrap", text: reported(k) }),
          h("td", { class: "n", text: num(k.requests) }),
          h("td", { class: "n", text: num(k.outcomes.rate_limited || 0) }),
          h("td", { class: "n", text: ms(k.latency_ms) }),
          h("td", { class: "n", text: pct(k.error_rate) }),
          h("td", { class: "n", text: usd(k.usage.cost_usd) }),
          h("td", {}, h("button", { type: "button", class: "toggle", "data-action": disabled ? "enable" : "disable",
            onclick: () => toggle(k.id, disabled) }, disabled ? "Enable" : "Disable"))));
      }
      s.table.tBodies[0].replaceChildren(...rows);
      s.count.textContent = shown > KEY_ROWS ? "showing " + KEY_ROWS + " of " + num(shown) + " (filter to narrow)" : num(shown) + " keys";
    },
  };

  // -- usage ------------------------------------------------------------------------------
  const RANGES = { "1h": [3600, "minute"], "24h": [86400, "hour"], "7d": [7 * 86400, "day"], "30d": [30 * 86400, "day"] };
  const METRICS = { cost: ["spend (USD)", (r) => Number(r.cost_usd)], requests: ["requests", (r) => r.requests],
    tokens: ["tokens", (r) => r.prompt_tokens + r.completion_tokens], errors: ["errors", (r) => r.errors] };
  pages.usage = {
    mount(s) {
      Object.assign(s, { group: "model", range: "24h", metric: "cost" });
      const re = () => window.TL.refresh();
      s.root.append(
        h("div", { class: "toolbar" }, h("h1", { text: "Usage and spend" }),
          h("label", {}, "by ", select("usage-group", ["model", "provider", "key", "client", "alias"].map((g) => [g, g]), s.group, (e) => { s.group = e.target.value; re(); })),
          h("label", {}, "over ", select("usage-range", Object.keys(RANGES).map((r) => [r, r]), s.range, (e) => { s.range = e.target.value; re(); })),
          h("label", {}, "show ", select("usage-metric", Object.keys(METRICS).map((m) => [m, METRICS[m][0]]), s.metric, (e) => { s.metric = e.target.value; re(); }))),
        s.chartBox = h("div", { class: "chart", id: "usage-chart" }),
        h("div", { class: "scroll" }, s.table = table(["group", "requests", "errors", "tokens in", "tokens out", "cached", "spend"])),
        h("p", { class: "muted", text: "From the usage ledger's per-minute, hourly and daily buckets (every process, as flushed to the state store)." }));
    },
    async update(s) {
      const [span, bucket] = RANGES[s.range];
      const step = { minute: 60, hour: 3600, day: 86400 }[bucket];
      const now = Math.floor(window.TL.serverNow());
      const from = Math.floor((now - span) / step) * step;
      const q = "group_by=" + s.group + "&from=" + from;
      const [{ body: series }, { body: totals }] = await Promise.all([
        api("usage?" + q + "&bucket=" + bucket + "&top=8"), api("usage?" + q)]);
      const [label, value] = METRICS[s.metric];
      totals.data.sort((a, b) => Number(b.cost_usd) - Number(a.cost_usd) || b.requests - a.requests);
      const xs = [];
      for (let t = from; t <= now; t += step) xs.push(t);
      const index = new Map(xs.map((t, i) => [t, i]));
      const byGroup = new Map();
      for (const r of series.data) {
        const i = index.get(r.bucket_start);
        if (i === undefined) continue;
        const name = r.other ? "other" : r[s.group] || "(none)";
        if (!byGroup.has(name)) byGroup.set(name, { label: name, data: xs.map(() => 0) });
        byGroup.get(name).data[i] += value(r);
      }
      const lines = [...byGroup.values()];
      chart(s.chartBox, label + " per " + bucket + " by " + s.group, series.data.length ? xs : [], lines,
        { fill: true, height: 260 });
      s.table.tBodies[0].replaceChildren(...totals.data.slice(0, 200).map((r) => h("tr", {},
        h("td", { text: r[s.group] || "(none)" }), h("td", { class: "n", text: num(r.requests) }),
        h("td", { class: "n", text: num(r.errors) }), h("td", { class: "n", text: num(r.prompt_tokens) }),
        h("td", { class: "n", text: num(r.completion_tokens) }), h("td", { class: "n", text: num(r.cached_tokens) }),
        h("td", { class: "n", text: usd(r.cost_usd) }))));
    },
  };

  // -- request tail ---------------------------------------------------------------------------
  const TAIL_FILTERS = ["model", "provider", "key", "client", "status"];
  pages.requests = {
    mount(s) {
      s.filters = {};
      s.root.append(
        h("div", { class: "toolbar" }, h("h1", { text: "Requests" }),
          TAIL_FILTERS.map((f) => h("input", { id: "tail-" + f, type: "search",
            placeholder: f === "status" ? "status (200, 4xx, error)" : f,
            onchange: (e) => { s.filters[f] = e.target.value.trim(); window.TL.refresh(); } }))),
        h("div", { class: "scroll" }, s.table = table(["time", "status", "endpoint", "model", "provider / key",
          "client", "attempts", "latency", "ttft", "overhead", "tokens in/out", "cost", "request id"])),
        h("p", { class: "muted", text: "The latest requests this process served (no bodies). Newest first." }));
    },
    async update(s) {
      const q = Object.entries(s.filters).filter(([, v]) => v)
        .map(([k, v]) => k + "=" + encodeURIComponent(v)).join("&");
      const { body } = await api("requests?limit=100" + (q ? "&" + q : ""));
      s.table.tBodies[0].replaceChildren(...body.data.map((r) => h("tr",
        { "data-request-id": r.request_id, class: r.status >= 400 || r.status === 0 ? "bad" : "" },
        h("td", { text: clock(r.time) }),
        h("td", { class: "status", text: String(r.status) + (r.error_code ? " " + r.error_code : "") }),
        h("td", { text: r.endpoint + (r.stream ? " (stream)" : "") }),
        h("td", { text: (r.model || "–") + (r.upstream_model && r.upstream_model !== r.model ? " → " + r.upstream_model : "") }),
        h("td", { text: (r.provider || "–") + " / " + (r.key || "–") }),
        h("td", { text: r.client || "–" }), h("td", { class: "n", text: num(r.attempts) }),
        h("td", { class: "n", text: ms(r.latency_ms) }), h("td", { class: "n", text: ms(r.ttft_ms) }),
        h("td", { class: "n", text: ms(r.overhead_ms) }),
        h("td", { class: "n", text: num(r.prompt_tokens) + " / " + num(r.completion_tokens) }),
        h("td", { class: "n", text: usd(r.cost_usd) }), h("td", { class: "mono", text: r.request_id }))));
    },
  };

  // -- budgets ------------------------------------------------------------------------------
  function bar(p) {
    if (!p.limit_usd) return h("span", { text: usd(p.spent_usd) });
    const used = Math.min(1, p.used || 0);
    return h("div", { class: "budget" }, h("div", { class: "track" }, h("meter", { min: "0", max: "1",
      low: "0.7", high: "0.9", optimum: "0", value: String(used) })),
    h("span", { text: usd(p.spent_usd) + " of " + usd(p.limit_usd) + " (" + pct(p.used) + ")" }));
  }
  pages.budgets = {
    mount(s) {
      s.root.append(h("div", { class: "toolbar" }, h("h1", { text: "Budgets" })),
        h("div", { class: "scroll" }, s.table = table(["client", "today", "this month", "total", "rpm", "tpm", "models"])),
        h("p", { class: "muted", text: "Spend in USD (UTC day and month), every process's as flushed plus this one's." }));
    },
    async update(s) {
      const { body } = await api("budgets");
      s.table.tBodies[0].replaceChildren(...(body.data.length ? body.data.map((c) => h("tr", { "data-client": c.client },
        h("td", { text: c.client }), h("td", {}, bar(c.budgets.daily)), h("td", {}, bar(c.budgets.monthly)),
        h("td", {}, bar(c.budgets.total)), h("td", { class: "n", text: num(c.rpm) }), h("td", { class: "n", text: num(c.tpm) }),
        h("td", { text: c.allowed_models ? c.allowed_models.join(", ") || "(patterns)" : "all" })))
        : [h("tr", {}, h("td", { colspan: "7", class: "muted", text: "No client has budgets or limits (server.api_keys)." }))]));
    },
  };

  // -- config -----------------------------------------------------------------------------
  async function reload(s) {
    s.result.textContent = "reloading…";
    s.result.className = "muted";
    const { body } = await api("reload", { method: "POST", acceptErrors: true });
    if (body && body.reloaded) {
      s.result.textContent = "Reloaded" + (body.restart_needed && body.restart_needed.length ? "; restart needed for: " + body.restart_needed.join(", ") : ".");
      s.result.className = "ok";
    } else {
      const errs = body && body.errors ? body.errors : [body && body.error ? body.error.message : "failed"];
      s.result.replaceChildren(h("strong", { text: "Reload failed; the running configuration is unchanged." }),
        h("ul", {}, errs.map((e) => h("li", { text: e }))));
      s.result.className = "error";
    }
    await window.TL.refresh();
  }
  pages.config = {
    mount(s) {
      s.root.append(
        h("div", { class: "toolbar" }, h("h1", { text: "Configuration" }),
          h("button", { id: "reload-btn", type: "button", onclick: () => reload(s) }, "Reload from file"),
          s.result = h("div", { id: "reload-result", role: "status" })),
        s.info = h("p", { id: "config-info", class: "muted" }),
        s.pre = h("pre", { id: "config-json", class: "code" }));
    },
    async update(s) {
      const [{ body: c }, { body: st }] = await Promise.all([api("config"), api("stats")]);
      const r = st.reload;
      s.info.textContent = "source: " + (c.source || "–") + (r ? " · last reload: " + (r.last_time ? clock(r.last_time) : "never") +
        " (" + r.last_trigger + ", " + (r.last_ok ? "ok" : "failed") + ") · " + r.succeeded + " ok, " + r.failed + " failed" : "");
      const text = JSON.stringify(c.config, null, 2);
      if (s.pre.textContent !== text) s.pre.textContent = text;
    },
  };
})();
