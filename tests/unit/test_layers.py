"""The layering contract, read from the source with ``ast`` (no module is imported).

The core (``agentcluster/``) is plain Python: it must not import the Ray edge (``actors/``,
``deployments/``), anywhere in a file: at the top, inside a function, under ``TYPE_CHECKING``.
The edge imports the core, never the other way round; the composition root lives at the edge
(``actors/compose.py``). ``agentcluster.testing`` (shipped with the package, used by users' own
tests) is held to the same rule.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "agentcluster"
EDGE_PACKAGES = frozenset({"actors", "deployments"})


def imported_modules(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import statement anywhere in ``tree``; relative
    imports are left out (inside the core they stay inside it)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module is not None:
            yield node.lineno, node.module


def is_edge(module: str) -> bool:
    """Whether ``module`` is an edge package or one of its modules."""
    return module.partition(".")[0] in EDGE_PACKAGES


def edge_imports(path: Path) -> list[str]:
    """``file:line module`` of each import of an edge package in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return [
        f"{path.relative_to(ROOT)}:{line} {module}"
        for line, module in imported_modules(tree)
        if is_edge(module)
    ]


def violations(package: Path) -> list[str]:
    found: list[str] = []
    for path in sorted(package.rglob("*.py")):
        found += edge_imports(path)
    return sorted(set(found))


def test_the_core_imports_nothing_from_the_ray_edge() -> None:
    assert violations(CORE) == []


def test_the_testing_helpers_import_nothing_from_the_ray_edge() -> None:
    assert violations(CORE / "testing") == []


def test_the_core_is_where_the_contract_looks() -> None:
    # Guards against a contract that passes because it reads nothing.
    modules = list(CORE.rglob("*.py"))
    assert len(modules) > 50
    assert (CORE / "testing" / "fake_llm.py") in modules


@pytest.mark.parametrize(
    "source",
    [
        "import actors.session",
        "from actors import names",
        "from deployments.gateway import build_gateway",
        "def f():\n    from actors.pool import ActorPool\n",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import deployments\n",
        "class C:\n    async def m(self):\n        import actors\n",
    ],
)
def test_an_edge_import_is_found_wherever_it_is(source: str) -> None:
    assert any(is_edge(name) for _line, name in imported_modules(ast.parse(source)))


@pytest.mark.parametrize(
    "source",
    [
        "import ray",
        "from agentcluster.runtime import Runtime",
        "from . import actors",  # a relative import: a module of the core's own
        "from agentcluster import actors_count",
        "import deploymentsx",
    ],
)
def test_names_that_only_look_like_the_edge_are_not_flagged(source: str) -> None:
    assert not any(is_edge(name) for _line, name in imported_modules(ast.parse(source)))
