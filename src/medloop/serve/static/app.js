// medloop annotation UI: the queue in the strategy's order, an image with the model's proposal and uncertainty,
// a label-map editor (brush, eraser, fill, undo), the image class, submit / skip, progress and metrics.
// Plain JavaScript, no build step. Authentication is the cookie the server set when the page was opened
// with the token in the URL.
"use strict";

const COLORS = [null, [255, 64, 64], [64, 192, 255], [255, 208, 64], [96, 255, 96], [255, 96, 255],
  [255, 150, 60], [150, 120, 255], [60, 255, 210], [240, 240, 240]];
const $ = (id) => document.getElementById(id);

const S = {
  info: null, status: null, client: null, strategy: null, item: null, label: null, undo: [], cls: null,
  tool: "brush", value: 1, radius: 3, showMask: true, showUnc: false, opacity: 0.45,
  ww: 255, wl: 128, zoom: 1, panX: 0, panY: 0, painting: false, last: null, drag: null, space: false,
  busy: false, baseCanvas: document.createElement("canvas"), overlayCanvas: document.createElement("canvas"),
};

// ------------------------------------------------------------------------------------------------ server

async function api(path, options = {}) {
  const response = await fetch(path, { credentials: "same-origin", ...options });
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (e) { body = { detail: text }; }
  if (!response.ok) {
    const error = new Error((body && body.detail) || response.statusText);
    error.status = response.status;
    throw error;
  }
  return body;
}

function say(text, isError = false) {
  const el = $("message");
  el.textContent = text;
  el.className = isError ? "error" : "";
}

function decode(b64) {
  if (!b64) return null;
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

// ------------------------------------------------------------------------------------------------ PNG

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

function crc32(bytes) {
  let c = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

async function zlib(data) {
  if (window.CompressionStream) {
    const stream = new Blob([data]).stream().pipeThrough(new CompressionStream("deflate"));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  }
  // stored (uncompressed) deflate blocks inside a zlib wrapper
  const blocks = Math.max(1, Math.ceil(data.length / 65535));
  const out = new Uint8Array(2 + data.length + blocks * 5 + 4);
  out[0] = 0x78; out[1] = 0x01;
  let o = 2;
  for (let b = 0; b < blocks; b++) {
    const chunk = data.subarray(b * 65535, Math.min(data.length, (b + 1) * 65535));
    out[o++] = b === blocks - 1 ? 1 : 0;
    out[o++] = chunk.length & 0xff; out[o++] = chunk.length >> 8;
    out[o++] = ~chunk.length & 0xff; out[o++] = (~chunk.length >> 8) & 0xff;
    out.set(chunk, o); o += chunk.length;
  }
  let a = 1, s2 = 0;
  for (let i = 0; i < data.length; i++) { a = (a + data[i]) % 65521; s2 = (s2 + a) % 65521; }
  const adler = ((s2 << 16) | a) >>> 0;
  out[o++] = adler >>> 24; out[o++] = (adler >>> 16) & 0xff; out[o++] = (adler >>> 8) & 0xff; out[o++] = adler & 0xff;
  return out;
}

function chunk(type, data) {
  const out = new Uint8Array(12 + data.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, data.length);
  for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
  out.set(data, 8);
  view.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
  return out;
}

// An 8-bit grayscale PNG whose pixel values are the label values.
async function encodeLabelPNG(width, height, pixels) {
  const raw = new Uint8Array((width + 1) * height);
  for (let y = 0; y < height; y++) raw.set(pixels.subarray(y * width, (y + 1) * width), y * (width + 1) + 1);
  const header = new Uint8Array(13);
  const hv = new DataView(header.buffer);
  hv.setUint32(0, width); hv.setUint32(4, height);
  header[8] = 8; header[9] = 0; header[10] = 0; header[11] = 0; header[12] = 0;
  const parts = [new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10]), chunk("IHDR", header),
    chunk("IDAT", await zlib(raw)), chunk("IEND", new Uint8Array(0))];
  return new Blob(parts, { type: "image/png" });
}

// ------------------------------------------------------------------------------------------------ drawing

// A canvas sized to the current item and a blank image to fill, or null when no item is shown.
function blankLayer(canvas) {
  const it = S.item;
  if (!it) return null;
  canvas.width = it.width; canvas.height = it.height;
  const ctx = canvas.getContext("2d");
  return { it, ctx, img: ctx.createImageData(it.width, it.height) };
}

