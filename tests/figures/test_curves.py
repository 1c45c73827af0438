"""Loss-curve figure from a log.csv."""

import pytest

from alice.errors import InputError
from alice.figures.curves import draw_loss_curves


def test_curves_png(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("step,lr,loss,l_r,seconds\n" + "".join(
        f"{i},0.1,{10 / i},{5 / i},0.1\n" for i in range(1, 30)))
    out = draw_loss_curves(log, tmp_path / "c.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_log(tmp_path):
    with pytest.raises(InputError, match="missing training log"):
        draw_loss_curves(tmp_path / "nope.csv", tmp_path / "c.png")
