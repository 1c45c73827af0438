"""Ablation variants as pretraining run ids: canonical names, defaults folded onto the plain run."""

import inspect

import pytest

from alice.config import load_config, pretrain_settings
from alice.errors import ConfigError
from alice.ssl.alice import AliceModel
from alice.ssl.variants import normalize_variant, parse_run_id, run_id, switches


def test_switch_defaults_equal_the_constructor_defaults():
    params = inspect.signature(AliceModel.__init__).parameters
    assert switches("alice")
    for key, default in switches("alice").items():
        got = params[key].default
        assert (list(got) if isinstance(got, tuple) else got) == default, key


@pytest.mark.parametrize("variant, expected", [
    ({}, "alice"),
    ({"casa": True, "inter_volume": True, "contrastive_loss": "cosine"}, "alice"),
    ({"target_mask_ratio": 0}, "alice"),
    ({"objectives": ["st", "dv", "mim"]}, "alice"),
    ({"casa": False}, "alice__casa-false"),
    ({"inter_volume": False}, "alice__inter_volume-false"),
    ({"contrastive_loss": "infonce"}, "alice__contrastive_loss-infonce"),
    ({"contrastive_loss": "dino"}, "alice__contrastive_loss-dino"),
    ({"predictor": False}, "alice__predictor-false"),
    ({"predictor": True}, "alice"),
    ({"head_norm": "none"}, "alice__head_norm-none"),
    ({"head_norm": "none", "contrastive_loss": "dino"}, "alice__contrastive_loss-dino__head_norm-none"),
    ({"target_mask_ratio": 0.25}, "alice__target_mask_ratio-0.25"),
    ({"objectives": ["dv", "mim"]}, "alice__objectives-mim-dv"),
    ({"objectives": ["dv"]}, "alice__objectives-dv"),
    ({"inter_volume": False, "casa": False}, "alice__casa-false__inter_volume-false"),
])
def test_run_ids_round_trip(variant, expected):
    assert run_id("alice", variant) == expected
    method, parsed = parse_run_id(expected)
    assert method == "alice" and run_id(method, parsed) == expected


def test_configured_value_is_the_plain_run():
    # a config that already sets target_mask_ratio 0.5 makes 0.5 the plain run and 0 a variant
    config = {"target_mask_ratio": 0.5}
    assert run_id("alice", {"target_mask_ratio": 0.5}, config) == "alice"
    assert run_id("alice", {"target_mask_ratio": 0.0}, config) == "alice__target_mask_ratio-0.0"


@pytest.mark.parametrize("bad, match", [
    ("alice__casa-true", "not a canonical run id; this variant is 'alice'"),
    ("alice__objectives-dv-mim", "this variant is 'alice__objectives-mim-dv'"),
    ("alice__target_mask_ratio-0.250", "this variant is 'alice__target_mask_ratio-0.25'"),
    ("alice__casa-maybe", "bad value 'maybe' for switch 'casa'"),
    ("alice__colour-red", "'colour-red' is not <switch>-<value>"),
    ("rand_init__casa-false", "switches: none"),
])
def test_bad_run_ids_are_named(bad, match):
    with pytest.raises(ConfigError, match=match):
        parse_run_id(bad)


def test_bad_variant_values_are_named():
    with pytest.raises(ConfigError, match="variant.objectives"):
        normalize_variant("alice", {"objectives": ["mim", "jigsaw"]})
    with pytest.raises(ConfigError, match="variant.casa"):
        normalize_variant("alice", {"casa": "no"})
    with pytest.raises(ConfigError, match="not an ablation switch of method 'mae'"):
        run_id("mae", {"casa": False})
    with pytest.raises(ConfigError, match="not an ablation switch of method 'ibot'"):
        run_id("ibot", {"objectives": ["mim"]})


def test_pretrain_settings_merge_the_variant():
    config = load_config("config/config.yaml")
    plain = pretrain_settings(config, "alice")
    variant = pretrain_settings(config, "alice__objectives-mim-st")
    assert plain["method"] == variant["method"] == "alice"
    assert variant["run"] == "alice__objectives-mim-st"
    assert variant["method_config"] == {**plain["method_config"], "objectives": ["mim", "st"]}