function renderBase() {
  const layer = blankLayer(S.baseCanvas);
  if (!layer) return;
  const { it, ctx, img } = layer;
  const lo = S.wl - S.ww / 2;
  const n = it.width * it.height;
  for (let i = 0; i < n; i++) {
    for (let k = 0; k < 3; k++) {
      const v = it.channels === 3 ? it.pixels[i * 3 + k] : it.pixels[i];
      img.data[i * 4 + k] = Math.max(0, Math.min(255, ((v - lo) / S.ww) * 255));
    }
    img.data[i * 4 + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
}

function renderOverlay() {
  const layer = blankLayer(S.overlayCanvas);
  if (!layer) return;
  const { it, ctx, img } = layer;
  const n = it.width * it.height;
  let top = 1;
  if (it.uncertainty) for (let i = 0; i < n; i++) top = Math.max(top, it.uncertainty[i]);
  for (let i = 0; i < n; i++) {
    let r = 0, g = 0, b = 0, a = 0;
    if (S.showUnc && it.uncertainty) {
      const u = it.uncertainty[i] / top;  // relative to this image's most uncertain pixel: purple -> yellow
      r = 255 * Math.min(1, 0.45 + u); g = 255 * u * u; b = 200 * (1 - u); a = Math.pow(u, 1.5) * 0.95;
    }
    const v = S.label[i];
    if (S.showMask && v > 0) {
      const col = COLORS[v % COLORS.length] || [255, 255, 255];
      r = col[0]; g = col[1]; b = col[2]; a = 1;
    }
    img.data[i * 4] = r; img.data[i * 4 + 1] = g; img.data[i * 4 + 2] = b; img.data[i * 4 + 3] = Math.round(a * 255);
  }
  ctx.putImageData(img, 0, 0);
}

function draw() {
  const canvas = $("canvas");
  const rect = canvas.getBoundingClientRect();
  if (canvas.width !== Math.round(rect.width) || canvas.height !== Math.round(rect.height)) {
    canvas.width = Math.round(rect.width); canvas.height = Math.round(rect.height);
  }
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  if (!S.item) return;
  const w = S.item.width * S.zoom, h = S.item.height * S.zoom;
  ctx.drawImage(S.baseCanvas, S.panX, S.panY, w, h);
  ctx.globalAlpha = S.opacity;
  ctx.drawImage(S.overlayCanvas, S.panX, S.panY, w, h);
  ctx.globalAlpha = 1;
  if (S.cursor && S.tool !== "fill") {
    ctx.strokeStyle = S.tool === "eraser" ? "#fff" : "rgb(" + (COLORS[S.value] || [255, 255, 255]).join(",") + ")";
    ctx.beginPath();
    ctx.arc(S.cursor.x, S.cursor.y, Math.max(1, S.radius * S.zoom), 0, 2 * Math.PI);
    ctx.stroke();
  }
}

function fitView() {
  if (!S.item) return;
  const canvas = $("canvas");
  const rect = canvas.getBoundingClientRect();
  S.zoom = Math.max(0.1, Math.min(rect.width / S.item.width, rect.height / S.item.height) * 0.95);
  S.panX = (rect.width - S.item.width * S.zoom) / 2;
  S.panY = (rect.height - S.item.height * S.zoom) / 2;
}

function toImage(event) {
  const rect = $("canvas").getBoundingClientRect();
  const cx = event.clientX - rect.left, cy = event.clientY - rect.top;
  return { x: (cx - S.panX) / S.zoom, y: (cy - S.panY) / S.zoom, cx, cy };
}

// ------------------------------------------------------------------------------------------------ editing

function pushUndo() {
  S.undo.push(S.label.slice());
  if (S.undo.length > 50) S.undo.shift();
}

function undo() {
  if (!S.undo.length) return;
  S.label = S.undo.pop();
  renderOverlay(); draw();
}

function stamp(x, y, value) {
  const it = S.item, r = S.radius;
  const x0 = Math.max(0, Math.floor(x - r)), x1 = Math.min(it.width - 1, Math.ceil(x + r));
  const y0 = Math.max(0, Math.floor(y - r)), y1 = Math.min(it.height - 1, Math.ceil(y + r));
  for (let yy = y0; yy <= y1; yy++) {
    for (let xx = x0; xx <= x1; xx++) {
      const dx = xx + 0.5 - x, dy = yy + 0.5 - y;
      if (dx * dx + dy * dy <= r * r) S.label[yy * it.width + xx] = value;
    }
  }
}

function strokeTo(p) {
  const value = S.tool === "eraser" ? 0 : S.value;
  const from = S.last || p;
  const steps = Math.max(1, Math.ceil(Math.hypot(p.x - from.x, p.y - from.y) / Math.max(0.5, S.radius / 2)));
  for (let i = 1; i <= steps; i++) stamp(from.x + ((p.x - from.x) * i) / steps, from.y + ((p.y - from.y) * i) / steps, value);
  if (steps === 1) stamp(p.x, p.y, value);
  S.last = p;
}

function fill(p) {
  const it = S.item, w = it.width, h = it.height;
  const x = Math.floor(p.x), y = Math.floor(p.y);
  if (x < 0 || y < 0 || x >= w || y >= h) return;
  const target = S.label[y * w + x];
  if (target === S.value) return;
  pushUndo();
  const stack = [y * w + x];
  while (stack.length) {
    const i = stack.pop();
    if (S.label[i] !== target) continue;
    S.label[i] = S.value;
    const px = i % w, py = (i - px) / w;
    if (px > 0) stack.push(i - 1);
    if (px < w - 1) stack.push(i + 1);
    if (py > 0) stack.push(i - w);
    if (py < h - 1) stack.push(i + w);
  }
  renderOverlay(); draw();
}

function setTool(tool) {
  S.tool = tool;
  for (const b of document.querySelectorAll("[data-tool]")) b.classList.toggle("active", b.dataset.tool === tool);
  draw();
}

function setValue(value) {
  if (!S.info || !(String(value) in S.info.medloop.mask_labels) || value === 0) return;
  S.value = value;
  if (S.tool === "eraser") setTool("brush");
  for (const b of document.querySelectorAll("[data-value]")) b.classList.toggle("active", Number(b.dataset.value) === value);
}

function setClass(index) {
  if (!S.info || index < 0 || index >= S.info.medloop.class_names.length) return;
  S.cls = index;
  for (const input of document.querySelectorAll("#classes input")) input.checked = Number(input.value) === index;
}

function setRadius(r) {
  S.radius = Math.max(1, Math.min(40, r));
  $("brush-size").value = S.radius;
  $("brush-size-text").textContent = S.radius;
  draw();
}

function zoomAt(factor, cx, cy) {
  const z = Math.max(0.1, Math.min(64, S.zoom * factor));
  S.panX = cx - ((cx - S.panX) * z) / S.zoom;
  S.panY = cy - ((cy - S.panY) * z) / S.zoom;
  S.zoom = z;
  draw();
}

// ------------------------------------------------------------------------------------------------ items

async function openItem(id, lease = true) {
  try {
    if (lease) await api(`/api/lease?image=${encodeURIComponent(id)}&client_id=${encodeURIComponent(S.client)}`, { method: "POST" });
    const it = await api(`/api/item?image=${encodeURIComponent(id)}`);
    it.pixels = decode(it.image);
    it.proposal = decode(it.proposal);
    it.uncertainty = decode(it.uncertainty);
    it.final = decode(it.final);
    S.item = it;
    S.label = (it.final || it.proposal || new Uint8Array(it.width * it.height)).slice();
    S.undo = [];
    S.cls = null;
    $("placeholder").style.display = "none";
    renderSide();
    fitView(); renderBase(); renderOverlay(); draw();
    say(it.proposal ? "The model's proposal is loaded: correct it, set the class, submit." : "Paint the mask, set the class, submit.");
    $("canvas").focus();
    renderQueue();
  } catch (e) {
    say(e.message, true);
    if (e.status === 409) { S.item = null; setTimeout(openNext, 200); }
  }
}

async function openNext() {
  if (S.busy) return;
  S.busy = true;
  try {
    const next = await api(`/activelearning/${encodeURIComponent(S.strategy)}`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ client_id: S.client }),
    });
    if (next && next.id) {
      await openItem(next.id, false);
    } else {
      S.item = null;
      $("placeholder").style.display = "flex";
      $("placeholder").textContent = waitingText();
      renderSide(); draw();
    }
  } catch (e) {
    say(e.message, true);
  } finally {
    S.busy = false;
  }
}

