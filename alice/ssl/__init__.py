"""Self-supervised pretraining. A method is one file (`alice.ssl.alice`, the paper's, or a module of
the top-level `baselines` package) with a torch-free declaration (`alice.ssl.catalog`) and a factory
registered with `register_method(name)` (`alice.ssl.registry`); `alice.ssl.run` runs one
pretraining of any method through the method-agnostic trainer (`alice.ssl.trainer`). Shared pieces:
`encoder`, `losses`, `momentum`, `views`, `augment`.

Imports are lazy: the DAG reads `alice.ssl.catalog` and `alice.ssl.variants` (no torch) to name
its pretraining runs.
"""

import importlib

_EXPORTS = {"METHODS", "SSLMethod", "build_method", "get_method", "known_methods", "register_method"}


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module("alice.ssl.registry"), name)
    raise AttributeError(f"module 'alice.ssl' has no attribute {name!r}")


__all__ = ["METHODS", "SSLMethod", "build_method", "get_method", "known_methods", "register_method"]
