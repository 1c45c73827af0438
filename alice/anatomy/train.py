"""Train `AnatomyNet` the SAM way and cache its per-volume embeddings (Yan et al., ref. [49];
docs/facts.md "SAM").

Each step draws `batch_size` volumes, two overlapping augmented views of each
(`alice.anatomy.sampling`), embeds the 2B views in one forward pass and sums two InfoNCE terms
(temperature `temperature`, SAM 0.5), each symmetric (a -> b and b -> a):

- fine:   anchor = fine embedding of a point in one view, positive = the same physical point in the
          other view, negatives = `fine_negatives` cells drawn from the `fine_top` most similar
          fine cells of the other view at >= `fine_ignore_mm` (SAM: top 2000 -> 500), plus
          `fine_random_negatives` uniformly drawn cells at the same distance (hard negatives alone
          collapse a freshly initialised fine map: every cell alike gives log(K + 1), a
          plateau that short CPU runs do not leave);
- coarse: the same with coarse embeddings; negatives = the other view's coarse cells at
          >= `coarse_ignore_mm` plus (SAM; `coarse_other_volumes`) every coarse cell of the other
          volumes' views in the batch, plus the far cells of an extra view of the same volume
          (pairs setting `extra_view`, see `alice.anatomy.sampling`).

Embeddings at points are trilinear interpolations of the maps at the points' continuous grid
coordinates, re-normalised. Optimiser SGD (momentum) or AdamW, linear warm-up + cosine decay
(`alice.training.lr_factor`). Reproducible: training runs with
`torch.use_deterministic_algorithms(True)`, so the weights depend only on `seed` and the settings
(on one machine and thread count; float reduction order may differ across them).

Outputs in `out_dir`: `model.pt` (weights-only loadable dict {"model", "config", "settings",
"step", "seed", "case_ids"}), written once training is done, and `log.csv` (step, loss, fine,
coarse, lr, seconds), both atomically. While it runs, `resume.pt` holds the running state (weights,
optimizer, log rows, RNGs), written every `checkpoint_every` steps and on SIGTERM / SIGUSR1 /
SIGINT (then `alice.runstate.Preempted`, exit status 75); a rerun with the same settings, seed and
cases resumes from it exactly (the batches of step i depend only on (seed, i)), any other is
refused (`alice.runstate.check_identity`); it is removed when done. `embed_volume` / `save_embeddings` / `load_embeddings` / `embed_cases` build the
per-volume embedding cache ``<dir>/<case_id>.npz`` that `alice.anatomy.learned.LearnedMatcher`
reads.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from alice.anatomy.learned import load_embeddings, save_embeddings
from alice.anatomy.model import AnatomyNet, AnatomyNetConfig
from alice.anatomy.sampling import PairConfig, PairSample, cells_mm, hard_negatives, random_negatives, sample_batch
from alice.errors import ConfigError, InputError
from alice.io import atomic_path, load_torch_dict
from alice.runstate import Preempted, StopFlag, load_state, rng_state, run_identity, save_state, set_rng_state
from alice.training import OptimizerStep, lr_factor, progress_bar, write_log

__all__ = ["DEFAULT_SETTINGS", "embed_cases", "embed_volume", "load_embeddings", "load_model", "resolve_settings",
           "sam_loss", "save_checkpoint", "save_embeddings", "train_anatomy"]

OPTIMIZERS = ("sgd", "adamw")
STATE_FILE = "resume.pt"
log = logging.getLogger("alice")

# Demo-scale defaults, tuned on the 16-case phantom pool (4x4x5 mm) for ~2.5 min of training on
# 2 CPU threads (benchmarks/anatomy_matcher.py). Departures from SAM's recipe (docs/facts.md "SAM") and why:
# - temperature 0.1 (SAM 0.5): with ~300 steps the softer 0.5 learns too slowly (median landmark
#   error 33 vs 26 mm after 150 steps); 0.05 was worse again;
# - fine_random_negatives: hard negatives alone collapse the fine map (see the module doc);
# - per-axis zoom and a random intensity curve (pairs.zoom_per_axis, pairs.intensity_remap): one
#   volume's two views differ far less than two subjects do (body proportions, contrast phase,
#   stomach / bowel contents); the curve lowered the cross-subject median error from 20.5 to
#   18.9 mm (one seed; the seed-to-seed spread is about +-2 mm, so treat this as a hint);
# - a 3-stage, narrow network: steps matter more than width at this budget (the median error
#   went from ~27 mm at 150 steps to ~18-19 mm at 300).
DEFAULT_SETTINGS: dict[str, Any] = {
    "model": {"widths": [16, 48, 96], "blocks": [1, 1, 1], "stem_width": 8, "stem_kernel": [3, 3, 3],
              "fpn_dim": 48, "embed_dim": 32, "fine_stride": 2, "coarse_stride": 8, "norm": "batch",
              "padding_mode": "zeros"},
    "pairs": {"crop": [48, 48, 32], "zoom_range": [0.8, 1.2], "zoom_per_axis": True, "min_overlap": 0.5,
              "points": 256, "intensity_scale": 0.2, "intensity_shift": 0.1, "intensity_remap": 0.2,
              "noise_sd": [0.0, 0.03], "blur_prob": 0.3, "blur_sigma": [0.5, 1.0], "extra_view": False},
    "iterations": 300,
    "batch_size": 3,
    "optimizer": "adamw",
    "lr": 2e-3,
    "weight_decay": 1e-4,
    "momentum": 0.9,
    "warmup_iterations": 20,
    "schedule": "cosine",
    "temperature": 0.1,
    "fine_ignore_mm": 20.0,
    "fine_top": 200,
    "fine_negatives": 100,
    "fine_random_negatives": 100,
    "coarse_ignore_mm": 40.0,
    "coarse_other_volumes": True,
    "fine_weight": 1.0,
    "coarse_weight": 1.0,
    "checkpoint_every": 0,
}

LOG_FIELDS = ("step", "loss", "fine", "coarse", "lr", "seconds")


def resolve_settings(settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """DEFAULT_SETTINGS overridden by `settings` ("model" / "pairs" merged key by key), validated.
    Returns plain python values (JSON / weights-only checkpoint safe)."""
    out = copy.deepcopy(DEFAULT_SETTINGS)
    for key, value in dict(settings or {}).items():
        if key not in out:
            raise ConfigError(f"anatomy.{key}", f"unknown setting (known: {sorted(out)})")
        if key in ("model", "pairs"):
            out[key] = {**out[key], **dict(value or {})}
        else:
            out[key] = value
    out["model"] = AnatomyNetConfig.from_dict(out["model"]).to_dict()
    pairs = PairConfig.from_dict(out["pairs"])  # validates; every field recorded (self-describing)
    out["pairs"] = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(pairs).items()}
    if int(out["fine_random_negatives"]) < 0:
        raise ConfigError("anatomy.fine_random_negatives", f"must be >= 0, got {out['fine_random_negatives']!r}")
    out["fine_random_negatives"] = int(out["fine_random_negatives"])
    for key in ("iterations", "batch_size", "fine_top", "fine_negatives"):
        if int(out[key]) < 1:
            raise ConfigError(f"anatomy.{key}", f"must be an integer >= 1, got {out[key]!r}")
        out[key] = int(out[key])
    if str(out["optimizer"]).lower() not in OPTIMIZERS:
        raise ConfigError("anatomy.optimizer", f"must be one of {', '.join(OPTIMIZERS)}, got {out['optimizer']!r}")
    out["optimizer"] = str(out["optimizer"]).lower()
    for key in ("lr", "temperature"):
        if not float(out[key]) > 0:
            raise ConfigError(f"anatomy.{key}", f"must be > 0, got {out[key]!r}")
    for key in ("lr", "weight_decay", "momentum", "temperature", "fine_ignore_mm", "coarse_ignore_mm",
                "fine_weight", "coarse_weight"):
        out[key] = float(out[key])
    out["coarse_other_volumes"] = bool(out["coarse_other_volumes"])
    out["warmup_iterations"] = int(out["warmup_iterations"])
    out["checkpoint_every"] = int(out["checkpoint_every"])
    return out


# ------------------------------------------------------------------------------------------ loss
def features_at(fmap: torch.Tensor, cells: np.ndarray) -> torch.Tensor:
    """(N, C) l2-normalised trilinear samples of fmap (C, G0, G1, G2) at continuous cell coords
    (N, 3) (border-clamped)."""
    g = torch.as_tensor(np.asarray(cells, dtype=np.float64), dtype=fmap.dtype)
    sizes = torch.tensor(fmap.shape[1:], dtype=fmap.dtype)
    norm = torch.where(sizes > 1, 2.0 * g / (sizes - 1).clamp(min=1) - 1.0, torch.zeros_like(g))
    grid = norm.flip(-1).view(1, -1, 1, 1, 3)  # grid_sample wants (z, y, x) = (W, H, D)
    out = F.grid_sample(fmap[None], grid, mode="bilinear", padding_mode="border", align_corners=True)
    return F.normalize(out[0, :, :, 0, 0].t(), dim=1)


def _info_nce(pos: torch.Tensor, neg: torch.Tensor, valid: torch.Tensor | None, temperature: float) -> torch.Tensor:
    """Mean -log softmax of the positive among [pos, negatives]; pos (N,), neg (N, K)."""
    if valid is not None:
        neg = neg.masked_fill(~valid, float("-inf"))
    logits = torch.cat([pos[:, None], neg], dim=1) / temperature
    return -(logits[:, 0] - torch.logsumexp(logits, dim=1)).mean()


def sam_loss(fine: torch.Tensor, coarse: torch.Tensor, batch: Sequence[PairSample], settings: Mapping[str, Any],
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """SAM's two-level InfoNCE for B pairs; fine/coarse: (2B, C, ...) maps, views a first, then b
    (then the B extra views c, when the pairs have them)."""
    s = settings
    nb = len(batch)
    cfg = s["model"]
    t = float(s["temperature"])
    fine_terms, coarse_terms = [], []
    flat_c = coarse.flatten(2).transpose(1, 2)  # (2B, Mc, C)
    for i, pair in enumerate(batch):
        views = ((i, pair.geom_a, pair.fine_a, pair.coarse_a), (nb + i, pair.geom_b, pair.fine_b, pair.coarse_b))
        emb_f = [features_at(fine[j], pts) for j, _, pts, _ in views]
        emb_c = [features_at(coarse[j], pts) for j, _, _, pts in views]
        pm = torch.as_tensor(pair.points_mm, dtype=fine.dtype)
        others = [j for j in range(2 * nb) if j not in (i, nb + i)] if s["coarse_other_volumes"] else []
        extra = []  # (map index, geometry) of this volume's extra view
        if pair.view_c is not None:
            extra = [(2 * nb + sum(p.view_c is not None for p in batch[:i]), pair.geom_c)]
        for src, dst in ((0, 1), (1, 0)):
            j, geom = views[dst][0], views[dst][1]
            # fine: hard negatives of the other view outside the ignore radius
            cells = fine[j].flatten(1).t()  # (Mf, C)
            with torch.no_grad():  # selection only: the gradient flows through the chosen cells
                sim = emb_f[src] @ cells.t()
            dist = torch.cdist(pm, torch.as_tensor(cells_mm(geom, cfg["fine_stride"], pair.spacing), dtype=pm.dtype))
            idx, valid = hard_negatives(sim, dist, s["fine_ignore_mm"], s["fine_top"], s["fine_negatives"], generator)
            if s["fine_random_negatives"]:
                ridx, rvalid = random_negatives(dist, s["fine_ignore_mm"], s["fine_random_negatives"], generator)
                idx, valid = torch.cat([idx, ridx], 1), torch.cat([valid, rvalid], 1)
            pos = (emb_f[src] * emb_f[dst]).sum(1)
            neg = torch.einsum("nc,nkc->nk", emb_f[src], cells[idx])  # (N, K); sparse backward
            fine_terms.append(_info_nce(pos, neg, valid, t))
            # coarse: the other view's far cells + all cells of the other volumes
            sim_c = emb_c[src] @ flat_c[j].t()
            dist_c = torch.cdist(pm, torch.as_tensor(cells_mm(geom, cfg["coarse_stride"], pair.spacing), dtype=pm.dtype))
            neg = [sim_c]
            mask = [dist_c >= s["coarse_ignore_mm"]]
            for jc, gc in extra:
                neg.append(emb_c[src] @ flat_c[jc].t())
                dc = torch.cdist(pm, torch.as_tensor(cells_mm(gc, cfg["coarse_stride"], pair.spacing), dtype=pm.dtype))
                mask.append(dc >= s["coarse_ignore_mm"])
            if others:
                neg.append(emb_c[src] @ flat_c[others].reshape(-1, flat_c.shape[2]).t())
                mask.append(torch.ones(neg[-1].shape, dtype=torch.bool))
            pos_c = (emb_c[src] * emb_c[dst]).sum(1)
            coarse_terms.append(_info_nce(pos_c, torch.cat(neg, 1), torch.cat(mask, 1), t))
    lf = torch.stack(fine_terms).mean()
    lc = torch.stack(coarse_terms).mean()
    loss = s["fine_weight"] * lf + s["coarse_weight"] * lc
    return loss, {"loss": float(loss.detach()), "fine": float(lf.detach()), "coarse": float(lc.detach())}


# ------------------------------------------------------------------------------------------ train
def _optimizer(model: torch.nn.Module, s: Mapping[str, Any]) -> torch.optim.Optimizer:
    if s["optimizer"] == "sgd":
        return torch.optim.SGD(model.parameters(), lr=s["lr"], momentum=s["momentum"], weight_decay=s["weight_decay"])
    return torch.optim.AdamW(model.parameters(), lr=s["lr"], weight_decay=s["weight_decay"])


def _load_volumes(data_dir: str | Path, case_ids: Sequence[str]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    from alice.data.preprocess import load_case

    out = []
    for cid in case_ids:
        image, _, meta = load_case(data_dir, cid)
        # memory maps: a pair reads its volume when it is drawn (alice.anatomy.sampling copies it
        # to float32), so RAM does not grow with the pool (1,800 volumes at paper scale) and the
        # page cache is shared with the other jobs reading the same cache
        out.append((cid, image, np.asarray(meta["cached"]["spacing"])))
    return out


def save_checkpoint(path: str | Path, model: AnatomyNet, settings: Mapping[str, Any], step: int,
                    extra: Mapping[str, Any] | None = None) -> None:
    """Atomically write {"model": state_dict, "config", "settings", "step", **extra} (weights-only safe)."""
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    obj = {"model": state, "config": model.config.to_dict(), "settings": json.loads(json.dumps(settings)),
           "step": int(step), **dict(extra or {})}
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(obj, tmp)


def load_model(path: str | Path) -> AnatomyNet:
    """An `AnatomyNet` from a `model.pt` of `train_anatomy` (weights-only load), in eval mode."""
    ckpt = load_torch_dict(path, ("model", "config"), "anatomy checkpoint")
    try:
        model = AnatomyNet(ckpt["config"])
        model.load_state_dict(ckpt["model"])
    except (ConfigError, RuntimeError) as exc:
        raise InputError(path, f"checkpoint does not fit AnatomyNet ({str(exc).splitlines()[0]})") from None
    return model.eval()


def train_anatomy(data_dir: str | Path, case_ids: Sequence[str], out_dir: str | Path,
                  settings: Mapping[str, Any] | None = None, seed: int = 0, progress: bool = True,
                  step_callback: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Train an `AnatomyNet` on the pool cases `case_ids` of the cache `data_dir` (module doc).

    Writes out_dir/model.pt and out_dir/log.csv; returns a summary (steps, seconds, last losses,
    resumed_from). `step_callback(step)` is called after each step (tests, hooks).
    """
    s = resolve_settings(settings)
    if not case_ids:
        raise ConfigError("case_ids", "no training volumes")
    # multi-threaded CPU index_put (the backward of gathering negative cells) accumulates in a
    # racy order: without this two runs of one seed drift apart within a few dozen steps
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        return _train(data_dir, case_ids, Path(out_dir), s, int(seed), progress, step_callback)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)


