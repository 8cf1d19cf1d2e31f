"""Human-machine collaborative segmentation (Ravanbakhsh et al.): Algorithm 1 as a configuration of the loop.

Inputs: a labeled set S_true (the slices of one volume), an unlabeled pool (the slices of the other training
volumes), a total budget k (a fraction of the pool) and n cycles. Each cycle (a round of the loop): train G, D
(pix2pix) on S = S_true + S_pseudo; rank the pool by the strategy (the method's: the discriminator, least
plausible first); query the top k/n from the oracle (they join S_true); pseudo-label every remaining pool slice
with G (S_pseudo); repeat. After the n-th query cycle a final G, D is trained on the last S and evaluated (Dice
per class) on the test volumes, which are never trained on.

With a human oracle (``medloop serve``) the expert can also correct the pseudo-labels that quality control flags
(``review_items``): a corrected slice joins S_true before the next ranking, beyond the k queries.

Any strategy whose inputs exist runs here too: ``random``, and the MC-dropout measures of G (``entropy``,
``bald``, ``margin``, ...) beside ``discriminator``. The cross-validation protocol is in ``protocol``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medloop.data import MedDataset, load_dataset
from medloop.errors import ConfigError, DataError
from medloop.loop.round import Candidates, Method, Proposal, QuerySize, ReviewItem
from medloop.loop.state import RunState
from medloop.methods.ravanbakhsh.config import CollaborativeConfig
from medloop.metrics import mask_dice, plain, segmentation_metrics
from medloop.query import QueryStrategy
from medloop.seeding import seed_for
from medloop.storage import write_json
from medloop.training.pix2pix import Pix2PixTrainer, train_pix2pix
from medloop.uncertainty import score_pool
from medloop.uncertainty.discriminator import discriminator_scores, slice_score
from medloop.uncertainty.qc import DiceCalibration, slice_dice

__all__ = ["CollabData", "load_collab_data", "Ravanbakhsh", "query_counts", "test_metrics"]


def query_counts(k: int, n: int) -> list[int]:
    """Exactly ``k`` queries over ``n`` cycles, ``k // n`` each, the remainder one by one in the first cycles."""
    return [k // n + (1 if c < k % n else 0) for c in range(n)]


@dataclasses.dataclass
class CollabData:
    """Slices with masks, as tensors, shared by every track."""

    dataset: MedDataset
    images: torch.Tensor  # [N, C, H, W]
    masks: torch.Tensor  # [N, H, W]
    num_classes: int
    names: dict[int, str]

    @property
    def ids(self) -> list[str]:
        return self.dataset.sample_ids


def load_collab_data(config: CollaborativeConfig, progress: bool = True) -> CollabData:
    ds = load_dataset(config.data_config, progress=progress)
    if ds.config.size is None:
        raise ConfigError("The 'data.size' parameter must be set (e.g. 64 or 128) so slices can be batched")
    keep = np.nonzero(ds.has_mask)[0]
    if len(keep) < len(ds):
        ds = ds.subset(keep)  # slices without masks cannot be evaluated or simulated by the ground-truth oracle
    if len(set(ds.case_ids)) < config.folds:
        raise DataError(f"{ds.info.root}: {len(set(ds.case_ids))} volumes with masks, fewer than folds = {config.folds}; "
                        "lower 'folds' or add volumes")
    images = torch.stack([s.image for s in ds])
    masks = torch.stack([s.mask for s in ds])
    num_classes = max(ds.num_mask_classes, int(masks.max()) + 1)
    names = {c: ds.info.mask_labels.get(c, f"label {c}") for c in range(1, num_classes)}
    return CollabData(ds, images, masks, num_classes, names)


def test_metrics(pred: torch.Tensor, masks: torch.Tensor, names: dict[int, str], cases: list[str]) -> dict:
    """Dice (and the rest of ``segmentation_metrics``) of predicted label maps over the test slices, and
    ``by_case``: each case's (patient's) Dice per class over its own slices (``None`` where neither map has the
    class), the unit a paired comparison of two models resamples."""
    out = plain(segmentation_metrics(pred, masks, {0: "background", **names}))
    out["by_case"] = {}
    for case in sorted(set(cases)):
        rows = [i for i, c in enumerate(cases) if c == case]
        p, m = pred[rows], masks[rows]
        out["by_case"][case] = {name: (float(mask_dice((p == c).reshape(1, -1), (m == c).reshape(1, -1))[0])
                                       if bool(((p == c) | (m == c)).any()) else None)
                                for c, name in names.items()}
    return out


class Ravanbakhsh(Method):
    """pix2pix on one fold: S_true from the base volume, k/n queries per cycle, pseudo-labels for the rest."""

    provides = CollaborativeConfig.PROVIDES

    def __init__(self, data: CollabData, train_idx: np.ndarray, test_idx: np.ndarray, base_case: str, budget: float,
                 cycles: int, config: CollaborativeConfig, seed: int, progress: bool = True, base: Path | None = None):
        self.data, self.config, self.seed, self.progress, self.cycles = data, config, seed, progress, cycles
        self.base_model = base  # the fold's base model (trained on the base volume): every track's round 0
        cases = np.array(data.dataset.case_ids)
        self.base = [int(i) for i in train_idx if cases[i] == base_case]
        self.pool = [int(i) for i in train_idx if cases[i] != base_case]
        if not self.base or not self.pool:
            raise DataError(f"fold has no base volume slices or no pool (base case '{base_case}')")
        self.test_idx = np.asarray(test_idx)
        self.test_cases = [str(cases[i]) for i in self.test_idx]
        self.pos = {data.ids[i]: i for i in range(len(data.dataset))}
        self._train_ids: set[str] = set()
        self._judged: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # this round's model: id -> (plausibility, map)
        self._engine_dir: Path | None = None  # engine: ray
        self._model_file: tuple[Path, str] | None = None  # engine: ray, this round's model as the workers load it
        self.per_cycle = query_counts(int(round(budget * len(self.pool))), cycles)
        self.p2p = config.pix2pix_config

    def _trainer(self) -> Pix2PixTrainer:
        d = self.data
        return Pix2PixTrainer(d.images.shape[1], d.num_classes, d.images.shape[-1],
                              self.p2p.replace(seed=seed_for(self.seed, "pix2pix", "init")))

    def initial_ids(self) -> list[str]:
        return [self.data.ids[i] for i in self.base]

    def restore(self, state: RunState) -> Pix2PixTrainer | None:
        self._engine_dir = state.folder / "engine"
        if not state.records:
            return None
        trainer = self._trainer()
        trainer.load_state_dict(state.load_model(state.records[-1]["round"]))
        return trainer

    def _training_set(self, state: RunState) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """S = S_true (expert masks, weight 1) + S_pseudo (G's label maps, weight ``pseudo_weight``), in pool order."""
        pseudo = sorted(state.pseudo, key=self.pos.__getitem__)
        idx = [self.pos[s] for s in state.labeled] + [self.pos[s] for s in pseudo]
        labels = [torch.from_numpy(np.asarray(state.answers[s].mask)).long() for s in state.labeled]
        labels += [torch.from_numpy(state.pseudo[s]).long() for s in pseudo]
        weights = [1.0] * len(state.labeled) + [self.p2p.pseudo_weight] * len(pseudo)
        return self.data.images[idx], torch.stack(labels), torch.tensor(weights)

    def train(self, state: RunState, model: Pix2PixTrainer | None, round_idx: int) -> Pix2PixTrainer:
        self._trained = (0, 0.0)
        self._train_ids = set(state.labeled)  # what the model has seen expert labels of (QC calibrates on the rest)
        self._judged, self._model_file = {}, None  # the model changes (trained in place)
        self._engine_dir = state.folder / "engine"
        if round_idx == 0 and self.base_model is not None:  # S_true is the base volume: the fold's shared base model
            trainer = self._trainer()
            trainer.load_state_dict(torch.load(self.base_model, weights_only=True))
            return trainer
        trainer = model if model is not None else self._trainer()
        x, y, w = self._training_set(state)
        t0 = time.time()
        history = train_pix2pix(trainer, x, y, w, seed_for(self.seed, "round", round_idx, "pix2pix"), self.progress)
        self._trained = (len(x) * len(history), time.time() - t0)
        return trainer

    def evaluate(self, state: RunState, model: Pix2PixTrainer, round_idx: int) -> dict:
        d = self.data
        return {"cycle": round_idx, "final": round_idx == self.cycles, "n_true": len(state.labeled),
                "n_pseudo": len(state.pseudo), "expert_pixels": sum(state.answers[s].pixels for s in state.labeled),
                "slices_trained": self._trained[0],
                "train_seconds": round(self._trained[1], 2),
                "test": test_metrics(discriminator_scores(model.G, model.D, d.images[self.test_idx])[2],
                                     d.masks[self.test_idx], d.names, self.test_cases)}

    def stop(self, state: RunState, round_idx: int, record: dict) -> str | None:
        return "cycles" if round_idx >= self.cycles else None

    def query_size(self, state: RunState, round_idx: int) -> QuerySize:
        k = self.per_cycle[round_idx]
        return QuerySize(k, k)

    def _remaining(self, state: RunState) -> list[int]:
        labeled = set(state.labeled)
        return [i for i in self.pool if self.data.ids[i] not in labeled]

    def candidates(self, strategy: QueryStrategy, state: RunState, model: Pix2PixTrainer, round_idx: int,
                   rng: np.random.Generator) -> Candidates:
        remaining = self._remaining(state)
        return Candidates(self.data.dataset.subset(remaining), [self.data.ids[i] for i in remaining])

    def inputs(self, needs: frozenset[str], model: Pix2PixTrainer, candidates: Candidates,
               round_idx: int) -> dict[str, np.ndarray]:
        columns: dict[str, np.ndarray] = {"index": np.arange(len(candidates))}
        if needs & {"discriminator", "foreground"}:
            plaus, pred = self._plausibility(model, candidates.sources)
            if "discriminator" in needs:
                columns["discriminator"] = 1.0 - plaus
            if "foreground" in needs:  # the share of the slice G labels as a structure
                columns["foreground"] = (pred > 0).flatten(1).double().mean(1).numpy()
        if "mc" in needs:  # MC dropout of G: per-pixel measures averaged over the slice
            cols = score_pool(model.G, candidates.dataset, n_mc_samples=self.config.n_mc_samples,
                              seed=seed_for(self.seed, "round", round_idx, "mc"), device=model.device,
                              reductions=("mean",), progress=False).columns
            columns.update({k.removesuffix("_mean"): np.asarray(v, dtype=np.float64)
                            for k, v in cols.items() if k.endswith("_mean")})
        return columns

    def pseudo_labels(self, state: RunState, model: Pix2PixTrainer) -> dict[str, np.ndarray]:
        """G's label map for every remaining pool slice (with ``repseudo``; else only for those without one),
        kept when its plausibility reaches ``pseudo_threshold``; the quality control of these pseudo-labels is
        written beside (``quality_control``)."""
        pseudo = dict(state.pseudo)
        rest = [self.data.ids[i] for i in self._remaining(state) if self.config.repseudo or self.data.ids[i] not in pseudo]
        if rest:
            plaus, pred = self._plausibility(model, rest, "mean")
            for j, sid in enumerate(rest):
                if self.config.pseudo_threshold is None or plaus[j] >= self.config.pseudo_threshold:
                    pseudo[sid] = pred[j].numpy().astype(np.int64)
                else:
                    pseudo.pop(sid, None)
        self.quality_control(state, model, pseudo)
        return pseudo

    def _plausibility(self, model: Pix2PixTrainer, ids: list[str], reduction: str | None = None
                      ) -> tuple[np.ndarray, torch.Tensor]:
        """Slice plausibility (``reduction``, default ``slice_reduction``) and G's label maps of pool slices. G and D
        judge each slice once per round: the strategy's inputs, the pseudo-labels and their quality control all
        read the same maps."""
        missing = [s for s in ids if s not in self._judged]
        if missing and self.config.engine == "ray":
            self._judge_on_ray(model, missing)
        elif missing:
            _, pmaps, preds = discriminator_scores(model.G, model.D, self.data.images[[self.pos[s] for s in missing]])
            self._judged.update((s, (pmaps[j], preds[j])) for j, s in enumerate(missing))
        pmap = torch.stack([self._judged[s][0] for s in ids])
        pred = torch.stack([self._judged[s][1] for s in ids])
        score = slice_score(pmap, reduction or self.config.slice_reduction, self.config.q, pred)
        return 1.0 - score.numpy().astype(np.float64), pred

    def _judge_on_ray(self, model: Pix2PixTrainer, ids: list[str]) -> None:
        """``_plausibility``'s judging with ``engine: ray``: the slices are read and judged by G and D on Ray's
        workers (``engine.ray.map_samples_ray``; the round's model saved once under the track's ``engine/``); D's
        patch logits and G's label maps come back and become plausibility maps here, as in process."""
        from medloop.engine.pool import model_version
        from medloop.engine.ray import map_samples_ray
        from medloop.engine.rounds import read_columns
        from medloop.storage import save_torch
        from medloop.uncertainty.discriminator import plausibility_map

        if self._model_file is None:
            path = save_torch(self._engine_dir / "models" / "judge.pt", {
                "in_channels": self.data.images.shape[1], "num_classes": self.data.num_classes,
                "size": self.data.images.shape[-1], "config": self.p2p.to_dict(), "state": model.state_dict()})
            self._model_file = (path, model_version(path))
        path, version = self._model_file
        groups: dict[str, tuple[Any, list[str]]] = {}
        for sid in ids:
            entry = self.data.dataset.entry_of(self.pos[sid])
            groups.setdefault(entry.entry_id, (entry, []))[1].append(sid)
        folder = map_samples_ray(self.config.data_config, list(groups.values()), Judge(str(path)), {"model": version},
                                 self._engine_dir, address=self.config.engine_address, progress=self.progress)
        cols = read_columns(folder)
        row = {sid: i for i, sid in enumerate(cols["sample_id"])}
        at = [row[sid] for sid in ids]
        h, w = int(cols["patch_h"][at[0]]), int(cols["patch_w"][at[0]])
        size = tuple(self.data.images.shape[-2:])
        logits = torch.from_numpy(cols["patch_logits"][at].astype(np.float32)).view(len(at), 1, h, w)
        pmaps = plausibility_map(logits, size)
        preds = torch.from_numpy(cols["pred"][at].astype(np.int64)).view(len(at), *size)
        self._judged.update((s, (pmaps[j], preds[j])) for j, s in enumerate(ids))

    def quality_control(self, state: RunState, model: Pix2PixTrainer, pseudo: dict[str, np.ndarray]) -> dict:
        """Calibrate the discriminator to a Dice on the slices the expert has just labeled (G's maps from before
        it trained on them against the expert's), predict each pseudo-label's Dice, and flag those below
        ``qc_threshold``; written to ``qc/round_NNN.json`` in the track's folder (what the report and the
        annotation queue show)."""
        fresh = sorted((s for s in state.labeled if s not in self._train_ids), key=self.pos.__getitem__)
        out: dict[str, Any] = {"threshold": self.config.qc_threshold, "calibration": None, "calibration_slices": {},
                               "predicted_dice": {}, "flagged": []}
        if fresh:
            plaus, pred = self._plausibility(model, fresh)
            truth = torch.stack([torch.from_numpy(np.asarray(state.answers[s].mask)).long() for s in fresh])
            dice = slice_dice(pred, truth, self.data.num_classes)
            cal = DiceCalibration.fit(plaus, dice)
            out["calibration"] = cal.to_dict()
            out["calibration_slices"] = {s: [round(float(p), 5), round(float(d), 5)] for s, p, d in zip(fresh, plaus, dice)}
            ids = sorted(pseudo, key=self.pos.__getitem__)
            if ids:
                predicted = cal.predict(self._plausibility(model, ids)[0])
                out["predicted_dice"] = {s: round(float(v), 5) for s, v in zip(ids, predicted)}
                out["flagged"] = [s for s, v in zip(ids, predicted) if v < self.config.qc_threshold]
        write_json(state.folder / "qc" / f"round_{len(state.records):03d}.json", out)
        return out

    def proposals(self, model: Pix2PixTrainer, sample_ids: list[str]) -> dict[str, Proposal]:
        """For an annotator: G's label map, and the discriminator's implausibility map (1 - plausibility) as
        uncertainty (the unreliable areas of Ravanbakhsh et al.'s Fig. 2)."""
        images = self.data.images[[self.pos[s] for s in sample_ids]]
        _, plausibility, pred = discriminator_scores(model.G, model.D, images)
        return {s: Proposal(pred[j].numpy(), None, (1.0 - plausibility[j]).numpy()) for j, s in enumerate(sample_ids)}

    def review_items(self, state: RunState, model: Pix2PixTrainer) -> list[ReviewItem]:
        """The pseudo-labels flagged by the latest recorded cycle's quality control (``qc/round_NNN.json``), lowest
        predicted Dice first, each with its pseudo-label as the proposal and the discriminator's implausibility
        map (from ``model``) as its uncertainty."""
        for rec in reversed(state.records):
            path = state.folder / "qc" / f"round_{rec['round']:03d}.json"
            if path.exists():
                qc = json.loads(path.read_text())
                break
        else:
            return []
        labeled = set(state.labeled)
        flagged = sorted((s for s in qc["flagged"] if s in state.pseudo and s not in labeled),
                         key=lambda s: (qc["predicted_dice"][s], self.pos[s]))
        if not flagged:
            return []
        maps = self.proposals(model, flagged)
        return [ReviewItem(s, qc["predicted_dice"][s], qc["threshold"], rec["round"],
                           Proposal(state.pseudo[s], None, maps[s].uncertainty)) for s in flagged]

    def save(self, state: RunState, model: Pix2PixTrainer, round_idx: int) -> None:
        state.save_model(round_idx, model.state_dict())


class Judge:
    """Picklable (it travels to Ray's workers): G's label maps and D's patch logits of slices, from a model saved by
    ``Ravanbakhsh._judge_on_ray``; the networks are loaded once per process, dropout off, one thread."""

    def __init__(self, path: str, batch_size: int = 16):
        self.path, self.batch_size = path, batch_size
        self._trainer: Pix2PixTrainer | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_trainer": None}

    def _load(self) -> Pix2PixTrainer:
        from medloop.training.pix2pix import Pix2PixConfig

        if self._trainer is None:
            saved = torch.load(self.path, map_location="cpu", weights_only=True)
            config = Pix2PixConfig.from_dict({**saved["config"], "device": "cpu", "workers": 1})
            self._trainer = Pix2PixTrainer(saved["in_channels"], saved["num_classes"], saved["size"], config)
            self._trainer.load_state_dict(saved["state"])
        return self._trainer

    @torch.no_grad()
    def __call__(self, samples: list) -> dict[str, np.ndarray]:
        trainer = self._load()
        G, D = trainer.G.eval(), trainer.D.eval()
        logits, preds = [], []
        for chunk in torch.stack([s.image for s in samples]).split(self.batch_size):
            probs = G(chunk)[0].softmax(1)
            logits.append(D.judge(chunk, probs))
            preds.append(probs.argmax(1))
        logit, pred = torch.cat(logits), torch.cat(preds)
        n = len(samples)
        return {"sample_id": np.array([s.sample_id for s in samples], dtype=object),
                "patch_logits": logit.flatten(1).numpy().astype(np.float32),
                "patch_h": np.full(n, logit.shape[-2], np.int32), "patch_w": np.full(n, logit.shape[-1], np.int32),
                "pred": pred.flatten(1).numpy().astype(np.uint8)}