function waitingText() {
  const st = S.status;
  if (!st) return "Connecting…";
  if (st.phase === "finished") return "The run is finished: the budget is labeled.";
  if (st.phase === "error") return "The loop stopped: " + st.error;
  if (st.queue.length) return "Every open image is with another annotator; waiting…";
  return `The model is ${st.phase} (round ${st.round}); the next queue appears when it is ranked…`;
}

async function submit() {
  const it = S.item;
  if (!it || S.busy) return;
  if (S.info.medloop.needs_class && S.cls === null) { say("Choose the image class first (Shift+1…9).", true); return; }
  S.busy = true;
  try {
    const form = new FormData();
    form.append("label", await encodeLabelPNG(it.width, it.height, S.label), "label.png");
    const params = { client_id: S.client, run_id: S.info.medloop.run_id };
    if (S.info.medloop.needs_class) params.class = S.cls;
    form.append("params", JSON.stringify(params));
    const res = await api(`/datastore/label?image=${encodeURIComponent(it.id)}&tag=final`, { method: "PUT", body: form });
    say(`Saved ${it.id} (${res.labeled} / ${res.budget} labeled).`);
    S.item = null;
  } catch (e) {
    say(e.message, true);
    if (e.status !== 409) { S.busy = false; return; }
    S.item = null;  // taken or labeled by someone else: move on
  }
  S.busy = false;
  await refresh();
  await openNext();
}