def _train(data_dir: str | Path, case_ids: Sequence[str], out_dir: Path, s: dict[str, Any], seed: int,
           progress: bool, step_callback: Callable[[int], None] | None) -> dict[str, Any]:
    vols = _load_volumes(data_dir, case_ids)
    pair_cfg = PairConfig.from_dict(s["pairs"])
    torch.manual_seed(int(seed))
    # channels-last 3-D convolutions run ~1.5x faster on CPU (oneDNN); same math
    model = AnatomyNet(s["model"]).to(memory_format=torch.channels_last_3d).train()
    mc = model.config
    opt = _optimizer(model, s)
    optimizer_step = OptimizerStep(opt, device=torch.device("cpu"))
    factor = lr_factor(s["schedule"], s["warmup_iterations"], s["iterations"])
    rows: list[dict[str, Any]] = []
    extra = {"seed": int(seed), "case_ids": list(case_ids)}
    manifest = Path(data_dir) / "manifest.json"
    identity = run_identity(kind="anatomy", settings=s, seed=int(seed), case_ids=list(case_ids),
                            data=json.loads(manifest.read_text()).get("settings_hash") if manifest.is_file() else None)
    state_path = out_dir / STATE_FILE
    start, offset, resumed_from = 0, 0.0, []
    if state_path.is_file():
        state = load_state(state_path, identity, "anatomy training")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        rows, start = list(state["rows"]), int(state["step"])
        offset = float(rows[-1]["seconds"]) if rows else 0.0
        resumed_from = [*state["resumed_from"], start]
        set_rng_state(state["rng"])
        write_log(out_dir / "log.csv", LOG_FIELDS, rows)
        log.info("anatomy: resuming from %s at step %d/%d", state_path, start, s["iterations"])

    def save(step: int) -> None:
        save_state(state_path, {"identity": identity, "step": step, "resumed_from": resumed_from,
                                "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                                "optimizer": opt.state_dict(), "rows": rows, "rng": rng_state()})
        write_log(out_dir / "log.csv", LOG_FIELDS, rows)

    t0 = time.perf_counter()
    bar = progress_bar(s["iterations"], start, "anatomy", "step", progress)
    every = s["checkpoint_every"]
    try:
        with StopFlag() as stop:
            for step in range(start, s["iterations"]):
                rng = np.random.default_rng([int(seed), step])
                batch = sample_batch(vols, s["batch_size"], pair_cfg, mc.fine_stride, mc.coarse_stride, rng)
                gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
                x = torch.stack([p.view_a for p in batch] + [p.view_b for p in batch]
                                + [p.view_c for p in batch if p.view_c is not None])
                x = x.contiguous(memory_format=torch.channels_last_3d)
                lr = s["lr"] * factor(step)
                for group in opt.param_groups:
                    group["lr"] = lr
                fine, coarse = model(x)
                loss, terms = sam_loss(fine, coarse, batch, s, gen)
                optimizer_step(loss, describe=lambda _, at=step, t=terms: (
                    f"anatomy training: non-finite loss at step {at}: {t}; lower anatomy.train.lr?"))
                rows.append({"step": step, **{k: round(v, 6) for k, v in terms.items()}, "lr": lr,
                             "seconds": round(offset + time.perf_counter() - t0, 3)})
                bar.update(1)
                bar.set_postfix(fine=f"{terms['fine']:.3f}", coarse=f"{terms['coarse']:.3f}")
                if step_callback is not None:
                    step_callback(step + 1)
                done = step + 1
                if done < s["iterations"] and ((every > 0 and done % every == 0) or stop.name):
                    save(done)
                    if stop.name:
                        raise Preempted(done, state_path, stop.name)
    finally:
        bar.close()
    save_checkpoint(out_dir / "model.pt", model, s, s["iterations"], extra)
    write_log(out_dir / "log.csv", LOG_FIELDS, rows)
    state_path.unlink(missing_ok=True)
    return {"steps": s["iterations"], "seconds": time.perf_counter() - t0, "resumed_from": resumed_from,
            **(rows[-1] if rows else {})}


# ------------------------------------------------------------------------------------------ embeddings
def embed_volume(model: AnatomyNet, image: np.ndarray, dtype: Any = np.float16) -> tuple[np.ndarray, np.ndarray]:
    """Embed a whole (X, Y, Z) volume: (fine (C, gx, gy, gz), coarse (C, ...)) numpy arrays of
    `dtype` (float16 halves the cache; the matcher computes in float32). Runs in eval mode."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            x = torch.from_numpy(np.array(image, dtype=np.float32))[None, None]  # a copy: caches are read-only memmaps
            fine, coarse = model(x)
    finally:
        model.train(was_training)
    return fine[0].numpy().astype(dtype), coarse[0].numpy().astype(dtype)


def embed_cases(model: AnatomyNet, data_dir: str | Path, case_ids: Sequence[str], out_dir: str | Path,
                dtype: Any = np.float16, extra_meta: Mapping[str, Any] | None = None) -> dict[str, float]:
    """Embed every case of the cache into out_dir/<case_id>.npz; returns seconds per case.

    The meta records the cache grid's `affine` and the case's `source` image identity, which let
    the matcher use the maps for the same case cached on another grid (the pool's), plus the
    seconds it took and `extra_meta`."""
    from alice.data.preprocess import load_case

    cfg = model.config
    times = {}
    for cid in case_ids:
        image, _, meta = load_case(data_dir, cid)
        t = time.perf_counter()
        fine, coarse = embed_volume(model, image, dtype)
        times[cid] = time.perf_counter() - t
        save_embeddings(Path(out_dir) / f"{cid}.npz", fine, coarse, {
            "case_id": cid, "shape": list(image.shape), "fine_stride": cfg.fine_stride,
            "coarse_stride": cfg.coarse_stride, "embed_dim": cfg.embed_dim,
            "spacing": list(meta["cached"]["spacing"]), "affine": meta["cached"]["affine"],
            "source": (meta.get("identity") or {}).get("source", {}).get("image"),
            "seconds": round(times[cid], 4), **dict(extra_meta or {})})
    return times
