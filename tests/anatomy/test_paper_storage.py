"""The matcher's storage at paper scale (benchmarks/paper_protocol.py, docs/pretraining.md
"Anatomical matching"): computed from config/paper.yaml, within 200 MB of embeddings per pool volume."""

import copy
import importlib.util

import pytest

from alice import config as cfg


@pytest.fixture(scope="module")
def protocol():
    spec = importlib.util.spec_from_file_location("paper_protocol", cfg.REPO_ROOT / "benchmarks" / "paper_protocol.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_matcher_cache_per_volume_fits_the_budget(protocol):
    paper = cfg.load_config(cfg.REPO_ROOT / "config" / "paper.yaml")
    a = protocol.anatomy_volume_bytes(paper)
    assert a["total"] == a["fine"] + a["coarse"] <= protocol.EMBED_BUDGET == 200e6
    # the grid is the anatomy cache's, from the assumed CT extent and anatomy.data.spacing
    assert a["shape"] == [round(mm / s) for mm, s in zip(protocol.CT_MM, paper["anatomy"]["data"]["spacing"])]
    assert a["image"] == a["shape"][0] * a["shape"][1] * a["shape"][2] * 2  # float16 anatomy cache
    # the same maps on the pool's own 0.76 x 0.76 x 1.5 mm grid would not fit by far
    on_pool = copy.deepcopy(paper)
    on_pool["anatomy"]["data"]["spacing"] = paper["datasets"]["flare22_pool"]["spacing"]
    assert protocol.anatomy_volume_bytes(on_pool)["total"] > 5 * protocol.EMBED_BUDGET
    # the figure follows the config: the embedding width scales it
    narrow = copy.deepcopy(paper)
    narrow["anatomy"]["train"]["model"]["embed_dim"] //= 2
    assert protocol.anatomy_volume_bytes(narrow)["total"] * 2 == a["total"]