async function skip() {
  const it = S.item;
  if (!it || S.busy) return;
  try {
    await api(`/api/release?image=${encodeURIComponent(it.id)}&client_id=${encodeURIComponent(S.client)}`, { method: "POST" });
  } catch (e) { say(e.message, true); }
  S.item = null;
  await openNext();
}

// ------------------------------------------------------------------------------------------------ panels

function renderSide() {
  const it = S.item;
  $("item-title").textContent = it ? it.id : "No image";
  $("item-meta").textContent = it
    ? [it.model_round !== null && it.model_round !== undefined ? `model of round ${it.model_round}` : "no model yet",
       it.score !== null && it.score !== undefined ? `score ${Number(it.score).toPrecision(3)}` : ""].filter(Boolean).join(" · ")
    : "";
  const names = S.info ? S.info.medloop.class_names : [];
  $("class-box").style.display = names.length ? "" : "none";
  const box = $("classes");
  box.textContent = "";
  names.forEach((name, i) => {
    const label = document.createElement("label");
    const input = document.createElement("input");
    input.type = "radio"; input.name = "cls"; input.value = i; input.checked = S.cls === i;
    input.addEventListener("change", () => setClass(i));
    const text = document.createElement("span");
    text.textContent = `${i + 1}. ${name}`;
    const bar = document.createElement("span");
    bar.className = "bar";
    const fillEl = document.createElement("span");
    const p = it && it.probs ? it.probs[name] : null;
    fillEl.style.width = p === null || p === undefined ? "0" : `${Math.round(p * 100)}%`;
    bar.title = p === null || p === undefined ? "no model yet" : `model: ${(p * 100).toFixed(1)}%`;
    bar.appendChild(fillEl);
    label.append(input, text, bar);
    box.appendChild(label);
  });
  $("submit").disabled = !it;
  $("skip").disabled = !it;
}

function renderQueue() {
  const st = S.status;
  const list = $("queue");
  list.textContent = "";
  if (!st) return;
  for (const q of st.queue) {
    const li = document.createElement("li");
    const name = document.createElement("span");
    name.textContent = `${q.rank !== null ? q.rank + 1 + "." : ""} ${q.id}`;
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = q.leased_by && !q.yours ? q.leased_by : q.score !== null ? Number(q.score).toPrecision(3) : "";
    li.append(name, score);
    if (S.item && q.id === S.item.id) li.classList.add("current");
    if (q.leased_by && !q.yours) li.classList.add("taken");
    else li.addEventListener("click", () => openItem(q.id));
    list.appendChild(li);
  }
  $("queue-empty").textContent = st.queue.length ? "" : waitingText();
}

