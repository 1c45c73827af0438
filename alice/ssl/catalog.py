"""What every SSL method declares, read without importing it (no torch): the DAG, the config and the
variant parser ask this module, never a method's code.

A method is one file: `alice/ssl/alice.py` (the paper's method) or any module of the top-level
`baselines` package, found with `pkgutil` (nothing to register). Its declaration is a literal dict
named `METHOD` at module level, read with `ast.literal_eval`:

    METHOD = {
        "name": "mae",                         # the run id's method part (defaults to the file name)
        "paper": "He et al., CVPR 2022",       # where the objective comes from
        "objective": "masked reconstruction",  # one line for the README's table of methods
        "views": "crop",                       # what it eats, one of VIEWS below
        "encoders": ["vit", "swin", "nnformer"],
        "matcher": False,                      # mines its crops with the anatomical matcher: True,
                                               # False, or the name of a bool switch turning it on
        "masking": True,                       # True: takes the shared `pretrain.mask_ratio`
        "switches": {},                        # ablation switches {name: default} (alice.ssl.variants)
        "smoke": {"decoder": {"dim": 16}},     # method_config overrides with which the smoke test
    }                                          # (tests/ssl/test_methods.py) builds it small

and a factory `build(method_config, encoder_config, crop) -> SSLMethod` registered with
`alice.ssl.registry.register_method(name)`; `alice.ssl.registry` imports the file when the method
is first built. The views are cut by `alice.ssl.views` from the unlabeled pool:

    crop          one crop of a random body point per sample: {"x": (B, 1, X, Y, Z)}
    two_views     one crop, two augmented views of it: {"views": (2, B, 1, X, Y, Z)}
    multi_crop    one crop, `global_views` global and `local_views` local augmented views, all
                  resampled to the encoder's crop: {"views": (V, B, 1, X, Y, Z)}, globals first
    matched_pair  anatomically matched crops of two volumes (alice.ssl.pairs): {"Q": ..., "K": ...}

`matcher` says whether a run mines anatomically matched crops of two volumes with
`pretrain.pairs`' matcher (and so reads the learned matcher's embeddings when it is `sam`):
`True` (Alice: its `matched_pair` views), `False`, or the name of one of its bool `switches` whose
value turns the mining on: iBOT declares `"matcher": "inter_volume"`, and its run
`ibot__inter_volume-true` (Table 5) cuts its global views from a matched pair (alice.ssl.views:
global view 0 and the local views from Q's crop, the other global views from K's). A switch-named
matcher is for `two_views` and `multi_crop` methods. `needs_matcher(run, method_config)` answers
for a run id.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import pkgutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from alice.errors import ConfigError
from alice.models.configs import ENCODERS

VIEWS = ("crop", "two_views", "multi_crop", "matched_pair")
# the views a switch-named `matcher` may cut from a matched pair (alice.ssl.views.CropViews)
MATCHED_VIEWS = ("two_views", "multi_crop")
# where methods live: the paper's own method, then every module of these packages
METHOD_MODULES = ("alice.ssl.alice",)
METHOD_PACKAGES = ("baselines",)
_KEYS = {"name", "paper", "objective", "views", "encoders", "matcher", "masking", "switches", "smoke"}


@dataclass(frozen=True)
class MethodInfo:
    """A method's declaration (`METHOD` of its file) and the module that builds it."""

    name: str
    module: str
    path: str
    paper: str
    objective: str
    views: str
    encoders: tuple[str, ...]
    matcher: bool | str = False  # True, False or the name of the bool switch that turns mining on
    masking: bool = False
    switches: dict[str, Any] = field(default_factory=dict)
    smoke: dict[str, Any] = field(default_factory=dict)


def _declaration(path: Path) -> dict | None:
    """The literal `METHOD = {...}` of a module file, None if it has none."""
    stat = path.stat()
    return _parsed(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=None)
def _parsed(path_text: str, mtime_ns: int, size: int) -> dict | None:
    """`_declaration` of one version of a file (the DAG asks for every job)."""
    path = Path(path_text)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in tree.body:
        target = (node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1
                  else node.target if isinstance(node, ast.AnnAssign) else None)
        if isinstance(target, ast.Name) and target.id == "METHOD" and node.value is not None:
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                raise ConfigError(f"{path}: METHOD", "must be a literal dict (read without importing "
                                                     "the file)") from None
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: METHOD", "must be a dict")
            return value
    return None


def _smoke(where: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}.smoke", "must be a dict of method_config overrides")
    return dict(value)


