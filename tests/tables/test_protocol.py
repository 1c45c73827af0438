"""The scale and protocol stamps: what a reproduced cell's protocol is read from, and the errors
that name the file or key when it cannot be."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from alice.errors import ConfigError, InputError
from alice.tables import render
from alice.tables.protocol import cell_protocol, check_scale, pretraining_steps, scale_note
from fakes import write_training_record

FOLD = "results/finetune/flare22/alice/unetr/fold{k}"


def test_scales_are_the_configs():
    assert check_scale("demo") == "demo" and check_scale("paper") == "paper"
    assert "not comparable with the paper" in scale_note("demo")
    with pytest.raises(ConfigError) as err:
        check_scale("tiny", "--settings:scale")
    assert err.value.key == "--settings:scale" and "demo, paper" in err.value.problem


def test_pretraining_steps_are_the_trainers_last_logged_step(tmp_path):
    """The pretraining trainer's log writer (alice.training.CsvLog with the trainer's format), long
    enough to be read from its end."""
    from alice.ssl.trainer import _fmt
    from alice.training import CsvLog

    path = tmp_path / "log.csv"
    log = CsvLog(path, fmt=_fmt)
    for step in range(1, 5001):
        log.write({"step": step, "lr": 1e-3, "loss": 0.5, "l_r": 0.1, "grad_norm": 1.0, "seconds": 0.01})
    log.close()
    assert pretraining_steps(path) == 5000
    path.write_text("step,lr,loss\n")
    with pytest.raises(InputError, match="no step"):
        pretraining_steps(path)


def test_cell_protocol_reads_each_folds_record(tmp_path):
    for k in range(3):
        write_training_record(tmp_path, f"{FOLD.format(k=k)}/metrics.json", steps=80, pretrain_steps=12)
    dirs = [FOLD.format(k=k) for k in range(3)]
    assert cell_protocol(dirs, [0, 1, 2], tmp_path) == "folds 0-2, fine-tuning 80 steps, pretraining 12 steps"
    # a fold that trained longer shows beside the others, never averaged away
    record = tmp_path / FOLD.format(k=2) / "train_summary.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "steps": 90}))
    assert cell_protocol(dirs, [0, 1, 2], tmp_path).startswith("folds 0-2, fine-tuning 80 / 90 steps")
    record.unlink()
    with pytest.raises(InputError) as err:
        cell_protocol(dirs, [0, 1, 2], tmp_path)
    assert str(record) in str(err.value) and "missing" in str(err.value)


def test_a_cell_without_its_pretraining_log_is_refused(tmp_path):
    write_training_record(tmp_path, f"{FOLD.format(k=0)}/metrics.json")
    log = tmp_path / "results/pretrain/alice/vit/log.csv"
    log.unlink()
    with pytest.raises(InputError) as err:
        cell_protocol([FOLD.format(k=0)], [0], tmp_path)
    assert str(log) in str(err.value)


def test_a_row_needs_the_scale_and_an_old_row_file_is_refused(tmp_path):
    settings = {"reproduce": {"methods": [], "backbones": []}, "folds": {"flare22": 5}}
    with pytest.raises(ConfigError) as err:
        render.compute_row("table1", "rand_init", settings, root=tmp_path)
    assert err.value.key == "--settings:scale"
    files = {}
    for row in render.load_spec("table1")["rows"]:
        frame = render.compute_row("table1", row["row"], {**settings, "scale": "paper"}, root=tmp_path)
        assert set(frame["scale"]) == {"paper"}
        files[row["row"]] = tmp_path / f"{row['row']}.csv"
        render.write_row(frame, files[row["row"]])
    render.render_table("table1", files, tmp_path / "t.csv", tmp_path / "t.tex")
    assert "Scale: paper scale: the paper's data and protocol." in (tmp_path / "t.tex").read_text()
    old = pd.read_csv(files["alice"], dtype=str, keep_default_na=False).drop(columns=["scale", "protocol"])
    old.to_csv(files["alice"], index=False)
    with pytest.raises(InputError, match=r"alice.csv.*regenerate it"):
        render.read_rows("table1", files)
