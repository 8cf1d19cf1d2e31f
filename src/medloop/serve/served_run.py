"""The served run as the routers see it: MONAI Label's words (info, next sample, save label, infer) and the UI's
over one ``Runner`` (the loop), its ``Datastore`` and its ``HumanOracle`` (the queue).

The routers parse HTTP and shape answers; what a request means for the run is decided here, once for every
client: MONAI Label's client and 3D Slicer, the browser UI, a script.

Labels are name -> value everywhere the API shows them (as MONAI Label has them), background left out: 3D Slicer
makes one segment per name and exports segment i as value i, so the run's label values are 1, 2, ... in the
order shown. An upload may name its values (``params.label_info``, as Slicer sends ``[{"name", "idx"}]``, or the
segments of a Slicer ``.seg.nrrd``); named values are mapped to the run's values by name.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
from typing import Any

import numpy as np
from fastapi import Request

from medloop.serve.datastore import RequestError
from medloop.serve.labelfile import EXTENSIONS, decode_label, encode_label, result_extension
from medloop.serve.runner import Runner

__all__ = ["MAX_UPLOAD_BYTES", "InferResult", "ServedRun", "served"]

MAX_UPLOAD_BYTES = 8 * 1024 * 1024  # a request body larger than this is refused (413) while it streams in
_CLASS_PREFIX = "class:"  # a Slicer segment named "class: nodule" (or just "nodule") sets the image class


@dataclasses.dataclass
class InferResult:
    """The model's proposal for one image, in the client's format: ``params`` (JSON) and the label file, if the
    model proposes a mask."""

    params: dict
    label: bytes | None
    filename: str | None


def served(request: Request) -> ServedRun:
    """The routers' dependency: the run the app serves."""
    return request.app.state.run


def clean(obj: Any) -> Any:
    """JSON-safe: NaN and infinities become ``null`` (browsers' JSON.parse refuses them), numpy becomes Python."""
    import math

    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def client_id(value: Any) -> str:
    """The annotator's id as sent (``client_id``), ``anonymous`` when none."""
    client = "anonymous" if value in (None, "") else value
    if not isinstance(client, str) or len(client) > 64 or not client.isprintable():
        raise RequestError("the 'client_id' must be a printable string of at most 64 characters", 400)
    return client


def json_object(text: str | None, field: str, example: str) -> dict:
    """A form field that holds a JSON object (MONAI Label's ``params``)."""
    try:
        value = json.loads(text or "{}")
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise RequestError(f"the '{field}' field must be a JSON object, e.g. {example}", 400)
    return value


