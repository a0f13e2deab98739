"""The python_exec sandbox runner is a real module that runs with the standard library only.

Inside the sandbox only ``/usr`` is visible and the interpreter starts with ``-I -S``: an import of
agentcluster or of any third-party package there would fail at the first call, not in review.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from agentcluster.tools import _sandbox_runner as runner


def _imported_roots(source: str) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import in the sandbox runner"
            roots.add(str(node.module).split(".")[0])
    return roots


def test_the_runner_imports_only_the_standard_library() -> None:
    roots = _imported_roots(Path(runner.__file__).read_text(encoding="utf-8"))
    assert "ctypes" in roots  # the walk sees the imports inside functions too
    assert sorted(roots - set(sys.stdlib_module_names)) == []


def test_the_runner_parses_as_python_3_9() -> None:
    # The node's /usr/bin/python3 may be older than the service's interpreter.
    source = Path(runner.__file__).read_text(encoding="utf-8")
    ast.parse(source, feature_version=(3, 9))
