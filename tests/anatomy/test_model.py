import numpy as np
import pytest
import torch

from alice.anatomy.grid import cell_centre, grid_shape, voxel_to_cell
from alice.anatomy.model import AnatomyNet, AnatomyNetConfig
from alice.errors import ConfigError

TINY = {"widths": [4, 8, 8], "blocks": [1, 1, 1], "stem_width": 4, "stem_kernel": [3, 3, 3], "fpn_dim": 8,
        "embed_dim": 6, "fine_stride": 2, "coarse_stride": 8}


def test_cell_convention():
    # cell i at stride s covers voxels i*s .. i*s+s-1: its centre is i*s + (s-1)/2
    assert cell_centre(0, 2) == 0.5 and cell_centre(3, 2) == 6.5 and cell_centre(1, 8) == 11.5
    assert cell_centre(4, 1) == 4.0
    v = np.array([[0.0, 3.7, 10.0]])
    assert np.allclose(cell_centre(voxel_to_cell(v, 8), 8), v)
    assert grid_shape((17, 16, 1), 2) == (9, 8, 1) and grid_shape((17, 16, 9), 8) == (3, 2, 2)


@pytest.mark.parametrize("size", [(17, 23, 13), (16, 16, 16), (9, 30, 5)])
def test_shapes_for_odd_sizes_and_unit_norm(size):
    torch.manual_seed(0)
    net = AnatomyNet(TINY).eval()
    x = torch.rand(2, 1, *size)
    with torch.no_grad():
        fine, coarse = net(x)
    assert fine.shape == (2, 6, *grid_shape(size, 2))
    assert coarse.shape == (2, 6, *grid_shape(size, 8))
    for t in (fine, coarse):
        assert torch.allclose(t.norm(dim=1), torch.ones(()), atol=1e-5)


def test_deeper_config_and_coarse_at_deepest_stage():
    cfg = {**TINY, "widths": [4, 8, 8, 8], "blocks": [2, 1, 1, 1], "coarse_stride": 16, "norm": "none",
           "padding_mode": "replicate"}
    net = AnatomyNet(cfg)
    fine, coarse = net(torch.rand(1, 1, 20, 18, 33))
    assert fine.shape[2:] == (10, 9, 17) and coarse.shape[2:] == (2, 2, 3)
    fine.sum().backward()  # the whole pyramid is differentiable
    assert net.stem[0].weight.grad is not None


def test_config_round_trip_and_errors():
    cfg = AnatomyNetConfig.from_dict(TINY)
    assert AnatomyNetConfig.from_dict(cfg.to_dict()) == cfg
    assert isinstance(cfg.to_dict()["widths"], list)
    assert AnatomyNetConfig().embed_dim == 128  # SAM's default width
    for bad in ({"fine_stride": 3}, {"coarse_stride": 32}, {"blocks": [1, 1]}, {"norm": "layer"},
                {"stem_kernel": [4, 3, 3]}, {"fine_stride": 8, "coarse_stride": 2}, {"padding_mode": "reflect"}):
        with pytest.raises(ConfigError):
            AnatomyNetConfig.from_dict({**TINY, **bad})
    with pytest.raises(ConfigError):
        AnatomyNetConfig.from_dict({**TINY, "bogus": 1})


def test_rejects_bad_input_shape():
    with pytest.raises(ValueError):
        AnatomyNet(TINY)(torch.rand(1, 2, 8, 8, 8))
