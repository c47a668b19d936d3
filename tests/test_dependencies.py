"""The dependency rules of sw/__init__.py, checked on every import statement of the sw tree.

Each ``import`` and ``from ... import`` is read with ``ast``, at module level and inside
functions alike (a lazy import is a dependency too), relative ones resolved against their
package. A rule broken anywhere fails with the file, the line and the rule.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SW = ROOT / "sw"

#: Each unit of sw (a package, or a module standing alone) and the units of sw it may import,
#: besides itself: the order of sw/__init__.py.
ALLOWED = {
    "sw.format": set(),
    "sw.params": set(),
    "sw.data": set(),
    "sw.codec": {"sw.format", "sw.params"},
    "sw.io": {"sw.format", "sw.params", "sw.codec"},
    "sw.network": {"sw.format", "sw.params", "sw.codec"},
    "sw.quant": {"sw.format", "sw.params", "sw.data", "sw.codec", "sw.io", "sw.network"},
    "sw.board": {"sw.format", "sw.params", "sw.data", "sw.codec", "sw.io", "sw.network"},
    "sw.cli": {"sw.format", "sw.params", "sw.data", "sw.codec", "sw.io", "sw.network",
               "sw.quant", "sw.board"},
    "sw.bench": {"sw.format", "sw.params", "sw.data", "sw.codec", "sw.io", "sw.network",
                 "sw.quant", "sw.board", "sw.cli"},
    "sw.__main__": {"sw.cli"},
    "sw": set(),
}
#: Top-level packages no module of sw imports, anywhere.
FOREIGN = {"amaranth", "hw", "sim", "boards", "tests"}
#: Units that never import torch, not even inside a function.
NO_TORCH = {"sw.format", "sw.params", "sw.codec", "sw.network", "sw.board"}
#: Units that import torch only inside the functions that need it.
LAZY_TORCH = {"sw.data", "sw.io", "sw.cli"}
#: numba is imported by these modules only, each inside the function that compiles its loops
#: (importing numba costs over a second): the rANS coder and GPTQ's rounding.
NUMBA = {"sw.codec.fastrans", "sw.quant.gptq"}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def unit_of(module: str) -> str:
    """``sw.codec.container`` -> ``sw.codec``; ``sw.board`` -> ``sw.board``; ``sw`` -> ``sw``."""
    return ".".join(module.split(".")[:2])


def imports(source: str, module: str, is_package: bool):
    """``(line, imported module, at module level)`` of every import in ``source``.

    ``from a.b import c`` yields ``a.b.c`` when that is a module of the tree, else ``a.b``.
    """
    tree = ast.parse(source)
    top_level = {id(node) for node in tree.body}
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, id(node) in top_level
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                path = ROOT.joinpath(*candidate.split("."))
                is_module = path.with_suffix(".py").exists() or (path / "__init__.py").exists()
                yield node.lineno, candidate if is_module else target, id(node) in top_level


def problems_of(module: str, source: str, is_package: bool = False) -> list:
    """Every rule of sw/__init__.py that the imports of ``module`` break."""
    unit = unit_of(module)
    found = []
    for line, target, top in imports(source, module, is_package):
        first = target.split(".")[0]
        where = f"{module}:{line} imports {target}"
        if first in FOREIGN:
            found.append(f"{where}: nothing in sw imports {first}")
        if first == "torch" and unit in NO_TORCH:
            found.append(f"{where}: {unit} never imports torch")
        if first == "torch" and unit in LAZY_TORCH and top:
            found.append(f"{where}: {unit} imports torch inside functions only")
        if first == "numba" and module not in NUMBA:
            found.append(f"{where}: only {' and '.join(sorted(NUMBA))} import numba")
        if first != "sw":
            continue
        target_unit = unit_of(target)
        if target_unit == "sw.bench" and unit != "sw.bench":
            found.append(f"{where}: the benchmarks are leaves")
        elif target_unit == "sw.cli" and unit not in {"sw.cli", "sw.bench", "sw.__main__"}:
            found.append(f"{where}: the command line is the top")
        elif target_unit != unit and target_unit not in ALLOWED.get(unit, set()):
            found.append(f"{where}: {unit} may import only "
                         f"{', '.join(sorted(ALLOWED.get(unit, ()))) or 'nothing of sw'}")
    return found


def sw_sources():
    return sorted(SW.rglob("*.py"))


def test_every_unit_has_rules():
    units = {unit_of(module_name(path)) for path in sw_sources()}
    assert units <= set(ALLOWED), f"units without rules: {sorted(units - set(ALLOWED))}"


@pytest.mark.parametrize("path", sw_sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_follow_the_rules(path):
    problems = problems_of(module_name(path), path.read_text(), path.name == "__init__.py")
    assert not problems, "\n".join(problems)


def test_nothing_outside_sw_bench_imports_it():
    """hw, sim and boards depend on sw, but not on its benchmarks (tests may test them)."""
    for folder in ("hw", "sim", "boards"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            module = module_name(path)
            for line, target, _ in imports(path.read_text(), module, path.name == "__init__.py"):
                assert not target.startswith("sw.bench"), f"{module}:{line} imports {target}"


@pytest.mark.parametrize("module, source, rule", [
    ("sw.codec.container", "def f():\n    from sw.quant import qat\n", "may import only"),
    ("sw.codec.golden", "import torch\n", "never imports torch"),
    ("sw.io.load", "import torch\n", "inside functions only"),
    ("sw.network.engine", "from ..quant.models import build_model\n", "may import only"),
    ("sw.board", "def f():\n    from .bench.codec import measure\n", "leaves"),
    ("sw.quant.train", "from sw.cli import main\n", "the top"),
    ("sw.bench.codec", "def f():\n    import hw.build\n", "nothing in sw imports hw"),
    ("sw.quant.compress", "from amaranth import Module\n", "nothing in sw imports amaranth"),
    ("sw.quant.qat", "import numba\n", "only sw.codec.fastrans"),
])
def test_a_forbidden_import_is_caught(module, source, rule):
    """The checker itself: each rule fails on a made-up import that breaks it."""
    problems = problems_of(module, source)
    assert problems and rule in problems[0], problems