function renderStatus() {
  const st = S.status;
  $("run-name").textContent = `${st.name} · ${st.method} · ${st.strategy}`;
  const phase = $("phase");
  phase.textContent = st.phase;
  phase.className = "badge " + st.phase.split(" ")[0];
  $("progress-bar").style.width = `${Math.min(100, (100 * st.labeled) / Math.max(1, st.budget))}%`;
  $("progress-text").textContent = `${st.labeled} / ${st.budget} labeled`;
  $("round-text").textContent = `round ${st.round}`;
  const rows = st.metrics;
  const head = $("metrics").querySelector("thead"), body = $("metrics").querySelector("tbody");
  head.textContent = ""; body.textContent = "";
  if (rows.length) {
    const keys = Object.keys(rows[0]);
    const tr = document.createElement("tr");
    for (const k of keys) { const th = document.createElement("th"); th.textContent = k; tr.appendChild(th); }
    head.appendChild(tr);
    for (const row of rows) {
      const r = document.createElement("tr");
      for (const k of keys) {
        const td = document.createElement("td");
        const v = row[k];
        td.textContent = v === null || v === undefined ? "–" : k === "round" ? v : Number(v).toFixed(3);
        r.appendChild(td);
      }
      body.appendChild(r);
    }
  }
  if (!S.item) { $("placeholder").textContent = waitingText(); }
  renderQueue();
}

async function refresh() {
  try {
    S.status = await api(`/api/status?client_id=${encodeURIComponent(S.client)}`);
    renderStatus();
    if (!S.item && !S.busy && S.status.queue.some((q) => !q.leased_by || q.yours)) await openNext();
  } catch (e) {
    say(e.status === 401 ? "Not signed in: open the URL with the token that `medloop serve` printed." : e.message, true);
  }
}

// ------------------------------------------------------------------------------------------------ events

function bind() {
  const canvas = $("canvas");
  canvas.addEventListener("contextmenu", (e) => e.preventDefault());
  canvas.addEventListener("pointerdown", (e) => {
    if (!S.item) return;
    canvas.setPointerCapture(e.pointerId);
    const p = toImage(e);
    if (e.button === 1 || (e.button === 0 && S.space)) { S.drag = { mode: "pan", x: e.clientX, y: e.clientY }; return; }
    if (e.button === 2) { S.drag = { mode: "wl", x: e.clientX, y: e.clientY, ww: S.ww, wl: S.wl }; return; }
    if (S.tool === "fill") { fill(p); return; }
    pushUndo();
    S.painting = true; S.last = null;
    strokeTo(p); renderOverlay(); draw();
  });
  canvas.addEventListener("pointermove", (e) => {
    const p = toImage(e);
    S.cursor = { x: p.cx, y: p.cy };
    showPixel(p);
    if (S.drag && S.drag.mode === "pan") {
      S.panX += e.clientX - S.drag.x; S.panY += e.clientY - S.drag.y;
      S.drag.x = e.clientX; S.drag.y = e.clientY;
    } else if (S.drag && S.drag.mode === "wl") {
      S.ww = Math.max(1, Math.min(255, S.drag.ww + (e.clientX - S.drag.x)));
      S.wl = Math.max(0, Math.min(255, S.drag.wl - (e.clientY - S.drag.y)));
      $("ww").value = S.ww; $("wl").value = S.wl;
      renderBase();
    } else if (S.painting) {
      strokeTo(p); renderOverlay();
    }
    draw();
  });
  const end = () => { S.painting = false; S.last = null; S.drag = null; };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);
  canvas.addEventListener("pointerleave", () => { S.cursor = null; draw(); });
  canvas.addEventListener("wheel", (e) => {
    e.preventDefault();
    const p = toImage(e);
    zoomAt(e.deltaY < 0 ? 1.15 : 1 / 1.15, p.cx, p.cy);
  }, { passive: false });

  for (const b of document.querySelectorAll("[data-tool]")) b.addEventListener("click", () => setTool(b.dataset.tool));
  $("brush-size").addEventListener("input", (e) => setRadius(Number(e.target.value)));
  $("undo").addEventListener("click", undo);
  $("show-mask").addEventListener("change", (e) => { S.showMask = e.target.checked; renderOverlay(); draw(); });
  $("show-unc").addEventListener("change", (e) => { S.showUnc = e.target.checked; renderOverlay(); draw(); });
  $("opacity").addEventListener("input", (e) => { S.opacity = Number(e.target.value) / 100; draw(); });
  $("ww").addEventListener("input", (e) => { S.ww = Number(e.target.value); renderBase(); draw(); });
  $("wl").addEventListener("input", (e) => { S.wl = Number(e.target.value); renderBase(); draw(); });
  $("zoom-in").addEventListener("click", () => { const c = $("canvas"); zoomAt(1.25, c.width / 2, c.height / 2); });
  $("zoom-out").addEventListener("click", () => { const c = $("canvas"); zoomAt(0.8, c.width / 2, c.height / 2); });
  $("reset-view").addEventListener("click", resetView);
  $("submit").addEventListener("click", submit);
  $("skip").addEventListener("click", skip);
  window.addEventListener("resize", () => { fitView(); draw(); });
  window.addEventListener("keyup", (e) => { if (e.code === "Space") S.space = false; });
  window.addEventListener("keydown", (e) => {
    if (e.target.tagName === "INPUT" && e.target.type !== "checkbox" && e.target.type !== "radio" && e.target.type !== "range") return;
    const digit = /^Digit([1-9])$/.exec(e.code);
    if (digit && e.shiftKey) { setClass(Number(digit[1]) - 1); e.preventDefault(); return; }
    if (digit) { setValue(Number(digit[1])); e.preventDefault(); return; }
    const key = e.key.toLowerCase();
    if ((e.ctrlKey || e.metaKey) && key === "z") { undo(); e.preventDefault(); return; }
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const actions = {
      b: () => setTool("brush"), e: () => setTool("eraser"), f: () => setTool("fill"), z: undo,
      "[": () => setRadius(S.radius - 1), "]": () => setRadius(S.radius + 1), enter: submit, s: skip,
      m: () => { $("show-mask").click(); }, u: () => { $("show-unc").click(); }, r: resetView,
      "+": () => zoomAt(1.25, $("canvas").width / 2, $("canvas").height / 2), "=": () => zoomAt(1.25, $("canvas").width / 2, $("canvas").height / 2),
      "-": () => zoomAt(0.8, $("canvas").width / 2, $("canvas").height / 2),
      " ": () => { S.space = true; },
    };
    if (actions[key]) { actions[key](); e.preventDefault(); }
  });
}

