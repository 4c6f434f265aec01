"""The house rules that keep the layout honest: no import cycles in backend/ (lazy imports included), and
the facade's contract (backend/serve/api.py) matches the real Backend and the test stand-in exactly."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BACKEND = REPO / "backend"


def module_name(path: Path, root: Path = REPO) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking(node: ast.If) -> bool:
    t = node.test
    return (
        isinstance(t, ast.Name)
        and t.id == "TYPE_CHECKING"
        or isinstance(t, ast.Attribute)
        and t.attr == "TYPE_CHECKING"
    )


def imports(path: Path, modules: set[str], root: Path = REPO) -> set[str]:
    """backend modules that ``path`` imports anywhere (module level or inside functions), TYPE_CHECKING excluded."""
    me = module_name(path, root)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child):
                for n in child.orelse:
                    visit(n)
                continue
            if isinstance(child, ast.Import):
                out.update(a.name for a in child.names if a.name in modules)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    up = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join([*up, base] if base else up)
                for a in child.names:
                    sub = f"{base}.{a.name}"
                    if sub in modules:
                        out.add(sub)
                    elif base in modules:
                        out.add(base)
            visit(child)

    visit(ast.parse(path.read_text()))
    out.discard(me)
    return out


def test_backend_has_no_import_cycles():
    files = sorted(BACKEND.rglob("*.py"))
    modules = {module_name(f) for f in files}
    graph = {module_name(f): imports(f, modules) for f in files}
    # Tarjan's strongly connected components
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    assert not cycles, f"import cycles in backend/: {cycles}"


def test_the_cycle_finder_sees_lazy_imports(tmp_path):
    pkg = tmp_path / "backend"
    pkg.mkdir()
    (pkg / "a.py").write_text("def f():\n    from backend.b import g\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from backend.a import f\n")
    mods = {"backend.a", "backend.b"}
    assert imports(pkg / "a.py", mods, tmp_path) == {"backend.b"} and imports(pkg / "b.py", mods, tmp_path) == set()


def public_methods(cls) -> dict[str, inspect.Signature]:
    return {n: inspect.signature(f) for n, f in inspect.getmembers(cls, inspect.isfunction) if not n.startswith("_")}


def test_protocol_backend_and_stand_in_agree():
    from backend.serve.api import SERVER_ONLY, BackendAPI
    from backend.serve.service import Backend
    from tests.fake_backend import FakeBackend

    contract = public_methods(BackendAPI)
    real, fake = public_methods(Backend), public_methods(FakeBackend)
    assert set(real) - set(contract) == set(SERVER_ONLY), "a public Backend method is missing from BackendAPI"
    assert set(fake) - set(contract) <= set(SERVER_ONLY), "the stand-in has a method the contract lacks"
    for name, sig in contract.items():
        for who, impl in (("Backend", real), ("FakeBackend", fake)):
            assert name in impl, f"{who} lacks {name}"
            assert list(impl[name].parameters) == list(sig.parameters), f"{who}.{name}{impl[name]} != {sig}"
            for p, q in zip(impl[name].parameters.values(), sig.parameters.values()):
                assert (p.kind, p.default) == (q.kind, q.default), f"{who}.{name}: {p} != {q}"
    attrs = set(BackendAPI.__annotations__)
    assert attrs, "the contract names the attributes explorer/ reads"


@pytest.mark.parametrize("doc", ["docs/service_api.md"])
def test_the_contract_is_documented(doc):
    from backend.serve.api import BackendAPI

    text = (REPO / doc).read_text()
    missing = [n for n in public_methods(BackendAPI) if f"{n}(" not in text]
    assert not missing and "backend/serve/api.py" in text, f"{doc} omits {missing}"


def test_config_accepts_exactly_the_registered_model_kinds():
    from backend.config import MODEL_KINDS
    from backend.modalities import MODALITIES

    assert set(MODEL_KINDS) == {m.kind for m in MODALITIES}
