"""DDP on CPU: two gloo processes train a toy method; both end with identical weights, rank 0 writes."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from alice.ssl.registry import SSLMethod
from alice.ssl.trainer import step_seed

ENCODER = {"name": "toy_linear", "in_dim": 8, "dim": 4}


class TinyMethod(SSLMethod):
    def __init__(self):
        super().__init__({"kind": "tiny"})
        self.encoder = nn.Linear(8, 4)
        self.head = nn.Linear(4, 8)

    def forward(self, batch):
        rec = nn.functional.mse_loss(self.head(self.encoder(batch + 0.1 * torch.randn_like(batch))), batch)
        return {"loss": rec, "rec": rec}

    def encoder_state_dict(self):
        return self.encoder.state_dict()


def loader(seed, start_step):
    i = start_step
    while True:
        yield torch.randn(2, 8, generator=torch.Generator().manual_seed(step_seed(seed, i)))
        i += 1


def _worker(rank, world_size, port, out_dir, result_dir):
    from alice.ssl.trainer import pretrain

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world_size),
                      RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    torch.manual_seed(rank)  # different inits: DDP must broadcast rank 0's weights
    method = TinyMethod()
    seen = []
    summary = pretrain(method, loader, out_dir, optim={"lr": 1e-2, "iterations": 3, "warmup_iterations": 1},
                       encoder_config=ENCODER, method_name="tiny", checkpoint_every=2, seed=5, device="cpu",
                       progress=False, step_callback=lambda step, row: seen.append(row["loss"]))
    torch.save({"state": method.state_dict(), "losses": seen, "summary_step": summary["step"]},
               os.path.join(result_dir, f"rank{rank}.pt"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_cpu_ranks_identical_weights(tmp_path):
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed not available")
    out_dir, result_dir = tmp_path / "run", tmp_path / "results"
    result_dir.mkdir()
    mp.spawn(_worker, args=(2, _free_port(), str(out_dir), str(result_dir)), nprocs=2, join=True)
    r0 = torch.load(result_dir / "rank0.pt", weights_only=True)
    r1 = torch.load(result_dir / "rank1.pt", weights_only=True)
    assert r0["summary_step"] == r1["summary_step"] == 3
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), k
    assert r0["losses"] == r1["losses"]  # logged losses are the mean over ranks
    assert sorted(p.name for p in out_dir.iterdir()) == ["checkpoint.pt", "log.csv"]
    ckpt = torch.load(out_dir / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 3 and ckpt["resume"]["world_size"] == 2
    for k, v in ckpt["encoder"].items():
        assert torch.equal(v, r1["state"][f"encoder.{k}"]), k