function showPixel(p) {
  const it = S.item, x = Math.floor(p.x), y = Math.floor(p.y);
  if (!it || x < 0 || y < 0 || x >= it.width || y >= it.height) { $("pixel").textContent = ""; return; }
  const i = y * it.width + x;
  const parts = [`(${x}, ${y})`, `value ${it.channels === 3 ? it.pixels[i * 3] : it.pixels[i]}`, `label ${S.label[i]}`];
  if (it.uncertainty) parts.push(`uncertainty ${(it.uncertainty[i] / 255).toFixed(2)}`);
  $("pixel").textContent = parts.join(" · ");
}

function resetView() {
  S.ww = 255; S.wl = 128;
  $("ww").value = 255; $("wl").value = 128;
  fitView(); renderBase(); draw();
}

function buildLabelButtons() {
  const box = $("label-buttons");
  box.textContent = "";
  const labels = S.info.medloop.mask_labels;
  for (const [value, name] of Object.entries(labels)) {
    const v = Number(value);
    if (v === 0) continue;
    const b = document.createElement("button");
    b.dataset.value = v;
    b.title = `Paint ${name} (${v})`;
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.background = "rgb(" + (COLORS[v % COLORS.length] || [255, 255, 255]).join(",") + ")";
    b.append(sw, `${v} ${name}`);
    b.addEventListener("click", () => setValue(v));
    box.appendChild(b);
  }
}

async function main() {
  bind();
  try {
    S.info = await api("/info/");
  } catch (e) {
    say(e.status === 401 ? "Not signed in: open the URL with the token that `medloop serve` printed." : e.message, true);
    return;
  }
  S.strategy = Object.keys(S.info.strategies)[0];
  const key = `medloop-client-${S.info.medloop.run_id}`;
  S.client = sessionStorage.getItem(key) || `annotator-${Math.random().toString(36).slice(2, 8)}`;
  sessionStorage.setItem(key, S.client);
  $("who").textContent = S.client;
  buildLabelButtons();
  setTool("brush");
  setValue(Number(Object.keys(S.info.medloop.mask_labels).find((v) => Number(v) > 0)) || 1);
  renderSide();
  await refresh();
  setInterval(refresh, 1500);
  setInterval(() => {  // keep the lease of the open image while the annotator works on it
    if (S.item) api(`/api/lease?image=${encodeURIComponent(S.item.id)}&client_id=${encodeURIComponent(S.client)}`, { method: "POST" })
      .catch((e) => say(e.message, true));
  }, Math.max(5000, (S.info.medloop.lease_seconds * 1000) / 3));
}

main();
