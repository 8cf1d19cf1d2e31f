// The page around the editor: header (phase, progress), queue, side panel (image, classes, actions, metrics),
// label buttons, the status line. Pure rendering from what it is given; no state of its own.

import { labelColor } from "./editor.js";

export const $ = (id) => document.getElementById(id);

export function say(text, isError = false) {
  const el = $("message");
  el.textContent = text;
  el.className = isError ? "error" : "";
}

// A control that cannot be used says why: in its tooltip and in the note beside it (id `${id}-why`).
export function explain(id, reason) {
  const el = $(id);
  el.disabled = Boolean(reason);
  if (!el.dataset.title) el.dataset.title = el.title || "";
  el.title = reason ? `${el.dataset.title ? el.dataset.title + ": " : ""}unavailable: ${reason}` : el.dataset.title;
  const note = $(`${id}-why`);
  if (note) note.textContent = reason || "";
}

export function waitingText(status) {
  if (!status) return "Connecting…";
  if (status.phase === "finished") return "The run is finished: the budget is labeled.";
  if (status.phase === "error") return "The loop stopped: " + status.error;
  if (status.queue.length && status.queue.every((q) => q.read_by_you)) {
    return `You have read every open image; each needs ${status.reads_per_image} readers: waiting for the others…`;
  }
  if (status.queue.length) return "Every open image is with another annotator; waiting…";
  return `The model is ${status.phase} (round ${status.round}); the next queue appears when it is ranked…`;
}

export function renderLabelButtons(labels, onPick) {
  const box = $("label-buttons");
  box.textContent = "";
  for (const [name, value] of Object.entries(labels)) {
    const b = document.createElement("button");
    b.dataset.value = value;
    b.title = `Paint ${name} (${value})`;
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.background = `rgb(${labelColor(value).join(",")})`;
    b.append(sw, `${value} ${name}`);
    b.addEventListener("click", () => onPick(value));
    box.appendChild(b);
  }
}

export function markActive(selector, isActive) {
  for (const el of document.querySelectorAll(selector)) el.classList.toggle("active", isActive(el));
}

export function renderSide({ item, classNames, chosen, onClass }) {
  $("item-title").textContent = item ? item.id : "No image";
  const known = (v) => v !== null && v !== undefined;
  const review = item && item.review;
  $("item-meta").textContent = item
    ? [review ? `pseudo-label of cycle ${review.round}: predicted Dice ${fmtDice(review.predicted_dice)} < ${review.threshold}`
       : known(item.model_round) ? `model of round ${item.model_round}` : "no model yet",
       known(item.score) ? `score ${Number(item.score).toPrecision(3)}` : ""].filter(Boolean).join(" · ")
    : "";
  $("class-box").hidden = !classNames.length;
  const box = $("classes");
  box.textContent = "";
  classNames.forEach((name, i) => {
    const label = document.createElement("label");
    const input = document.createElement("input");
    input.type = "radio"; input.name = "cls"; input.value = i; input.checked = chosen === i;
    input.disabled = !item;
    input.addEventListener("change", () => onClass(i));
    const text = document.createElement("span");
    text.textContent = `${i + 1}. ${name}`;
    const bar = document.createElement("span");
    bar.className = "bar";
    const fill = document.createElement("span");
    const p = item && item.probs ? item.probs[name] : null;
    fill.style.width = known(p) ? `${Math.round(p * 100)}%` : "0";
    bar.title = known(p) ? `model: ${(p * 100).toFixed(1)}%` : "no model yet";
    bar.appendChild(fill);
    label.append(input, text, bar);
    box.appendChild(label);
  });
}

// One entry of the queue or the review list: its name, a muted note on the right; a taken one (labeled, or leased
// by another annotator) is dimmed and says why, the others open on click.
function listItem({ id, name, note, current, taken, title, onOpen }) {
  const li = document.createElement("li");
  li.dataset.image = id;
  const nameSpan = document.createElement("span");
  nameSpan.textContent = name;
  const noteSpan = document.createElement("span");
  noteSpan.className = "score";
  noteSpan.textContent = note;
  li.append(nameSpan, noteSpan);
  if (title) li.title = title;
  if (current && id === current) li.classList.add("current");
  if (taken) li.classList.add("taken");
  else li.addEventListener("click", () => onOpen(id));
  return li;
}

