"""TransVW (baselines/transvw.py): the self-discovered visual words are the same normalised body-box
position in a reference volume and its nearest volumes, instances are cut there (and
multi-resolution ones around it), the stream source's words are a mini-batch k-means of the crops,
the loss is λ_rec·L_rec + λ_cls·L_cls on one forward pass of the transformed instance, and bad
settings name their key."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from alice.anatomy.volume import BODY_THRESHOLD
from alice.errors import ConfigError
from alice.ssl.registry import build_method
from alice.ssl.views import crop_at
from baselines.transvw import VisualWords, body_box, pool_cases

pytestmark = pytest.mark.usefixtures("one_thread")

UNET = {"name": "unet3d", "widths": [4, 4, 8, 8, 16, 4]}
CROP = [32, 32, 16]
SMALL = {"head": {"hidden_dim": 16}, "visual_words": {"classes": 4}}


@pytest.fixture(scope="module")
def pool(tmp_path_factory, tiny_pool):
    return tiny_pool(tmp_path_factory.mktemp("pool"), seed=5, spacing=[12.0, 12.0, 10.0])


def test_body_box_bounds_the_voxels_above_the_body_threshold():
    image = np.zeros((20, 16, 12), dtype=np.float32)
    image[4:11, 6:13, 2:9] = 0.5
    lo, hi = body_box(image, step=1)
    assert lo.tolist() == [4, 6, 2] and hi.tolist() == [11, 13, 9]
    lo, hi = body_box(np.zeros((8, 8, 8), dtype=np.float32))
    assert lo.tolist() == [0, 0, 0] and hi.tolist() == [8, 8, 8]                 # no body: the volume


def test_words_are_one_body_position_of_a_reference_and_its_nearest_volumes(pool):
    cases = pool_cases(pool)
    words = VisualWords(pool, cases, CROP, classes=5, neighbours=2, seed=0)
    n = len(cases)
    assert len(words.reference) == 5 and len(set(words.reference[:n])) == min(n, 5)   # new references first
    dist = np.linalg.norm(words.descriptors[:, None] - words.descriptors[None], axis=-1)
    for k, r in enumerate(words.reference):
        members = words.members[k]
        assert members[0] == r and len(members) == 2
        assert dist[r, members[1]] == min(dist[r, j] for j in range(n) if j != r)   # its nearest volume
        # the word's position is a body voxel of its reference, in normalised body-box coordinates
        p = np.rint(words.centre(k, r)).astype(int)
        assert words.volumes[r].image[tuple(p)] > BODY_THRESHOLD
        assert (words.position[k] >= 0).all() and (words.position[k] <= 1).all()
        # "the same coordinates": every member's centre is the same fraction of its own body box
        for v in members:
            assert np.allclose((words.centre(k, v) - words.lo[v]) / words.extent[v], words.position[k])
    again = VisualWords(pool, cases, CROP, classes=5, neighbours=2, seed=0)
    assert again.reference == words.reference and np.allclose(again.position, words.position)
    other = VisualWords(pool, cases, CROP, classes=5, neighbours=2, seed=1)
    assert not np.allclose(other.position, words.position)


def test_instances_are_cut_at_the_word_and_multi_resolution_ones_around_it(pool):
    words = VisualWords(pool, pool_cases(pool), CROP, classes=3, neighbours=3, seed=0, multi_res_prob=0.0)
    v = words.members[1][-1]
    exact = words.instance(1, v)
    assert torch.equal(exact[0], torch.from_numpy(crop_at(words.volumes[v].image, words.centre(1, v), CROP)))
    zoomed = words.instance(1, v, scale=1.25, shift=(0.1, -0.1))
    assert zoomed.shape == exact.shape and not torch.equal(zoomed, exact)
    x, k = words.sample(6, torch.Generator().manual_seed(0))
    assert x.shape == (6, 1, *CROP) and ((k >= 0) & (k < 3)).all()
    y, k2 = words.sample(6, torch.Generator().manual_seed(0))
    assert torch.equal(x, y) and torch.equal(k, k2)
    for i in range(6):   # multi_res_prob 0: every instance is the exact crop of its word in a member
        assert any(torch.equal(x[i], words.instance(int(k[i]), m)) for m in words.members[int(k[i])])


def test_the_stream_source_is_a_mini_batch_k_means_of_the_crops():
    method = build_method("transvw", SMALL, UNET, CROP).train()
    assert method.words is None
    crops = torch.rand(4, 1, *CROP) * torch.tensor([0.1, 0.4, 0.7, 1.0]).view(4, 1, 1, 1, 1)
    assert method.stream_words(crops).tolist() == [0, 1, 2, 3]                  # the first K crops fill the words
    assert (method.counts == 1).all()
    again = method.stream_words(crops[[2, 0]] * 1.01)
    assert again.tolist() == [2, 0]                                               # nearest prototype
    assert method.counts.tolist() == [2, 1, 2, 1]
    d = F.adaptive_avg_pool3d(crops[2:3], 4).flatten()
    assert torch.allclose(method.prototypes[2], (d + 1.01 * d) / 2, atol=1e-6)  # the running mean of its crops
    method.eval()
    method.stream_words(crops)
    assert method.counts.tolist() == [2, 1, 2, 1]                                 # eval mode assigns only


def test_loss_is_the_weighted_sum_on_one_pass_of_the_transformed_instance(pool):
    method = build_method("transvw", {**SMALL, "lambda_rec": 2.0, "lambda_cls": 0.5,
                                      "visual_words": {"classes": 4, "neighbours": 2, "pool": str(pool)}},
                          UNET, CROP).train()
    assert method.words is not None and method.grid == (2, 2, 1)   # instance norm: a 2×2×2 grid (bottleneck 2×2×1)
    out = method({"x": torch.zeros(3, 1, *CROP)})
    assert out["from_pool"].item() == 1.0
    assert out["loss"].item() == pytest.approx(2.0 * out["l_rec"].item() + 0.5 * out["l_cls"].item(), rel=1e-5)
    out["loss"].backward()
    for module in (method.classifier, method.restoration, method.body.net.down_4, method.body.net.upcat_1):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    method.zero_grad(set_to_none=True)
    method.lambda_cls = 0.0                                        # restoration alone: the classifier learns nothing
    method({"x": torch.zeros(3, 1, *CROP)})["loss"].backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in method.classifier.parameters())


def test_attach_pool_switches_to_the_pool_source(pool):
    method = build_method("transvw", SMALL, UNET, CROP)
    assert method({"x": torch.rand(2, 1, *CROP)})["from_pool"].item() == 0.0
    method.attach_pool(pool, pool_cases(pool)[:2])
    assert len(method.words.volumes) == 2 and len(method.words.reference) == 4
    assert method({"x": torch.rand(2, 1, *CROP)})["from_pool"].item() == 1.0


def test_bad_settings_name_their_key(tmp_path):
    with pytest.raises(ConfigError, match=r"pretrain\.methods\.transvw\.lambda_clas\b"):
        build_method("transvw", {"lambda_clas": 1.0}, UNET, CROP)
    with pytest.raises(ConfigError, match=r"pretrain\.methods\.transvw.*visual_words settings \['words'\]"):
        build_method("transvw", {"visual_words": {"words": 3}}, UNET, CROP)
    with pytest.raises(ConfigError, match=r"pretrain\.methods\.transvw.*folds\.json is missing"):
        build_method("transvw", {"visual_words": {"pool": str(tmp_path)}}, UNET, CROP)
    with pytest.raises(ConfigError, match=r"pretrain\.methods\.transvw.*head\.norm"):
        build_method("transvw", {"head": {"norm": "layer"}}, UNET, CROP)
    with pytest.raises(ConfigError, match=r"pretrain\.methods\.transvw.*lambda_cls"):
        build_method("transvw", {"lambda_cls": -1}, UNET, CROP)
