"""A method is one file: dropping a module into `baselines/` is all it takes for the catalog, the
registry, the config and the variant parser to know it — and the CLI and the rules name no method."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap

import pytest

from alice.config import REPO_ROOT
from alice.errors import ConfigError

TOY = textwrap.dedent('''
    """A toy method: reconstruct the crop through the encoder's pooled tokens."""
    import torch

    from alice.ssl.encoder import build_encoder, pool, transferable_state
    from alice.ssl.registry import SSLMethod, register_method

    METHOD = {"name": "toyrecon", "paper": "none (a test)", "objective": "pooled reconstruction",
              "views": "crop", "encoders": ["vit"], "switches": {"scale": 1.0}}


    class ToyRecon(SSLMethod):
        def __init__(self, encoder_config, crop, scale=1.0, method_config=None):
            super().__init__(method_config)
            self.encoder = build_encoder(encoder_config, crop, masking=False)
            self.scale = float(scale)

        def encoder_state_dict(self):
            return transferable_state(self.encoder)

        def forward(self, batch):
            x = batch["x"]
            z = pool(self.encoder(x)[0])
            loss = (z.mean(-1) - self.scale * x.mean((1, 2, 3, 4))).pow(2).mean()
            return {"loss": loss}


    @register_method("toyrecon")
    def build(method_config, encoder_config, crop):
        return ToyRecon(encoder_config, crop, method_config=method_config, **method_config)
