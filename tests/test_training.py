"""The training core (alice.training) every loop shares: one optimizer step, the logs, the bar."""

from __future__ import annotations

import ast

import pytest
import torch

from alice.config import REPO_ROOT
from alice.runstate import NonFiniteLoss
from alice.training import CsvLog, OptimizerStep, amp_dtype, progress_bar, truncate_log, write_log

LOOPS = ["alice/ssl/trainer.py", "alice/downstream/segmentation.py", "alice/downstream/classification.py",
         "alice/anatomy/train.py"]


def _net():
    torch.manual_seed(0)
    return torch.nn.Linear(4, 1)


def test_a_step_is_a_plain_adam_step_and_clipping_bounds_the_norm():
    a, b = _net(), _net()
    x, y = torch.randn(8, 4), torch.randn(8, 1)
    opt_a = torch.optim.AdamW(a.parameters(), lr=0.1)
    step = OptimizerStep(opt_a, device=torch.device("cpu"), measure_norm=True)
    terms, norm = step(torch.nn.functional.mse_loss(a(x), y), describe=str)
    opt_b = torch.optim.AdamW(b.parameters(), lr=0.1)
    loss = torch.nn.functional.mse_loss(b(x), y)
    loss.backward()
    expected_norm = float(torch.cat([p.grad.flatten() for p in b.parameters()]).norm())
    opt_b.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)  # measuring the norm moves no gradient
    assert terms == {"loss": pytest.approx(float(loss.detach()))} and norm == pytest.approx(expected_norm)
    c = _net()
    clipped = OptimizerStep(torch.optim.SGD(c.parameters(), lr=0.0), device=torch.device("cpu"), grad_clip=1e-3)
    clipped(torch.nn.functional.mse_loss(c(x), y), describe=str)
    assert float(torch.cat([p.grad.flatten() for p in c.parameters()]).norm()) == pytest.approx(1e-3, rel=1e-4)


def test_a_non_finite_term_stops_before_any_weight_moves():
    net = _net()
    before = [p.detach().clone() for p in net.parameters()]
    step = OptimizerStep(torch.optim.SGD(net.parameters(), lr=1.0), device=torch.device("cpu"))
    loss = net(torch.randn(2, 4)).sum()
    with pytest.raises(NonFiniteLoss, match="bad at 7: .*'aux': nan"):
        step(loss, {"aux": torch.tensor(float("nan"))}, describe=lambda t: f"bad at 7: {t}")
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), before))


def test_amp_settings_and_the_logs(tmp_path):
    cpu = torch.device("cpu")
    assert amp_dtype("bf16", cpu) is torch.bfloat16 and amp_dtype("auto", cpu) is None and amp_dtype("off", cpu) is None
    path = tmp_path / "log.csv"
    write_log(path, ("step", "loss", "val"), [{"step": 1, "loss": 0.5}, {"step": 2, "loss": float("nan"), "val": 1}])
    assert path.read_text() == "step,loss,val\n1,0.5,\n2,,1\n"
    log = CsvLog(tmp_path / "stream.csv")
    for step in (1, 2, 3):
        log.write({"step": step, "loss": 1.0 / step})
    log.close()
    truncate_log(tmp_path / "stream.csv", 2)
    assert (tmp_path / "stream.csv").read_text().splitlines() == ["step,loss", "1,1", "2,0.5"]
    bar = progress_bar(3, 0, "x", enabled=False)
    bar.update(1), bar.set_postfix(loss=1), bar.close()


@pytest.mark.parametrize("path", LOOPS)
def test_every_training_loop_steps_through_the_core(path):
    """No loop calls backward() or optimizer.step() itself: they all take OptimizerStep's step."""
    tree = ast.parse((REPO_ROOT / path).read_text())
    calls = {node.func.attr for node in ast.walk(tree)
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)}
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
             and node.module == "alice.training" for alias in node.names}
    assert "OptimizerStep" in names
    assert "backward" not in calls and "zero_grad" not in calls
