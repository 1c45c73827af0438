"""Config validation: both shipped configs pass; bad keys fail with one line naming the key."""

import copy

import pytest
import yaml

from alice import config as cfg
from alice.errors import ConfigError, InputError


@pytest.fixture(scope="module")
def demo():
    return yaml.safe_load(cfg.DEFAULT_CONFIG.read_text())


def test_shipped_configs_validate():
    demo = cfg.load_config()
    paper = cfg.load_config(cfg.REPO_ROOT / "config" / "paper.yaml")
    assert demo["scale"] == "demo" and paper["scale"] == "paper"
    # scale changes numbers, never code paths: the same keys at both scales
    def keys(d, prefix=""):
        out = set()
        for k, v in d.items():
            out.add(prefix + k)
            if isinstance(v, dict) and k != "counts":
                out |= keys(v, prefix + k + ".")
        return out
    assert keys(demo) - {"phantom.geometry", "phantom.geometry.inplane_voxels",
                         "phantom.geometry.fov_mm", "phantom.geometry.slice_mm"} == keys(paper)


def test_paper_settings(tmp_path):
    paper = cfg.load_config(cfg.REPO_ROOT / "config" / "paper.yaml")
    assert {k: paper["pretrain"]["crop"][k] for k in ("vit", "swin", "nnformer")} == {
        "vit": [192, 192, 64], "swin": [192, 192, 64], "nnformer": [192, 192, 64]}
    assert set(paper["pretrain"]["crop"]) == set(paper["pretrain"]["encoders"])  # one per encoder
    assert paper["pretrain"]["encoders"]["vit"]["embed_dim"] == 768
    assert paper["pretrain"]["encoders"]["swin"] == {"embed_dim": 48, "depths": [2, 2, 2, 2],
                                                     "heads": [3, 6, 12, 24], "window": [7, 7, 7],
                                                     "mlp_ratio": 4}
    assert paper["finetune"]["nnformer"]["optim"]["optimizer"] == "sgd"
    assert paper["pretrain"]["optim"]["iterations"] == 100_000
    assert paper["finetune"]["unetr"]["optim"]["lr"] == 1e-4
    assert paper["finetune"]["nnformer"]["crop"] == [128, 128, 96]
    assert len(paper["datasets"]["flare22"]["offline_test"]) == 20
    with pytest.raises(ConfigError, match=r"datasets\.flare22\.root.*placeholder"):
        cfg.resolved_root(paper, "flare22")


@pytest.mark.parametrize(
    "edit, key, words",
    [
        (lambda c: c["datasets"]["flare22"].update(spacingg=[1, 1, 1]),
         "datasets.flare22.spacingg", "unknown key"),
        (lambda c: c.update(epochs=3), "epochs", "unknown key"),
        (lambda c: c["datasets"]["btcv"].update(folds="five"), "datasets.btcv.folds", "integer"),
        (lambda c: c["datasets"]["mosmed"].pop("window"), "datasets.mosmed.window", "missing"),
        (lambda c: c["datasets"]["flare22"].update(spacing=[1, 1]), "datasets.flare22.spacing",
         "short"),
        (lambda c: c["finetune"]["unetr"]["optim"].update(optimizer="adam"),
         "finetune.unetr.optim.optimizer",
         "not one of"),
        (lambda c: c["pretraining_effect"].update(methods=["alice", "mae"]),
         "pretraining_effect.methods", "must include 'rand_init'"),
        (lambda c: c["pretraining_effect"].update(labeled=[0, 2]), "pretraining_effect.labeled.0",
         "less than the minimum"),
        (lambda c: c.update(seed=-1), "seed", "less than the minimum of 0"),
        (lambda c: c.update(seed=2**32), "seed", "greater than the maximum of 4294967295"),
        (lambda c: c["phantom"].update(seed=-1), "phantom.seed", "less than the minimum of 0"),
        (lambda c: c["finetune"].update(threads=0), "finetune.threads", "less than the minimum of 1"),
        (lambda c: c["pretrain"].update(threads=0), "pretrain.threads", "less than the minimum of 1"),
        (lambda c: c["anatomy"].update(threads=-2), "anatomy.threads", "less than the minimum of 1"),
        (lambda c: c["classification"].update(threads=0), "classification.threads",
         "less than the minimum of 1"),
        (lambda c: c["finetune"]["unetr"].update(amp=False), "finetune.unetr.amp", "not of type"),
    ],
)
def test_bad_config_names_the_key(demo, edit, key, words):
    config = copy.deepcopy(demo)
    edit(config)
    with pytest.raises(ConfigError) as info:
        cfg.validate_config(config)
    message = str(info.value)
    assert f"'{key}'" in message and words in message
    assert "\n" not in message


