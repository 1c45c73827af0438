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
