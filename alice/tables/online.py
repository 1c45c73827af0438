"""Which fine-tuned models predict a method's BTCV online submission: those of its Table 3 offline
cell, so the submission comes from the models the table scores (alice.downstream.submission writes
the files)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from alice.downstream import MODEL_FILE
from alice.downstream.submission import ENSEMBLES
from alice.errors import ConfigError
from alice.tables.spec import cell_runs, load_spec, table_settings


def online_models(config: Mapping[str, Any], method: str) -> list[str]:
    """The `model.pt` files whose predictions make `method`'s submission: those of its Table 3
    offline cell (same pretraining run, backbone and folds, so the submission comes from the
    models the table scores), fold 0 alone or every fold (`online_test.models`)."""
    spec = load_spec("table3")
    rows = [r for r in spec["rows"] if r.get("method") == method]
    if not rows:
        known = ", ".join(r["method"] for r in spec["rows"])
        raise ConfigError("method", f"'{method}' is not a row of Table 3 (methods: {known})")
    offline = next(c["column"] for c in spec["columns"] if c.get("split") == "offline")
    runs = cell_runs(spec, rows[0], table_settings(dict(config))).get(offline)
    if runs is None:
        raise ConfigError("reproduce", f"Table 3's offline cell of '{method}' is not reproduced "
                                       "(reproduce.methods / backbones / substitute), so no "
                                       "fine-tuned model exists to predict the online test set")
    mode = (config.get("online_test") or {}).get("models", "fold0")
    if mode not in ENSEMBLES:
        raise ConfigError("online_test.models", f"must be one of {sorted(ENSEMBLES)}, got {mode!r}")
    models = {k: str(Path(p).parent / MODEL_FILE) for k, p in zip(runs["folds"], runs["paths"])}
    return [models[0]] if mode == "fold0" else [models[k] for k in sorted(models)]
