"""The pretraining effect at low label counts: Alice against Rand. init. on 1, 2, 4 ... cases.

`alice effect` reads the metrics.json of every low-label run (`alice finetune --labeled N
--subset-seed S --evaluate`: the run's method, its `subset` {labeled, subset_seed, cases, steps,
...} and per test case and organ DSC and NSD) and writes:

- `results/pretraining_effect.csv`: one line per (method, labeled, seed, test case, organ): dsc,
  nsd, plus the scale, dataset, backbone, the training cases of the subset, the optimizer steps
  (and the fold step count they match), the pretraining steps of the initialisation (the last
  step of its run's log.csv, `alice.tables.protocol`; empty from scratch) and the test split.
- `results/pretraining_effect_tests.csv`: per labeled count, metric (dsc, nsd) and method other
  than the reference (Rand. init.), a paired comparison of that method against the reference,
  with the scale and the runs' optimizer steps.
  The unit is the **seed** (`unit` = "seed", `n_pairs` = the number of seeds): one subset seed
  trains one model per method, and the test cases of that model are not independent
  observations, so each run's test cases are averaged first (a case's value is its mean over
  organs, `case_mean` of metrics.json; a seed's value is the mean over the test cases scored in
  both runs of the pair, `cases_per_seed` of them) and the methods are then paired over seeds.
  The test is `alice.tables.summary.paired_test`: the Wilcoxon signed-rank test, two-sided (zero
  differences dropped, exact for up to 50 pairs without tied |differences|), with a paired
  t-test's p beside it (`p_ttest`), plus the one-sided Wilcoxon p of the alternative "method
  higher" and the observed direction in words. With few seeds the exact Wilcoxon p has a floor,
  2 / 2^n for n seeds with a non-zero difference (`min_attainable_p`): 0.25 for 3 seeds, 0.125
  for 4, 0.0625 for 5, 0.03125 for 6; below 6 seeds it cannot reach 0.05, which the note and
  the direction say (the t-test has no such floor but assumes normal differences).
- `results/figures/pretraining_effect.png` (`alice.figures.effect`).

Nothing is filtered or tuned: every run listed is used, and a missing or malformed one stops the
command naming its file. A DSC or NSD, of an organ or of a case mean, that is null or NaN is a
score's absence under the absent-organ rule (alice.metrics: nothing to score), kept as NaN in
the per-organ CSV and left out of its seed's mean, which `n_cases`, `cases_per_seed` and the note
state; a missing, infinite or non-numeric one stops the command naming the file and the key
(e.g. `cases.FLARETs_0001.liver.dsc`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from alice.errors import ConfigError, InputError
from alice.io import atomic_path, read_json_object
from alice.tables.protocol import PRETRAIN_LOG, TRAIN_SUMMARY, check_scale, pretraining_steps
from alice.tables.render import finite, value_text
from alice.tables.summary import paired_test

REFERENCE = "rand_init"
LABELS = {"rand_init": "Rand. init.", "alice": "Alice"}
METRICS = ("dsc", "nsd")
CASE_COLUMNS = ["scale", "dataset", "backbone", "method", "labeled", "seed", "case", "organ",
                "dsc", "nsd", "train_cases", "steps", "reference_steps", "steps_of_fold",
                "pretraining_steps", "split"]
TEST_COLUMNS = ["scale", "dataset", "backbone", "labeled", "steps", "metric", "method", "reference",
                "unit", "n_pairs", "cases_per_seed", "n_nonzero", "mean_method", "mean_reference",
                "mean_difference", "test", "statistic", "p_value", "p_one_sided_higher",
                "min_attainable_p", "p_ttest", "direction", "note"]


def label(method: str) -> str:
    return LABELS.get(method, method)


def _read(path: Path) -> dict:
    metrics = read_json_object(path, "missing: a low-label run's metrics (alice finetune --labeled ... --evaluate)")
    subset = metrics.get("subset")
    if not isinstance(subset, dict) or "labeled" not in subset or "subset_seed" not in subset:
        raise InputError(path, "not a low-label run's metrics (no 'subset' with labeled and subset_seed)")
    for key in ("labeled", "subset_seed"):
        if isinstance(subset[key], bool) or not isinstance(subset[key], int):
            raise InputError(path, f"subset.{key} is {subset[key]!r}, not an integer: regenerate it")
    for key in ("method", "backbone", "dataset", "cases", "case_mean"):
        if key not in metrics:
            raise InputError(path, f"lacks '{key}': regenerate it (alice evaluate)")
    for key in ("cases", "case_mean"):
        if not isinstance(metrics[key], dict):
            raise InputError(path, f"'{key}' is not an object of test cases: regenerate it (alice evaluate)")
    return metrics


def _score(path: Path, where: str, scores, metric: str) -> float:
    """`scores[metric]` of an organ or a case (`where`, e.g. "cases.X.liver"): NaN where null or
    NaN (nothing to score, the absent-organ rule of alice.metrics); missing, infinite or not a
    number is an InputError naming the file and the key."""
    if not isinstance(scores, dict) or metric not in scores:
        raise InputError(path, f"{where} has no {metric}: regenerate it (alice evaluate)")
    value = scores[metric]
    if finite(value):
        return float(value)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return math.nan
    raise InputError(path, f"{where}.{metric} is {value_text(value)}: not a score, regenerate it "
                           "(alice evaluate)")


def _pretraining_steps(metrics_path: Path, root: Path) -> int | None:
    """The pretraining steps behind a run (None from scratch), as the run recorded its init in
    the train_summary.json beside its metrics."""
    summary = metrics_path.parent / TRAIN_SUMMARY
    init = read_json_object(summary, "missing: the low-label run's training record").get("init")
    if not isinstance(init, str) or not init:
        raise InputError(summary, "records no 'init' (scratch or a pretraining checkpoint)")
    return None if init == "scratch" else pretraining_steps(root / Path(init).parent / PRETRAIN_LOG)


def read_runs(paths: Iterable[Path], scale: str, root: Path = Path(".")) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(cases, means): one line per (method, labeled, seed, case, organ), and one per (method,
    labeled, seed, case) with the case's mean over organs. Checkpoint paths recorded by the runs
    are relative to `root`."""
    check_scale(scale, "--scale")
    organ_rows, mean_rows, seen = [], [], {}
    for path in map(Path, paths):
        m = _read(path)
        sub = m["subset"]
        key = (m["method"], int(sub["labeled"]), int(sub["subset_seed"]))
        if key in seen:
            raise InputError(path, f"the same run (method, labeled, seed) = {key} as {seen[key]}")
        seen[key] = path
        common = {"scale": scale, "dataset": m["dataset"], "backbone": m["backbone"],
                  "method": key[0], "labeled": key[1], "seed": key[2]}
        protocol = {"train_cases": ";".join(sub.get("cases", [])), "steps": sub.get("steps"),
                    "reference_steps": sub.get("reference_steps"),
                    "steps_of_fold": sub.get("steps_of_fold"),
                    "pretraining_steps": _pretraining_steps(path, Path(root)), "split": m.get("split")}
        for case in sorted(m["cases"]):
            organs = m["cases"][case]
            if not isinstance(organs, dict):
                raise InputError(path, f"cases.{case} is not an object of organ scores: regenerate it "
                                       "(alice evaluate)")
            for organ, scores in organs.items():
                organ_rows.append({**common, "case": case, "organ": organ,
                                   **{k: _score(path, f"cases.{case}.{organ}", scores, k) for k in METRICS},
                                   **protocol})
            mean_rows.append({**common, "case": case, "steps": sub.get("steps"),
                              **{k: _score(path, f"case_mean.{case}", m["case_mean"].get(case), k)
                                 for k in METRICS}})
    if not organ_rows:
        raise ConfigError("--metrics", "no low-label run given")
    cases = pd.DataFrame(organ_rows, columns=CASE_COLUMNS)
    cases["pretraining_steps"] = cases["pretraining_steps"].astype("Int64")  # empty from scratch, not NaN
    cases = cases.sort_values(["method", "labeled", "seed", "case", "organ"], kind="stable")
    means = pd.DataFrame(mean_rows).sort_values(["method", "labeled", "seed", "case"], kind="stable")
    for column in ("dataset", "backbone"):
        if means[column].nunique() > 1:
            raise ConfigError("--metrics", f"runs of several {column}s mixed: "
                                           f"{sorted(means[column].unique())}")
    return cases.reset_index(drop=True), means.reset_index(drop=True)


