# Shared helpers of the rules: config validation (the same schema and messages as the CLI)
# and the JSON settings each stage receives.

import json
import shlex

from alice import config as cfg

# Fills schema defaults in place; a bad key stops the workflow with one line naming it.
try:
    cfg.validate_config(config)
except cfg.ConfigError as exc:
    raise WorkflowError(str(exc))

DATASETS = list(cfg.DATASETS)
RELEASES = sorted(set(cfg.RELEASE_OF.values()))


def as_json(obj):
    """A JSON string for a shell command (quote it with {params.x:q})."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def release_root(wildcards):
    """Inputs of `prepare`: the phantom folder when the dataset's root is null, else nothing
    (a real root is outside the DAG and is validated by `alice prepare` itself)."""
    if cfg.dataset_root(config, wildcards.dataset) is None:
        return f"results/phantoms/{cfg.RELEASE_OF[wildcards.dataset]}"
    return []
