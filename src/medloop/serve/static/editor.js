// The label-map editor: an image with window/level, zoom and pan; the label map painted over it (brush,
// eraser, fill, undo); the model's uncertainty on a fixed 0-1 scale. Owns its own state; the page asks it.

export const COLORS = [null, [255, 64, 64], [64, 192, 255], [255, 208, 64], [96, 255, 96], [255, 96, 255],
  [255, 150, 60], [150, 120, 255], [60, 255, 210], [240, 240, 240]];

export function labelColor(value) {
  return COLORS[value % COLORS.length] || [255, 255, 255];
}

// Uncertainty u in [0, 1] (0 sure, 1 most unsure) -> [r, g, b, alpha]: purple to yellow, more opaque where less
// sure. The scale is fixed, so the same colour means the same uncertainty on every image.
export function uncertaintyColor(u) {
  return [255 * Math.min(1, 0.45 + u), 255 * u * u, 200 * (1 - u), Math.pow(u, 1.5) * 0.95];
}

export function drawLegend(canvas) {
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(canvas.width, canvas.height);
  for (let x = 0; x < canvas.width; x++) {
    const [r, g, b, a] = uncertaintyColor(x / (canvas.width - 1));
    for (let y = 0; y < canvas.height; y++) {
      const i = (y * canvas.width + x) * 4;
      // over the black the image is shown on, as the overlay would look at full opacity
      img.data[i] = r * a; img.data[i + 1] = g * a; img.data[i + 2] = b * a; img.data[i + 3] = 255;
    }
  }
  ctx.putImageData(img, 0, 0);
}

export class Editor {
  constructor(canvas, onChange = () => {}) {
    this.canvas = canvas;
    this.onChange = onChange;  // the label map or the undo stack changed
    this.item = null; this.label = null; this.undoStack = [];
    this.tool = "brush"; this.value = 1; this.radius = 3;
    this.showMask = true; this.showUnc = false; this.opacity = 0.45;
    this.ww = 255; this.wl = 128; this.zoom = 1; this.panX = 0; this.panY = 0;
    this.painting = false; this.last = null; this.drag = null; this.space = false; this.cursor = null;
    this.base = document.createElement("canvas");
    this.overlay = document.createElement("canvas");
  }

  open(item) {
    this.item = item;
    this.label = item ? (item.final || item.proposal || new Uint8Array(item.width * item.height)).slice() : null;
    this.undoStack = [];
    if (item) { this.fit(); this.renderBase(); this.renderOverlay(); }
    this.draw();
    this.onChange();
  }

  // ------------------------------------------------------------------------------------------- drawing

  layer(canvas) {
    const it = this.item;
    canvas.width = it.width; canvas.height = it.height;
    const ctx = canvas.getContext("2d");
    return { it, ctx, img: ctx.createImageData(it.width, it.height) };
  }

