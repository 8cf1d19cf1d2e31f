// medloop annotation UI: the queue in the strategy's order, the pseudo-labels flagged for review, an image with the
// model's proposal and uncertainty, the label-map editor, the image class where the method has one, submit / skip,
// progress and metrics.
// ES modules, no build step: api.js (the server), editor.js (the canvas), panels.js (the page around it).

import { api, loadItem, query } from "./api.js";
import { Editor, drawLegend } from "./editor.js";
import {
  $, explain, markActive, renderAgreement, renderLabelButtons, renderQueue, renderReview, renderSide, renderStatus, say,
  waitingText,
} from "./panels.js";

const NOT_SIGNED_IN = "Not signed in: open the URL with the token that `medloop serve` printed.";

class Annotator {
  constructor(info, client) {
    this.info = info;
    this.run = info.medloop;
    this.hints = info.medloop.hints;
    this.classNames = info.medloop.class_names;
    this.client = client;
    this.strategy = Object.keys(info.strategies)[0];
    this.status = null; this.item = null; this.cls = null; this.busy = false; this.agreedAt = -1;
    this.editor = new Editor($("canvas"), () => this.renderControls());
  }

  // ------------------------------------------------------------------------------------------- items

  async openItem(id, lease = true) {
    try {
      if (lease) await api(`/api/lease?${query({ image: id, client_id: this.client })}`, { method: "POST" });
      this.show(await loadItem(id));
      say(this.item.proposal ? this.hints.proposal : this.hints.task);
      $("canvas").focus();
    } catch (e) {
      say(e.message, true);
      if (e.status === 409) { this.show(null); setTimeout(() => this.openNext(), 200); }
    }
  }

  // A flagged pseudo-label: no lease (it is outside the queue); its proposal is the pseudo-label itself.
  async openReview(id) {
    if (this.busy) return;
    try {
      this.show(await loadItem(id));
      const r = this.item.review;
      say(r ? `Flagged pseudo-label (predicted Dice ${Number(r.predicted_dice).toFixed(2)} < ${r.threshold}): `
        + "correct it where it is wrong, then submit (Enter); the next training uses your map in its place."
        : "This image is no longer on the review list.", !r);
      $("canvas").focus();
    } catch (e) {
      say(e.message, true);
    }
  }

  show(item) {
    this.item = item;
    this.cls = null;
    $("placeholder").hidden = Boolean(item);
    if (!item) $("placeholder").textContent = waitingText(this.status);
    this.editor.open(item);
    this.renderSide();
    this.renderLists();
  }

  renderLists() {
    const current = this.item && this.item.id;
    renderQueue(this.status, current, (id) => this.openItem(id));
    renderReview(this.status, current, (id) => this.openReview(id));
  }

