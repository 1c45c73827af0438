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


# ------------------------------------------------------------------ every option value is checked
CHECKED_TYPES = ("positive_int", "non_negative_int", "seed_int", "fraction", "split_name")
NUMERIC_DESTS = {"threads", "seed", "fold", "steps", "labeled", "subset_seed", "label_fraction",
                 "max_cases"}


def _leaf_parsers(parser, argv=()):
    """Every parser that runs a stage, with the argv that reaches it (required arguments given a
    valid value), so that one more option is all a test adds."""
    import argparse

    argv = list(argv)
    children = None
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            children = action.choices
        elif action.required or not action.option_strings:
            value = action.choices[0] if action.choices else "1" if action.type else "x"
            argv += [action.option_strings[0], value] if action.option_strings else [value]
    if children is None:
        yield parser, argv
        return
    for name, child in children.items():
        yield from _leaf_parsers(child, argv + [name])


def _typed_options():
    return [(argv, action) for parser, argv in _leaf_parsers(build_parser())
            for action in parser._actions if action.option_strings and action.type is not None]


def test_every_numeric_option_has_a_checked_type():
    """No option takes a bare int() or float(), which accept -1, 0 and nan; and every option that
    holds a count, an index or a seed is typed."""
    typed = _typed_options()
    assert len(typed) >= 15  # the walk reaches every stage
    for _, action in typed:
        assert getattr(action.type, "__name__", "") in CHECKED_TYPES, action.option_strings
    for parser, _ in _leaf_parsers(build_parser()):
        for action in parser._actions:
            if action.dest in NUMERIC_DESTS:
                assert action.type is not None, (parser.prog, action.option_strings)


@pytest.mark.parametrize("value", ["-1", "abc"])
def test_every_typed_option_refuses_a_bad_value_in_one_line(capsys, value):
    """Walks every stage's typed options: each refuses -1 (and a non-number) with exit 2 and one
    line naming the option, before any stage runs."""
    for argv, action in _typed_options():
        option = action.option_strings[0]
        with pytest.raises(SystemExit) as info:
            build_parser().parse_args(argv + [option, value])
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert info.value.code == 2, (argv, option)
        assert len(err) == 1 and err[0].startswith("alice ") and f"argument {option}: " in err[0], err


FINETUNE = ["finetune", "--dataset", "flare22", "--backbone", "unetr", "--method", "rand_init",
            "--init", "scratch", "--out", "OUT", "--settings", "{}"]