def _info(module: str, path: Path, decl: dict) -> MethodInfo:
    where = f"{path}: METHOD"
    unknown = sorted(set(decl) - _KEYS)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}", f"unknown key (known: {', '.join(sorted(_KEYS))})")
    name = decl.get("name", module.rsplit(".", 1)[-1])
    views = decl.get("views")
    if views not in VIEWS:
        raise ConfigError(f"{where}.views", f"must be one of {', '.join(VIEWS)}, got {views!r}")
    encoders = tuple(decl.get("encoders") or ())
    bad = [e for e in encoders if e not in ENCODERS]
    if not encoders or bad:
        raise ConfigError(f"{where}.encoders", f"must list some of {', '.join(ENCODERS)}, got {list(encoders)}")
    for key in ("paper", "objective"):
        if not isinstance(decl.get(key), str) or not decl[key]:
            raise ConfigError(f"{where}.{key}", "must be a non-empty string")
    switches = decl.get("switches") or {}
    if not isinstance(switches, dict):
        raise ConfigError(f"{where}.switches", "must be a dict {switch: default}")
    matcher = decl.get("matcher", False)
    if isinstance(matcher, str):
        bools = sorted(k for k, v in switches.items() if isinstance(v, bool))
        if matcher not in bools:
            raise ConfigError(f"{where}.matcher", f"'{matcher}' is not one of its bool switches "
                                                  f"({', '.join(bools) or 'none'})")
        if views not in MATCHED_VIEWS:
            raise ConfigError(f"{where}.matcher", f"a switch turns matched crops on for "
                                                  f"{' or '.join(MATCHED_VIEWS)} views only, not '{views}'")
    elif not isinstance(matcher, bool):
        raise ConfigError(f"{where}.matcher", f"must be true, false or the name of a bool switch, "
                                              f"got {matcher!r}")
    return MethodInfo(name=str(name), module=module, path=str(path), paper=decl["paper"],
                      objective=decl["objective"], views=views, encoders=encoders,
                      matcher=matcher, masking=bool(decl.get("masking", False)),
                      switches=dict(switches), smoke=_smoke(where, decl.get("smoke")))


def _module_files() -> Iterable[tuple[str, Path]]:
    for module in METHOD_MODULES:
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.origin:
            yield module, Path(spec.origin)
    for package in METHOD_PACKAGES:
        try:
            spec = importlib.util.find_spec(package)
        except ModuleNotFoundError:
            continue
        if spec is None or not spec.submodule_search_locations:
            continue
        # the package's live __path__ when it is imported (a test may extend it), else its spec's
        locations = list(getattr(sys.modules.get(package), "__path__", spec.submodule_search_locations))
        for found in pkgutil.iter_modules(locations):
            if found.ispkg or found.name.startswith("_"):
                continue
            yield f"{package}.{found.name}", Path(found.module_finder.path) / f"{found.name}.py"


def methods() -> dict[str, MethodInfo]:
    """Every declared method by name (files without a `METHOD` are helpers, not methods)."""
    found: dict[str, MethodInfo] = {}
    for module, path in _module_files():
        decl = _declaration(path)
        if decl is None:
            continue
        info = _info(module, path, decl)
        if info.name in found:
            raise ConfigError(f"{path}: METHOD.name", f"'{info.name}' is also declared by {found[info.name].path}")
        found[info.name] = info
    return dict(sorted(found.items()))


def method_info(name: str) -> MethodInfo | None:
    """The declaration of method `name`, None when no file declares it."""
    return methods().get(name)


def require(name: str, key: str = "pretrain.method") -> MethodInfo:
    """The declaration of `name`; ConfigError naming the known methods when there is none."""
    info = method_info(name)
    if info is None:
        raise ConfigError(key, f"unknown SSL method '{name}' (known: {', '.join(methods()) or '<none>'})")
    return info


def needs_matcher(run: str, method_config: Mapping[str, Any] | None = None) -> bool:
    """Whether pretraining run `run` (a method or a variant run id, alice.ssl.variants) mines its
    crops with the matcher: its method's `matcher` when a bool, else the value of the switch it
    names for that run: the run id's variant, else `method_config`'s value (the method's config
    section, `pretrain.methods.<method>`), else the switch's default. A run id that is not
    canonical for `method_config` is a ConfigError (alice.ssl.variants.parse_run_id)."""
    info = method_info(run.split("__")[0])
    if info is None or isinstance(info.matcher, bool):
        return bool(info and info.matcher)
    from alice.ssl.variants import effective_switches, parse_run_id

    method, variant = parse_run_id(run, method_config)
    return bool({**effective_switches(method, method_config), **variant}[info.matcher])