''')


@pytest.fixture
def toy_file(tmp_path, monkeypatch):
    """`toyrecon.py` in a folder on the `baselines` package's path, nothing else."""
    import baselines

    folder = tmp_path / "more_baselines"
    folder.mkdir()
    (folder / "toyrecon.py").write_text(TOY)
    monkeypatch.setattr(baselines, "__path__", [*baselines.__path__, str(folder)])
    yield folder
    sys.modules.pop("baselines.toyrecon", None)
    from alice.ssl.registry import METHODS

    METHODS.pop("toyrecon", None)


def test_a_toy_method_is_one_file(toy_file, tmp_path, tiny_pool):
    from alice.config import load_config, pretrain_settings
    from alice.ssl.catalog import methods
    from alice.ssl.run import run_pretraining
    from alice.ssl.variants import parse_run_id, run_id

    info = methods()["toyrecon"]
    assert (info.views, info.encoders, info.matcher) == ("crop", ("vit",), False)
    assert run_id("toyrecon", {"scale": 2.0}) == "toyrecon__scale-2.0"
    assert parse_run_id("toyrecon__scale-2.0") == ("toyrecon", {"scale": 2.0})
    config = load_config(REPO_ROOT / "config" / "config.yaml")
    settings = pretrain_settings(config, "toyrecon__scale-2.0", "vit")
    assert settings["method_config"] == {"scale": 2.0} and "pairs" not in settings
    settings["encoder"] = {"name": "vit", "embed_dim": 24, "depth": 1, "heads": 2, "mlp_ratio": 2,
                           "patch": [16, 16, 16]}
    settings["crop"] = [32, 32, 16]
    settings["optim"] = dict(settings["optim"], iterations=2, batch_size=2, warmup_iterations=1)
    settings["amp"] = None
    pool = tiny_pool(tmp_path / "pool", seed=1, spacing=[12.0, 12.0, 10.0])
    summary = run_pretraining("toyrecon__scale-2.0", "vit", pool, tmp_path / "out", settings, progress=False)
    assert summary["step"] == 2 and (tmp_path / "out" / "checkpoint.pt").is_file()


def test_a_bad_declaration_names_the_file_and_key(toy_file):
    from alice.ssl.catalog import methods

    (toy_file / "broken.py").write_text('METHOD = {"name": "broken", "paper": "x", "objective": "x", '
                                        '"views": "three_views", "encoders": ["vit"]}\n')
    with pytest.raises(ConfigError, match=r"broken\.py: METHOD\.views"):
        methods()


def test_the_catalog_reads_declarations_without_torch():
    code = ("import sys; from alice.ssl.catalog import methods; from alice.ssl.variants import run_id; "
            "m = methods(); run_id('alice', {'casa': False}); "
            "print(json.dumps([sorted(m), 'torch' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True,
                         check=True, cwd=REPO_ROOT)
    names, torch_loaded = json.loads(out.stdout)
    assert {"alice", "mae", "mocov3", "dino"} <= set(names)
    assert torch_loaded is False


def _string_constants(path):
    """The module's string literals, less the command's and the package's own name where it names
    them (the logger, argparse's prog): the package is called alice like the paper's method."""
    tree = ast.parse(path.read_text())
    own = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "getLogger":
            own.update(id(a) for a in node.args)
        if isinstance(node, ast.Call):
            own.update(id(k.value) for k in node.keywords if k.arg == "prog")
    return {node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in own}


def test_the_cli_and_the_rules_name_no_method():
    from alice.ssl.catalog import methods

    # "sam" is both a method (SAM pretraining a 3-D U-Net, Table 2) and the name of
    # pretrain.pairs.matcher's learned matcher, which the CLI and the rules do name
    names = set(methods()) - {"sam"}
    cli = REPO_ROOT / "alice" / "cli.py"
    named = {s for s in _string_constants(cli) if s in names or any(s.startswith(f"{n}__") for n in names)}
    assert not named, f"alice/cli.py names methods: {sorted(named)}"
    imports = [n for n in ast.walk(ast.parse(cli.read_text())) if isinstance(n, (ast.Import, ast.ImportFrom))]
    modules = {getattr(n, "module", None) or "" for n in imports} | {a.name for n in imports for a in n.names}
    assert not any(m.startswith("baselines") or m == "alice.ssl.alice" for m in modules)
    for rules in [REPO_ROOT / "Snakefile", *sorted((REPO_ROOT / "workflow" / "rules").glob("*.smk"))]:
        code = "\n".join(line.split("#", 1)[0] for line in rules.read_text().splitlines())
        for name in names:
            assert f'"{name}"' not in code and f"'{name}'" not in code, f"{rules.name} names method {name}"


MATCHED = ('METHOD = {{"name": "{name}", "paper": "none (a test)", "objective": "x", "views": "{views}", '
           '"encoders": ["vit"], "matcher": {matcher}, "switches": {{"inter_volume": False, "scale": 1.0}}}}\n')


def test_a_switch_named_matcher_mines_when_its_switch_is_on(toy_file):
    """`"matcher": "<switch>"`: the run mines matched crops when the switch is on for it, from its
    run id, else its config section, else the switch's default."""
    from alice.config import load_config, pretrain_settings
    from alice.ssl.catalog import methods, needs_matcher

    (toy_file / "toyviews.py").write_text(MATCHED.format(name="toyviews", views="multi_crop",
                                                         matcher='"inter_volume"'))
    assert methods()["toyviews"].matcher == "inter_volume"
    assert needs_matcher("toyviews") is False
    assert needs_matcher("toyviews__inter_volume-true") is True
    assert needs_matcher("toyviews__inter_volume-true__scale-2.0") is True
    assert needs_matcher("toyviews__scale-2.0") is False
    # the config section turns it on for the plain run; its variant then turns it off
    on = {"inter_volume": True}
    assert needs_matcher("toyviews", on) is True
    assert needs_matcher("toyviews__inter_volume-false", on) is False
    with pytest.raises(ConfigError, match="not a canonical run id"):
        needs_matcher("toyviews__inter_volume-true", on)
    # the settings of a run that mines carry pretrain.pairs (how it mines), the others none
    config = load_config(REPO_ROOT / "config" / "config.yaml")
    assert pretrain_settings(config, "toyviews__inter_volume-true")["pairs"] == config["pretrain"]["pairs"]
    assert "pairs" not in pretrain_settings(config, "toyviews")


@pytest.mark.parametrize("views, matcher, message", [
    ("multi_crop", '"casa"', r"'casa' is not one of its bool switches \(inter_volume\)"),
    ("multi_crop", '"scale"', r"'scale' is not one of its bool switches"),
    ("crop", '"inter_volume"', "two_views or multi_crop views only, not 'crop'"),
    ("multi_crop", "1", "must be true, false or the name of a bool switch"),
])
def test_a_bad_matcher_declaration_names_the_file_and_key(toy_file, views, matcher, message):
    from alice.ssl.catalog import methods

    (toy_file / "badmatch.py").write_text(MATCHED.format(name="badmatch", views=views, matcher=matcher))
    with pytest.raises(ConfigError, match=r"badmatch\.py: METHOD\.matcher") as err:
        methods()
    assert err.match(message)


def test_which_runs_mine_matched_crops():
    """Alice always; iBOT with its `inter_volume` switch on (Table 5); the others never."""
    from alice.ssl.catalog import method_info, needs_matcher

    assert method_info("alice").matcher is True and needs_matcher("alice") is True
    assert needs_matcher("alice__casa-false") is True
    assert needs_matcher("mae") is False and needs_matcher("rand_init") is False
    assert method_info("ibot").matcher == "inter_volume"
    assert needs_matcher("ibot") is False
    assert needs_matcher("ibot__inter_volume-true") is True
    assert needs_matcher("ibot__casa-true") is False