  renderBase() {
    if (!this.item) return;
    const { it, ctx, img } = this.layer(this.base);
    const lo = this.wl - this.ww / 2;
    const n = it.width * it.height;
    for (let i = 0; i < n; i++) {
      for (let k = 0; k < 3; k++) {
        const v = it.channels === 3 ? it.pixels[i * 3 + k] : it.pixels[i];
        img.data[i * 4 + k] = Math.max(0, Math.min(255, ((v - lo) / this.ww) * 255));
      }
      img.data[i * 4 + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
  }

  renderOverlay() {
    if (!this.item) return;
    const { it, ctx, img } = this.layer(this.overlay);
    const n = it.width * it.height;
    const unc = this.showUnc ? it.uncertainty : null;
    for (let i = 0; i < n; i++) {
      let [r, g, b, a] = unc ? uncertaintyColor(unc[i] / 255) : [0, 0, 0, 0];
      const v = this.label[i];
      if (this.showMask && v > 0) { [r, g, b] = labelColor(v); a = 1; }
      img.data[i * 4] = r; img.data[i * 4 + 1] = g; img.data[i * 4 + 2] = b; img.data[i * 4 + 3] = Math.round(a * 255);
    }
    ctx.putImageData(img, 0, 0);
  }

  draw() {
    const canvas = this.canvas;
    const rect = canvas.getBoundingClientRect();
    if (canvas.width !== Math.round(rect.width) || canvas.height !== Math.round(rect.height)) {
      canvas.width = Math.round(rect.width); canvas.height = Math.round(rect.height);
    }
    const ctx = canvas.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    if (!this.item) return;
    const w = this.item.width * this.zoom, h = this.item.height * this.zoom;
    ctx.drawImage(this.base, this.panX, this.panY, w, h);
    ctx.globalAlpha = this.opacity;
    ctx.drawImage(this.overlay, this.panX, this.panY, w, h);
    ctx.globalAlpha = 1;
    if (this.cursor && this.tool !== "fill") {
      ctx.strokeStyle = this.tool === "eraser" ? "#fff" : `rgb(${labelColor(this.value).join(",")})`;
      ctx.beginPath();
      ctx.arc(this.cursor.x, this.cursor.y, Math.max(1, this.radius * this.zoom), 0, 2 * Math.PI);
      ctx.stroke();
    }
  }

  fit() {
    if (!this.item) return;
    const rect = this.canvas.getBoundingClientRect();
    this.zoom = Math.max(0.1, Math.min(rect.width / this.item.width, rect.height / this.item.height) * 0.95);
    this.panX = (rect.width - this.item.width * this.zoom) / 2;
    this.panY = (rect.height - this.item.height * this.zoom) / 2;
  }

  toImage(event) {
    const rect = this.canvas.getBoundingClientRect();
    const cx = event.clientX - rect.left, cy = event.clientY - rect.top;
    return { x: (cx - this.panX) / this.zoom, y: (cy - this.panY) / this.zoom, cx, cy };
  }

  zoomAt(factor, cx = this.canvas.width / 2, cy = this.canvas.height / 2) {
    const z = Math.max(0.1, Math.min(64, this.zoom * factor));
    this.panX = cx - ((cx - this.panX) * z) / this.zoom;
    this.panY = cy - ((cy - this.panY) * z) / this.zoom;
    this.zoom = z;
    this.draw();
  }

  setWindow(ww, wl) {
    this.ww = Math.max(1, Math.min(255, ww)); this.wl = Math.max(0, Math.min(255, wl));
    this.renderBase(); this.draw();
  }

  setLayers({ showMask = this.showMask, showUnc = this.showUnc, opacity = this.opacity }) {
    this.showMask = showMask; this.showUnc = showUnc; this.opacity = opacity;
    this.renderOverlay(); this.draw();
  }

  // ------------------------------------------------------------------------------------------- editing

  pushUndo() {
    this.undoStack.push(this.label.slice());
    if (this.undoStack.length > 50) this.undoStack.shift();
  }

  undo() {
    if (!this.undoStack.length) return;
    this.label = this.undoStack.pop();
    this.renderOverlay(); this.draw(); this.onChange();
  }

  stamp(x, y, value) {
    const it = this.item, r = this.radius;
    const x0 = Math.max(0, Math.floor(x - r)), x1 = Math.min(it.width - 1, Math.ceil(x + r));
    const y0 = Math.max(0, Math.floor(y - r)), y1 = Math.min(it.height - 1, Math.ceil(y + r));
    for (let yy = y0; yy <= y1; yy++) {
      for (let xx = x0; xx <= x1; xx++) {
        const dx = xx + 0.5 - x, dy = yy + 0.5 - y;
        if (dx * dx + dy * dy <= r * r) this.label[yy * it.width + xx] = value;
      }
    }
  }

  strokeTo(p) {
    const value = this.tool === "eraser" ? 0 : this.value;
    const from = this.last || p;
    const steps = Math.max(1, Math.ceil(Math.hypot(p.x - from.x, p.y - from.y) / Math.max(0.5, this.radius / 2)));
    for (let i = 1; i <= steps; i++) {
      this.stamp(from.x + ((p.x - from.x) * i) / steps, from.y + ((p.y - from.y) * i) / steps, value);
    }
    if (steps === 1) this.stamp(p.x, p.y, value);
    this.last = p;
  }

  fill(p) {
    const it = this.item, w = it.width, h = it.height;
    const x = Math.floor(p.x), y = Math.floor(p.y);
    if (x < 0 || y < 0 || x >= w || y >= h) return;
    const target = this.label[y * w + x];
    if (target === this.value) return;
    this.pushUndo();
    const stack = [y * w + x];
    while (stack.length) {
      const i = stack.pop();
      if (this.label[i] !== target) continue;
      this.label[i] = this.value;
      const px = i % w, py = (i - px) / w;
      if (px > 0) stack.push(i - 1);
      if (px < w - 1) stack.push(i + 1);
      if (py > 0) stack.push(i - w);
      if (py < h - 1) stack.push(i + w);
    }
    this.renderOverlay(); this.draw(); this.onChange();
  }

  // The label map as a PNG whose gray values are the label values, encoded by the browser (canvas.toBlob);
  // the server reads a gray RGBA PNG as a single-channel one.
  labelBlob() {
    const it = this.item;
    const canvas = document.createElement("canvas");
    canvas.width = it.width; canvas.height = it.height;
    const ctx = canvas.getContext("2d");
    const img = ctx.createImageData(it.width, it.height);
    for (let i = 0; i < this.label.length; i++) {
      const v = this.label[i];
      img.data[i * 4] = v; img.data[i * 4 + 1] = v; img.data[i * 4 + 2] = v; img.data[i * 4 + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
    return new Promise((resolve, reject) => canvas.toBlob(
      (blob) => (blob ? resolve(blob) : reject(new Error("the browser could not encode the label as PNG"))), "image/png"));
  }

  // ------------------------------------------------------------------------------------------- pointer

  bind({ onPixel = () => {}, onWindow = () => {} } = {}) {
    const canvas = this.canvas;
    canvas.addEventListener("contextmenu", (e) => e.preventDefault());
    canvas.addEventListener("pointerdown", (e) => {
      if (!this.item) return;
      canvas.setPointerCapture(e.pointerId);
      const p = this.toImage(e);
      if (e.button === 1 || (e.button === 0 && this.space)) { this.drag = { mode: "pan", x: e.clientX, y: e.clientY }; return; }
      if (e.button === 2) { this.drag = { mode: "wl", x: e.clientX, y: e.clientY, ww: this.ww, wl: this.wl }; return; }
      if (this.tool === "fill") { this.fill(p); return; }
      this.pushUndo();
      this.painting = true; this.last = null;
      this.strokeTo(p); this.renderOverlay(); this.draw(); this.onChange();
    });
    canvas.addEventListener("pointermove", (e) => {
      const p = this.toImage(e);
      this.cursor = { x: p.cx, y: p.cy };
      onPixel(this.pixelAt(p));
      if (this.drag && this.drag.mode === "pan") {
        this.panX += e.clientX - this.drag.x; this.panY += e.clientY - this.drag.y;
        this.drag.x = e.clientX; this.drag.y = e.clientY;
      } else if (this.drag && this.drag.mode === "wl") {
        this.setWindow(this.drag.ww + (e.clientX - this.drag.x), this.drag.wl - (e.clientY - this.drag.y));
        onWindow(this.ww, this.wl);
      } else if (this.painting) {
        this.strokeTo(p); this.renderOverlay();
      }
      this.draw();
    });
    const end = () => { this.painting = false; this.last = null; this.drag = null; };
    canvas.addEventListener("pointerup", end);
    canvas.addEventListener("pointercancel", end);
    canvas.addEventListener("pointerleave", () => { this.cursor = null; this.draw(); });
    canvas.addEventListener("wheel", (e) => {
      e.preventDefault();
      const p = this.toImage(e);
      this.zoomAt(e.deltaY < 0 ? 1.15 : 1 / 1.15, p.cx, p.cy);
    }, { passive: false });
  }

  pixelAt(p) {
    const it = this.item, x = Math.floor(p.x), y = Math.floor(p.y);
    if (!it || x < 0 || y < 0 || x >= it.width || y >= it.height) return "";
    const i = y * it.width + x;
    const parts = [`(${x}, ${y})`, `value ${it.channels === 3 ? it.pixels[i * 3] : it.pixels[i]}`, `label ${this.label[i]}`];
    if (it.uncertainty) parts.push(`uncertainty ${(it.uncertainty[i] / 255).toFixed(2)}`);
    return parts.join(" · ");
  }
}
