"""`scale` is checked against the data: paper scale on a phantom (a null dataset root) is refused
by alice.config.validate_config, the one check the CLI and the Snakefile share."""

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from alice import cli
from alice import config as cfg
from alice.errors import ConfigError

RELEASES = ("flare22", "btcv", "mosmed")
REAL_ROOTS = {"flare22": "/data/FLARE22", "btcv": "/data/BTCV", "mosmed": "/data/COVID19_1110"}


@pytest.fixture(scope="module")
def demo():
    return yaml.safe_load(cfg.DEFAULT_CONFIG.read_text())


@pytest.fixture(scope="module")
def paper():
    return yaml.safe_load((cfg.REPO_ROOT / "config" / "paper.yaml").read_text())


def with_roots(config: dict, roots: dict) -> dict:
    config = copy.deepcopy(config)
    for release, root in roots.items():
        config["datasets"][release]["root"] = root
    return config


@pytest.mark.parametrize("release", RELEASES)
def test_paper_scale_on_a_phantom_is_refused_naming_the_key(paper, release):
    config = with_roots(paper, {**REAL_ROOTS, release: None})
    with pytest.raises(ConfigError) as info:
        cfg.validate_config(config)
    message = str(info.value)
    assert info.value.key == f"datasets.{release}.root"
    assert f"'datasets.{release}.root'" in message and "scale: 'paper'" in message
    assert "phantom" in message and "scale: demo" in message and "\n" not in message


def test_paper_settings_on_phantoms_are_refused(paper):
    """paper.yaml with every root null: the first release in the config's order is named."""
    config = with_roots(paper, dict.fromkeys(RELEASES))
    with pytest.raises(ConfigError, match=r"^config key 'datasets\.flare22\.root': scale: 'paper' "
                                          r"needs the real datasets"):
        cfg.validate_config(config)


def test_paper_scale_with_roots_passes(paper):
    config = cfg.validate_config(with_roots(paper, REAL_ROOTS))
    assert config["scale"] == "paper"
    assert cfg.resolved_root(config, "flare22_pool").as_posix() == "/data/FLARE22"


def test_shipped_paper_config_with_placeholders_passes(paper):
    """paper.yaml's /path/to/ placeholders are not phantoms: the config validates, and the
    placeholder stops only a job that reads that release."""
    config = cfg.validate_config(copy.deepcopy(paper))
    with pytest.raises(ConfigError, match=r"datasets\.btcv\.root.*placeholder"):
        cfg.resolved_root(config, "btcv")


def test_demo_scale_on_phantoms_or_real_roots_passes(demo):
    assert cfg.validate_config(copy.deepcopy(demo))["scale"] == "demo"
    assert all(demo["datasets"][r]["root"] is None for r in RELEASES)
    # demo rows are never differenced against the paper: real data at demo scale is allowed
    assert cfg.validate_config(with_roots(demo, REAL_ROOTS))["scale"] == "demo"


def test_the_cli_refuses_it_in_one_line_and_writes_nothing(paper, tmp_path, capsys):
    path = tmp_path / "paper_on_phantoms.yaml"
    path.write_text(yaml.safe_dump(with_roots(paper, dict.fromkeys(RELEASES))))
    out = tmp_path / "phantom"
    code = cli.main(["phantom", "--dataset", "btcv", "--out", str(out), "--config", str(path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and not out.exists()
    assert err.count("\n") == 0 and "'datasets.flare22.root'" in err and "scale: demo" in err


def test_the_snakefile_refuses_it(paper, tmp_path):
    """The Snakefile validates with the same function (workflow/rules/common.smk): the DAG stops
    before any job, naming the key."""
    path = tmp_path / "paper_on_phantoms.yaml"
    path.write_text(yaml.safe_dump(with_roots(paper, dict.fromkeys(RELEASES))))
    env = dict(os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    result = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--directory", str(tmp_path),
                             "--snakefile", str(cfg.REPO_ROOT / "Snakefile"), "--configfile", str(path)],
                            cwd=cfg.REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert "datasets.flare22.root" in out and "needs the real datasets" in out
