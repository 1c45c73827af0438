"""benchmarks/gpu_pretrain.py on a CPU at --tiny: Alice's pretraining rows and UNETR's fine-tuning
rows, the harness's step and the plain one each timed, printed and appended as JSON lines (what a
GPU run of the script writes, at the paper's sizes), which benchmarks/paper_protocol.py
--step-times reads."""

import importlib.util
import json

import pytest

from alice import config as cfg

pytestmark = pytest.mark.usefixtures("one_thread")

KEYS = {"kind", "encoder", "device", "batch", "crop", "amp", "fast_path", "steps", "warmup", "harness_ms",
        "plain_ms", "ratio", "harness_samples_per_s", "plain_samples_per_s", "data_ms", "peak_mem_gb",
        "plain_peak_mem_gb", "host_syncs_per_step", "plain"}
SWITCHES = {"variant", "attention", "fused_optimizer", "sync_every", "prefetch", "compile"}


DEMO = cfg.REPO_ROOT / "config" / "config.yaml"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, cfg.REPO_ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return load("gpu_pretrain")


def test_tiny_rows_on_a_cpu(bench, tmp_path, capsys):
    out = tmp_path / "rows.jsonl"
    out.write_text(json.dumps({"kind": "earlier"}) + "\n")  # --out appends
    rows = bench.main(["--config", "config/config.yaml", "--device", "cpu", "--tiny", "--encoder", "vit",
                       "--steps", "1", "--warmup", "0", "--finetune", "unetr", "--fast-path", "both",
                       "--threads", "1", "--out", str(out)])

    lines = out.read_text().splitlines()
    assert json.loads(lines[0]) == {"kind": "earlier"}
    assert [json.loads(line) for line in lines[1:]] == rows
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")] == rows
    assert [(r["kind"], r.get("backbone", r["method"]), r["fast_path"]["variant"]) for r in rows] == [
        ("pretrain", "alice", "off"), ("pretrain", "alice", "on"),
        ("finetune", "unetr", "off"), ("finetune", "unetr", "on")]
    for row in rows:
        assert KEYS <= set(row), KEYS - set(row)
        assert set(row["fast_path"]) == SWITCHES
        assert row["device"] == "cpu" and row["amp"] is None
        assert row["peak_mem_gb"] is row["plain_peak_mem_gb"] is row["host_syncs_per_step"] is None  # CUDA only
        assert row["steps"] == 1 and row["warmup"] == 1
        assert row["harness_ms"] > 0 and row["plain_ms"] > 0 and row["data_ms"] > 0
        assert row["ratio"] == pytest.approx(row["plain_ms"] / row["harness_ms"], rel=0.01)
        assert row["harness_samples_per_s"] == pytest.approx(row["batch"] / row["harness_ms"] * 1e3, rel=0.01)
        assert row["plain_samples_per_s"] == pytest.approx(row["batch"] / row["plain_ms"] * 1e3, rel=0.01)
        # on a CPU `auto` is every switch off: before and after are the same loop
        assert {k: v for k, v in row["fast_path"].items() if k != "variant"} == {
            "attention": "math", "fused_optimizer": False, "sync_every": 1, "prefetch": 0, "compile": False}
    alice, unetr = rows[0], rows[2]
    assert (alice["encoder"], alice["views"], alice["matcher"], alice["batch"]) == ("vit", "matched_pair", "bbox", 2)
    assert alice["crop"] == bench.TINY_PRETRAIN_CROPS["vit"]
    assert (unetr["encoder"], unetr["crop"], unetr["batch"]) == ("vit", bench.TINY_FINETUNE_CROPS["unetr"], 2)
    # the demo's fold: 10 labeled cases less 1/5, one crop each, batches of 2
    assert unetr["steps_per_epoch"] == 4

    # paper_protocol.py --step-times reads these lines: the harness rows of the config they were
    # measured at (the config's own fast path, "on"), and none at another crop and batch
    protocol = load("paper_protocol")
    measured, skipped = protocol.read_step_times(out, bench.shrink(cfg.load_config(DEMO)))
    assert measured == {"pretrain": {("alice", "vit"): rows[1]}, "finetune": {"unetr": rows[3]}} and not skipped
    measured, skipped = protocol.read_step_times(out, cfg.load_config(DEMO))
    assert measured == {"pretrain": {}, "finetune": {}} and len(skipped) == 4


def test_the_runs_of_every_method_and_encoder(bench):
    """`--method all` is every declared method on every encoder it declares; `--encoder` narrows."""
    from alice.ssl.catalog import methods

    every = bench.pretrain_runs(bench.parse_args(["--method", "all"]))
    assert every == [(m, e) for m, info in methods().items() for e in info.encoders]
    assert bench.pretrain_runs(bench.parse_args(["--method", "alice", "--method", "mae", "--encoder", "swin"])) == [
        ("alice", "swin"), ("mae", "swin")]
    assert bench.pretrain_runs(bench.parse_args([])) == [("alice", e) for e in methods()["alice"].encoders]


def test_a_network_the_harness_does_not_train_is_refused(bench):
    with pytest.raises(SystemExit, match="nnunet"):
        bench.main(["--config", "config/config.yaml", "--device", "cpu", "--tiny", "--finetune", "nnunet"])
