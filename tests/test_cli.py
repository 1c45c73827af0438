"""The CLI: every stage is reachable, and user errors are one line with a non-zero exit."""

import shutil
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


# root ignores file permissions: it runs the command with its file-access capabilities dropped
NO_DAC = ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search"]


@pytest.fixture(params=["read-only folder", "file in the path"])
def blocked_out(request, tmp_path):
    """An --out that cannot be created, the words its error line must hold, and whether the
    command must run without root's file-access capabilities."""
    if request.param == "file in the path":
        blocker = tmp_path / "a_file"
        blocker.write_text("")
        yield blocker / "release", "not a directory", False
        return
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        (folder / "probe").mkdir()
        as_root = True
    except PermissionError:
        as_root = False
    try:
        if as_root and shutil.which("setpriv") is None:
            pytest.fail("running as root without setpriv: cannot drop the capability to write anywhere")
        yield folder / "release", "permission denied", as_root
    finally:
        folder.chmod(0o700)


def test_unwritable_out_is_one_line(blocked_out, capsys):
    out, words, as_root = blocked_out
    settings = '{"counts": {"labeled": 1, "test": 0}, "seed": 0, "geometry": {"inplane_voxels": 16}}'
    argv = ["phantom", "--dataset", "btcv", "--out", str(out), "--settings", settings]
    if as_root:
        run = subprocess.run(NO_DAC + [sys.executable, "-m", "alice.cli", *argv], capture_output=True, text=True,
                             timeout=120)
        code, err = run.returncode, run.stderr
    else:
        code = main(argv)
        err = capsys.readouterr().err
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("alice phantom: error: "), err
    assert str(out.parent) in lines[0] and words in lines[0]


@pytest.mark.parametrize("method, init, words", [
    ("rand_init", "ckpt", "--init scratch"),
    ("alice", "scratch", "rand_init"),
])
def test_finetune_init_must_fit_the_method(tmp_path, capsys, method, init, words):
    """rand_init trains from scratch, every other run from a checkpoint (of its own method:
    tests/downstream/test_finetune.py)."""
    import torch

    from alice.downstream.transfer import save_encoder_checkpoint

    if init == "ckpt":
        init = str(tmp_path / "checkpoint.pt")
        save_encoder_checkpoint(init, {"w": torch.zeros(1)}, {"name": "vit"}, "mae")
    code = main(["finetune", "--dataset", "flare22", "--backbone", "unetr", "--method", method,
                 "--init", init, "--fold", "0", "--out", str(tmp_path / "out"),
                 "--data", str(tmp_path / "data"), "--settings", "{}"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and words in err[0]
    assert "config key '--" in err[0] and not (tmp_path / "out").exists()
