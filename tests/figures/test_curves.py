"""Loss-curve figures: a pretraining log.csv (with the collapse monitors) and the fine-tuning
logs of several methods and folds."""

import matplotlib.image as mpimg
import pytest

from alice.cli import main
from alice.errors import InputError
from alice.figures.curves import draw_finetune_curves, draw_loss_curves


def _height_width(png):
    return mpimg.imread(str(png)).shape[:2]


def test_curves_png(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("step,lr,loss,l_r,seconds\n" + "".join(
        f"{i},0.1,{10 / i},{5 / i},0.1\n" for i in range(1, 30)))
    out = draw_loss_curves(log, tmp_path / "c.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_collapse_monitors_get_a_second_row(tmp_path):
    rows = "".join(f"{i},0.1,{10 / i},{5 / i},{1 - i / 60},{0.8},0.1\n" for i in range(1, 30))
    with_monitors, without = tmp_path / "a.csv", tmp_path / "b.csv"
    with_monitors.write_text("step,lr,loss,l_r,dv_spread,st_spread,seconds\n" + rows)
    without.write_text("step,lr,loss,l_r,seconds\n" + "".join(
        f"{i},0.1,{10 / i},{5 / i},0.1\n" for i in range(1, 30)))
    h2, w2 = _height_width(draw_loss_curves(with_monitors, tmp_path / "a.png"))
    h1, w1 = _height_width(draw_loss_curves(without, tmp_path / "b.png"))
    assert h2 == 2 * h1 and w2 == w1  # the monitors are one extra row, not two extra loss panels


def test_missing_log(tmp_path):
    with pytest.raises(InputError, match="missing training log"):
        draw_loss_curves(tmp_path / "nope.csv", tmp_path / "c.png")


def _finetune_log(path, loss0, val=True):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["epoch,step,loss,lr,val_dice"]
    for step in range(1, 21):
        epoch = (step - 1) // 4 + 1
        dice = f"{0.1 * epoch:.2f}" if val and step % 8 == 0 else ""
        lines.append(f"{epoch},{step},{loss0 / step ** 0.3:.4f},0.001,{dice}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_finetune_curves(tmp_path):
    runs = [(label, [_finetune_log(tmp_path / m / f"fold{k}" / "log.csv", 4.0 + k + s)
                     for k in range(2)])
            for label, m, s in (("Rand. init.", "rand_init", 0.0), ("Alice", "alice", 0.3))]
    out = draw_finetune_curves(runs, tmp_path / "figs" / "finetune_flare22_unetr.png", title="t")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == [out.name]
    h_val, w_val = _height_width(out)
    # without any validation score: the loss panel alone, a narrower figure
    plain = [(label, [_finetune_log(tmp_path / "plain" / label / "fold0" / "log.csv", 4.0, val=False)])
             for label in ("Rand. init.", "Alice")]
    h, w = _height_width(draw_finetune_curves(plain, tmp_path / "plain.png"))
    assert h == h_val and w < w_val


def test_finetune_curves_bad_logs(tmp_path):
    good = _finetune_log(tmp_path / "fold0" / "log.csv", 4.0)
    with pytest.raises(InputError, match="missing training log") as err:
        draw_finetune_curves([("Alice", [good, tmp_path / "fold1" / "log.csv"])], tmp_path / "x.png")
    assert err.value.path == str(tmp_path / "fold1" / "log.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("epoch,step,lr\n1,1,0.1\n")
    with pytest.raises(InputError, match="loss") as err:
        draw_finetune_curves([("Alice", [bad])], tmp_path / "x.png")
    assert err.value.path == str(bad) and not (tmp_path / "x.png").exists()


def test_finetune_cli_groups_logs_by_label(tmp_path):
    logs = {(m, k): _finetune_log(tmp_path / m / f"fold{k}" / "log.csv", 4.0) for m in ("a", "b")
            for k in range(2)}
    out = tmp_path / "f.png"
    args = ["figure", "finetune", "--out", str(out)]
    for (m, k), path in logs.items():
        args += ["--log", f"method {m}={path}"]
    assert main(args) == 0 and out.is_file()
    assert main(["figure", "finetune", "--out", str(out), "--log", "=x.csv"]) == 2