def test_defaults_are_filled(demo):
    config = copy.deepcopy(demo)
    del config["datasets"]["flare22"]["validation_labels"]
    cfg.validate_config(config)
    assert config["datasets"]["flare22"]["validation_labels"] == "Validation/labels"


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        cfg.load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("scale: [demo\n")
    with pytest.raises(InputError, match="not valid YAML"):
        cfg.load_config(bad)


def test_phantom_root_when_root_is_null(demo):
    config = copy.deepcopy(demo)
    assert cfg.resolved_root(config, "flare22_pool").as_posix() == "results/phantoms/flare22"
    config["datasets"]["btcv"]["root"] = "/data/btcv"
    assert cfg.resolved_root(config, "btcv").as_posix() == "/data/btcv"


def test_stage_settings(demo):
    config = cfg.validate_config(copy.deepcopy(demo))
    assert cfg.dataset_settings(config, "flare22")["spacing"] == demo["datasets"]["flare22"]["spacing"]
    assert "root" not in cfg.dataset_settings(config, "btcv")
    assert cfg.folds_settings(config, "mosmed")["repeats"] == 10
    assert cfg.phantom_settings(config, "mosmed")["counts"]["per_category"][0] == 68
    with pytest.raises(ConfigError, match="unknown dataset"):
        cfg.dataset_settings(config, "lits")


def test_demo_mosmed_test_splits_hold_twenty_studies(demo):
    """An AUC over fewer test cases is mostly noise: the demo phantom has enough studies that each
    of the repeated splits tests at least 20 (the split's own rounding, alice.data.folds)."""
    config = cfg.validate_config(copy.deepcopy(demo))
    n = sum(cfg.phantom_settings(config, "mosmed")["counts"]["per_category"])
    test_fraction = cfg.folds_settings(config, "mosmed")["split"][2]
    assert max(1, round(test_fraction * n)) >= 20


def test_anatomy_data_settings(demo):
    """The anatomy cache: the pool's preparation settings with anatomy.data's spacing and dtype."""
    config = cfg.validate_config(copy.deepcopy(demo))
    config["anatomy"]["data"] = {"spacing": [2.0, 2.0, 2.0], "cache_dtype": "float16"}
    settings = cfg.anatomy_data_settings(config)
    pool = cfg.dataset_settings(config, "flare22_pool")
    assert settings == {**pool, "spacing": [2.0, 2.0, 2.0], "cache_dtype": "float16"}
    assert config["datasets"]["flare22_pool"]["spacing"] == pool["spacing"] != [2.0, 2.0, 2.0]
    paper = cfg.load_config(cfg.REPO_ROOT / "config" / "paper.yaml")
    assert cfg.anatomy_data_settings(paper)["spacing"] == [2.0, 2.0, 2.0]  # SAM's 2 mm
    bad = copy.deepcopy(demo)
    del bad["anatomy"]["data"]["spacing"]
    with pytest.raises(ConfigError, match=r"anatomy\.data\.spacing"):
        cfg.validate_config(bad)
    del config["anatomy"]["data"]
    with pytest.raises(ConfigError, match=r"anatomy\.data\.spacing"):
        cfg.anatomy_data_settings(config)


@pytest.mark.parametrize("path", [
    ("datasets", "flare22", "folds"),
    ("datasets", "btcv", "folds"),
    ("seed",),
    ("phantom", "counts", "flare22", "labeled"),
    ("finetune", "unetr", "optim", "epochs"),
    ("finetune", "unetr", "optim", "batch_size"),
    ("pretrain", "optim", "iterations"),
    ("anatomy", "train", "iterations"),
    ("pretraining_effect", "seeds"),
    ("pretraining_effect", "labeled", 0),
    ("reproduce", "folds", "baseline"),
])
def test_float_where_an_integer_is_needed_is_refused(demo, tmp_path, capsys, path):
    """JSON Schema counts 5.0 as an integer; the harness refuses it (range(5.0) breaks the DAG)."""
    from alice.cli import main

    config = copy.deepcopy(demo)
    parent = config
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = float(parent[path[-1]])
    written = tmp_path / "c.yaml"
    written.write_text(yaml.safe_dump(config))
    assert main(["config", "--config", str(written)]) == 2
    err = capsys.readouterr().err.strip()
    key = ".".join(str(p) for p in path)
    assert err.splitlines() == [err] and f"config key '{key}'" in err and "integer" in err


