"""Sliding-window prediction keeps the input's shape for any volume; the cached-grid prediction maps
back onto the original grid exactly (same spacing) or closely (another spacing)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from alice.data.preprocess import invert_to_original, load_case
from alice.downstream.inference import predict_labels, sliding_window_logits
from alice.downstream.networks import build_segmentation_network
from alice.metrics import score_case


@pytest.fixture(scope="module")
def net(dx):
    torch.manual_seed(0)
    return build_segmentation_network("unetr", 14, dx.SETTINGS, dx.ENCODER).eval()


@pytest.mark.parametrize("shape", [(37, 21, 18), (16, 16, 16), (10, 12, 9), (40, 5, 33)])
def test_sliding_window_returns_input_shape(net, shape):
    image = np.random.default_rng(0).random(shape, dtype=np.float32)
    logits = sliding_window_logits(net, image, [16, 16, 16], overlap=0.25, sw_batch_size=2)
    assert tuple(logits.shape) == (14, *shape)
    assert torch.isfinite(logits).all()
    labels = predict_labels(net, image, [16, 16, 16], overlap=0.5, sw_batch_size=3)
    assert labels.shape == shape and labels.dtype == np.uint8 and labels.max() < 14


def test_padding_does_not_leak_into_the_volume(net):
    """A volume smaller than the crop is predicted as that volume padded with zeros."""
    image = np.random.default_rng(1).random((10, 12, 9), dtype=np.float32)
    padded = np.zeros((16, 16, 16), np.float32)
    padded[:10, :12, :9] = image
    small = sliding_window_logits(net, image, [16, 16, 16], overlap=0.25)
    full = sliding_window_logits(net, padded, [16, 16, 16], overlap=0.25)
    torch.testing.assert_close(small, full[:, :10, :12, :9])


def _original_label(meta):
    img = nib.load(meta["source"]["label"])
    return np.asarray(img.dataobj).astype(np.int16), img.header.get_zooms()[:3]


def test_cached_label_maps_back_exactly_at_the_same_spacing(tiny_data):
    """Prepared at the stored voxel sizes, the cached grid is the stored grid up to a permutation
    and flips (the source is stored P-L-S), so the round trip is exact: DSC = NSD = 1."""
    for case_id in ("FLARE22_Tr_0001", "FLARETs_0002"):
        _image, label, meta = load_case(tiny_data, case_id)
        assert meta["original"]["axcodes"] == ["P", "L", "S"]
        pred = invert_to_original(np.asarray(label), meta)
        gt, zooms = _original_label(meta)
        assert np.array_equal(pred, gt)
        scores = score_case(gt, pred, zooms, "flare22")
        assert all((gt == v).any() for v in (1, 2, 3, 4))  # liver, right kidney, spleen, pancreas
        assert all(s["dsc"] == 1.0 and s["nsd"] == 1.0 for s in scores.values())


def test_cached_label_maps_back_closely_at_another_spacing(tmp_path, dx):
    """Prepared at a coarser spacing (nearest-neighbour both ways), the blocks come back with DSC > 0.8."""
    root = dx.write_flare22(tmp_path / "FLARE22", n_train=2, n_test=1)
    cache = dx.prepare_flare22(root, tmp_path / "cache", spacing=[3.5, 3.5, 5.0], n_test=1)
    _image, label, meta = load_case(cache, "FLARE22_Tr_0001")
    assert tuple(meta["cached"]["shape"]) != tuple(meta["original"]["shape"])
    pred = invert_to_original(np.asarray(label), meta)
    gt, zooms = _original_label(meta)
    scores = score_case(gt, pred, zooms, "flare22")
    for organ in ("liver", "right_kidney", "spleen", "pancreas"):
        assert scores[organ]["dsc"] > 0.8, (organ, scores[organ])


def test_nsd_spacing_comes_from_the_affine(tiny_data, dx):
    """The source label is scored at the voxel sizes of its affine, per stored voxel axis."""
    from alice.downstream.inference import _original_label

    _image, _label, meta = load_case(tiny_data, "FLARETs_0001")
    labels, affine, spacing = _original_label(meta, "FLARETs_0001", tiny_data)
    assert labels.shape == tuple(meta["original"]["shape"])
    np.testing.assert_allclose(spacing, nib.affines.voxel_sizes(dx.stored_affine()), rtol=1e-6)
    assert len(set(spacing)) == 3  # anisotropic, so an axis mix-up would show


def _save_model(model_dir, dx, *, fold, subset=None):
    """An untrained tiny UNETR in `alice finetune`'s model.pt format."""
    import copy

    from alice.downstream import MODEL_FILE

    torch.manual_seed(0)
    net = build_segmentation_network("unetr", 14, dx.SETTINGS, dx.ENCODER)
    model_dir.mkdir(parents=True)
    model = {"state_dict": net.state_dict(), "backbone": "unetr", "num_classes": 14,
             "settings": copy.deepcopy(dx.SETTINGS), "encoder_config": copy.deepcopy(dx.ENCODER),
             "dataset": "flare22", "method": "rand_init", "init": "scratch", "fold": fold,
             "seed": 0, "code_version": "test"}
    if subset is not None:
        model["subset"] = {"labeled": len(subset), "subset_seed": 0, "cases": subset}
    torch.save(model, model_dir / MODEL_FILE)
    return model_dir / MODEL_FILE


@pytest.mark.parametrize("fold, subset", [(0, None), (None, ["FLARE22_Tr_0001"])])
def test_val_split_of_training_cases_is_refused(tiny_data, tmp_path, dx, capsys, fold, subset):
    """`alice evaluate --split val:1` on a fold-0 model (or on a low-label model trained on one of
    val:1's cases) would score cases the model trained on: refused naming model.pt, unless
    --allow-fold-mismatch. The fold's own val split (and a disjoint one) is scored."""
    from alice.cli import main

    path = _save_model(tmp_path / "model", dx, fold=fold, subset=subset)

    def evaluate(split, *extra):
        return main(["evaluate", "--dataset", "flare22", "--model-dir", str(path.parent),
                     "--data", str(tiny_data), "--split", split, "--out",
                     str(tmp_path / f"{split.replace(':', '')}.json"), "--no-progress", *extra])

    assert evaluate("val:1") == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and str(path) in err[0] and "val:1" in err[0]
    assert not (tmp_path / "val1.json").exists()
    assert evaluate("val:0") == 0
    assert evaluate("val:1", "--allow-fold-mismatch") == 0