class ServedRun:
    """What the routers use of a served run (see the module docstring)."""

    def __init__(self, runner: Runner, token: str, max_upload_bytes: int = MAX_UPLOAD_BYTES):
        self.runner, self.token, self.max_upload_bytes = runner, token, max_upload_bytes
        self.plan, self.datastore, self.oracle = runner.plan, runner.datastore, runner.oracle
        self.cookie = f"medloop-{runner.run_id[:16]}"  # per run: one run's cookie never opens another's server
        self.labels = self.plan.labels  # name -> value, background left out
        self.class_names = list(self.plan.class_names)

    @property
    def run_id(self) -> str:
        return self.runner.run_id

    @property
    def model_name(self) -> str:
        return self.runner.model_name

    @property
    def strategy(self) -> str:
        return self.plan.spec["label"]

    def token_matches(self, given: str) -> bool:
        return bool(given) and secrets.compare_digest(given.encode(), self.token.encode())

    # ------------------------------------------------------------------------------------------------ info

    def info(self) -> dict:
        """MONAI Label's ``/info/``, with medloop's own section for the UI."""
        from medloop import __version__

        plan, runner = self.plan, self.runner
        status = runner.status()
        return clean({
            "name": runner.config.name, "description": f"medloop {runner.config.method}: {plan.track}",
            "version": __version__, "labels": self.labels,
            "models": {self.model_name: {
                "type": "segmentation", "labels": self.labels, "dimension": 2, "round": runner.model_round,
                "classes": self.class_names,
                "description": f"medloop {runner.config.method}: the model the loop retrains after each batch"}},
            "trainers": {}, "strategies": {self.strategy: {"description": f"medloop strategy '{plan.spec['name']}'"}},
            "scoring": {}, "train_stats": {self.model_name: {"round": runner.model_round, "phase": runner.phase,
                                                             "metrics": status["metrics"]}},
            "datastore": self.datastore.status(),
            "medloop": {"run_id": self.run_id, **plan.track, "class_names": self.class_names, "labels": self.labels,
                        "needs_class": bool(self.class_names), "budget": plan.budget,
                        "lease_seconds": self.oracle.lease_seconds, "max_upload_bytes": self.max_upload_bytes,
                        "reads_per_image": self.oracle.reads_per_image,
                        "label_formats": list(EXTENSIONS), "hints": plan.hints},
        })

    # ----------------------------------------------------------------------------------------- the queue

    def next_item(self, strategy: str, params: dict | None) -> dict:
        """Lease the next image of the queue, in the strategy's order, to ``params.client_id``; ``{}`` when none
        is open (all leased, or the model is retraining)."""
        if strategy not in (self.strategy, self.plan.spec["name"]):
            raise RequestError(f"unknown strategy '{strategy[:40]}'; this run's strategy is '{self.strategy}'", 404)
        client = client_id((params or {}).get("client_id"))
        item = self.oracle.lease(client)
        if item is None:
            return {}
        return clean({**self.datastore.info(item["id"]), **item,
                      "strategy": {self.strategy: {"client_id": client, "round": item["round"]}}})

    def lease(self, image: str, client: str | None) -> dict:
        return clean(self.oracle.lease(client_id(client), self.datastore.check(image)))

    def release(self, image: str, client: str | None) -> None:
        self.oracle.release(client_id(client), self.datastore.check(image))

    # ------------------------------------------------------------------------------------------- labels

    def save_label(self, image: str, tag: str, data: bytes, filename: str, params_text: str | None) -> dict:
        """Check and store an expert's label: the file (PNG, NIfTI or NRRD), ``params.label_info`` naming its
        values, the image class (``params.class``, or a segment named after the class); acknowledged once durable.
        With several reads per image it is ``params.client_id``'s read; ``reads`` says how many are in. For an
        image on the review list (``review``) it is a correction of its pseudo-label (``review: true``)."""
        sample_id = self.datastore.check(image)
        if tag not in ("", "final"):
            raise RequestError(f"only tag 'final' (the expert's label) can be uploaded; got '{tag[:40]}' "
                               "('original' holds the model's proposals)", 400)
        params = json_object(params_text, "params", '{"class": 1, "client_id": "ann1"}')
        if params.get("run_id") not in (None, self.run_id):
            raise RequestError("this label was made in another run (its run_id differs from this server's); reload "
                               "the page of this server", 409)
        if len(data) > self.max_upload_bytes:
            raise RequestError(f"the label file is larger than {self.max_upload_bytes} bytes; a label map of this "
                               "image is far smaller", 413)
        upload = decode_label(data, filename, self.datastore.shape(sample_id))
        names = _label_info(params.get("label_info")) or upload.names or {}
        mask, named_classes = self._to_run_values(upload.mask, names, filename or "label")
        label = self._image_class(params, named_classes)
        record, created = self.oracle.answer(sample_id, mask, label, client_id(params.get("client_id")))
        review = bool(record.get("info", {}).get("review"))  # (a read has no info)
        return clean({"image": sample_id, "label": sample_id, "tag": "final", "acknowledged": True,
                      "duplicate": not created, "class": record["class"], "review": review,
                      "reads": 1 if review else self.oracle.reads_of(sample_id),
                      "reads_per_image": self.oracle.reads_per_image, "labeled": self.runner.labeled_count(),
                      "reviewed": len(self.oracle.reviewed()), "budget": self.plan.budget})

    def _to_run_values(self, mask: np.ndarray, names: dict[int, str], filename: str) -> tuple[np.ndarray, set[int]]:
        """The upload's values as the run's: named values by name, a segment named after an image class to 0
        (it names the class); returns the mask and the classes named."""
        by_name = {n.lower(): v for n, v in self.labels.items()}
        classes = {n.lower(): i for i, n in enumerate(self.class_names)}
        named_classes = {c for n in names.values() if (c := _class_of(n, classes)) is not None}
        values, inverse = np.unique(mask, return_inverse=True)
        mapped, bad = [], []
        for v in values.tolist():
            name = names.get(v)
            if v == 0 or (name is not None and name.strip().lower() == "background"):
                mapped.append(0)
            elif name is not None and name.strip().lower() in by_name:
                mapped.append(by_name[name.strip().lower()])
            elif name is not None and _class_of(name, classes) is not None:
                mapped.append(0)
            elif name is None and v in self.plan.mask_labels:
                mapped.append(v)
            else:
                bad.append(f"{v} ({name})" if name is not None else str(v))
        if bad:
            allowed = ", ".join(f"{n}={v}" for n, v in self.labels.items())
            extra = f"; image classes ({', '.join(self.class_names)}) may be named by an empty segment" \
                if self.class_names else ""
            raise RequestError(f"label values {', '.join(bad[:8])} of '{filename[:80]}' are not labels of this run "
                               f"({allowed}); paint only those values, or name each segment after one of them{extra}",
                               422)
        return np.asarray(mapped, dtype=np.uint8)[inverse.reshape(mask.shape)], named_classes

    def _image_class(self, params: dict, named: set[int]) -> int | None:
        cls = params.get("class")
        names = ", ".join(f"{i}={n}" for i, n in enumerate(self.class_names))
        if not self.class_names:
            if cls is not None:
                raise RequestError(f"this run has no image classes (method {self.runner.config.method} labels masks "
                                   "only); drop params.class", 422)
            return None
        if cls is None:
            if len(named) > 1:
                raise RequestError(f"the label names more than one image class "
                                   f"({', '.join(self.class_names[c] for c in sorted(named))}); keep one segment "
                                   "named after the image's class", 422)
            if not named:
                raise RequestError(f"the image class is missing: send params.class ({names}), or, from 3D Slicer, "
                                   f"add an empty segment named after the class (e.g. '{self.class_names[-1]}' or "
                                   f"'class: {self.class_names[-1]}') before saving the label", 422)
            return named.pop()
        if isinstance(cls, str) and cls in self.class_names:
            cls = self.class_names.index(cls)
        if isinstance(cls, bool) or not isinstance(cls, int) or not 0 <= cls < len(self.class_names):
            raise RequestError(f"params.class must be the image's class ({names}); got {cls!r}", 422)
        return cls

    # ------------------------------------------------------------------------------------------- infer

    def infer(self, model: str, image: str, params_text: str | None) -> InferResult:
        """The latest model's proposal for an image: ``params`` (label names, class probabilities, mean
        uncertainty, model round) and the label map in ``params.result_extension`` (PNG when none)."""
        if model != self.model_name:
            raise RequestError(f"unknown model '{model[:40]}'; this run's model is '{self.model_name}'", 404)
        request = json_object(params_text, "params", '{"result_extension": ".nrrd"}')
        ext = result_extension(request.get("result_extension"))
        sample_id = self.datastore.check(image)
        model_round, proposal = self.runner.infer(sample_id)
        params: dict[str, Any] = {"model_round": model_round, "label_names": self.labels}
        if proposal.probs is not None:
            params["class_probabilities"] = dict(zip(self.class_names, proposal.probs.tolist()))
        if proposal.uncertainty is not None:
            params["uncertainty_mean"] = float(np.mean(proposal.uncertainty))
        if proposal.mask is None:
            params["note"] = f"no mask proposed: {self.plan.hints['no_uncertainty']}"
            return InferResult(clean(params), None, None)
        stem = self.datastore.path(sample_id).stem
        return InferResult(clean(params), encode_label(proposal.mask, ext), f"{stem}{ext}")

    # ----------------------------------------------------------------------------------------- the UI's own

    def status(self, client: str | None) -> dict:
        return clean(self.runner.status(client_id(client)))

    def review(self) -> dict:
        """The pseudo-labels of the latest cycle that the method's quality control flags, lowest predicted Dice
        first: each with its ``id``, ``predicted_dice``, ``threshold``, ``round`` (the cycle that gave it) and
        whether a correction is stored (``reviewed``). Empty before the first cycle's pseudo-labels, after the
        run, and for a method without quality control. Open one with ``GET /api/item`` (its proposal is the
        pseudo-label) and correct it with ``PUT /datastore/label``. Corrections are expert labels beyond the
        query budget: ``reviewed`` counts them, and the status's ``labeled`` leaves them out."""
        return clean({"items": self.oracle.reviews(), "reviewed": len(self.oracle.reviewed())})

    def agreement(self) -> dict:
        """The readers' agreement so far: per annotator, per pair, the images with the most disagreement."""
        return clean({"reads_per_image": self.oracle.reads_per_image, **self.runner.agreement()})

    def item(self, image: str) -> dict:
        """One image for the editor: pixels, the model's proposal and uncertainty, the final label if any, as
        raw uint8 arrays, and why there is no uncertainty map when there is none."""
        import base64

        def b64(array: np.ndarray | None) -> str | None:
            return None if array is None else base64.b64encode(np.ascontiguousarray(array, np.uint8).tobytes()).decode()

        store = self.datastore
        sample_id = store.check(image)
        pixels = store.image(sample_id)
        info = store.proposal_info(sample_id)
        answer = store.answer(sample_id)
        has = store.info(sample_id)["labels"]
        uncertainty = store.uncertainty(sample_id) if "uncertainty" in info else None
        if uncertainty is not None:
            why_none = None
        elif info.get("model_round") is None:
            why_none = "no model has seen this image: the first model trains once the initial images are labeled"
        else:
            why_none = self.plan.hints["no_uncertainty"]
        return clean({
            "id": sample_id, "height": int(pixels.shape[0]), "width": int(pixels.shape[1]),
            "channels": 1 if pixels.ndim == 2 else int(pixels.shape[2]), "image": b64(pixels),
            "proposal": b64(store.label(sample_id, "original")) if "original" in has else None,
            "uncertainty": b64(uncertainty), "no_uncertainty": why_none,
            "final": b64(store.label(sample_id, "final")) if answer is not None else None,
            "class": answer["class"] if answer is not None else None, "probs": info.get("probs"),
            "score": info.get("score"), "model_round": info.get("model_round"),
            "review": info.get("review") if answer is None or answer["info"].get("review") else None})


def _label_info(value: Any) -> dict[int, str] | None:
    """``params.label_info`` as value -> name: 3D Slicer's ``[{"name": segment, "idx": value}]`` (``id`` in
    its scribbles requests)."""
    if value is None:
        return None
    problem = "params.label_info must be a list of {\"name\": segment name, \"idx\": label value}"
    if not isinstance(value, list):
        raise RequestError(f"{problem}; got {type(value).__name__}", 400)
    names = {}
    for entry in value:
        idx = entry.get("idx", entry.get("id")) if isinstance(entry, dict) else None
        name = entry.get("name") if isinstance(entry, dict) else None
        if isinstance(idx, bool) or not isinstance(idx, int) or not isinstance(name, str) or len(name) > 200:
            raise RequestError(f"{problem}; got {str(entry)[:80]}", 400)
        names[idx] = name
    return names


def _class_of(name: str, classes: dict[str, int]) -> int | None:
    key = name.strip().lower()
    if key.startswith(_CLASS_PREFIX):
        key = key[len(_CLASS_PREFIX):].strip()
    return classes.get(key)