def test_workstation_overlay_validates_and_keeps_the_protocol(demo):
    """config/workstation.yaml, merged over the demo as `snakemake --configfile` merges it, is a
    valid config that changes recipes (grid, crops, steps), never what the tables compute."""
    from snakemake.utils import update_config

    config = copy.deepcopy(demo)
    update_config(config, yaml.safe_load((cfg.REPO_ROOT / "config" / "workstation.yaml").read_text()))
    cfg.validate_config(config)
    assert config["datasets"]["flare22"]["spacing"] == [4.0, 4.0, 5.0]
    assert config["finetune"]["unetr"]["optim"]["epochs"] == 150
    assert config["finetune"]["unetr"]["optim"]["optimizer"] == demo["finetune"]["unetr"]["optim"]["optimizer"]
    assert config["reproduce"] == cfg.validate_config(copy.deepcopy(demo))["reproduce"]
    assert config["scale"] == "demo"


# ------------------------------------------------------------- what YAML would resolve silently
@pytest.mark.parametrize("text, line, words", [
    ("seed: 0\nscale: demo\nseed: 3\n", 3, "duplicate key 'seed' (first on line 1)"),
    ("finetune:\n  unetr:\n    crop: [1, 2, 3]\n    crop: [4, 5, 6]\n", 4, "duplicate key 'crop'"),
    ("a: {b: 1, b: 2}\n", 1, "duplicate key 'b'"),
    ("amp: on\n", 1, "'on' is ambiguous"),
    ("flags: [yes, true]\n", 1, "'yes' is ambiguous"),
    ("x:\n  channels_last: Off\n", 2, "'Off' is ambiguous"),
    ("answer: n\n", 1, "'n' is ambiguous"),
    ("on: 1\n", 1, "'on' is ambiguous"),
    ("budget: 1:30\n", 1, "'1:30' is ambiguous: YAML 1.1 reads a base-60 number"),
    ("budget: 01:30\n", 1, "'01:30' is ambiguous"),
    ("budget: 1:30.5\n", 1, "'1:30.5' is ambiguous"),
    ("mode: 0755\n", 1, "'0755' is ambiguous: a leading zero"),
    ("case: 08\n", 1, "'08' is ambiguous"),
    ("mask: 0b101\n", 1, "'0b101' is ambiguous: YAML 1.1 reads a binary number"),
    ("base: &b {lr: 1}\nover:\n  <<: *b\n", 3, "alias '*b' refused"),
    ("a: &x [1, 2]\nb: *x\n", 2, "alias '*x' refused"),
    ("over:\n  <<: {lr: 1}\n  lr: 2\n", 2, "merge key '<<' refused"),
    ("scale: [demo\n", 2, "not valid YAML"),
])
def test_strict_yaml_refuses_ambiguous_forms_naming_the_line(tmp_path, text, line, words):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as info:
        cfg.load_yaml(path)
    message = str(info.value)
    assert message.startswith(f"{path}: line {line}: ") and words in message, message
    assert "\n" not in message


def test_strict_yaml_reads_what_is_unambiguous(tmp_path):
    """true/false and quoted words are what they say; an exponent without a dot or sign is the
    float its writer meant (PyYAML would read the string '1e-3')."""
    path = tmp_path / "c.yaml"
    path.write_text("a: true\nb: False\nc: 'off'\nd: \"yes\"\ne: 1e-3\nf: 2.0e3\ng: 1.0e-4\n"
                    "h: 100_000\ni: 0\nj: 0.5\nk: -7\nl: 0x1F\nm: ~\nn_: yes_please\no: \"1:30\"\n")
    data = cfg.load_yaml(path)
    assert data == {"a": True, "b": False, "c": "off", "d": "yes", "e": 1e-3, "f": 2000.0,
                    "g": 1e-4, "h": 100_000, "i": 0, "j": 0.5, "k": -7, "l": 31, "m": None,
                    "n_": "yes_please", "o": "1:30"}
    assert isinstance(data["e"], float) and isinstance(data["f"], float)
    assert yaml.safe_load(path.read_text()) != data  # what the plain safe loader would have read


@pytest.mark.parametrize("text, words", [
    ("seed: 0\nseed: 1\n", "line 2: duplicate key 'seed' (first on line 1)"),
    ("seed: 0\nscale: demo\ndevice: on\n", "line 3: 'on' is ambiguous"),
])
def test_config_with_ambiguous_yaml_is_one_line(tmp_path, capsys, text, words):
    from alice.cli import main

    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert main(["config", "--config", str(path)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith(f"alice config: error: {path}: {words}"), err


def test_every_yaml_the_harness_reads_is_unambiguous():
    """The configs, the schema, the table specs and the Snakemake profiles load strictly."""
    root = cfg.REPO_ROOT
    files = [*sorted((root / "config").glob("*.yaml")), cfg.SCHEMA_PATH,
             *sorted((root / "alice" / "tables" / "specs").glob("*.yaml")),
             *sorted((root / "workflow" / "profiles").glob("*/config.yaml"))]
    assert len(files) >= 16
    for path in files:
        assert isinstance(cfg.load_yaml(path), dict), path
