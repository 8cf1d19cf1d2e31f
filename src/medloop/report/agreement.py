"""Agreement between readers: when several annotators label each image (``medloop serve --reads-per-image``),
how far their labels agree per image, per annotator and per pair of annotators, and which images they disagree
on most.

Per image, for every pair of reads: the Dice of each structure (``None`` where both reads leave it empty: no
evidence either way, so it is left out of the means) and whether they chose the same image class. An image's
agreement is the mean of its mask agreement (mean Dice over structures and pairs; 1 when every read is empty)
and its class agreement (the share of pairs with the same class), whichever it has; its disagreement is
1 - agreement. Per annotator: the mean Dice per structure over their pairs with the other readers of the same
images, the share of those pairs with the same class, and Cohen's kappa of their classes against the other
readers' (pooled over the pairs). Per pair of annotators: the same over the images both read.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from medloop.storage import write_json, write_text

__all__ = ["AGREEMENT_FILES", "cohen_kappa", "image_agreement", "structure_dice", "summarize", "agreement_markdown",
           "write_agreement_report"]

AGREEMENT_FILES = ("agreement.md", "agreement.json")  # what ``write_agreement_report`` writes


def structure_dice(a: np.ndarray, b: np.ndarray, labels: dict[str, int]) -> dict[str, float | None]:
    """Dice of each structure (name -> label value) between two label maps ``[H, W]``; ``None`` where both
    leave the structure empty."""
    out: dict[str, float | None] = {}
    for name, value in labels.items():
        in_a, in_b = a == value, b == value
        total = int(in_a.sum()) + int(in_b.sum())
        out[name] = None if total == 0 else 2.0 * int((in_a & in_b).sum()) / total
    return out


def cohen_kappa(x: Sequence[int], y: Sequence[int]) -> float | None:
    """Cohen's kappa of two raters' classes of the same items; ``None`` when chance agreement is certain (both
    gave one and the same class to everything) or there is nothing to compare."""
    x, y = np.asarray(x), np.asarray(y)
    if x.size == 0:
        return None
    observed = float(np.mean(x == y))
    expected = float(sum(np.mean(x == c) * np.mean(y == c) for c in np.union1d(x, y)))
    return None if expected >= 1.0 else (observed - expected) / (1.0 - expected)


def _mean(values: Iterable[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def image_agreement(readers: Sequence[str], masks: Sequence[np.ndarray], classes: Sequence[int | None],
                    labels: dict[str, int]) -> dict:
    """The agreement of one image's reads (``readers[i]`` painted ``masks[i]`` and chose ``classes[i]``, ``None``
    when the run has no image class): per pair, and per structure and class over the pairs."""
    pairs = []
    for i, j in itertools.combinations(range(len(readers)), 2):
        pair = {"readers": [readers[i], readers[j]], "dice": structure_dice(masks[i], masks[j], labels)}
        if classes[i] is not None:
            pair["same_class"] = classes[i] == classes[j]
        pairs.append(pair)
    dice = {name: _mean(p["dice"][name] for p in pairs) for name in labels}
    mask_agreement = _mean(dice.values())
    if mask_agreement is None:  # every read leaves every structure empty: they agree
        mask_agreement = 1.0
    class_agreement = _mean(float(p["same_class"]) for p in pairs if "same_class" in p)
    agreement = _mean([mask_agreement, class_agreement])
    return {"dice": dice, "class_agreement": class_agreement, "disagreement": 1.0 - agreement, "pairs": pairs}


def summarize(records: Iterable[dict], class_names: Sequence[str] = (), most: int = 10) -> dict:
    """Agreement per annotator, per pair of annotators, and the ``most`` images with the most disagreement, from
    the consensus records of a served datastore (``answers.jsonl``: ``info.agreement`` of ``image_agreement``,
    ``info.reads`` with each read's ``client_id`` and ``class``)."""
    by_reader: dict[str, list[tuple[dict, int | None, int | None]]] = {}
    by_pair: dict[tuple[str, str], list[tuple[dict, int | None, int | None]]] = {}
    images, structures = [], []
    for rec in records:
        info = rec.get("info", {})
        agreement, reads = info.get("agreement"), info.get("reads")
        if not agreement or not reads:
            continue  # one read per image: nothing to compare
        structures = structures or list(agreement["dice"])
        chosen = {r["client_id"]: r.get("class") for r in reads}
        for pair in agreement["pairs"]:
            a, b = pair["readers"]
            by_reader.setdefault(a, []).append((pair, chosen[a], chosen[b]))
            by_reader.setdefault(b, []).append((pair, chosen[b], chosen[a]))
            key = (a, b) if a <= b else (b, a)
            by_pair.setdefault(key, []).append((pair, chosen[key[0]], chosen[key[1]]))
        images.append({"image": rec["image"], "readers": [r["client_id"] for r in reads],
                       "classes": [_class_name(r.get("class"), class_names) for r in reads],
                       "consensus_class": _class_name(rec.get("class"), class_names), "dice": agreement["dice"],
                       "disagreement": agreement["disagreement"]})

    def stats(entries: list[tuple[dict, int | None, int | None]]) -> dict:
        dice = {s: _mean(p["dice"].get(s) for p, _, _ in entries) for s in structures}
        out = {"pairs": len(entries), "dice": dice, "dice_mean": _mean(dice.values())}
        classed = [(x, y) for p, x, y in entries if "same_class" in p]
        if classed:
            out["same_class"] = float(np.mean([x == y for x, y in classed]))
            out["kappa"] = cohen_kappa([x for x, _ in classed], [y for _, y in classed])
        return out

    annotators = [{"annotator": who, **stats(entries)} for who, entries in sorted(by_reader.items())]
    pairs = [{"annotators": list(key), **stats(entries)} for key, entries in sorted(by_pair.items())]
    images.sort(key=lambda im: (-im["disagreement"], im["image"]))
    return {"images_read": len(images), "structures": structures, "has_class": bool(class_names),
            "annotators": annotators, "pairs": pairs, "most_disagreement": images[:most]}


def _class_name(value: int | None, class_names: Sequence[str]) -> str | None:
    if value is None:
        return None
    return class_names[value] if 0 <= value < len(class_names) else str(value)


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def agreement_markdown(summary: dict, reads_per_image: int, consensus_rule: str) -> str:
    """The agreement section of a served run's report (``summary`` from ``summarize``)."""
    structures, has_class = summary["structures"], summary["has_class"]
    lines = ["# Agreement between readers", "",
             f"{summary['images_read']} image(s) read by {reads_per_image} annotators each. Consensus (what the "
             f"model trains on): {consensus_rule}", ""]
    if not summary["images_read"]:
        return "\n".join(lines + ["No image has all its reads yet.", ""])
    cols = [f"Dice {s}" for s in structures] + ["Dice mean"] + (["same class", "Cohen's kappa"] if has_class else [])

    def row(first: list[str], s: dict) -> str:
        cells = first + [_num(s["dice"][k]) for k in structures] + [_num(s["dice_mean"])]
        if has_class:
            cells += [_num(s.get("same_class")), _num(s.get("kappa"))]
        return "| " + " | ".join(cells) + " |"

    def table(head: list[str], rows: list[str]) -> list[str]:
        return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *rows, ""]

    lines += ["## Per annotator (against the other readers of the same images)", ""]
    lines += table(["annotator", "pairs"] + cols, [row([a["annotator"], str(a["pairs"])], a)
                                                   for a in summary["annotators"]])
    lines += ["## Per pair of annotators", ""]
    lines += table(["annotators", "images"] + cols, [row([" & ".join(p["annotators"]), str(p["pairs"])], p)
                                                     for p in summary["pairs"]])
    lines += ["## Images with the most disagreement", ""]
    head = ["image", "readers"] + [f"Dice {s}" for s in structures] + (["classes", "consensus"] if has_class else [])
    rows = []
    for im in summary["most_disagreement"]:
        cells = [im["image"], ", ".join(im["readers"])] + [_num(im["dice"].get(s)) for s in structures]
        if has_class:
            cells += [", ".join(str(c) for c in im["classes"]), str(im["consensus_class"])]
        rows.append("| " + " | ".join(cells + [_num(im["disagreement"])]) + " |")
    lines += table(head + ["disagreement"], rows)
    return "\n".join(lines)


def write_agreement_report(folder: str | Path, records: Iterable[dict], class_names: Sequence[str],
                           reads_per_image: int, consensus_rule: str) -> dict:
    """Write ``agreement.md`` and ``agreement.json`` (the summary) into ``folder``; returns the summary."""
    summary = summarize(records, class_names)
    folder = Path(folder)
    write_json(folder / AGREEMENT_FILES[1], {"reads_per_image": reads_per_image, "consensus": consensus_rule,
                                             **summary})
    write_text(folder / AGREEMENT_FILES[0], agreement_markdown(summary, reads_per_image, consensus_rule))
    return summary
