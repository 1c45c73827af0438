"""A stage's outputs are one unit: evaluation replaces metrics.json and predictions/ together or not
at all, a failed evaluation leaves no score of a model it did not score, a rerun of fine-tuning
leaves no score of the model it replaces, metrics.json names the model file and the label files it
scored, and a thread count below 1 is a one-line ConfigError."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil

import pytest
import torch

from alice.downstream import inference
from alice.downstream.classification import evaluate_classifier, finetune_classifier
from alice.downstream.inference import evaluate
from alice.downstream.networks import build_segmentation_network
from alice.downstream.segmentation import finetune
from alice.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks, busy shared cores

TEST_CASES = ["FLARETs_0001", "FLARETs_0002"]


def _save_model(path, dx, seed):
    """An untrained tiny UNETR in `alice finetune`'s model.pt format (`seed`: its weights)."""
    torch.manual_seed(seed)
    net = build_segmentation_network("unetr", 14, dx.SETTINGS, dx.ENCODER)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": net.state_dict(), "backbone": "unetr", "num_classes": 14,
                "settings": copy.deepcopy(dx.SETTINGS), "encoder_config": copy.deepcopy(dx.ENCODER),
                "dataset": "flare22", "method": "rand_init", "init": "scratch", "fold": 0, "seed": 0,
                "code_version": "test"}, path)
    return path


def _evaluate(model_dir, data, **kwargs):
    kwargs.setdefault("out_path", model_dir / "metrics.json")
    return evaluate(dataset="flare22", model_dir=model_dir, data_dir=data, progress=False, **kwargs)


@pytest.fixture(scope="module")
def scored(tiny_data, tmp_path_factory, dx):
    """A fold folder holding model.pt and its evaluation (metrics.json, predictions/)."""
    fold = tmp_path_factory.mktemp("scored") / "fold0"
    _save_model(fold / "model.pt", dx, seed=0)
    _evaluate(fold, tiny_data)
    return fold


@pytest.fixture
def fold(scored, tmp_path):
    """A private copy of `scored`, whose earlier set is marked so that a rewrite would show."""
    fold = tmp_path / "fold0"
    shutil.copytree(scored, fold)
    metrics = json.loads((fold / "metrics.json").read_text())
    (fold / "metrics.json").write_text(json.dumps({**metrics, "marker": "earlier run"}))
    for case in TEST_CASES:
        (fold / "predictions" / f"{case}.nii.gz").write_bytes(f"earlier {case}".encode())
    return fold


