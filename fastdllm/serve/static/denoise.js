// fastdllm's denoising page: sends a prompt to POST /v1/denoise and draws the server-sent events
// (see fastdllm/serve/denoise.py for their format). Plain JavaScript, no build step, no CDN.
//
// Events are queued and played back in order; "slow motion" spaces the forwards out so that
// a small model's denoising (a few ms per forward) can be watched. The stats shown are the
// server's own numbers for the forward on screen. body[data-state] is idle / running / done /
// stopped / error (the browser test reads it).
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  // viridis, as in `fastdllm generate --plot`: early forwards dark, late forwards light
  const RAMP = ["#440154", "#482878", "#3e4989", "#31688e", "#26828e", "#1f9e89", "#35b779", "#6ece58",
                "#b5de2b", "#fde725"];

  let cfg = null;
  let run = null;  // the request being shown (see newRun)

  // A server started with --api-key wants "Authorization: Bearer <key>" on /v1/...: the page
  // takes the key from its address (http://host:port/#key=KEY; the part after # never reaches
  // the server or its logs) and sends it with its own requests.
  const apiKey = new URLSearchParams(location.hash.slice(1)).get("key");
  const authHeaders = apiKey ? { Authorization: `Bearer ${apiKey}` } : {};

  function newRun() {
    return {
      controller: new AbortController(), queue: [], meta: null, rows: new Map(), current: null, text: "",
      last: null, done: null, paused: false, timer: null, shownAt: 0, streamEnded: false, finished: false,
    };
  }

  // ---- setup ----------------------------------------------------------------------------------
  async function init() {
    try {
      const r = await fetch("/v1/denoise/config", { headers: authHeaders });
      cfg = await r.json();
      if (r.status === 401) throw new Error("this server needs its API key: open this page as /#key=YOUR_KEY");
      if (!r.ok) throw new Error(cfg?.error?.message || r.statusText);
    } catch (e) {
      showError(`cannot read the server's configuration: ${e.message}`);
      setState("error");
      return;
    }
    $("model").textContent = cfg.model;
    $("max-tokens").value = cfg.max_tokens;
    $("max-tokens").max = cfg.max_model_len - 1;
    $("threshold").value = cfg.threshold;
    $("block-cache").checked = cfg.use_block_cache;
    const sub = $("sub-block");
    for (let n = 1; n <= cfg.block_size; n++) {
      if (cfg.block_size % n === 0) sub.add(new Option(String(n), String(n), false, n === cfg.sub_block_size));
    }
    const mode = $("mode");
    for (const opt of [...mode.options]) if (!cfg.modes.includes(opt.value)) opt.remove();
    if (!cfg.tokenizer) $("prompt").placeholder = "This model has no tokenizer: give the prompt as token ids, e.g. 1, 2, 3";
    for (const text of cfg.examples) {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "example";
      b.textContent = text;
      b.title = "decode this prompt";
      b.addEventListener("click", () => { $("prompt").value = text; start(); });
      $("examples").append(b);
    }
    $("examples").previousElementSibling.hidden = !cfg.examples.length;
    if (cfg.examples.length) $("prompt").value = cfg.examples[0];
    for (const id of ["threshold", "pace", "mode"]) $(id).addEventListener("input", syncControls);
    syncControls();
    $("form").addEventListener("submit", (e) => { e.preventDefault(); start(); });
    $("prompt").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); start(); }
    });
    $("pause").addEventListener("click", togglePause);
    $("stop").addEventListener("click", stop);
    setState("idle");
  }

  function syncControls() {
    $("threshold-value").textContent = Number($("threshold").value).toFixed(2);
    const pace = Number($("pace").value);
    $("pace-value").textContent = pace ? `${pace} ms` : "off";
    const ar = $("mode").value === "ar";
    for (const id of ["threshold", "sub-block", "block-cache"]) $(id).disabled = ar;
  }

  function requestBody() {
    const text = $("prompt").value;
    const body = {
      model: cfg.model, max_tokens: Number($("max-tokens").value), mode: $("mode").value, temperature: 0,
    };
    if (body.mode === "diffusion") {
      body.threshold = Number($("threshold").value);
      body.small_block_size = Number($("sub-block").value);
      body.use_block_cache = $("block-cache").checked;
    }
    if (cfg.chat) body.messages = [{ role: "user", content: text }];
    else if (cfg.tokenizer) body.prompt = text;
    else body.prompt = text.split(/[\s,]+/).filter(Boolean).map(Number);
    return body;
  }

  // ---- the request --------------------------------------------------------------------------
  async function start() {
    if (run) run.controller.abort();
    const r = (run = newRun());
    clearView();
    setState("running");
    let resp;
    try {
      resp = await fetch("/v1/denoise", {
        method: "POST", headers: { "Content-Type": "application/json", ...authHeaders }, body: JSON.stringify(requestBody()),
        signal: r.controller.signal,
      });
      if (!resp.ok) {
        const err = await resp.json().catch(() => null);
        throw new Error(err?.error?.message || `${resp.status} ${resp.statusText}`);
      }
      const reader = resp.body.getReader();
      const decoder = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          receive(r, buf.slice(0, cut));
          buf = buf.slice(cut + 2);
        }
      }
    } catch (e) {
      if (r !== run || r.controller.signal.aborted) return;  // replaced or stopped on purpose
      fail(r, e.message);
      return;
    }
    r.streamEnded = true;
    pump(r);
  }

  function receive(r, chunk) {
    for (const line of chunk.split("\n")) {
      if (!line.startsWith("data: ")) continue;
      const data = line.slice(6);
      if (data === "[DONE]") continue;
      r.queue.push(JSON.parse(data));
    }
    pump(r);
  }

  // play queued events in order: one forward per `pace` ms, everything else at once
  function pump(r) {
    if (r !== run || r.timer || r.paused || r.finished) return;
    const pace = Number($("pace").value);
    let stepped = false;
    while (r.queue.length) {
      const ev = r.queue[0];
      if (ev.type === "step" && pace > 0) {
        const wait = r.shownAt + pace - performance.now();
        if (stepped || wait > 0) {
          r.timer = setTimeout(() => { r.timer = null; pump(r); }, Math.max(wait, 0));
          break;
        }
        r.shownAt = performance.now();
        stepped = true;
      }
      r.queue.shift();
      apply(r, ev);
    }
    render(r);
  }

  function apply(r, ev) {
    if (ev.error) return fail(r, ev.error.message);
    if (ev.type === "start") {
      r.meta = ev;
    } else if (ev.type === "step") {
      r.text += ev.text;
      r.last = ev;
      const b = ev.block;
      if (r.current !== null && r.current !== b.start) r.rows.get(r.current).closed = true;
      r.rows.set(b.start, b);
      r.current = b.start;
    } else if (ev.type === "text") {
      r.text += ev.text;
    } else if (ev.type === "done") {
      r.done = ev;
      r.finished = true;
      if (r.current !== null) r.rows.get(r.current).closed = true;
      setState("done");
    }
  }

  function fail(r, message) {
    r.finished = true;
    r.controller.abort();
    showError(message);
    setState("error");
    render(r);
  }

  function togglePause() {
    if (!run) return;
    run.paused = !run.paused;
    $("pause").textContent = run.paused ? "Resume" : "Pause";
    document.body.classList.toggle("paused", run.paused);
    if (!run.paused) pump(run);
  }

  function stop() {
    if (!run || run.finished) return;
    run.finished = true;
    run.queue.length = 0;
    clearTimeout(run.timer);
    run.controller.abort();  // the server cancels the job when the stream closes
    setState("stopped");
    render(run);
  }

  // ---- drawing --------------------------------------------------------------------------------
  function setState(s) {
    document.body.dataset.state = s;
    const busy = s === "running";
    $("pause").disabled = !busy;
    $("stop").disabled = !busy;
    if (!busy) {
      $("pause").textContent = "Pause";
      document.body.classList.remove("paused");
    }
    const label = { idle: "ready", running: "decoding", stopped: "stopped", error: "error" }[s];
    if (label) $("s-status").textContent = label;
  }

  function showError(message) {
    $("error").textContent = message;
    $("error").hidden = false;
  }

  function clearView() {
    $("error").hidden = true;
    $("answer").textContent = "";
    $("blocks").replaceChildren();
    $("blocks-hint").textContent = "";
    $("tpf-chart").replaceChildren();
    $("tpf-hint").textContent = "";
    for (const id of ["s-tokens", "s-nfe", "s-tpf", "s-tps"]) $(id).textContent = "–";
    $("s-status-k").textContent = "status";
  }

  function render(r) {
    if (r !== run) return;
    $("answer").textContent = r.text;
    const last = r.last;
    const nfe = r.done ? r.done.fastdllm.nfe : last ? last.forward : 0;
    const tokens = r.done ? r.done.usage.completion_tokens : last ? last.tokens : 0;
    const seconds = r.done ? r.done.seconds : last ? last.seconds : 0;
    if (last || r.done) {
      $("s-tokens").textContent = String(tokens);
      $("s-nfe").textContent = String(nfe);
      $("s-tpf").textContent = nfe ? (tokens / nfe).toFixed(2) : "–";
      $("s-tps").textContent = seconds > 0 ? fmtRate(tokens / seconds) : "–";
    }
    if (r.done) {
      $("s-status").textContent = r.done.finish_reason;
      $("s-status-k").textContent = `finish · ${seconds.toFixed(2)} s`;
    }
    if (r.meta) {
      const m = r.meta;
      $("blocks-hint").textContent = m.mode === "ar"
        ? `autoregressive · one token per forward · rows of ${m.block_size}`
        : `${m.block_size} cells · sub-blocks of ${m.sub_block_size} · threshold ${m.threshold}`
          + (m.use_block_cache ? " · sub-block cache" : "");
    }
    drawBlocks(r, Math.max(nfe, 1));
    drawChart(r, nfe);
  }

  // how many cells each forward decoded (from every block's cells: exact even if frames were merged)
  function drawChart(r, nfe) {
    const counts = new Array(nfe).fill(0);
    for (const b of r.rows.values()) {
      b.decoded_at.forEach((f, i) => { if (f !== null && i >= b.prompt && f <= nfe) counts[f - 1] += 1; });
    }
    const top = Math.max(1, ...counts);
    const bars = counts.map((n, k) => {
      const bar = document.createElement("span");
      bar.className = "bar" + (n ? "" : " zero");
      bar.style.height = `${(100 * n) / top}%`;
      bar.style.background = ramp(nfe > 1 ? k / (nfe - 1) : 0);
      bar.title = `forward ${k + 1}: ${n} token${n === 1 ? "" : "s"}`;
      return bar;
    });
    $("tpf-chart").replaceChildren(...bars);
    const most = counts.length ? Math.max(...counts) : 0;
    $("tpf-hint").textContent = nfe ? `${nfe} forwards · at most ${most} in one` : "";
  }

  function fmtRate(x) {
    return x >= 100 ? x.toFixed(0) : x.toFixed(1);
  }

  function drawBlocks(r, maxForward) {
    $("ramp-hi").textContent = String(maxForward);
    $("ramp").style.background = `linear-gradient(90deg, ${RAMP.join(", ")})`;
    const container = $("blocks");
    const sub = r.meta ? r.meta.sub_block_size : 8;
    const end = r.meta && r.done ? r.meta.prompt_tokens + r.done.usage.completion_tokens : Infinity;
    const rows = [...r.rows.values()].sort((a, b) => a.start - b.start);
    const frag = document.createDocumentFragment();
    for (const b of rows) frag.append(drawRow(b, b.start === r.current && !r.finished, sub, maxForward, end));
    container.replaceChildren(frag);
  }

  function drawRow(b, live, sub, maxForward, end) {
    const row = document.createElement("div");
    row.className = "block-row" + (live ? " live" : "");
    row.dataset.start = b.start;
    const forwards = new Set(b.decoded_at.filter((x) => x !== null)).size;
    const label = document.createElement("div");
    label.className = "block-label";
    label.innerHTML = `<b>block ${b.index}</b><span>${forwards} fwd</span>`;
    label.title = `positions ${b.start}–${b.start + b.pieces.length - 1}; `
      + `its cells were decoded by ${forwards} forward pass${forwards === 1 ? "" : "es"}`;
    const cells = document.createElement("div");
    cells.className = "cells";
    const fresh = new Set(live ? b.new : []);
    for (let s = 0; s < b.pieces.length; s += sub) {
      const group = document.createElement("div");
      group.className = "sub" + (live && b.active === s ? " active" : "");
      group.style.setProperty("--n", Math.min(sub, b.pieces.length - s));
      for (let i = s; i < Math.min(s + sub, b.pieces.length); i++) {
        group.append(drawCell(b, i, fresh.has(i), maxForward, end));
      }
      cells.append(group);
    }
    row.append(label, cells);
    return row;
  }

  function drawCell(b, i, fresh, maxForward, end) {
    const cell = document.createElement("span");
    const piece = b.pieces[i];
    const at = b.decoded_at[i];
    const pos = b.start + i;
    cell.className = "cell";
    if (i < b.prompt) {
      cell.classList.add("prompt");
      cell.textContent = shown(piece);
      cell.title = `${JSON.stringify(piece)} · prompt · position ${pos}`;
    } else if (piece === null) {
      cell.classList.add("masked");
      cell.textContent = "░";
      cell.title = `masked · position ${pos}`;
    } else {
      const t = maxForward > 1 ? (at - 1) / (maxForward - 1) : 0;
      cell.classList.add("decoded");
      if (t > 0.62) cell.classList.add("light");
      if (pos >= end) cell.classList.add("beyond");  // decoded past the stop: not in the answer
      if (fresh) cell.classList.add("fresh");
      cell.style.background = ramp(t);
      cell.textContent = shown(piece);
      cell.title = `${JSON.stringify(piece)} · forward ${at} · position ${pos}`;
    }
    return cell;
  }

  // a token's text, readable in a small cell: line breaks and tabs as symbols, spaces trimmed
  function shown(piece) {
    const s = piece.replace(/\n/g, "⏎").replace(/\t/g, "→");
    const t = s.trim();
    if (t) return t;
    return s.length ? "␣" : "·";
  }

  function ramp(t) {
    const x = Math.min(Math.max(t, 0), 1) * (RAMP.length - 1);
    const i = Math.min(Math.floor(x), RAMP.length - 2);
    const a = hex(RAMP[i]), b = hex(RAMP[i + 1]), f = x - i;
    const c = a.map((v, k) => Math.round(v + (b[k] - v) * f));
    return `rgb(${c[0]}, ${c[1]}, ${c[2]})`;
  }

  function hex(h) {
    return [1, 3, 5].map((k) => parseInt(h.slice(k, k + 2), 16));
  }

  init();
})();
