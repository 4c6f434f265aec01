"""CLI: `train` and `eval`, from an activation array file or a workspace.

    python -m backend train --activations acts.npy --architecture topk --d-sae 4608 --k 32 --out saes/general
    python -m backend train --workspace workspaces/demo [--sae general] [--force]
    python -m backend eval --sae saes/general --activations acts.npy
    python -m backend eval --workspace workspaces/demo

The `train` flags for SAE and trainer settings are generated from the fields of config.SaeConfig and
config.TrainConfig (flag --d-sae for field d_sae; type from the annotation; help = the field's docstring;
default = the field's default), so a YAML config and the command line cannot disagree. Only the flags that
are not config fields (files, folders, metadata) are declared here by hand.

User errors raise SaeError / ConfigError (ValueError): __main__ prints one line and exits with code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path

from backend.config import SaeConfig, TrainConfig, field_docs
from backend.sae.model import SaeError

# SaeConfig fields with no generated flag, and why (every other SaeConfig/TrainConfig field has one)
NOT_FLAGS = {
    "name": "the --out folder's name",
    "boost_base": "--boost-base takes a trained SAE folder here (a config names an SAE of its workspace)",
    "data": "a workspace's subdomain; an activation file is the data",
    "tokens": "--tokens sets train.tokens, the same budget for the one SAE trained",
}


def _int_list(text: str) -> list[int]:
    try:
        return [int(w) for w in text.split(",")] if text else []
    except ValueError:  # argparse prints "argument --flag: <this>" and exits with code 2
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated integers, e.g. 512,1024") from None


def config_flags(cls: type, skip: typing.Collection[str] = ()) -> list[tuple[str, dict[str, typing.Any]]]:
    """(flag, argparse keywords) for every field of the config dataclass ``cls`` not in ``skip``:
    int/float/str fields take that type, ``X | None`` the type X with default None, bool fields a
    --x / --no-x pair, list[int] a comma list; choices come from the field's metadata."""
    hints, docs = typing.get_type_hints(cls), field_docs(cls)
    out = []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        t = hints[f.name]
        if isinstance(t, types.UnionType) or typing.get_origin(t) is typing.Union:
            t = next(a for a in typing.get_args(t) if a is not type(None))
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        kw: dict[str, typing.Any] = {"dest": f.name, "default": default, "help": docs[f.name].replace("%", "%%")}
        if t is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(t) is list and typing.get_args(t) == (int,):
            kw.update(type=_int_list, metavar="N,N,...")
        elif t in (int, float, str):
            kw["type"] = t
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: no flag for type {t}")
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        out.append(("--" + f.name.replace("_", "-"), kw))
    return out


def _config_from(cls: type, args: argparse.Namespace, skip: typing.Collection[str] = (), **fixed: typing.Any):
    """``cls`` built from the values of its generated flags (``config_flags(cls, skip)``) and ``fixed``."""
    kw = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.name not in skip and f.name not in fixed}
    return cls(**kw, **fixed)


def _train(args: argparse.Namespace) -> None:
    from backend.sae.train import ArrayActivations, train_sae

    if args.workspace:
        from backend.build import train_all
        from backend.workspace import open_workspace

        train_all(open_workspace(args.workspace), force=args.force, only=args.sae)
        return
    if not (args.activations and args.out):
        raise SaeError("train needs --activations FILE and --out DIR, or --workspace DIR")
    tcfg = _config_from(TrainConfig, args)
    cfg = _config_from(SaeConfig, args, skip=NOT_FLAGS, name=Path(args.out).name)
    base = None
    if args.boost_base:
        import os

        from backend.sae.model import load_sae

        base = load_sae(args.boost_base)
        # the residual folder names its base relative to itself, so that load_sae returns the composite
        cfg.boost_base = os.path.relpath(Path(args.boost_base).resolve(), Path(args.out).resolve().parent)
    sae = train_sae(
        cfg,
        tcfg,
        ArrayActivations(args.activations),
        args.out,
        base=base,
        hook_name=args.hook_name,
        model_name=args.model_name,
    )
    print(json.dumps(json.loads((Path(args.out) / "metrics.json").read_text())["train"], indent=1))
    print(f"saved {sae.cfg.architecture} SAE ({sae.cfg.d_in} -> {sae.cfg.d_sae}) to {args.out}")


def _eval(args: argparse.Namespace) -> None:
    from backend.sae.evaluate import evaluate_folder, evaluate_workspace

    if args.workspace:
        from backend.workspace import open_workspace, workspace_lock

        ws = open_workspace(args.workspace)
        with workspace_lock(ws.path):
            evaluate_workspace(ws, force=True)
        return
    if not (args.sae and args.activations):
        raise SaeError("eval needs --sae DIR and --activations FILE, or --workspace DIR")
    import torch

    from backend.sae.train import ArrayActivations

    src = ArrayActivations(args.activations)
    m = evaluate_folder(Path(args.sae), torch.from_numpy(src.data[: args.max_tokens].astype("float32")))
    print(json.dumps({k: v for k, v in m.items() if not isinstance(v, dict)}, indent=1))


def add_commands(sub) -> None:
    """Register `train` and `eval` on the argparse subparsers of `python -m backend`."""
    t = sub.add_parser(
        "train",
        help="train an SAE on an (N, d) .npy/.safetensors file, or a workspace's SAEs",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    t.add_argument("--activations", help="(N, d) activations: .npy or .safetensors")
    t.add_argument("--out", help="output SAE folder (SAELens layout)")
    t.add_argument("--workspace", help="train the SAEs of this workspace instead")
    t.add_argument("--sae", help="with --workspace: only this SAE")
    t.add_argument("--force", action="store_true", help="with --workspace: retrain SAEs that exist")
    t.add_argument("--boost-base", help="a trained SAE folder: train a residual SAE on its error (SAE Boost)")
    g = t.add_argument_group("SAE (the fields of a `saes:` entry)")
    for flag, kw in config_flags(SaeConfig, skip=NOT_FLAGS):
        g.add_argument(flag, **kw)
    g = t.add_argument_group("training (the fields of `train:`)")
    for flag, kw in config_flags(TrainConfig):
        g.add_argument(flag, **kw)
    t.add_argument("--hook-name", default="", help="metadata: the hook site the activations came from")
    t.add_argument("--model-name", default="", help="metadata: the model the activations came from")
    t.set_defaults(func=_train)
    e = sub.add_parser("eval", help="metrics.json for an SAE folder on an activation file, or for a workspace")
    e.add_argument("--sae", help="an SAE folder")
    e.add_argument("--activations", help="(N, d) activations: .npy or .safetensors")
    e.add_argument("--workspace", help="evaluate every SAE of this workspace (with the model: CE, KL, absorption)")
    e.add_argument("--max-tokens", type=int, default=50_000)
    e.set_defaults(func=_eval)
