"""The package's layering (iuq_lite/__init__.py docstring): imports point down only, no cycles, size budget.

Imports are read with `ast` from every module of the package, wherever they stand (module top, inside a
function, under `if TYPE_CHECKING:`), relative ones resolved. Importing `a.b.c` also runs the __init__ of
the packages `a.b` and `a` that the importer is not inside, so those count as imported too.
"""
from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import iuq_lite

PKG = Path(iuq_lite.__file__).resolve().parent
BUDGET = 4800          # code lines: not blank, not comment, not docstring (DESIGN §1)
MODULE_LINES = 500     # one module, one concept: about this many lines at most


def module_name(path: Path) -> str:
    """iuq_lite/iuq/inter.py -> "iuq.inter"; iuq_lite/model/__init__.py -> "model"; the root -> ""."""
    parts = list(path.relative_to(PKG).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def layer_order() -> list[str]:
    """The names of the docstring's layer list, bottom first (the indented block after "Layers,")."""
    doc = iuq_lite.__doc__
    block = doc[doc.index("Layers,"):].split("\n\n", 1)[1]
    names: list[str] = []
    for line in block.splitlines():
        if not line.strip():
            break
        # "primitives   config, utils, ..." (a label, then names) or a continuation line of names
        body = re.split(r"\s{2,}", line.strip(), maxsplit=1)[-1]
        names += [n.strip() for n in body.split(",") if n.strip()]
    return names


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Package-internal modules `name` imports (anywhere in the file), as module names."""
    is_pkg = path.name == "__init__.py"
    here = name.split(".") if name else []
    package = here if is_pkg else here[:-1]
    out: set[str] = set()

    def add(target: str) -> None:
        if target == name:
            return
        out.add(target)
        parts = target.split(".")
        for i in range(1, len(parts)):      # parent packages the import runs, unless `name` is inside them
            parent = ".".join(parts[:i])
            if not (name == parent or name.startswith(parent + ".")):
                out.add(parent)

    def resolve(dotted: str) -> str | None:
        """Longest known module prefix of a dotted name inside the package."""
        parts = dotted.split(".") if dotted else []
        for i in range(len(parts), -1, -1):
            if ".".join(parts[:i]) in known:
                return ".".join(parts[:i])
        return None

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "iuq_lite" or alias.name.startswith("iuq_lite."):
                    target = resolve(alias.name.removeprefix("iuq_lite").lstrip("."))
                    if target:
                        add(target)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                dotted = ".".join(base + (node.module.split(".") if node.module else []))
            elif node.module == "iuq_lite" or (node.module or "").startswith("iuq_lite."):
                dotted = node.module.removeprefix("iuq_lite").lstrip(".")
            else:
                continue
            for alias in node.names:
                sub = f"{dotted}.{alias.name}" if dotted else alias.name
                target = sub if sub in known else resolve(dotted)
                if target:
                    add(target)
    out.discard("")            # the root package only loads submodules lazily, by name
    return out


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports(name, path, known) for name, path in mods.items() if name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), i.e. the import cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def code_lines(path: Path) -> int:
    """Lines holding code: not blank, not only a comment, not part of a docstring (a string statement)."""
    text = path.read_text()
    doc_lines: set[int] = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            doc_lines.update(range(node.lineno, node.end_lineno + 1))
    lines: set[int] = set()
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type not in skip:
            lines.update(range(tok.start[0], tok.end[0] + 1))
    return len(lines - doc_lines)


# --------------------------------------------------------------------------------------------- tests
def test_layer_list_names_every_module_once():
    order, mods = layer_order(), set(modules()) - {""}
    assert len(order) == len(set(order)), f"listed twice: {sorted({n for n in order if order.count(n) > 1})}"
    assert set(order) == mods, (f"not in the layer list of iuq_lite/__init__.py: {sorted(mods - set(order))}; "
                                f"listed but missing: {sorted(set(order) - mods)}")


def test_imports_point_down_only():
    rank = {n: i for i, n in enumerate(layer_order())}
    up = [f"{a} imports {b}" for a, deps in sorted(import_graph().items()) for b in sorted(deps)
          if rank[b] >= rank[a]]
    assert not up, "imports pointing up the layer order (iuq_lite/__init__.py):\n" + "\n".join(up)


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_package_imports_stand_at_module_top():
    """Function-level imports are kept for optional or heavy third-party packages (matplotlib, ipywidgets,
    tensorboard, torchvision transforms and weights, scipy.stats); a package module imported inside a function
    would hide where a piece lives (DESIGN §6)."""
    inside = set()
    for name, path in modules().items():
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if (isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("iuq_lite"))
                        or isinstance(node, ast.Import) and any(a.name.startswith("iuq_lite") for a in node.names)):
                    inside.add(f"{name}:{node.lineno}")
    assert not inside, f"package imports inside functions: {sorted(inside)}"


def test_guard_sees_function_level_relative_and_parent_imports(tmp_path):
    """The parser itself: a function-level relative import, a `from pkg import submodule` and the implicit
    import of a parent package are all edges, so none of them can hide an upward import."""
    path = tmp_path / "probe.py"
    path.write_text("def f():\n    from ..model import condinst\n    from .. import train\n")
    got = imports("iuq.probe", path, set(modules()))
    assert got == {"model", "model.condinst", "train"}
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_size_budget():
    mods = modules()
    total = sum(code_lines(p) for p in mods.values())
    assert total <= BUDGET, f"{total} code lines > {BUDGET}"
    long = {n: len(p.read_text().splitlines()) for n, p in mods.items()}
    assert all(v <= MODULE_LINES for v in long.values()), {n: v for n, v in long.items() if v > MODULE_LINES}


def test_public_names_stay_reachable():
    """The names notebooks and outside code use (issue 18: one home each, the old spellings still work)."""
    import iuq_lite as iuq
    for dotted in ("iuq.IUQCriterion", "iuq.PixelMemory", "iuq.inter_mask_loss", "iuq.equivariance_loss",
                   "iuq.inter_mask_loss_reference", "iuq.DotProductAdapter", "iuq.TwoViews", "train.train",
                   "train.load_model", "train.load_checkpoint", "checkpoint.load_model",
                   "checkpoint.load_checkpoint", "model.iuq_adapter", "losses.point_sample",
                   "data.coco.split_paths", "data.coco.encode_masks"):
        obj = iuq
        for part in dotted.split("."):
            obj = getattr(obj, part)
        assert callable(obj), dotted
    assert iuq.train.load_model is iuq.checkpoint.load_model