export function renderQueue(status, current, onOpen) {
  const list = $("queue");
  list.textContent = "";
  if (!status) return;
  for (const q of status.queue) {
    const reads = q.reads_per_image ? `${q.reads}/${q.reads_per_image} read · ` : "";
    const taken = !q.open && !q.yours;
    list.appendChild(listItem({
      id: q.id, name: `${q.rank !== null ? q.rank + 1 + "." : ""} ${q.id}`,
      note: reads + (q.leased_by && !q.yours && !q.open ? q.leased_by
        : q.score !== null ? Number(q.score).toPrecision(3) : ""),
      current, taken, onOpen,
      title: !taken ? "" : q.read_by_you ? "you have labeled it: the other reads come from other annotators"
        : `being labeled by ${q.leased_by}`,
    }));
  }
  $("queue-empty").textContent = status.queue.length ? "" : waitingText(status);
}

const fmtDice = (v) => Number(v).toFixed(2);

// The pseudo-labels the method's quality control flags (lowest predicted Dice first, as the server sends them);
// hidden while there are none (and always for a method without quality control). A corrected one stays, ticked.
export function renderReview(status, current, onOpen) {
  const items = status ? status.review || [] : [];
  $("review-box").hidden = !items.length;
  const list = $("review");
  list.textContent = "";
  if (!items.length) return;
  $("review-title").textContent = `Review: flagged pseudo-labels (predicted Dice < ${items[0].threshold})`;
  for (const r of items) {
    list.appendChild(listItem({
      id: r.id, name: r.id, note: (r.reviewed ? "✓ " : "") + fmtDice(r.predicted_dice),
      current, taken: r.reviewed, onOpen,
      title: r.reviewed ? "corrected: stored, and used by the next training"
        : `predicted Dice ${fmtDice(r.predicted_dice)} (pseudo-label of cycle ${r.round})`,
    }));
  }
}

export function renderStatus(status) {
  $("run-name").textContent = `${status.name} · ${status.method} · ${status.strategy}`;
  const phase = $("phase");
  phase.textContent = status.phase;
  phase.className = "badge " + status.phase.split(" ")[0];
  $("progress-bar").style.width = `${Math.min(100, (100 * status.labeled) / Math.max(1, status.budget))}%`;
  $("progress-text").textContent = `${status.labeled} / ${status.budget} labeled`
    + (status.reviewed ? ` · ${status.reviewed} reviewed` : "");
  $("round-text").textContent = `round ${status.round}`;
  const rows = status.metrics;
  const head = $("metrics").querySelector("thead"), body = $("metrics").querySelector("tbody");
  head.textContent = ""; body.textContent = "";
  if (!rows.length) return;
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

// The readers' agreement (several reads per image): a row per annotator (Dice against the other readers of the
// same images, per structure in the tooltip; Cohen's kappa of the image classes) and the images read most
// differently.
export function renderAgreement(summary) {
  $("agreement-box").hidden = !summary || summary.reads_per_image < 2;
  if ($("agreement-box").hidden) return;
  const fmt = (v) => (v === null || v === undefined ? "–" : Number(v).toFixed(3));
  $("agreement-note").textContent = `(${summary.images_read} image${summary.images_read === 1 ? "" : "s"} with all ${summary.reads_per_image} reads)`;
  const table = $("agreement");
  const head = table.querySelector("thead"), body = table.querySelector("tbody");
  head.textContent = ""; body.textContent = "";
  const keys = ["annotator", "pairs", "Dice", ...(summary.has_class ? ["same class", "kappa"] : [])];
  const tr = document.createElement("tr");
  for (const k of keys) { const th = document.createElement("th"); th.textContent = k; tr.appendChild(th); }
  head.appendChild(tr);
  for (const a of summary.annotators) {
    const row = document.createElement("tr");
    row.dataset.annotator = a.annotator;
    const cells = [a.annotator, a.pairs, fmt(a.dice_mean), ...(summary.has_class ? [fmt(a.same_class), fmt(a.kappa)] : [])];
    for (const c of cells) { const td = document.createElement("td"); td.textContent = c; row.appendChild(td); }
    row.title = Object.entries(a.dice).map(([s, v]) => `Dice ${s}: ${fmt(v)}`).join(", ");
    body.appendChild(row);
  }
  const list = $("disagreement");
  list.textContent = "";
  for (const im of summary.most_disagreement) {
    const li = document.createElement("li");
    li.dataset.image = im.image;
    const dice = Object.entries(im.dice).map(([s, v]) => `${s} ${fmt(v)}`).join(", ");
    const classes = summary.has_class ? `; classes ${im.classes.join(" / ")}` : "";
    li.textContent = `${im.image}: ${fmt(im.disagreement)} (Dice ${dice}${classes})`;
    li.title = `read by ${im.readers.join(", ")}`;
    list.appendChild(li);
  }
}
