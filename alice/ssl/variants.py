"""Named pretraining variants: the ablation switches of a method as run ids the DAG can build.

An ablation row of the paper (Tables 5, 6, 7, 10, 11) is a method plus a `variant`, e.g. Alice
with {"casa": False}. Each distinct variant is one pretraining run, named by its run id:

    alice                               Alice with its configured settings
    alice__casa-false                   ℓst without CASA, SIM-style (no table reads it: Table 6's
                                        "w/o CASA" is Table 11's MIM + ℓdv run, see its spec)
    alice__inter_volume-false           K a second crop of Q's volume, no ℓdv (Table 5's "×" is
                                        Table 11's MIM + ℓst run, see its spec)
    alice__contrastive_loss-infonce     Table 7
    alice__predictor-false              no predictor on the online side of ℓ_dv, ℓ_st
    alice__head_norm-none               φ, ψ without BatchNorm in their hidden layers (DINO's head)
    alice__contrastive_loss-dino__head_norm-none
                                        the authors' released code: DINO's heads, prototypes, centring
                                        and sharpening, cross-entropy (no predictor)
    alice__target_mask_ratio-0.25       Table 10
    alice__objectives-mim-dv            Table 11 (objectives in canonical order)

A switch whose value equals the method's effective setting (its default, overridden by
`pretrain.methods.<method>` of the config) is dropped, so Alice's own row of every ablation table
reuses the plain `alice` run instead of training the same model twice. Run ids are canonical:
`parse_run_id` rejects any spelling `run_id` would not produce.

This module is light (no torch) because the Snakefile imports it to build the DAG. The switches
and their defaults are part of each method file's declaration (`METHOD["switches"]`, read by
alice.ssl.catalog without importing the method).
"""

from __future__ import annotations

from typing import Any, Mapping

from alice.errors import ConfigError

def switches(method: str) -> dict[str, Any]:
    """The ablation switches {name: default} the method's file declares (alice.ssl.catalog); a test
    checks them against the method's constructor."""
    from alice.ssl.catalog import method_info

    info = method_info(method)
    return dict(info.switches) if info else {}


OBJECTIVE_ORDER = ("mim", "dv", "st")
SEP = "__"


def has_switches(method: str, variant: Mapping[str, Any]) -> bool:
    """Whether every key of `variant` is a known switch of `method` (an empty variant always is)."""
    known = switches(method)
    return not variant or all(k in known for k in variant)


def _check(method: str, variant: Mapping[str, Any]) -> None:
    if not has_switches(method, variant):
        known = ", ".join(switches(method)) or "none"
        unknown = [k for k in variant if k not in switches(method)]
        raise ConfigError(f"variant.{unknown[0]}",
                          f"not an ablation switch of method '{method}' (switches: {known})")


def _canonical(key: str, value: Any, default: Any) -> Any:
    """The value in the type of the default (objective lists in canonical order)."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"variant.{key}", f"must be true or false, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"variant.{key}", f"must be a number, got {value!r}")
        return float(value)
    if isinstance(default, list):
        items = list(value) if isinstance(value, (list, tuple)) else None
        if items is None or any(v not in OBJECTIVE_ORDER for v in items):
            raise ConfigError(f"variant.{key}", f"must be a list of {list(OBJECTIVE_ORDER)}, got {value!r}")
        return [o for o in OBJECTIVE_ORDER if o in items]
    if not isinstance(value, str):
        raise ConfigError(f"variant.{key}", f"must be a string, got {value!r}")
    return value


def effective_switches(method: str, method_config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The method's switch values of a plain run: defaults overridden by its config section."""
    defaults = switches(method)
    config = dict(method_config or {})
    return {k: _canonical(k, config.get(k, d), d) for k, d in defaults.items()}


def normalize_variant(method: str, variant: Mapping[str, Any] | None,
                      method_config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`variant` without the switches that equal the plain run's values, values canonical."""
    variant = dict(variant or {})
    _check(method, variant)
    defaults = switches(method)
    plain = effective_switches(method, method_config)
    out = {}
    for key in sorted(variant):
        value = _canonical(key, variant[key], defaults[key])
        if value != plain[key]:
            out[key] = value
    return out


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "-".join(value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def run_id(method: str, variant: Mapping[str, Any] | None = None,
           method_config: Mapping[str, Any] | None = None) -> str:
    """The pretraining run id of `method` with `variant` (see the module docstring)."""
    variant = normalize_variant(method, variant, method_config)
    return SEP.join([method] + [f"{k}-{_format(v)}" for k, v in variant.items()])


def _parse_value(key: str, text: str, default: Any) -> Any:
    if isinstance(default, bool):
        if text not in ("true", "false"):
            raise ValueError(text)
        return text == "true"
    if isinstance(default, float):
        return float(text)
    if isinstance(default, list):
        return text.split("-")
    return text


def parse_run_id(run: str, method_config: Mapping[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """(method, variant) of a run id; an id that is not canonical is an error naming the right one."""
    method, *parts = run.split(SEP)
    variant: dict[str, Any] = {}
    known = switches(method)
    for part in parts:
        key, dash, text = part.partition("-")
        if not dash or key not in known:
            raise ConfigError("method", f"'{run}': '{part}' is not <switch>-<value> of a switch of "
                                        f"'{method}' (switches: {', '.join(known) or 'none'})")
        try:
            variant[key] = _parse_value(key, text, known[key])
        except ValueError:
            raise ConfigError("method", f"'{run}': bad value '{text}' for switch '{key}'") from None
    canonical = run_id(method, variant, method_config)
    if canonical != run:
        raise ConfigError("method", f"'{run}' is not a canonical run id; this variant is '{canonical}' "
                                    "(switches equal to the configured value are dropped)")
    return method, normalize_variant(method, variant, method_config)
