"""No shell, and no other program, is ever started by the tool: nothing a container provides
(names, labels, /proc contents) can reach a command line."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "container_netstat"
STARTERS = {"system", "popen", "execv", "execve", "execvp", "execvpe", "execl", "execle", "execlp", "execlpe",
            "spawnv", "spawnve", "spawnvp", "spawnvpe", "spawnl", "spawnle", "spawnlp", "spawnlpe", "posix_spawn",
            "posix_spawnp", "fork", "forkpty"}


def test_the_package_never_starts_a_program() -> None:
    found = []
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found += [f"{path.name}: import {a.name}" for a in node.names if a.name in ("subprocess", "pty")]
            elif isinstance(node, ast.ImportFrom) and node.module in ("subprocess", "pty"):
                found.append(f"{path.name}: from {node.module} import ...")
            elif isinstance(node, ast.Attribute) and node.attr in STARTERS:
                found.append(f"{path.name}:{node.lineno}: .{node.attr}")
    assert found == []
