"""The layering contract, read from the source with ``ast`` (no module is imported).

The core (``agentcluster/``) is plain Python: it must not import the Ray edge (``actors/``,
``deployments/``), anywhere in a file: at the top, inside a function, under ``TYPE_CHECKING``.
The edge imports the core, never the other way round; the composition root lives at the edge
(``actors/compose.py``). ``agentcluster.testing`` (shipped with the package, used by users' own
tests) is held to the same rule.

Across packages, a module imports another package's public surface (its ``__init__`` or a public
submodule), never one of its private (``_x``) modules; a module may import the private modules of
its own package and of the packages it is inside.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "agentcluster"
EDGE_PACKAGES = frozenset({"actors", "deployments"})
TOP_PACKAGES = ("agentcluster", "actors", "deployments")


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


PLAIN_CORES = ("pools", "browser", "tools", "runtime")
"""The core packages holding the plain logic the Ray shells in ``actors/`` wrap."""


def ray_imports(path: Path) -> list[str]:
    """``file:line module`` of each import of Ray in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return [
        f"{path.relative_to(ROOT)}:{line} {module}"
        for line, module in imported_modules(tree)
        if module.partition(".")[0] == "ray"
    ]


def test_the_plain_cores_import_no_ray() -> None:
    found = [
        hit for name in PLAIN_CORES for p in (CORE / name).rglob("*.py") for hit in ray_imports(p)
    ]
    assert found == []


def test_the_plain_cores_are_where_the_contract_looks() -> None:
    modules = {
        p.relative_to(CORE).as_posix() for name in PLAIN_CORES for p in (CORE / name).rglob("*.py")
    }
    assert {"pools/_core.py", "browser/_worker.py", "runtime/_host.py"} <= modules
    assert ray_imports(ROOT / "actors" / "pool.py") != []  # the reader finds a Ray import


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


def module_name(path: Path) -> str:
    """The dotted name of the module at ``path`` (a package for its ``__init__.py``)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def private_owner(module: str) -> str | None:
    """The package owning the first private (``_x``, not dunder) part of ``module``; None when
    every part is public."""
    parts = module.split(".")
    for index, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__"):
            return ".".join(parts[:index])
    return None


def reaches_into(importer: str, module: str, *, is_package: bool = False) -> bool:
    """Whether ``importer`` importing ``module`` reaches into another package's private module:
    allowed only when the owner of the private part is the importer's package or contains it."""
    owner = private_owner(module)
    if owner is None:
        return False
    package = importer if is_package else importer.rpartition(".")[0]
    return not (package == owner or package.startswith(owner + "."))


def imported_targets(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """Like :func:`imported_modules`, plus ``package.name`` for each name a ``from package import
    name`` takes (``from agentcluster.tools import _ssrf`` reaches a private module too)."""
    yield from imported_modules(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module is not None:
            for alias in node.names:
                yield node.lineno, f"{node.module}.{alias.name}"


def private_imports(path: Path) -> list[str]:
    """``file:line module`` of each import in ``path`` of another package's private module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    importer = module_name(path)
    is_package = path.name == "__init__.py"
    return [
        f"{path.relative_to(ROOT)}:{line} {module}"
        for line, module in imported_targets(tree)
        if reaches_into(importer, module, is_package=is_package)
    ]


def test_no_module_imports_another_packages_private_module() -> None:
    found: list[str] = []
    for top in TOP_PACKAGES:
        for path in sorted((ROOT / top).rglob("*.py")):
            found += private_imports(path)
    assert found == []


@pytest.mark.parametrize(
    ("importer", "source"),
    [
        ("agentcluster.tools._http", "from agentcluster.llm._types import ToolSchema"),
        ("actors.tools", "from agentcluster.tools._sandbox import PythonSandbox"),
        ("agentcluster.console._routes", "def f():\n    import agentcluster.gateway._service\n"),
        (
            "deployments.gateway",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from agentcluster.client._errors import ApiError\n",
        ),
        ("actors.session", "from agentcluster.runtime._hostset import plan_host_count"),
        ("agentcluster.store", "from agentcluster.store_x._sql import SqlStateStore"),
        ("actors.browser", "from agentcluster.tools import _ssrf"),
    ],
)
def test_a_private_import_across_packages_is_found(importer: str, source: str) -> None:
    assert any(reaches_into(importer, name) for _line, name in imported_targets(ast.parse(source)))


@pytest.mark.parametrize(
    ("importer", "source", "is_package"),
    [
        ("agentcluster.tools._http", "from agentcluster.tools._base import Tool", False),
        ("agentcluster.tools", "from agentcluster.tools._base import Tool", True),
        (
            "agentcluster.store._sql",
            "from agentcluster._gc import settle_long_lived_objects",
            False,
        ),
        ("actors.tools", "from actors._workers import start_worker", False),
        ("actors.tools", "from agentcluster.tools import SsrfGuard", False),
        ("agentcluster.gateway._app", "from agentcluster.llm import __getattr__", False),
        ("agentcluster.client._sync", "from agentcluster.client import _calls as calls", False),
    ],
)
def test_a_private_import_inside_its_own_package_is_allowed(
    importer: str, source: str, is_package: bool
) -> None:
    assert not any(
        reaches_into(importer, name, is_package=is_package)
        for _line, name in imported_targets(ast.parse(source))
    )


def test_the_private_import_contract_reads_every_package() -> None:
    # Guards against a contract that passes because it reads nothing.
    names = {module_name(path) for top in TOP_PACKAGES for path in (ROOT / top).rglob("*.py")}
    assert {"agentcluster.tools", "actors.session", "deployments.gateway"} <= names