def one_sided_p(a: np.ndarray, b: np.ndarray) -> float | None:
    """Wilcoxon signed-rank p of the alternative "a higher than b" (same conventions as
    paired_test's two-sided p: zero differences dropped, exact unless > 50 pairs or ties)."""
    from scipy import stats

    diff = np.asarray(a, float) - np.asarray(b, float)
    nonzero = diff[diff != 0]
    if len(diff) < 2:
        return None
    if len(nonzero) == 0:
        return 1.0
    ties = len(np.unique(np.abs(nonzero))) < len(nonzero)
    method = "exact" if len(nonzero) <= 50 and not ties else "approx"
    return round(float(stats.wilcoxon(nonzero, alternative="greater", method=method).pvalue), 6)


def direction(name: str, mean_difference: float | None, p_value: float | None,
              min_attainable_p: float | None = None, n_seeds: int | None = None) -> str:
    """The observed direction in words, with the two-sided p's verdict at 0.05, or why there is
    none: "Alice higher than Rand. init. (3 seeds: p cannot fall below 0.25, no verdict at 0.05)"."""
    if mean_difference is None or p_value is None:
        return "no test"
    if mean_difference == 0:
        return f"{label(name)} equal to {label(REFERENCE)} on average"
    word = "higher" if mean_difference > 0 else "lower"
    if min_attainable_p is not None and min_attainable_p > 0.05:
        verdict = (f"{n_seeds} seeds: p cannot fall below {min_attainable_p:.4g}, "
                   "no verdict at 0.05")
    else:
        verdict = "p < 0.05" if p_value < 0.05 else "not significant at 0.05"
    return f"{label(name)} {word} than {label(REFERENCE)} ({verdict}, two-sided)"


