"""Self-supervised pretraining: the method registry (`registry`), per-step schedules (`schedules`)
and the method-agnostic trainer (`trainer.pretrain`). Each SSL method is one file that registers a
factory with `register_method(name)`; the Alice objective lives in `alice.ssl.alice`, the baselines
in the top-level `baselines` package.

Imports are lazy: the DAG imports `alice.ssl.variants` (no torch) to name its pretraining runs.
"""

import importlib

_EXPORTS = {"METHODS", "SSLMethod", "build_method", "get_method", "known_methods", "register_method"}


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module("alice.ssl.registry"), name)
    raise AttributeError(f"module 'alice.ssl' has no attribute {name!r}")


__all__ = ["METHODS", "SSLMethod", "build_method", "get_method", "known_methods", "register_method"]
