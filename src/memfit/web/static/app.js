// memfit's page: a form generated from GET /api/options, results from the JSON API.
// Plain JS, no dependencies, nothing fetched from outside this server.
"use strict";

(() => {
  const GiB = 2 ** 30;
  const DEBOUNCE_MS = 250;
  const COLORS = {
    weights: "#4e79a7", kv_cache: "#f28e2b", activations: "#e15759", gradients: "#76b7b2",
    optimizer_states: "#59a14f", logits: "#edc948", autocast_copies: "#b07aa1",
    adapters: "#ff9da7", buffers: "#9c755f",
  };
  const PALETTE = ["#8cd17d", "#b6992d", "#499894", "#86bcb6", "#d37295", "#fabfd2",
                   "#d4a6c8", "#79706e", "#f1ce63", "#a0cbe8"];
  const OVERHEAD_COLORS = ["#bab0ac", "#d7d0cc", "#9d9590", "#e6e1de", "#8a817c"];

  const $ = (sel) => document.querySelector(sel);
  const el = (tag, attrs = {}, ...children) => {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children) node.append(c);
    return node;
  };
  const svg = (tag, attrs = {}) => {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    return node;
  };

  // ---- state ---------------------------------------------------------------------------

  const state = {
    meta: null,          // GET /api/options
    models: [],          // GET /api/models
    gpus: [],            // GET /api/gpus
    source: "catalog",   // or "config"
    model: "llama-3.1-8b",
    config: "",
    mode: "infer",
    gpu: "h100-sxm",
    gpus_count: null,
    explain: false,
    options: { infer: {}, train: {} },  // only the values the user set
  };
  let colorIndex = {};
  let timer = null;
  let controller = null;
  let seq = 0;

  const gib = (b) => (b / GiB).toFixed(2);
  const bytes = (b) => Math.round(b).toLocaleString("en-US");
  const count = (n) => {
    for (const [d, s] of [[1e12, "T"], [1e9, "B"], [1e6, "M"], [1e3, "K"]])
      if (n >= d) return (n / d).toFixed(2) + s;
    return String(n);
  };
  const colorOf = (name) => {
    if (COLORS[name]) return COLORS[name];
    if (!(name in colorIndex)) colorIndex[name] = PALETTE[Object.keys(colorIndex).length % PALETTE.length];
    return colorIndex[name];
  };
  const label = (name) => name.replace(/_/g, " ");
  // a GPU that is not in the catalog: its capacity ("24GiB", "80GB"), as --gpu takes it
  const CUSTOM_GPU = "__custom__";
  const CAPACITY = /^\s*\d+(\.\d+)?\s*(gib|gb|mib|mb|tib|tb)\s*$/i;
  const ENGINE_WORDS = { vllm: "vLLM", sglang: "SGLang", ollama: "Ollama", llamacpp: "llama.cpp",
    hf: "transformers" };

  // ---- the form, from the option descriptions ------------------------------------------

  function optionControl(mode, opt) {
    const id = `opt-${mode}-${opt.name}`;
    const wrap = el("div", { class: "control", "data-option": opt.name });
    const help = `${opt.help} (${opt.flag}; allowed: ${opt.allowed})`;
    let input;
    if (opt.kind === "boolean") {
      input = el("input", { id, type: "checkbox", name: opt.name, title: help });
      wrap.classList.add("check");
      wrap.append(input, el("label", { for: id, text: opt.flag.slice(2), title: help }));
    } else {
      wrap.append(el("label", { for: id, text: opt.flag.slice(2), title: help }));
      if (opt.kind === "choice") {
        input = el("select", { id, name: opt.name, title: help });
        const dflt = opt.default === null ? "default" : `${opt.default} (default)`;
        input.append(el("option", { value: "", text: dflt }));
        opt.choices.forEach((c, i) => {
          if (c !== opt.default) input.append(el("option", { value: String(i), text: String(c) }));
        });
      } else if (opt.kind === "integer" || opt.kind === "number") {
        input = el("input", {
          id, name: opt.name, type: "number", title: help,
          min: opt.min ?? null, max: opt.max ?? null,
          step: opt.kind === "integer" ? "1" : "any",
          placeholder: opt.default === null ? "default" : String(opt.default),
          inputmode: opt.kind === "integer" ? "numeric" : "decimal",
        });
      } else {
        const sugg = (state.meta.suggestions || {})[opt.name];
        input = el("input", {
          id, name: opt.name, type: "text", title: help,
          placeholder: opt.default === null ? "default" : String(opt.default),
          list: sugg ? `${id}-list` : null, maxlength: "64",
        });
        if (sugg) {
          const dl = el("datalist", { id: `${id}-list` });
          for (const s of sugg) dl.append(el("option", { value: s }));
          wrap.append(dl);
        }
      }
      wrap.append(input);
    }
    wrap.append(el("small", { class: "help", text: opt.help }));
    input.dataset.mode = mode;
    input.dataset.option = opt.name;
    return wrap;
  }

  function buildForm() {
    for (const mode of state.meta.modes) {
      const box = $(`#options-${mode}`);
      box.replaceChildren();
      for (const opt of state.meta[mode]) {
        if (opt.name === "gpu") continue; // the scenario's GPU select above
        box.append(optionControl(mode, opt));
      }
    }
    const models = $("#model");
    const families = {};
    for (const m of state.models) (families[m.family] ||= []).push(m);
    for (const fam of Object.keys(families).sort()) {
      const group = el("optgroup", { label: fam });
      for (const m of families[fam])
        group.append(el("option", { value: m.name, text: `${m.name}  (${count(m.total_params)})` }));
      models.append(group);
    }
    const gpu = $("#gpu");
    gpu.append(el("option", { value: "", text: "none" }));
    for (const g of state.gpus)
      gpu.append(el("option", { value: g.name, text: `${g.name}  (${g.marketed})` }));
    gpu.append(el("option", { value: CUSTOM_GPU, text: "other: a capacity…" }));
    $("#gpus").max = String(state.meta.limits.max_fit_gpus);
    $("#version").textContent = state.meta.server.version;
  }

  const optionMeta = (mode, name) => state.meta[mode].find((o) => o.name === name);

  // Control -> value (undefined: not set, the default applies).
  function readControl(input) {
    const opt = optionMeta(input.dataset.mode, input.dataset.option);
    if (opt.kind === "boolean") return input.checked ? true : undefined;
    if (opt.kind === "choice") return input.value === "" ? undefined : opt.choices[Number(input.value)];
    const text = input.value.trim();
    if (opt.kind === "integer" || opt.kind === "number") {
      if (input.validity && input.validity.badInput) return NaN;
      return text === "" ? undefined : Number(text);
    }
    return text === "" ? undefined : text;
  }

  function writeControl(input, value) {
    const opt = optionMeta(input.dataset.mode, input.dataset.option);
    if (opt.kind === "boolean") input.checked = value === true;
    else if (opt.kind === "choice") {
      const i = opt.choices.findIndex((c) => String(c) === String(value));
      input.value = value === undefined || i < 0 || opt.choices[i] === opt.default ? "" : String(i);
    } else input.value = value === undefined || value === null ? "" : String(value);
  }

  function readForm() {
    state.source = document.querySelector('input[name="source"]:checked').value;
    state.mode = document.querySelector('input[name="mode"]:checked').value;
    state.model = $("#model").value;
    state.config = $("#config").value;
    const custom = $("#gpu").value === CUSTOM_GPU;
    $("#gpu-custom").hidden = !custom;
    state.gpu = custom ? $("#gpu-custom").value.trim() : $("#gpu").value;
    const n = $("#gpus").value.trim();
    state.gpus_count = n === "" ? null : Number(n);
    state.explain = $("#explain").checked;
    showEngineOptions();
    for (const mode of state.meta.modes) {
      const opts = {};
      for (const input of document.querySelectorAll(`#options-${mode} [data-option]:is(input,select)`)) {
        const box = input.closest(".control");
        if (box && box.hidden) continue; // another engine's option
        const v = readControl(input);
        if (v !== undefined) opts[input.dataset.option] = v;
      }
      state.options[mode] = opts;
    }
  }

  function writeForm() {
    document.querySelector(`input[name="source"][value="${state.source}"]`).checked = true;
    document.querySelector(`input[name="mode"][value="${state.mode}"]`).checked = true;
    if (state.models.some((m) => m.name === state.model)) $("#model").value = state.model;
    $("#config").value = state.config;
    const listed = state.gpus.some((g) => g.name === state.gpu);
    const capacity = !listed && CAPACITY.test(state.gpu || "");
    $("#gpu").value = listed ? state.gpu : capacity ? CUSTOM_GPU : "";
    $("#gpu-custom").value = capacity ? state.gpu : "";
    $("#gpu-custom").hidden = !capacity;
    $("#gpus").value = state.gpus_count === null ? "" : String(state.gpus_count);
    $("#explain").checked = state.explain;
    for (const mode of state.meta.modes)
      for (const input of document.querySelectorAll(`#options-${mode} [data-option]:is(input,select)`))
        writeControl(input, state.options[mode][input.dataset.option]);
    showSections();
  }

  function showSections() {
    $("#catalog-box").hidden = state.source !== "catalog";
    $("#config-box").hidden = state.source !== "config";
    for (const mode of state.meta.modes) $(`#options-${mode}`).hidden = state.mode !== mode;
    $("#explain-panel").hidden = !state.explain;
    showEngineOptions();
  }

  // An option whose help starts with engine names ("vllm: ...", "llamacpp/ollama: ...")
  // belongs to those engines (workload.py refuses it with another): the page shows the
  // options of the chosen engine only, and sends none of the hidden ones.
  function ownersOf(mode, opt) {
    const engine = optionMeta(mode, "engine");
    if (!engine || !opt) return null;
    const names = opt.help.split(":", 1)[0].split("/");
    return names.every((n) => engine.choices.includes(n)) ? names : null;
  }

  function chosenEngine(mode) {
    const input = document.querySelector(`#options-${mode} select[data-option="engine"]`);
    const value = input ? readControl(input) : undefined;
    return value === undefined ? optionMeta(mode, "engine").default : value;
  }

  function showEngineOptions() {
    for (const mode of state.meta.modes) {
      if (!optionMeta(mode, "engine")) continue;
      const engine = chosenEngine(mode);
      for (const wrap of document.querySelectorAll(`#options-${mode} .control[data-option]`)) {
        const owners = ownersOf(mode, optionMeta(mode, wrap.dataset.option));
        wrap.hidden = owners !== null && !owners.includes(engine);
      }
    }
  }

  // ---- the URL holds the scenario --------------------------------------------------------

  function toQuery() {
    const q = new URLSearchParams();
    if (state.source === "config") q.set("config", compactConfig());
    else q.set("model", state.model);
    if (state.mode !== "infer") q.set("mode", state.mode);
    if (state.gpu !== state.meta.default_gpu) q.set("gpu", state.gpu);
    if (state.gpus_count !== null) q.set("gpus", String(state.gpus_count));
    if (state.explain) q.set("explain", "1");
    for (const [k, v] of Object.entries(state.options[state.mode])) q.set(k, String(v));
    return q.toString();
  }

  function compactConfig() {
    try { return JSON.stringify(JSON.parse(state.config)); } catch { return state.config; }
  }

  function fromQuery(search) {
    const q = new URLSearchParams(search);
    if (q.has("config")) { state.source = "config"; state.config = prettyConfig(q.get("config")); }
    if (q.has("model")) { state.source = "catalog"; state.model = q.get("model"); }
    if (q.has("mode") && state.meta.modes.includes(q.get("mode"))) state.mode = q.get("mode");
    if (q.has("gpu")) state.gpu = q.get("gpu");
    if (q.has("gpus") && q.get("gpus") !== "") state.gpus_count = Number(q.get("gpus"));
    state.explain = q.get("explain") === "1";
    const opts = {};
    for (const opt of state.meta[state.mode]) {
      if (!q.has(opt.name) || opt.name === "gpu") continue;
      const raw = q.get(opt.name);
      if (opt.kind === "boolean") opts[opt.name] = raw === "true" || raw === "1";
      else if (opt.kind === "integer" || opt.kind === "number") opts[opt.name] = Number(raw);
      else if (opt.kind === "choice") {
        const c = opt.choices.find((x) => String(x) === raw);
        if (c !== undefined) opts[opt.name] = c;
      } else opts[opt.name] = raw;
    }
    state.options[state.mode] = opts;
  }

  function prettyConfig(text) {
    try { return JSON.stringify(JSON.parse(text), null, 2); } catch { return text; }
  }

  // ---- talking to the API ------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, detail) { super(`HTTP ${status}`); this.status = status; this.detail = detail; }
  }

  async function post(path, body, signal) {
    const r = await fetch(path, {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body), signal,
    });
    const data = await r.json().catch(() => ({ detail: [{ msg: r.statusText, loc: [] }] }));
    if (!r.ok) throw new ApiError(r.status, data.detail);
    return data;
  }

  function modelValue() {
    if (state.source === "catalog") return state.model;
    let config;
    try { config = JSON.parse(state.config); } catch (e) {
      throw new ApiError(0, [{ loc: ["body", "model"], msg: `config.json is not valid JSON: ${e.message}`,
                               input: null, allowed: "a JSON object" }]);
    }
    if (config === null || typeof config !== "object" || Array.isArray(config))
      throw new ApiError(0, [{ loc: ["body", "model"], msg: "config.json must be a JSON object",
                               input: null, allowed: "a JSON object" }]);
    return config;
  }

  function schedule() {
    readForm();
    showSections();
    history.replaceState(null, "", `${location.pathname}?${toQuery()}`);
    clearTimeout(timer);
    setStatus("busy", "updating…");
    timer = setTimeout(update, DEBOUNCE_MS);
  }

  function setStatus(kind, text) {
    document.body.dataset.state = kind;
    $("#status").textContent = text;
  }

  let lastParamsKey = null;

  async function update() {
    if (controller) controller.abort();
    controller = new AbortController();
    const signal = controller.signal;
    const mine = ++seq;
    clearErrors();
    const mode = state.mode;
    const options = { ...state.options[mode] };
    const gpu = state.gpu || null;
    let model;
    if (state.source === "config" && !state.config.trim()) {
      setStatus("idle", "paste a config.json");
      return;
    }
    try {
      model = modelValue();
      const paramsKey = JSON.stringify(model);
      const estimate = post(`api/${mode}`, { model, options: gpu ? { ...options, gpu } : options }, signal);
      const params = paramsKey !== lastParamsKey ? post("api/params", { model }, signal) : null;
      const est = await estimate;
      if (mine !== seq) return;
      renderEstimate(est);
      if (params) {
        const p = await params;
        lastParamsKey = paramsKey;
        if (mine === seq) renderParams(p);
      }
    } catch (err) {
      if (err.name === "AbortError" || mine !== seq) return;
      showError(err);
      setStatus("error", "fix the input");
      return;
    }
    // the slower answers: a verdict per common GPU, and the fit sweep for the chosen GPU
    const gpus = [...state.meta.common_gpus];
    if (gpu && !gpus.includes(gpu)) gpus.unshift(gpu);
    const verdicts = post("api/verdicts", { mode, model, gpus, options }, signal)
      .then((v) => { if (mine === seq) renderVerdicts(v); });
    let fit = Promise.resolve();
    $("#fit-gpu").textContent = gpu || "–";
    if (gpu) {
      $("#fit").classList.add("stale");
      const body = { mode, model, gpu, options };
      if (state.gpus_count !== null) body.gpus = state.gpus_count;
      fit = post("api/fit", body, signal).then((f) => { if (mine === seq) renderFit(f, mode); });
    } else {
      $("#fit").replaceChildren(el("p", { class: "muted", text: "Choose a GPU to see what fits on it." }));
    }
    try {
      await Promise.all([verdicts, fit]);
      if (mine === seq) setStatus("ready", "up to date");
    } catch (err) {
      if (err.name === "AbortError" || mine !== seq) return;
      showError(err);
      setStatus("error", "fix the input");
    }
  }

  // ---- errors ----------------------------------------------------------------------------------

  function clearErrors() {
    $("#error").hidden = true;
    $("#error").replaceChildren();
    for (const n of document.querySelectorAll(".invalid")) n.classList.remove("invalid");
  }

  function showError(err) {
    const box = $("#error");
    box.replaceChildren();
    const detail = err instanceof ApiError && Array.isArray(err.detail) ? err.detail
      : [{ loc: [], msg: String(err.message || err) }];
    const list = el("ul");
    for (const d of detail) {
      const loc = (d.loc || []).filter((x) => x !== "body");
      const where = loc.join(".") || "request";
      const li = el("li", {}, el("strong", { text: where + ": " }), d.msg || "");
      if (d.allowed) li.append(el("span", { class: "allowed", text: ` — allowed: ${d.allowed}` }));
      list.append(li);
      markInvalid(loc);
    }
    box.append(el("p", { text: "The server could not compute this scenario:" }), list);
    box.hidden = false;
  }

  function markInvalid(loc) {
    let node = null;
    if (loc[0] === "options" && loc[1]) {
      node = document.querySelector(`#options-${state.mode} [data-option="${CSS.escape(String(loc[1]))}"]:is(input,select)`);
      if (!node && loc[1] === "gpu") node = $("#gpu");
    } else if (loc[0] === "model") node = state.source === "config" ? $("#config") : $("#model");
    else if (loc[0] === "gpu") node = $("#gpu");
    else if (loc[0] === "gpus") node = $("#gpus");
    if (node) node.classList.add("invalid");
  }

  // ---- rendering -------------------------------------------------------------------------------

  function renderParams(p) {
    $("#params-info").textContent =
      `${p.model} (${p.model_type}): ${count(p.total_params)} parameters` +
      (p.active_params !== p.total_params ? `, ${count(p.active_params)} active per token` : "");
  }

  function renderEstimate(e) {
    const peak = $("#peak"), total = $("#total");
    peak.textContent = `${gib(e.peak_bytes)} GiB`;
    peak.dataset.bytes = String(e.peak_bytes);
    peak.title = `${bytes(e.peak_bytes)} bytes`;
    total.textContent = `${gib(e.total_bytes)} GiB`;
    total.dataset.bytes = String(e.total_bytes);
    total.title = `${bytes(e.total_bytes)} bytes`;
    const verdict = $("#verdict");
    verdict.className = "";
    if (e.fits === null) verdict.textContent = "no GPU chosen";
    else {
      // an engine's own refusal (vLLM not starting, a context beyond the model's limit) is
      // the verdict even when the bytes are within the GPU (extras.blockers)
      // the engine's own words: vLLM / SGLang start or refuse (fits == starts); requests
      // they reject, truncate or queue are said beside (extras.warnings), as in the CLI
      const blockers = (e.extras && e.extras.blockers) || [];
      const warnings = (e.extras && e.extras.warnings) || [];
      const engine = ENGINE_WORDS[e.options && e.options.engine] || "the engine";
      const refused = e.extras && e.extras.starts === false ? `${engine} does not start on ${e.gpu}`
        : `does not fit ${e.gpu}`;
      const starts = e.extras && e.extras.starts === true ? `${engine} starts on ${e.gpu}`
        : `fits ${e.gpu}`;
      verdict.textContent = e.fits
        ? `${starts} (${gib(e.headroom_bytes)} GiB free)` + (warnings.length ? `; but ${warnings[0]}` : "")
        : blockers.length ? `${refused}: ${blockers[0]}`
          : `does not fit ${e.gpu} (${gib(-e.headroom_bytes)} GiB over)`;
      verdict.className = e.fits ? (warnings.length ? "warn" : "ok") : "bad";
    }
    $("#peak-phase").textContent = e.peak_phase;
    renderBar(e);
    renderPhases(e);
    renderTable(e);
    renderTerms(e);
    $("#raw-json").textContent = JSON.stringify(e, null, 2);
  }

  function segmentsOf(components, overheads) {
    const segs = [];
    for (const [name, b] of Object.entries(components)) if (b > 0) segs.push({ name, bytes: b, color: colorOf(name) });
    Object.entries(overheads || {}).forEach(([name, b], i) => {
      if (b > 0) segs.push({ name, bytes: b, color: OVERHEAD_COLORS[i % OVERHEAD_COLORS.length], overhead: true });
    });
    return segs;
  }

  function drawBar(parent, segs, scale, y, h, width) {
    let x = 0;
    for (const s of segs) {
      const w = (s.bytes / scale) * width;
      const rect = svg("rect", { x: x.toFixed(2), y, width: Math.max(w, 0).toFixed(2), height: h,
                                 fill: s.color, class: s.overhead ? "seg overhead" : "seg" });
      const t = svg("title");
      t.textContent = `${label(s.name)}: ${gib(s.bytes)} GiB (${bytes(s.bytes)} bytes)`;
      rect.append(t);
      parent.append(rect);
      // a label only where it fits inside its segment (about 7.5 px per character)
      const full = `${label(s.name)} ${gib(s.bytes)}`;
      const text = w > full.length * 7.5 + 8 ? full : w > gib(s.bytes).length * 7.5 + 8 ? gib(s.bytes) : "";
      if (text) {
        const node = svg("text", { x: (x + 4).toFixed(2), y: y + h / 2 + 4, class: "seg-label" });
        node.textContent = text;
        parent.append(node);
      }
      x += w;
    }
    return x;
  }

  function renderBar(e) {
    const width = 1000, h = 44, top = 22;
    const segs = segmentsOf(e.components, e.overheads);
    const capacity = e.gpu_memory_bytes || 0;
    const scale = Math.max(e.total_bytes, capacity, 1) * 1.04;
    const root = svg("svg", { viewBox: `0 0 ${width} ${top + h + 24}`, role: "img",
                              "aria-label": `stacked bar of the peak: ${gib(e.total_bytes)} GiB in all` });
    root.append(svg("rect", { x: 0, y: top, width, height: h, class: "track" }));
    const end = drawBar(root, segs, scale, top, h, width);
    const peakX = (e.peak_bytes / scale) * width;
    root.append(svg("line", { x1: peakX, x2: peakX, y1: top - 4, y2: top + h + 4, class: "peak-mark" }));
    const pl = svg("text", { x: Math.min(peakX, width - 150), y: top + h + 18, class: "mark-label" });
    pl.textContent = `peak ${gib(e.peak_bytes)} GiB`;
    root.append(pl);
    const tl = svg("text", { x: Math.min(end + 4, width - 130), y: top - 6, class: "mark-label" });
    tl.textContent = `total ${gib(e.total_bytes)} GiB`;
    root.append(tl);
    if (capacity) {
      const cx = (capacity / scale) * width;
      root.append(svg("line", { x1: cx, x2: cx, y1: 2, y2: top + h + 6,
                                class: e.fits ? "capacity ok" : "capacity bad" }));
      const cl = svg("text", { x: Math.max(cx - 4, 120), y: 12, class: "mark-label", "text-anchor": "end" });
      cl.textContent = `${e.gpu}: ${gib(capacity)} GiB`;
      root.append(cl);
    }
    $("#bar").replaceChildren(root);
    const legend = $("#legend");
    legend.replaceChildren();
    for (const s of segs)
      legend.append(el("span", { class: "key" },
        el("span", { class: "swatch" + (s.overhead ? " overhead" : ""), "data-color": s.color }),
        `${label(s.name)}${s.overhead ? " (runtime)" : ""}`));
    for (const sw of legend.querySelectorAll(".swatch")) sw.style.background = sw.dataset.color;
  }

  function renderPhases(e) {
    const width = 1000, h = 18, gap = 8, left = 110;
    const names = Object.keys(e.phases);
    const scale = Math.max(...names.map((n) => e.phases[n].peak_bytes), 1) * 1.04;
    const root = svg("svg", { viewBox: `0 0 ${width} ${names.length * (h + gap)}`, role: "img",
                              "aria-label": "the peak of each phase" });
    names.forEach((name, i) => {
      const y = i * (h + gap);
      const t = svg("text", { x: 0, y: y + h - 4, class: "phase-label" + (name === e.peak_phase ? " peak" : "") });
      t.textContent = name;
      root.append(t);
      const g = svg("g", { transform: `translate(${left} 0)` });
      const segs = segmentsOf(e.phases[name].components, {});
      const end = drawBar(g, segs, scale, y, h, width - left - 90);
      const v = svg("text", { x: end + 6, y: y + h - 4, class: "mark-label" });
      v.textContent = `${gib(e.phases[name].peak_bytes)} GiB`;
      g.append(v);
      root.append(g);
    });
    $("#phases").replaceChildren(root);
  }

  function renderTable(e) {
    const body = $("#breakdown tbody");
    body.replaceChildren();
    const row = (cells, cls) => {
      const tr = el("tr", { class: cls || null });
      cells.forEach((c, i) => tr.append(el(i === 0 ? "th" : "td", { text: c, scope: i === 0 ? "row" : null })));
      body.append(tr);
    };
    const share = (b) => e.total_bytes ? `${((100 * b) / e.total_bytes).toFixed(1)}%` : "–";
    for (const [name, b] of Object.entries(e.components))
      row([label(name), gib(b), bytes(b), share(b)], b === 0 ? "zero" : null);
    row(["peak (tensors)", gib(e.peak_bytes), bytes(e.peak_bytes), share(e.peak_bytes)], "subtotal");
    for (const [name, b] of Object.entries(e.overheads || {}))
      row([`+ ${label(name)}`, gib(b), bytes(b), share(b)], "overhead");
    row(["total (nvidia-smi)", gib(e.total_bytes), bytes(e.total_bytes), "100%"], "total");
    if (e.host_bytes) row(["host memory (offload)", gib(e.host_bytes), bytes(e.host_bytes), ""], "host");
  }

  function renderTerms(e) {
    const body = $("#terms tbody");
    body.replaceChildren();
    for (const t of e.terms || []) {
      const tr = el("tr");
      tr.append(el("th", { scope: "row", text: label(t.name) }), el("td", { text: gib(t.bytes), title: `${bytes(t.bytes)} bytes` }),
        el("td", {}, el("code", { text: t.formula })), el("td", {}, el("code", { text: t.substituted })),
        el("td", { class: "source", text: t.source + (t.note ? ` — ${t.note}` : "") }));
      body.append(tr);
    }
    const dl = $("#assumptions");
    dl.replaceChildren();
    for (const [k, v] of Object.entries(e.assumptions || {})) {
      dl.append(el("dt", { text: label(k) }),
        el("dd", { text: typeof v === "string" ? v : JSON.stringify(v) }));
    }
  }

  function renderVerdicts(v) {
    const box = $("#verdicts");
    box.replaceChildren();
    for (const r of v.verdicts) {
      const text = r.fits ? `${gib(r.headroom_bytes)} GiB free`
        : r.headroom_bytes >= 0 ? "refused (see the estimate)" : `${gib(-r.headroom_bytes)} GiB over`;
      box.append(el("div", { class: `chip ${r.fits ? "ok" : "bad"}`, "data-gpu": r.gpu,
                             title: `total ${gib(r.total_bytes)} of ${gib(r.gpu_memory_bytes)} GiB usable` },
        el("strong", { text: r.gpu }), el("span", { text: r.marketed }),
        el("span", { class: "verdict", text: (r.fits ? "✓ fits, " : "✗ ") + text })));
    }
  }

  function answers(rows) {
    const dl = el("dl", { class: "answers" });
    for (const [k, v, hint] of rows) dl.append(el("dt", { text: k }), el("dd", { text: v, title: hint || null }));
    return dl;
  }

  const orNone = (x, f = String) => (x === null || x === undefined ? "nothing fits" : f(x));

  function renderFit(f, mode) {
    const box = $("#fit");
    box.classList.remove("stale");
    box.replaceChildren();
    if (mode === "infer") {
      const o = f.options;
      const rows = [
        ["largest batch", orNone(f.max_batch), `at prompt ${o.prompt} + generate ${o.generate}`],
        ["longest prompt", orNone(f.max_prompt, (x) => `${x.toLocaleString("en-US")} tokens`), `at batch ${o.batch}`],
        ["fewest GPUs", orNone(f.min_gpus, (n) => `${n} (tp ${f.layout.tp} × pp ${f.layout.pp})`)],
      ];
      if (f.kv_cache_tokens !== null && f.kv_cache_tokens !== undefined)
        rows.push(["KV cache pool", `${f.kv_cache_tokens.toLocaleString("en-US")} tokens (${f.kv_cache_blocks} blocks)`]);
      if (f.max_concurrency !== null && f.max_concurrency !== undefined)
        rows.push(["concurrent sequences", String(f.max_concurrency)]);
      if (f.max_gpu_layers !== null && f.max_gpu_layers !== undefined)
        rows.push(["largest --n-gpu-layers", String(f.max_gpu_layers)]);
      rows.push(["layout used", `tp ${o.tp} × pp ${o.pp}`]);
      box.append(answers(rows));
      for (const n of f.notes || []) box.append(el("p", { class: "muted small", text: n }));
      return;
    }
    box.append(answers([
      ["GPUs", String(f.gpus)],
      ["largest micro-batch", orNone(f.max_batch)],
      ["longest sequence", orNone(f.max_seq, (x) => `${x.toLocaleString("en-US")} tokens`)],
    ]));
    if (!f.layouts.length) {
      box.append(el("p", { class: "muted", text: `No layout of ${f.gpus} GPU(s) fits this batch and sequence.` }));
      return;
    }
    const table = el("table", { class: "numbers layouts" });
    const head = ["dp", "tp", "pp", "cp", "ep", "zero", "fsdp", "checkpointing", "offload", "peak GiB", "headroom GiB"];
    table.append(el("thead", {}, el("tr", {}, ...head.map((h) => el("th", { text: h })))));
    const tb = el("tbody");
    for (const l of f.layouts.slice(0, 10)) {
      tb.append(el("tr", {}, ...[l.dp, l.tp, l.pp, l.cp, l.ep, l.zero, l.fsdp || "–", l.checkpointing,
        l.offload, gib(l.peak_bytes), gib(l.headroom_bytes)].map((c) => el("td", { text: String(c) }))));
    }
    table.append(tb);
    box.append(el("h3", { text: `Layouts of ${f.gpus} GPU(s) that fit, fewest compromises first` }), table);
  }

  // ---- start -------------------------------------------------------------------------------------

  async function start() {
    try {
      const [meta, models, gpus] = await Promise.all(
        ["api/options", "api/models", "api/gpus"].map((p) => fetch(p).then((r) => r.json())));
      state.meta = meta;
      state.models = models;
      state.gpus = gpus;
      state.gpu = meta.default_gpu;
      if (!models.some((m) => m.name === state.model) && models.length) state.model = models[0].name;
    } catch (err) {
      setStatus("error", "could not reach the server");
      return;
    }
    buildForm();
    fromQuery(location.search);
    writeForm();
    const form = $("#inputs");
    form.addEventListener("input", schedule);
    form.addEventListener("change", schedule);
    form.addEventListener("submit", (ev) => ev.preventDefault());
    // Pasting a config starts from the chosen catalog model's config.json, to edit.
    for (const radio of document.querySelectorAll('input[name="source"]')) {
      radio.addEventListener("change", async () => {
        if (radio.value !== "config" || !radio.checked || $("#config").value.trim()) return;
        try {
          const r = await fetch(`api/models/${encodeURIComponent($("#model").value)}`);
          if (!r.ok) return;
          const entry = await r.json();
          if (!$("#config").value.trim()) {
            $("#config").value = JSON.stringify({ _name_or_path: entry.name, ...entry.config }, null, 2);
            schedule();
          }
        } catch { /* the user pastes their own */ }
      });
    }
    $("#reset").addEventListener("click", () => {
      const keep = { meta: state.meta, models: state.models, gpus: state.gpus };
      Object.assign(state, { source: "catalog", config: "", mode: "infer", gpu: keep.meta.default_gpu,
                             gpus_count: null, explain: false, options: { infer: {}, train: {} } });
      writeForm();
      schedule();
    });
    $("#copy-link").addEventListener("click", async () => {
      try { await navigator.clipboard.writeText(location.href); $("#copy-link").textContent = "Copied"; }
      catch { $("#copy-link").textContent = "Copy the address bar"; }
      setTimeout(() => { $("#copy-link").textContent = "Copy link"; }, 1500);
    });
    schedule();
  }

  // ---- check a pasted command line or config (POST /api/check) ---------------------------------

  function showCheckError(err) {
    const box = $("#check-error");
    const detail = err instanceof ApiError && Array.isArray(err.detail) ? err.detail
      : [{ loc: [], msg: String(err.message || err) }];
    const list = el("ul");
    for (const d of detail) {
      const where = (d.loc || []).filter((x) => x !== "body").join(".") || "request";
      const li = el("li", {}, el("strong", { text: where + ": " }), d.msg || "");
      if (d.allowed) li.append(el("span", { class: "allowed", text: ` — allowed: ${d.allowed}` }));
      list.append(li);
    }
    box.replaceChildren(el("p", { text: "memfit could not check this:" }), list);
    box.hidden = false;
  }

  function renderCheck(c) {
    const verdict = $("#check-verdict");
    const blockers = (c.extras && c.extras.blockers) || [];
    const warnings = (c.extras && c.extras.warnings) || [];
    // the engine's own words where it has them (vLLM / SGLang start or refuse), as above
    const engine = ENGINE_WORDS[c.options && c.options.engine] || "the engine";
    const starts = c.extras && c.extras.starts === true ? `${engine} starts on ${c.gpu}` : `fits ${c.gpu}`;
    const refused = c.extras && c.extras.starts === false ? `${engine} does not start on ${c.gpu}`
      : `does not fit ${c.gpu}`;
    if (c.fits === null || c.fits === undefined) verdict.textContent = "no GPU chosen: give one beside";
    else if (c.fits) verdict.textContent = `${starts} (${gib(c.headroom_bytes)} GiB free)` +
      (warnings.length ? `; but ${warnings[0]}` : "");
    else verdict.textContent = blockers.length ? `${refused}: ${blockers[0]}`
      : `does not fit ${c.gpu} (${gib(-c.headroom_bytes)} GiB over)`;
    verdict.className = c.fits === true ? (warnings.length ? "warn" : "ok") : c.fits === false ? "bad" : "";
    $("#check-numbers").textContent = `${c.artefact.kind}: peak ${gib(c.peak_bytes)} GiB, ` +
      `total ${gib(c.total_bytes)} GiB per GPU` + (c.fits === null ? "" : `; fits: ${c.fits ? "yes" : "no"}`);
    $("#check-equivalent").textContent = c.artefact.equivalent;
    const understood = (c.understood || []).map((u) =>
      el("li", { text: `${u.field} = ${JSON.stringify(u.value)} → ${u.option}` }));
    const ignored = (c.ignored || []).map((u) =>
      el("li", { text: `${u.field} = ${JSON.stringify(u.value)}: ${u.why}` }));
    $("#check-understood").replaceChildren(...(understood.length ? understood : [el("li", { text: "nothing" })]));
    $("#check-ignored").replaceChildren(...(ignored.length ? ignored : [el("li", { text: "nothing" })]));
    $("#check-result").hidden = false;
  }

  async function runCheck(ev) {
    ev.preventDefault();
    $("#check-error").hidden = true;
    $("#check-result").hidden = true;
    const body = { text: $("#check-text").value };
    const model = $("#check-model").value.trim(), gpu = $("#check-gpu").value.trim();
    const gpus = $("#check-gpus").value.trim();
    if (model) body.model = model;
    if (gpu) body.gpu = gpu;
    if (gpus) body.gpus = Number(gpus);
    try { renderCheck(await post("api/check", body)); }
    catch (err) { showCheckError(err); }
  }

  function startCheck() {
    const form = $("#check-form");
    if (form) form.addEventListener("submit", runCheck);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", startCheck);
  else startCheck();

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
