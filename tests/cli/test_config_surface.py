"""One config surface: the `train` flags are generated from SaeConfig / TrainConfig, with their defaults and
docstrings, so a YAML config and the command line train the same SAE; the architecture list is written once."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from backend.cli import sae as cli_sae
from backend.config import (
    ARCHITECTURES,
    JUMPRELU_L0_COEF,
    RELU_L1_COEF,
    ConfigError,
    SaeConfig,
    TrainConfig,
    WorkspaceConfig,
    field_docs,
)
from backend.sae.model import Sae, SaeError, SaeSpec

REPO = Path(__file__).resolve().parents[2]


def _train_parser() -> argparse.ArgumentParser:
    sub = argparse.ArgumentParser().add_subparsers()
    cli_sae.add_commands(sub)
    return sub.choices["train"]


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


@pytest.mark.parametrize("cls", [SaeConfig, TrainConfig])
def test_every_config_field_has_a_flag_with_its_default_and_docstring(cls):
    actions = {a.dest: a for a in _train_parser()._actions}
    docs = field_docs(cls)
    skip = cli_sae.NOT_FLAGS if cls is SaeConfig else {}
    assert set(skip) <= {f.name for f in dataclasses.fields(cls)}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        a = actions[f.name]
        flag = "--" + f.name.replace("_", "-")
        assert a.option_strings in ([flag], [flag, flag.replace("--", "--no-", 1)])  # bools: --x / --no-x
        assert a.default == _default(f), f.name
        assert a.help == docs[f.name] and docs[f.name], f.name
    # the fields left out have a flag of another name or a reason; the CLI-only flags are declared by hand
    assert {"boost_base", "tokens"} <= set(actions) and actions["boost_base"].default is None
    for hand in ("activations", "out", "workspace", "sae", "force", "hook_name", "model_name"):
        assert hand in actions


def test_types_from_the_annotations():
    p = _train_parser()
    args = p.parse_args(["--k-aux", "7", "--lr", "0.01", "--matryoshka-widths", "64,256", "--dtype", "bfloat16"])
    assert (args.k_aux, args.lr, args.matryoshka_widths, args.dtype) == (7, 0.01, [64, 256], "bfloat16")
    d = p.parse_args([])
    assert d.k_aux is None and d.lr is None and d.matryoshka_widths == [] and d.tokens is None


def test_bool_fields_become_a_flag_pair():
    @dataclasses.dataclass
    class C:
        umap: bool = True
        """Lay out maps by UMAP."""
        fast: bool = False
        """Go fast."""

    p = argparse.ArgumentParser()
    for flag, kw in cli_sae.config_flags(C):
        p.add_argument(flag, **kw)
    assert vars(p.parse_args([])) == {"umap": True, "fast": False}
    assert vars(p.parse_args(["--no-umap", "--fast"])) == {"umap": False, "fast": True}


def test_a_bad_comma_list_is_one_argparse_line(capsys):
    with pytest.raises(SystemExit) as e:
        _train_parser().parse_args(["--matryoshka-widths", "64,x"])
    assert e.value.code == 2
    assert "argument --matryoshka-widths: '64,x': give comma-separated integers" in capsys.readouterr().err


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_flag_defaults_build_the_same_configs_as_the_dataclasses(arch):
    args = _train_parser().parse_args(["--architecture", arch, "--d-sae", "64", "--k", "4"])
    assert cli_sae._config_from(TrainConfig, args) == TrainConfig()
    cli = cli_sae._config_from(SaeConfig, args, skip=cli_sae.NOT_FLAGS, name="s")
    assert cli == SaeConfig(name="s", architecture=arch, d_sae=64, k=4)


def test_relu_and_jumprelu_get_their_documented_sparsity_coefficient():
    relu, jump, topk = (SaeConfig(name=a, architecture=a) for a in ("relu", "jumprelu", "topk"))
    assert (relu.l1_coef, relu.l0_coef) == (RELU_L1_COEF, 0.0) == (5.0, 0.0)
    assert (jump.l1_coef, jump.l0_coef) == (0.0, JUMPRELU_L0_COEF) == (0.0, 0.002)
    assert (topk.l1_coef, topk.l0_coef) == (0.0, 0.0)
    assert SaeConfig(name="r", architecture="relu", l1_coef=3.0).l1_coef == 3.0  # a given value is kept
    assert str(RELU_L1_COEF) in field_docs(SaeConfig)["l1_coef"]
    assert str(JUMPRELU_L0_COEF) in field_docs(SaeConfig)["l0_coef"]
    with pytest.raises(ConfigError, match="l1_coef must be >= 0"):
        SaeConfig(name="r", architecture="relu", l1_coef=-1.0)


def test_the_shipped_configs_build_as_before():
    """configs/*.yaml resolve to the coefficients they had when the defaults were 0: each relu / jumprelu entry
    sets its coefficient, and no other entry sets either; a workspace.yaml written back (to_dict) reloads the same."""
    seen = set()
    for path in sorted((REPO / "configs").glob("*.yaml")):
        raw = {s["name"]: s for s in yaml.safe_load(path.read_text())["saes"]}
        cfg = WorkspaceConfig.load(path)
        for s in cfg.saes:
            seen.add(s.architecture)
            assert s.l1_coef == raw[s.name].get("l1_coef", 0.0) and s.l0_coef == raw[s.name].get("l0_coef", 0.0)
            assert ("l1_coef" in raw[s.name]) == (s.architecture == "relu"), (path.name, s.name)
            assert ("l0_coef" in raw[s.name]) == (s.architecture == "jumprelu"), (path.name, s.name)
        assert WorkspaceConfig.from_dict(cfg.to_dict()) == cfg
    assert seen == set(ARCHITECTURES)


def test_a_workspace_yaml_of_an_older_build_still_loads():
    d = WorkspaceConfig.load(REPO / "configs" / "tiny.yaml").to_dict()
    assert "extra" not in d
    assert WorkspaceConfig.from_dict({**d, "extra": {}}).to_dict() == d  # older builds wrote an empty extra
    with pytest.raises(ConfigError, match="unknown key"):
        WorkspaceConfig.from_dict({**d, "extra": {"x": 1}})


@pytest.mark.parametrize("arch", ["relu", "jumprelu", "topk"])
def test_yaml_and_cli_train_the_same_sae(tmp_path, monkeypatch, arch):
    """`train --activations` with only --architecture passes train_sae the configs a YAML entry
    `{name, architecture}` with an empty `train:` builds (the old CLI gave relu 5.0 and the YAML 0)."""
    np.save(tmp_path / "a.npy", np.zeros((8, 4), np.float32))
    seen = {}

    def fake_train_sae(cfg, tcfg, source, out, **kw):
        seen.update(cfg=cfg, tcfg=tcfg)
        Path(out).mkdir()
        (Path(out) / "metrics.json").write_text(json.dumps({"train": {}}))

        return Sae(SaeSpec(d_in=4, d_sae=cfg.d_sae, architecture=cfg.architecture, k=min(cfg.k, cfg.d_sae)))

    monkeypatch.setattr("backend.sae.train.train_sae", fake_train_sae)
    from backend.__main__ import main

    out = tmp_path / "s"
    assert main(["train", "--activations", str(tmp_path / "a.npy"), "--architecture", arch, "--out", str(out)]) == 0
    ws = WorkspaceConfig.from_dict(
        {"name": "w", "corpora": [{"name": "hpo"}], "train": {}, "saes": [{"name": "s", "architecture": arch}]}
    )
    assert seen["cfg"] == ws.saes[0] and seen["tcfg"] == ws.train
    assert seen["cfg"].l1_coef == (5.0 if arch == "relu" else 0.0)
    assert seen["cfg"].l0_coef == (0.002 if arch == "jumprelu" else 0.0)


def test_the_architecture_list_is_written_once():
    assert _train_parser()._option_string_actions["--architecture"].choices is ARCHITECTURES
    with pytest.raises(SaeError, match=", ".join(ARCHITECTURES)):
        SaeSpec(d_in=2, d_sae=2, architecture="gated")
    # no other module of backend/ spells the four names as one tuple or list
    names = set(ARCHITECTURES)
    holders = []
    for path in sorted((REPO / "backend").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                strs = {e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
                if names <= strs:
                    holders.append(str(path.relative_to(REPO)))
    assert holders == ["backend/config.py"]