def seed_means(means: pd.DataFrame) -> pd.DataFrame:
    """One line per run (method, labeled, seed): dsc and nsd averaged over the run's test cases
    with a value (`n_cases` of them), plus the dataset, backbone and scale: the unit of the
    tests and of the figure's dots."""
    keys = ["scale", "dataset", "backbone", "method", "labeled", "seed"]
    out = means.groupby(keys, sort=True)[list(METRICS)].mean().reset_index()
    counts = means.groupby(keys, sort=True)["dsc"].count().reset_index(name="n_cases")
    return out.merge(counts, on=keys)


def _span(values: Iterable[int]) -> str:
    """{4} -> "4"; {3, 4} -> "3-4"."""
    values = sorted(set(values))
    return "" if not values else str(values[0]) if len(values) == 1 else f"{values[0]}-{values[-1]}"


def _paired_seeds(run: pd.DataFrame, ref: pd.DataFrame, metric: str) -> tuple[pd.DataFrame, list[str]]:
    """Per seed with a run of both methods (`run`, `ref`: indexed by (seed, case)), the mean of
    `metric` over the test cases with a value in both runs: columns a (run), b (ref), n (cases);
    and notes on what was left out."""
    seeds_a = set(run.index.get_level_values("seed"))
    seeds_b = set(ref.index.get_level_values("seed"))
    both = seeds_a & seeds_b
    notes = []
    if seeds_a ^ seeds_b:
        notes.append(f"{len(seeds_a ^ seeds_b)} seed(s) without a partner run left out")
    run = run[run.index.get_level_values("seed").isin(both)]
    ref = ref[ref.index.get_level_values("seed").isin(both)]
    unmatched = len(set(run.index) ^ set(ref.index))
    if unmatched:
        notes.append(f"{unmatched} test case(s) scored by one run of their seed only, left out "
                     "of its seed's means")
    joined = run[[metric]].rename(columns={metric: "a"}).join(
        ref[[metric]].rename(columns={metric: "b"}), how="inner")
    finite = joined.dropna()
    if len(finite) < len(joined):
        nan_seeds = sorted(set(joined.index[joined.isna().any(axis=1)].get_level_values("seed")))
        notes.append(f"{len(joined) - len(finite)} test case(s) with a NaN value left out of "
                     f"their seed's means (seed {', '.join(str(s) for s in nan_seeds)})")
    per_seed = pd.DataFrame({"a": finite["a"].groupby(level="seed").mean(),
                             "b": finite["b"].groupby(level="seed").mean(),
                             "n": finite["a"].groupby(level="seed").size()})
    lost = sorted(both - set(per_seed.index))
    if lost:
        notes.append(f"seed {', '.join(str(s) for s in lost)}: no test case with a value in both "
                     "runs, left out")
    return per_seed, notes


