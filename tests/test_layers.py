"""The package's layers hold: no module imports one of a higher layer.

Every import in every module counts, wherever it is written (inside functions and under
TYPE_CHECKING too), absolute or relative; the layers, low to high, are core, runners, models,
jobs, service, then web and cli (cli starts the web server; web never calls the CLI). The
runner program may use core only. `vsrt_service/__init__.py` is exempt: its exports load
lazily, on use.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import vsrt_service

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("vsrt_service", "gpu_runner")
#: Layer ranks: a module may import its own rank and lower ones.
RANKS = {"core": 0, "runners": 1, "models": 2, "jobs": 3, "service": 4, "web": 5, "cli": 6}
#: The runner program (gpu_runner) may import only these of vsrt_service.
RUNNER_MAY_USE = ("core",)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported(tree: ast.Module, name: str, is_package: bool) -> Iterator[tuple[int, str]]:
    """(line, module) for every import in the tree; `from x import y` names `x.y` when y is
    a submodule or a lazy export of vsrt_service, else `x`."""
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            for alias in node.names:
                if module == "vsrt_service":
                    target = vsrt_service._EXPORTS.get(alias.name, f"vsrt_service.{alias.name}")
                    yield node.lineno, target
                else:
                    yield node.lineno, f"{module}.{alias.name}"


def layer(module: str) -> str | None:
    """The layer a vsrt_service module belongs to (None: the package itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def violations() -> list[str]:
    found = []
    for top in PACKAGES:
        for path in sorted((ROOT / top).rglob("*.py")):
            name = module_name(path)
            if name == "vsrt_service":
                continue  # lazy exports
            where = path.relative_to(ROOT)
            tree = ast.parse(path.read_text(encoding="utf-8"), str(where))
            source = layer(name) if top == "vsrt_service" else None
            if top == "vsrt_service" and source not in RANKS:
                found.append(f"{where}: module {name} is in no layer ({', '.join(RANKS)})")
                continue
            for line, target in imported(tree, name, path.name == "__init__.py"):
                if target.split(".")[0] != "vsrt_service":
                    continue
                wanted = layer(target)
                if top == "gpu_runner":
                    if wanted not in RUNNER_MAY_USE:
                        found.append(f"{where}:{line}: the runner imports {target} (only core allowed)")
                elif source is not None and (
                    wanted is None or wanted not in RANKS or RANKS[wanted] > RANKS[source]
                ):
                    found.append(f"{where}:{line}: {source} imports {target} ({wanted or 'the package'})")
    return found


def test_the_walker_sees_imports_of_every_kind() -> None:
    """Absolute, relative, inside functions, and the lazy exports all resolve."""
    tree = ast.parse(
        "import vsrt_service.jobs.store\n"
        "from ..web import app\n"
        "from . import pool\n"
        "def f():\n    from vsrt_service import Service\n"
    )
    assert list(imported(tree, "vsrt_service.runners.pool", False)) == [
        (1, "vsrt_service.jobs.store"),
        (2, "vsrt_service.web.app"),
        (3, "vsrt_service.runners.pool"),
        (5, "vsrt_service.service"),
    ]


def test_no_module_imports_a_higher_layer() -> None:
    found = violations()
    assert not found, "layer violations:\n" + "\n".join(found)
