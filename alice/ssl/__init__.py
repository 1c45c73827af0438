"""Self-supervised pretraining: the method registry (`registry`), per-step schedules (`schedules`)
and the method-agnostic trainer (`trainer.pretrain`). Each SSL method is one file that registers a
factory with `register_method(name)`; the Alice objective lives in `alice.ssl.alice`, the baselines
in the top-level `baselines` package.
"""

from alice.ssl.registry import METHODS, SSLMethod, build_method, get_method, known_methods, register_method

__all__ = ["METHODS", "SSLMethod", "build_method", "get_method", "known_methods", "register_method"]
