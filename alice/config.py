"""Load and validate the harness configuration.

The schema lives at workflow/schemas/config.schema.yaml and is applied with Snakemake's
`snakemake.utils.validate`, both by the Snakefile and by every CLI stage, so a bad key fails the
same way everywhere: one line naming the key. Every YAML file the harness reads (configs, the
schema, the table specs) goes through `load_yaml`, which refuses what a YAML reader would resolve
silently or differently from another reader.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

from alice.errors import ConfigError, HarnessError, InputError

REPO_ROOT = Path(__file__).resolve().parents[1]
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"
DEFAULT_CONFIG = REPO_ROOT / "config" / "config.yaml"
PHANTOM_ROOT = Path("results") / "phantoms"
PLACEHOLDER_PREFIX = "/path/to/"

# Which phantom release holds each prepared dataset, and which config key gives its root.
RELEASE_OF = {"flare22": "flare22", "flare22_pool": "flare22", "btcv": "btcv", "mosmed": "mosmed"}
DATASETS = tuple(RELEASE_OF)


class _Refused(yaml.MarkedYAMLError):
    """A YAML form `StrictLoader` refuses; `problem` says why, `problem_mark` where."""

    def __init__(self, problem: str, mark):
        super().__init__(problem=problem, problem_mark=mark)


_BOOLEANS = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_MERGE_TAG = "tag:yaml.org,2002:merge"


class StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader without the forms it resolves silently or unlike a YAML 1.2 reader:

    - a key twice in one mapping (PyYAML keeps the last);
    - the YAML 1.1 booleans yes, no, on, off, y, n (also Yes, YES, ...): `amp: off` is False to
      PyYAML and the string "off" to a YAML 1.2 reader; true and false (also True, TRUE, ...) are
      booleans, a quoted 'off' a string;
    - sexagesimal numbers (`1:30`, 90 to PyYAML) and integers with a leading zero or `0b`
      (`0755`, octal 493 to PyYAML, 755 to YAML 1.2; `08`, a string to PyYAML);
    - merge keys (`<<`) and aliases (`*name`): merged keys silently give way to the ones written
      beside them, and an alias makes two keys share one value, which a `--configfile` overlay
      changing one of them would change in both.

    A number with an exponent but no dot or no exponent sign (`1e-3`, `1.0e3`) is a string to
    PyYAML; here it is the float it reads as (what its writer meant). Refusals are `_Refused`
    errors marking the line; `load_yaml` turns them into one-line InputErrors.
    """

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _Refused(f"alias '*{event.anchor}' refused: it makes two keys share one value, "
                           "and changing one changes both; write the value out", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG:
                    raise _Refused("merge key '<<' refused: the merged keys silently give way to "
                                   "the ones beside them; write the keys out", key_node.start_mark)
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:  # an unhashable key: the base constructor reports it
                    continue
                if first is not key_node:
                    raise _Refused(f"duplicate key {key!r} (first on line {first.start_mark.line + 1}): "
                                   "YAML would keep only the last, silently", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)

    def construct_strict_bool(self, node):
        value = self.construct_scalar(node)
        if value not in _BOOLEANS:
            raise _Refused(f"'{value}' is ambiguous: YAML 1.1 reads a boolean, YAML 1.2 a string; "
                           "write true or false, or quote it", node.start_mark)
        return _BOOLEANS[value]

    def construct_strict_int(self, node):
        value = self.construct_scalar(node)
        digits = value.lstrip("+-")
        if ":" in digits:
            raise _Refused(f"'{value}' is ambiguous: YAML 1.1 reads a base-60 number, YAML 1.2 a "
                           "string; quote it or write the number", node.start_mark)
        if digits[:2] in ("0b", "0B"):
            raise _Refused(f"'{value}' is ambiguous: YAML 1.1 reads a binary number, YAML 1.2 a "
                           "string; write it in decimal or quote it", node.start_mark)
        if len(digits) > 1 and digits[0] == "0" and digits[1] not in "xX":
            raise _Refused(f"'{value}' is ambiguous: a leading zero reads as octal in YAML 1.1 and "
                           "as decimal in YAML 1.2; drop the zero or quote it", node.start_mark)
        return self.construct_yaml_int(node)

    def construct_strict_float(self, node):
        value = self.construct_scalar(node)
        if ":" in value:
            raise _Refused(f"'{value}' is ambiguous: YAML 1.1 reads a base-60 number, YAML 1.2 a "
                           "string; quote it or write the number", node.start_mark)
        return self.construct_yaml_float(node)


StrictLoader.add_constructor("tag:yaml.org,2002:bool", StrictLoader.construct_strict_bool)
StrictLoader.add_constructor("tag:yaml.org,2002:int", StrictLoader.construct_strict_int)
StrictLoader.add_constructor("tag:yaml.org,2002:float", StrictLoader.construct_strict_float)
# Plain scalars PyYAML reads as strings though a reader may mean something else: sent to the
# constructors above (after PyYAML's own resolvers, which match first), to refuse or convert.
StrictLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:y|Y|n|N)$"),
                                   list("yYnN"))
StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^[-+]?(?:0[0-9_]+|[0-9][0-9_]*(?::[0-9_]+)+(?:\.[0-9_]*)?)$"),
    list("-+0123456789"))
StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def load_yaml(path: str | Path) -> Any:
    """The YAML document of `path`, read with `StrictLoader`. Raises InputError naming the file
    and the line: "config.yaml: line 12: duplicate key 'seed' (first on line 3): ..."."""
    path = Path(path)
    try:
        with path.open("rb") as stream:
            return yaml.load(stream, Loader=StrictLoader)
    except _Refused as exc:
        raise InputError(path, f"line {exc.problem_mark.line + 1}: {exc.problem}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}: " if mark is not None else ""
        what = exc.problem or exc.context or type(exc).__name__
        raise InputError(path, f"{where}not valid YAML: {what}".splitlines()[0]) from None
    except yaml.YAMLError as exc:
        raise InputError(path, f"not valid YAML: {exc}".splitlines()[0]) from None


def _dotted(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def validate_config(config: dict) -> dict:
    """Validate `config` in place (filling schema defaults) and return it.

    Raises ConfigError naming the offending key, e.g. "config key 'datasets.flare22': Additional
    properties are not allowed ('spacingg' was unexpected)". Beyond the schema it refuses a float
    where an integer is asked for, and a `scale` the data or the fold policy contradicts
    (`_check_scale`): `scale: paper` with a null root (the embedded phantom) for any release, or
    with a `reproduce.folds` entry that cuts the folds.
    """
    import jsonschema
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    if not SCHEMA_PATH.is_file():
        raise ConfigError("<schema>", f"schema not found at {SCHEMA_PATH}")
    strict = _strict_validator()  # reads the schema strictly: an ambiguous schema stops here
    try:
        validate(config, str(SCHEMA_PATH), set_default=True)
    except WorkflowError as exc:
        cause = exc.__context__
        if not isinstance(cause, jsonschema.ValidationError):
            raise ConfigError("<config>", str(exc).splitlines()[0]) from None
        raise _config_error(cause) from None
    _check_integers(config, strict)
    _check_scale(config)
    return config


def _check_scale(config: dict) -> None:
    """Refuse `scale: paper` where the fold policy cuts a row's folds or a release's root is
    null, naming the first such key.

    The scale is stamped on every table row, and paper-scale rows are differenced against the
    paper's numbers: that comparison means something only on the real datasets. The mismatch is
    paper scale with a null `datasets.<release>.root` (the embedded phantom stands in for it) for
    any release, flare22 (which also holds the pretraining pool), btcv or mosmed: each feeds some
    table of the default target, so a paper-scale config would use each. A release left out of a
    paper-scale run keeps a `/path/to/` placeholder root, which stops a job only when it reads
    that release (`dataset_root`); a dry run accepts any other path. The reverse, demo scale on
    real roots, is allowed: demo rows are never compared with the paper.
    """
    if config.get("scale") != "paper":
        return
    policy = (config.get("reproduce") or {}).get("folds") or {}
    for kind, limit in policy.items():
        if limit is not None:
            raise ConfigError(f"reproduce.folds.{kind}",
                              f"is {limit}, but paper scale runs every fold of every row: set null")
    for release in dict.fromkeys(RELEASE_OF.values()):
        if config["datasets"][release].get("root") is None:
            raise ConfigError(
                f"datasets.{release}.root",
                "scale: 'paper' needs the real datasets, but this root is null (the phantom); "
                "set the roots or use scale: demo",
            )


def _strict_validator():
    """A validator of the schema whose "integer" excludes floats. JSON Schema counts 5.0 as an
    integer, but the harness feeds these keys to range() and tensor shapes, where 5.0 fails."""
    from jsonschema import Draft202012Validator, validators

    checker = Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _, value: isinstance(value, int) and not isinstance(value, bool))
    strict = validators.extend(Draft202012Validator, type_checker=checker)
    return strict(load_yaml(SCHEMA_PATH))


def _check_integers(config: dict, strict) -> None:
    """Refuse a float (`folds: 5.0`) where the schema asks for an integer, naming the key (the
    config has passed the schema otherwise: a type error is the only kind expected here)."""
    error = next(iter(strict.iter_errors(config)), None)
    if error is None:
        return
    if error.validator != "type":
        raise _config_error(error)
    raise ConfigError(_dotted(list(error.absolute_path)),
                      f"must be an integer (no decimal point), got {error.instance!r}")


def _config_error(error) -> ConfigError:
    """Turn a jsonschema error into one line that names the offending key."""
    where = list(error.absolute_path)
    if error.validator == "additionalProperties":
        known = set(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - known)
        return ConfigError(
            _dotted(where + unknown[:1]),
            f"unknown key (allowed here: {', '.join(sorted(known)) or 'none'})",
        )
    if error.validator == "required":
        missing = re.search(r"'([^']+)' is a required property", error.message)
        if missing:
            return ConfigError(_dotted(where + [missing.group(1)]), "missing required key")
    if error.validator == "contains" and "const" in error.validator_value:
        return ConfigError(_dotted(where), f"must include {error.validator_value['const']!r}, "
                                           f"got {error.instance!r}")
    return ConfigError(_dotted(where), error.message)


def load_config(path: str | Path | None = None) -> dict:
    """Read a YAML config file strictly (`load_yaml`) and validate it. `None` means the demo
    config."""
    path = Path(path) if path is not None else DEFAULT_CONFIG
    if not path.is_file():
        raise InputError(path, "config file does not exist")
    config = load_yaml(path)
    if not isinstance(config, dict):
        raise InputError(path, "a config file must hold a mapping")
    return validate_config(config)


def dataset_settings(config: dict, dataset: str) -> dict:
    """The `datasets.<dataset>` section, without its root."""
    if dataset not in DATASETS:
        raise ConfigError("--dataset", f"unknown dataset '{dataset}' (known: {', '.join(DATASETS)})")
    settings = copy.deepcopy(config["datasets"][dataset])
    settings.pop("root", None)
    return settings


def dataset_root(config: dict, dataset: str) -> Path | None:
    """The release folder of `dataset`, or None when the embedded phantom stands in for it."""
    release = RELEASE_OF[dataset]
    root = config["datasets"][release].get("root")
    if root is None:
        return None
    if str(root).startswith(PLACEHOLDER_PREFIX):
        raise ConfigError(
            f"datasets.{release}.root",
            f"'{root}' is a placeholder: set it to the {release} release folder",
        )
    return Path(root)


def resolved_root(config: dict, dataset: str) -> Path:
    """Where `alice prepare` reads `dataset` from: the configured root or the phantom's folder."""
    root = dataset_root(config, dataset)
    return root if root is not None else PHANTOM_ROOT / RELEASE_OF[dataset]


def phantom_settings(config: dict, release: str) -> dict:
    """What `alice phantom` needs for one release: counts, geometry and seed."""
    phantom = config.get("phantom", {})
    counts = phantom.get("counts", {}).get(release)
    if counts is None:
        raise ConfigError(f"phantom.counts.{release}", "missing: how many phantom cases to write")
    return {"counts": counts, "geometry": phantom.get("geometry") or None,
            "seed": phantom.get("seed", 0)}


def folds_settings(config: dict, dataset: str) -> dict:
    """What `alice folds` needs: the dataset section's split keys and the master seed."""
    keys = {"flare22": ("folds",), "btcv": ("folds",), "flare22_pool": ("val_fraction",),
            "mosmed": ("repeats", "split", "label_fractions")}[dataset]
    section = config["datasets"][dataset]
    return {**{k: section[k] for k in keys}, "seed": config["seed"]}


def backbone_encoder(backbone: str) -> str:
    """The encoder a fine-tuning backbone takes weights from (unetr: vit, swin_unetr: swin,
    nnformer: nnformer), as its registry entry (alice.downstream.networks) declares."""
    from alice.downstream.networks import encoder_name_of

    return encoder_name_of(backbone)


def encoder_config(config: dict, name: str) -> dict:
    """The architecture of encoder `name` with its name: `{"name": name, **pretrain.encoders.<name>}`
    (what a checkpoint records as encoder_config)."""
    section = (config.get("pretrain") or {}).get("encoders") or {}
    if name not in section:
        raise ConfigError(f"pretrain.encoders.{name}", "missing: the encoder architecture")
    return {"name": name, **copy.deepcopy(section[name])}


def pretrain_crop(config: dict, encoder: str) -> list:
    """The pretraining crop of `encoder` (`pretrain.crop.<encoder>`)."""
    crops = (config.get("pretrain") or {}).get("crop") or {}
    if encoder not in crops:
        raise ConfigError(f"pretrain.crop.{encoder}", "missing: the pretraining crop of this encoder")
    return list(crops[encoder])


def _fast_path_entry(config: dict) -> dict:
    """{"fast_path": the switches set} for a training job's settings, {} when every switch is left
    to the device (`auto`, compile off): a job's settings, and Snakemake's params of it, change
    only when a switch is set (alice/fastpath.py)."""
    section = dict(config.get("fast_path") or {})
    switches = {k: v for k, v in section.items() if v != "auto" and not (k == "compile" and v is False)}
    return {"fast_path": switches} if switches else {}


def finetune_settings(config: dict, backbone: str) -> dict:
    """What `alice finetune` needs: the backbone's section, its encoder, seed, device, threads."""
    section = config.get("finetune", {}).get(backbone)
    if section is None:
        raise ConfigError(f"finetune.{backbone}", "missing: no fine-tuning settings for this backbone")
    encoder = encoder_config(config, backbone_encoder(backbone))
    return {"finetune": section, "encoder": encoder, "seed": config["seed"],
            "device": config.get("device", "auto"),
            "threads": config.get("finetune", {}).get("threads", 1), **_fast_path_entry(config)}


def vit_encoder_config(config: dict) -> dict:
    """The ViT encoder's architecture (name, embed_dim, depth, heads, mlp_ratio, patch): the one
    place the classification stage reads it from (`pretrain.encoders.vit`)."""
    return encoder_config(config, "vit")


def classification_settings(config: dict, backbone: str) -> dict:
    """What `alice finetune --dataset mosmed` needs: the `classification` section, the backbone's
    pretraining encoder (vit: pretrain.encoders.vit, resnet3d: pretrain.encoders.resnet3d), seed,
    device, threads."""
    section = config.get("classification")
    if section is None:
        raise ConfigError("classification", "missing: no classification fine-tuning settings")
    if backbone not in ("vit", "resnet3d"):
        raise ConfigError("--backbone", f"'{backbone}' is not a classification backbone "
                                        "(known: vit, resnet3d)")
    return {"classification": copy.deepcopy(section), "encoder": encoder_config(config, backbone_encoder(backbone)),
            "seed": config["seed"], "device": config.get("device", "auto"),
            "threads": section.get("threads", 1), **_fast_path_entry(config)}


def plain_method_config(config: dict, method: str) -> dict:
    """A method's own pretraining settings (`pretrain.methods.<method>`) with the shared masking
    ratio when the method masks (its declaration, alice.ssl.catalog): what its plain run (no
    ablation switch) is built from."""
    from alice.ssl.catalog import method_info

    section = config.get("pretrain") or {}
    method_config = dict((section.get("methods") or {}).get(method, {}))
    info = method_info(method)
    if "mask_ratio" in section and info is not None and info.masking:
        method_config.setdefault("mask_ratio", section["mask_ratio"])
    return method_config


def pretrain_settings(config: dict, run: str, encoder: str = "vit") -> dict:
    """What `alice pretrain` needs for one run of one encoder: the encoder's architecture and crop,
    optimisation, the method's own settings (with the masking ratio and the run's ablation
    switches) and, for a method of matched crop pairs, how they are mined. `run` is a method name or a variant run id
    (`alice__casa-false`, see alice.ssl.variants); `encoder` a `pretrain.encoders` name."""
    from alice.ssl.catalog import needs_matcher, require
    from alice.ssl.variants import parse_run_id

    section = config.get("pretrain")
    if not section or "encoders" not in section or "optim" not in section:
        raise ConfigError("pretrain", "missing: encoders and optim are needed to pretrain")
    method = run.split("__")[0]
    info = require(method, "method")
    method_config = plain_method_config(config, method)
    _, variant = parse_run_id(run, method_config)
    method_config.update(variant)
    settings = {"method": method, "run": run, "encoder": encoder_config(config, encoder),
                "crop": pretrain_crop(config, encoder), "optim": section["optim"],
                "method_config": method_config,
                "checkpoint_every": section.get("checkpoint_every", 1000),
                "grad_clip": section.get("grad_clip", 3.0), "amp": section.get("amp"),
                "seed": config["seed"], "device": config.get("device", "auto"), **_fast_path_entry(config)}
    # how matched crops are mined: Alice's pairs, or the views of a run whose `matcher` switch is
    # on (alice.ssl.catalog; method_config holds the run's switches, so the method is asked)
    if info.views == "matched_pair" or needs_matcher(method, method_config):
        settings["pairs"] = section.get("pairs", {})
    return settings


def anatomy_settings(config: dict) -> dict:
    """What `alice anatomy train` needs: the training settings of the learned matcher
    (alice.anatomy.train.resolve_settings validates them) and the seed."""
    section = config.get("anatomy") or {}
    return {"train": dict(section.get("train") or {}), "seed": config["seed"]}


def anatomy_data_settings(config: dict) -> dict:
    """What `alice prepare --dataset flare22_pool` needs to build the anatomy stage's own cache:
    the pool's settings (`datasets.flare22_pool`: window, discovery) with `anatomy.data` (spacing,
    cache_dtype) over them."""
    section = (config.get("anatomy") or {}).get("data")
    if not section or "spacing" not in section:
        raise ConfigError("anatomy.data.spacing", "missing: the anatomy cache's voxel spacing (mm)")
    return {**dataset_settings(config, "flare22_pool"), **copy.deepcopy(section)}


def matching_settings(config: dict) -> dict:
    """What `alice anatomy evaluate` needs: how many random (query, key) pairs, and the seed."""
    section = (config.get("anatomy") or {}).get("evaluate") or {}
    return {"pairs": int(section.get("pairs", 60)), "seed": config["seed"]}
