"""Training precision and memory layout per backbone (`finetune.<backbone>.amp`, `.channels_last`):
bf16 autocast on CPU only when asked, channels-last weights and inputs, bad values refused, and a
run in either switch is deterministic and evaluates."""

from __future__ import annotations

import copy
from contextlib import nullcontext

import pytest
import torch

from alice.downstream.inference import autocast, evaluate, load_model
from alice.downstream.segmentation import finetune
from alice.errors import ConfigError


def test_autocast_modes():
    cpu = torch.device("cpu")
    assert isinstance(autocast(cpu), nullcontext)  # auto: CUDA only
    assert isinstance(autocast(cpu, "off"), nullcontext)
    with autocast(cpu, "bf16"):
        y = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert y.dtype == torch.bfloat16


def _run(data, out, dx, **overrides):
    settings = copy.deepcopy(dx.SETTINGS)
    settings.update(overrides)
    return finetune(dataset="flare22", backbone="unetr", method="rand_init", init="scratch", fold=0,
                    data_dir=data, out_dir=out, settings=settings, encoder_config=dx.ENCODER, seed=3,
                    threads=1, progress=False)


@pytest.mark.parametrize("key, value", [("amp", "fp16"), ("amp", True), ("channels_last", "yes")])
def test_bad_values_are_refused_naming_the_key(tiny_data, tmp_path, dx, key, value):
    with pytest.raises(ConfigError, match=key):
        _run(tiny_data, tmp_path / "fold0", dx, **{key: value})


def test_bf16_channels_last_run_is_deterministic_and_evaluates(tiny_data, tmp_path, dx):
    a = _run(tiny_data, tmp_path / "a" / "fold0", dx, amp="bf16", channels_last=True)
    b = _run(tiny_data, tmp_path / "b" / "fold0", dx, amp="bf16", channels_last=True)
    assert a["final_loss"] == b["final_loss"]
    net, _ = load_model(tmp_path / "a" / "fold0")
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv3d)]
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last_3d) for m in convs)
    metrics = evaluate(dataset="flare22", model_dir=tmp_path / "a" / "fold0", data_dir=tiny_data,
                       out_path=tmp_path / "a" / "metrics.json", split="test", threads=1, progress=False)
    assert 0.0 <= metrics["mean"]["dsc"] <= 1.0
    # float32 and bf16 are different runs: the loss differs, the model file says which ran
    c = _run(tiny_data, tmp_path / "c" / "fold0", dx)
    assert c["final_loss"] != a["final_loss"]