@pytest.mark.parametrize("argv, line", [
    (FINETUNE + ["--fold", "0", "--threads", "-1"],
     "alice finetune: error: argument --threads: must be >= 1, got -1"),
    (FINETUNE + ["--fold", "0", "--threads", "0"],
     "alice finetune: error: argument --threads: must be >= 1, got 0"),
    (FINETUNE + ["--fold", "-1"], "alice finetune: error: argument --fold: must be >= 0, got -1"),
    (FINETUNE + ["--fold", "0", "--labeled", "0", "--subset-seed", "0"],
     "alice finetune: error: argument --labeled: must be >= 1, got 0"),
    (FINETUNE + ["--fold", "0", "--labeled", "2", "--subset-seed", "-5"],
     "alice finetune: error: argument --subset-seed: must be a seed from 0 to 4294967295, got -5"),
    (FINETUNE + ["--fold", "0", "--label-fraction", "nan"],
     "alice finetune: error: argument --label-fraction: must be a fraction in (0, 1], got 'nan'"),
    (FINETUNE + ["--fold", "0", "--label-fraction", "1.5"],
     "alice finetune: error: argument --label-fraction: must be a fraction in (0, 1], got '1.5'"),
    (FINETUNE + ["--fold", "1.5"], "alice finetune: error: argument --fold: must be an integer, got '1.5'"),
    (["pretrain", "--method", "alice", "--encoder", "vit", "--out", "OUT", "--threads", "-1"],
     "alice pretrain: error: argument --threads: must be >= 1, got -1"),
    (["pretrain", "--method", "alice", "--encoder", "vit", "--out", "OUT", "--steps", "0"],
     "alice pretrain: error: argument --steps: must be >= 1, got 0"),
    (["evaluate", "--dataset", "flare22", "--model-dir", "M", "--threads", "-1"],
     "alice evaluate: error: argument --threads: must be >= 1, got -1"),
    (["evaluate", "--dataset", "flare22", "--model-dir", "M", "--split", "val:-1"],
     "alice evaluate: error: argument --split: must be 'test', 'online_test', 'val' or 'val:K' / "
     "'train:K' with a fold K >= 0, got 'val:-1'"),
    (["predict", "--dataset", "btcv", "--model-dir", "M", "--out", "O", "--threads", "0"],
     "alice predict: error: argument --threads: must be >= 1, got 0"),
    (["anatomy", "train", "--threads", "-1"],
     "alice anatomy: error: argument --threads: must be >= 1, got -1"),
    (["folds", "--dataset", "btcv", "--data", "D", "--seed", "-3"],
     "alice folds: error: argument --seed: must be a seed from 0 to 4294967295, got -3"),
    (["folds", "--dataset", "btcv", "--data", "D", "--seed", str(2**32)],
     "alice folds: error: argument --seed: must be a seed from 0 to 4294967295, got 4294967296"),
    (["phantom", "--dataset", "btcv", "--out", "O", "--seed", "-1"],
     "alice phantom: error: argument --seed: must be a seed from 0 to 4294967295, got -1"),
    (["figure", "overlays", "--run", "a=b", "--data", "D", "--out", "O", "--max-cases", "0"],
     "alice figure overlays: error: argument --max-cases: must be >= 1, got 0"),
    (["effect", "--metrics", "m.json", "--scale", "huge"],
     "alice effect: error: argument --scale: invalid choice: 'huge'"),  # then the choices
])
def test_bad_option_value_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch, argv, line):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = [row for row in capsys.readouterr().err.splitlines() if row.strip()]
    assert len(err) == 1 and err[0].startswith(line), err
    assert not any(tmp_path.iterdir())  # refused before any stage ran


def test_valid_values_still_parse_and_help_exits_0(capsys):
    args = build_parser().parse_args(FINETUNE + ["--fold", "0", "--threads", "2", "--labeled", "1",
                                                 "--subset-seed", str(2**32 - 1)])
    assert (args.fold, args.threads, args.labeled, args.subset_seed) == (0, 2, 1, 2**32 - 1)
    args = build_parser().parse_args(["evaluate", "--dataset", "flare22", "--model-dir", "M",
                                      "--split", "val:3"])
    assert args.split == "val:3" and args.threads is None
    assert main(["folds", "--help"]) == 0 and "--seed" in capsys.readouterr().out


@pytest.mark.parametrize("dataset, folds, words", [
    ("flare22", {"folds": [{"fold": k, "train": ["a"], "val": ["b"]} for k in range(5)]},
     "has no fold 5 (folds: 0, 1, 2, 3, 4)"),
    ("mosmed", {"repeats": [{"repeat": k} for k in range(3)]},
     "has no repeat 5 (repeats: 0, 1, 2)"),
])
def test_fold_beyond_the_folds_is_refused_before_outputs_go(tmp_path, capsys, dataset, folds, words):
    """--fold is checked against the data's folds.json before the stage deletes the run's old
    outputs."""
    import json

    data = tmp_path / "data"
    data.mkdir()
    (data / "folds.json").write_text(json.dumps(folds))
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.pt").write_text("an earlier run's")
    code = main(["finetune", "--dataset", dataset, "--backbone", "vit", "--method", "rand_init",
                 "--init", "scratch", "--fold", "5", "--data", str(data), "--out", str(out),
                 "--settings", "{}"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and "config key '--fold'" in err[0] and words in err[0], err
    assert (out / "model.pt").read_text() == "an earlier run's"
