"""The CLI: every stage is reachable, and user errors are one line with a non-zero exit."""

import subprocess
import sys

import pytest

from alice.cli import build_parser, main


def run(*args):
    return subprocess.run([sys.executable, "-m", "alice.cli", *args], capture_output=True,
                          text=True)


def test_stages_listed():
    text = build_parser().format_help()
    for stage in ("phantom", "prepare", "folds", "figure", "config"):
        assert stage in text


def test_config_error_is_one_line(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("scale: demo\nseed: 0\n")
    result = run("config", "--config", str(bad))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == ["alice config: error: config key 'datasets': missing required key"]


def test_bad_settings_json(tmp_path):
    assert main(["folds", "--dataset", "btcv", "--data", str(tmp_path),
                 "--settings", "{not json"]) == 2


def test_folds_without_manifest(tmp_path, capsys):
    assert main(["folds", "--dataset", "btcv", "--data", str(tmp_path)]) == 2
    assert "manifest.json: missing" in capsys.readouterr().err


def test_unknown_dataset_rejected():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["prepare", "--dataset", "lits", "--out", "x"])