def _seed_note(result: dict) -> str:
    """paired_test's note, in seeds."""
    n, nonzero, min_p = result["n_pairs"], result["n_nonzero"], result["min_attainable_p"]
    if n < 2:
        return f"{n} seed(s): no test"
    if nonzero == 0:
        return "every seed's difference is zero"
    if min_p is not None and min_p > 0.05:
        return (f"{nonzero} seeds with a non-zero difference: an exact two-sided Wilcoxon p cannot "
                f"fall below {min_p:.4g} (p < 0.05 needs 6 or more seeds; the paired t-test's p has no "
                "such floor)")
    return ""


def paired_tests(means: pd.DataFrame) -> pd.DataFrame:
    """Each method against Rand. init., per labeled count and metric, paired over seeds (the
    unit: one model per method and seed), each seed's value the mean over its test cases."""
    if REFERENCE not in set(means["method"]):
        raise ConfigError("pretraining_effect.methods", f"needs '{REFERENCE}', the reference of the tests")
    out = []
    dataset, backbone, scale = (means[c].iloc[0] for c in ("dataset", "backbone", "scale"))
    for labeled in sorted(means["labeled"].unique()):
        at = means[means["labeled"] == labeled]
        ref = at[at["method"] == REFERENCE].set_index(["seed", "case"])
        for name in sorted(set(at["method"]) - {REFERENCE}):
            run = at[at["method"] == name].set_index(["seed", "case"])
            for metric in METRICS:
                per_seed, notes = _paired_seeds(run, ref, metric)
                a, b = per_seed["a"].to_numpy(), per_seed["b"].to_numpy()
                result = paired_test(list(a), list(b))
                notes = [n for n in [_seed_note(result)] if n] + notes
                out.append({
                    "scale": scale, "dataset": dataset, "backbone": backbone,
                    "labeled": int(labeled),
                    "steps": ";".join(str(v) for v in sorted(set(at["steps"].dropna().astype(int)))),
                    "metric": metric, "method": name,
                    "reference": REFERENCE, "unit": "seed",
                    "n_pairs": result["n_pairs"], "cases_per_seed": _span(per_seed["n"]),
                    "n_nonzero": result["n_nonzero"],
                    "mean_method": result["mean_a"], "mean_reference": result["mean_b"],
                    "mean_difference": result["mean_difference"], "test": result["test"],
                    "statistic": result["statistic"], "p_value": result["p_value"],
                    "p_one_sided_higher": one_sided_p(a, b),
                    "min_attainable_p": result["min_attainable_p"], "p_ttest": result["p_ttest"],
                    "direction": direction(name, result["mean_difference"], result["p_value"],
                                           result["min_attainable_p"], result["n_nonzero"]),
                    "note": "; ".join(notes),
                })
    return pd.DataFrame(out, columns=TEST_COLUMNS)
