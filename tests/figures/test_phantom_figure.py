"""The phantom figure: a 2x3 PNG from a FLARE22 labeled case and a MosMed study."""

from __future__ import annotations

import pytest

from alice.data.phantom import write_dataset
from alice.errors import InputError
from alice.figures.phantom import draw_phantom_figure

GEO = {"inplane_voxels": 32, "fov_mm": [400.0, 440.0], "slice_mm": [7.0, 8.0], "truncate_prob": 0.0}


@pytest.mark.parametrize("per_category, masks", [([0, 0, 1, 0, 0], 0), ([0, 1, 0, 0, 0], 1)])
def test_draws_a_png(tmp_path, per_category, masks):
    flare, mosmed = tmp_path / "FLARE22", tmp_path / "COVID19_1110"
    write_dataset("flare22", flare, {"labeled": 1, "unlabeled": 0, "validation": 0}, seed=0, geometry=GEO, workers=1)
    write_dataset("mosmed", mosmed, {"per_category": per_category, "masks": masks}, seed=0, geometry=GEO, workers=1)
    out = draw_phantom_figure(flare, mosmed, tmp_path / "figs" / "phantom.png")
    data = out.read_bytes()
    assert out == tmp_path / "figs" / "phantom.png"
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    assert [p.name for p in out.parent.iterdir()] == ["phantom.png"]  # no temp files left


def test_missing_datasets_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="FLARE22_Tr"):
        draw_phantom_figure(tmp_path / "none", tmp_path / "none", tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