def _files(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _fail_on_second_case(monkeypatch, target, name, exc):
    real, calls = getattr(target, name), []

    def fail(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise exc
        return real(*args, **kwargs)

    monkeypatch.setattr(target, name, fail)


def test_metrics_record_the_model_hash_and_the_label_files(scored, tiny_data):
    metrics = json.loads((scored / "metrics.json").read_text())
    assert metrics["model_sha256"] == hashlib.sha256((scored / "model.pt").read_bytes()).hexdigest()
    assert sorted(metrics["labels"]) == TEST_CASES
    for case in TEST_CASES:
        meta = json.loads((tiny_data / f"{case}.json").read_text())
        assert metrics["labels"][case] == inference._label_identity(meta)  # what prepare recorded
        assert metrics["labels"][case]["path"].endswith(f"{case}.nii.gz")
    assert metrics["predictions"] == str(scored / "predictions")
    assert sorted(p.name for p in (scored / "predictions").iterdir()) == [f"{c}.nii.gz" for c in TEST_CASES]
    assert not [p for p in scored.iterdir() if ".tmp" in p.name]


@pytest.mark.parametrize("where", ["writing a prediction", "scoring a case"])
def test_failed_evaluation_leaves_the_earlier_set_whole(fold, tiny_data, monkeypatch, where):
    """Failing on the second of two cases (a permission error on its prediction file, an error
    while scoring it) changes neither metrics.json nor any prediction, and leaves no temporary."""
    import alice.metrics

    before = _files(fold)
    if where == "writing a prediction":
        _fail_on_second_case(monkeypatch, inference, "_save_prediction", PermissionError(13, "Permission denied"))
        error = PermissionError
    else:
        _fail_on_second_case(monkeypatch, alice.metrics, "score_case", RuntimeError("scoring failed"))
        error = RuntimeError
    with pytest.raises(error):
        _evaluate(fold, tiny_data)
    assert _files(fold) == before
    assert sorted(p.name for p in fold.iterdir()) == ["metrics.json", "model.pt", "predictions"]


def test_failed_evaluation_of_another_model_leaves_no_score(fold, tiny_data, dx, monkeypatch):
    """model.pt replaced: the earlier set scored another model, so a failed evaluation removes it
    rather than leave it beside the new model; a successful one records the new model's hash and
    removes what a killed earlier evaluation left."""
    _save_model(fold / "model.pt", dx, seed=1)
    with monkeypatch.context() as patch:
        _fail_on_second_case(patch, inference, "_save_prediction", PermissionError(13, "Permission denied"))
        with pytest.raises(PermissionError):
            _evaluate(fold, tiny_data)
    assert sorted(p.name for p in fold.iterdir()) == ["model.pt"]

    (fold / ".predictions.k1ll3d.tmp").mkdir()
    (fold / ".predictions.k1ll3d.tmp" / "FLARETs_0001.nii.gz").write_bytes(b"half")
    (fold / ".metrics.json.k1ll3d.tmp.json").write_text("{")
    metrics = _evaluate(fold, tiny_data)
    assert metrics["model_sha256"] == hashlib.sha256((fold / "model.pt").read_bytes()).hexdigest()
    assert sorted(p.name for p in fold.iterdir()) == ["metrics.json", "model.pt", "predictions"]


def test_another_metrics_file_gets_its_own_predictions(fold, tiny_data):
    """`--out val.json` writes val_predictions/ and leaves metrics.json and its predictions/ alone."""
    before = _files(fold)
    metrics = _evaluate(fold, tiny_data, out_path=fold / "val.json", split="val:0")
    assert metrics["predictions"] == str(fold / "val_predictions")
    assert sorted(p.name for p in (fold / "val_predictions").iterdir()) == [f"{c}.nii.gz" for c in metrics["cases"]]
    assert {k: v for k, v in _files(fold).items() if k in before} == before


def test_finetune_rerun_removes_the_scores_of_the_model_it_replaces(fold, tiny_data, dx):
    old_model = (fold / "model.pt").read_bytes()
    (fold / ".predictions.k1ll3d.tmp").mkdir()
    settings = copy.deepcopy(dx.SETTINGS)
    settings["optim"].update(epochs=1, warmup_epochs=0)
    settings["val_every"] = 0
    finetune(dataset="flare22", backbone="unetr", method="rand_init", init="scratch", fold=0, data_dir=tiny_data,
             out_dir=fold, settings=settings, encoder_config=dx.ENCODER, seed=3, threads=1, progress=False)
    assert (fold / "model.pt").read_bytes() != old_model
    assert sorted(p.name for p in fold.iterdir()) == ["log.csv", "model.pt", "train_summary.json"]


def test_threads_below_one_are_a_config_error(fold, tiny_data, tiny_mosmed, dx, tmp_path):
    """Refused before anything is read or removed, naming --threads in one line."""
    before = _files(fold)
    calls = [
        lambda t: _evaluate(fold, tiny_data, threads=t),
        lambda t: finetune(dataset="flare22", backbone="unetr", method="rand_init", init="scratch", fold=0,
                           data_dir=tiny_data, out_dir=fold, settings=dx.SETTINGS, encoder_config=dx.ENCODER,
                           seed=0, threads=t, progress=False),
        lambda t: finetune_classifier(backbone="vit", method="rand_init", init="scratch", fold=0,
                                      label_fraction=0.5, data_dir=tiny_mosmed, out_dir=fold, settings=dx.CLS_SETTINGS,
                                      encoder_config=dx.CLS_ENCODER, seed=0, threads=t, progress=False),
        lambda t: evaluate_classifier(model_dir=fold, data_dir=tiny_mosmed, out_path=fold / "metrics.json", threads=t),
    ]
    for call in calls:
        for threads in (0, -2, 1.5, True):
            with pytest.raises(ConfigError, match="--threads") as err:
                call(threads)
            assert "\n" not in str(err.value)
    assert _files(fold) == before


def test_classifier_metrics_record_the_model_hash_and_a_rerun_removes_them(tiny_mosmed, tmp_path, cls_settings,
                                                                            cls_encoder):
    cls_settings.update(selection="last", augmentation=[])
    cls_settings["optim"]["iterations"] = 2
    out = tmp_path / "labels50"

    def train(seed):
        return finetune_classifier(backbone="vit", method="rand_init", init="scratch", fold=0, label_fraction=0.5,
                                   data_dir=tiny_mosmed, out_dir=out, settings=cls_settings,
                                   encoder_config=cls_encoder, seed=seed, progress=False)

    train(0)
    metrics = evaluate_classifier(model_dir=out, data_dir=tiny_mosmed, out_path=out / "metrics.json")
    assert metrics["model_sha256"] == hashlib.sha256((out / "model.pt").read_bytes()).hexdigest()
    assert json.loads((out / "metrics.json").read_text())["model_sha256"] == metrics["model_sha256"]
    train(1)
    assert not (out / "metrics.json").exists()