  async openNext() {
    if (this.busy) return;
    this.busy = true;
    try {
      const next = await api(`/activelearning/${encodeURIComponent(this.strategy)}`, {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ client_id: this.client }),
      });
      if (next && next.id) await this.openItem(next.id, false);
      else this.show(null);
    } catch (e) {
      say(e.message, true);
    } finally {
      this.busy = false;
    }
  }

  async submit() {
    const it = this.item;
    if (!it || this.busy) return;
    const why = this.submitBlocked();
    if (why) { say(`Not sent: ${why}.`, true); return; }
    this.busy = true;
    try {
      const form = new FormData();
      form.append("label", await this.editor.labelBlob(), "label.png");
      const params = { client_id: this.client, run_id: this.run.run_id };
      if (this.classNames.length) params.class = this.cls;
      form.append("params", JSON.stringify(params));
      const res = await api(`/datastore/label?${query({ image: it.id, tag: "final" })}`, { method: "PUT", body: form });
      const reads = res.reads_per_image > 1 && !res.review ? `read ${res.reads} of ${res.reads_per_image}; ` : "";
      say(res.review ? `Saved your correction of ${it.id}: the next training uses it in place of the pseudo-label.`
        : `Saved ${it.id} (${reads}${res.labeled} / ${res.budget} labeled).`);
      this.show(null);
    } catch (e) {
      say(e.message, true);
      if (e.status !== 409) { this.busy = false; return; }
      this.show(null);  // taken or labeled by someone else: move on
    }
    this.busy = false;
    await this.refresh();
    await this.openNext();
  }

  async skip() {
    const it = this.item;
    if (!it || this.busy) return;
    try {
      if (!it.review) await api(`/api/release?${query({ image: it.id, client_id: this.client })}`, { method: "POST" });
    } catch (e) { say(e.message, true); }
    this.show(null);
    await this.openNext();
  }

  async refresh() {
    try {
      this.status = await api(`/api/status?${query({ client_id: this.client })}`);
      renderStatus(this.status);
      this.renderLists();
      if (!this.item) $("placeholder").textContent = waitingText(this.status);
      if (this.status.reads_per_image > 1 && this.status.labeled !== this.agreedAt) {
        renderAgreement(await api("/api/agreement"));
        this.agreedAt = this.status.labeled;
      }
      if (!this.item && !this.busy && this.status.queue.some((q) => q.open || q.yours)) await this.openNext();
    } catch (e) {
      say(e.status === 401 ? NOT_SIGNED_IN : e.message, true);
    }
  }

  keepLease() {
    if (!this.item || this.item.review) return;  // a review item has no lease
    api(`/api/lease?${query({ image: this.item.id, client_id: this.client })}`, { method: "POST" })
      .catch((e) => say(e.message, true));
  }

  // ------------------------------------------------------------------------------------------- controls

  submitBlocked() {
    if (!this.item) return "no image is open";
    if (this.classNames.length && this.cls === null) return "choose the image class first (Shift+1…9)";
    return "";
  }

  setClass(index) {
    if (!this.classNames.length) { say("This run has no image class: paint the mask and submit.", true); return; }
    if (!this.item || index < 0 || index >= this.classNames.length) return;
    this.cls = index;
    for (const input of document.querySelectorAll("#classes input")) input.checked = Number(input.value) === index;
    this.renderControls();
  }

  setValue(value) {
    if (!Object.values(this.run.labels).includes(value)) return;
    this.editor.value = value;
    if (this.editor.tool === "eraser") this.setTool("brush");
    markActive("[data-value]", (b) => Number(b.dataset.value) === value);
  }

  setTool(tool) {
    this.editor.tool = tool;
    markActive("[data-tool]", (b) => b.dataset.tool === tool);
    this.editor.draw();
  }

  setRadius(r) {
    this.editor.radius = Math.max(1, Math.min(40, r));
    $("brush-size").value = this.editor.radius;
    $("brush-size-text").textContent = this.editor.radius;
    this.editor.draw();
  }

  resetView() {
    $("ww").value = 255; $("wl").value = 128;
    this.editor.fit();
    this.editor.setWindow(255, 128);
  }

  renderSide() {
    renderSide({ item: this.item, classNames: this.classNames, chosen: this.cls, onClass: (i) => this.setClass(i) });
    this.renderControls();
  }

  // Every control that cannot act now is disabled and says why.
  renderControls() {
    const it = this.item;
    const none = it ? "" : "no image is open";
    explain("submit", this.submitBlocked());
    explain("skip", none);
    explain("undo", none || (this.editor.undoStack.length ? "" : "nothing to undo"));
    const noMap = none || (it.uncertainty ? "" : it.no_uncertainty || "no uncertainty map for this image");
    explain("show-unc", noMap);
    $("legend").hidden = Boolean(noMap);
    if (noMap && $("show-unc").checked) { $("show-unc").checked = false; this.editor.setLayers({ showUnc: false }); }
  }

  // ------------------------------------------------------------------------------------------- events

  bind() {
    const ed = this.editor;
    ed.bind({ onPixel: (text) => { $("pixel").textContent = text; },
              onWindow: (ww, wl) => { $("ww").value = ww; $("wl").value = wl; } });
    for (const b of document.querySelectorAll("[data-tool]")) b.addEventListener("click", () => this.setTool(b.dataset.tool));
    $("brush-size").addEventListener("input", (e) => this.setRadius(Number(e.target.value)));
    $("undo").addEventListener("click", () => ed.undo());
    $("show-mask").addEventListener("change", (e) => ed.setLayers({ showMask: e.target.checked }));
    $("show-unc").addEventListener("change", (e) => ed.setLayers({ showUnc: e.target.checked }));
    $("opacity").addEventListener("input", (e) => ed.setLayers({ opacity: Number(e.target.value) / 100 }));
    $("ww").addEventListener("input", (e) => ed.setWindow(Number(e.target.value), ed.wl));
    $("wl").addEventListener("input", (e) => ed.setWindow(ed.ww, Number(e.target.value)));
    $("zoom-in").addEventListener("click", () => ed.zoomAt(1.25));
    $("zoom-out").addEventListener("click", () => ed.zoomAt(0.8));
    $("reset-view").addEventListener("click", () => this.resetView());
    $("submit").addEventListener("click", () => this.submit());
    $("skip").addEventListener("click", () => this.skip());
    window.addEventListener("resize", () => { ed.fit(); ed.draw(); });
    window.addEventListener("keyup", (e) => { if (e.code === "Space") ed.space = false; });
    window.addEventListener("keydown", (e) => this.onKey(e));
  }

  onKey(e) {
    const t = e.target;
    if (t.tagName === "INPUT" && !["checkbox", "radio", "range"].includes(t.type)) return;
    const ed = this.editor;
    const digit = /^Digit([1-9])$/.exec(e.code);
    if (digit && e.shiftKey) { this.setClass(Number(digit[1]) - 1); e.preventDefault(); return; }
    if (digit) { this.setValue(Number(digit[1])); e.preventDefault(); return; }
    const key = e.key.toLowerCase();
    if ((e.ctrlKey || e.metaKey) && key === "z") { ed.undo(); e.preventDefault(); return; }
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const toggle = (id) => {
      const box = $(id);
      if (box.disabled) say(box.title, true); else box.click();
    };
    const actions = {
      b: () => this.setTool("brush"), e: () => this.setTool("eraser"), f: () => this.setTool("fill"), z: () => ed.undo(),
      "[": () => this.setRadius(ed.radius - 1), "]": () => this.setRadius(ed.radius + 1),
      enter: () => this.submit(), s: () => this.skip(), m: () => toggle("show-mask"), u: () => toggle("show-unc"),
      r: () => this.resetView(), "+": () => ed.zoomAt(1.25), "=": () => ed.zoomAt(1.25), "-": () => ed.zoomAt(0.8),
      " ": () => { ed.space = true; },
    };
    if (actions[key]) { actions[key](); e.preventDefault(); }
  }

  async start() {
    this.bind();
    renderLabelButtons(this.run.labels, (v) => this.setValue(v));
    this.setTool("brush");
    const first = Object.values(this.run.labels)[0];
    if (first !== undefined) this.setValue(first);
    $("who").textContent = this.client;
    $("unc-meaning").textContent = this.hints.uncertainty;
    drawLegend($("legend-bar"));
    this.show(null);
    await this.refresh();
    setInterval(() => this.refresh(), 1500);
    // keep the lease of the open image while the annotator works on it
    setInterval(() => this.keepLease(), Math.max(5000, (this.run.lease_seconds * 1000) / 3));
  }
}

async function main() {
  let info;
  try {
    info = await api("/info/");
  } catch (e) {
    say(e.status === 401 ? NOT_SIGNED_IN : e.message, true);
    return;
  }
  const key = `medloop-client-${info.medloop.run_id}`;
  const client = sessionStorage.getItem(key)
    || `annotator-${Array.from(crypto.getRandomValues(new Uint8Array(3)), (b) => b.toString(16).padStart(2, "0")).join("")}`;
  sessionStorage.setItem(key, client);
  await new Annotator(info, client).start();
}

main();
