"""The layout's import rules, checked on the source (an AST walk, every import statement,
including those inside functions and under ``TYPE_CHECKING``):

1. ``rbac`` and ``recordings`` never import ``gateway``;
2. ``gateway.sessions`` imports no front end (``gateway.ssh``, ``gateway.web``,
   ``gateway.desktop``, ``gateway.ot``);
3. a front end imports neither SQLAlchemy nor casbin (it asks the services that own data);
4. the modules of ``gateway.cli`` import each other without a cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FRONT_ENDS = ("gateway.ssh", "gateway.web", "gateway.desktop", "gateway.ot")
DATA_LIBRARIES = ("sqlalchemy", "casbin", "casbin_async_sqlalchemy_adapter")


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(root: Path, path: Path) -> Iterator[str]:
    """Every module ``path`` imports (``from a import b`` yields ``a`` and ``a.b``)."""
    tree = ast.parse(path.read_text(), str(path))
    package = _module_name(root, path).rpartition(".")[0]
    if path.name == "__init__.py":
        package = _module_name(root, path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative imports are banned by ruff, but resolve them anyway
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def _within(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def import_graph(root: Path) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for top in ("gateway", "rbac", "recordings"):
        for path in sorted((root / top).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            graph[_module_name(root, path)] = set(_imports(root, path))
    return graph


def _cycle(graph: dict[str, set[str]], nodes: set[str]) -> list[str] | None:
    """One import cycle among ``nodes`` (a package and its parents excluded), or None."""
    edges = {
        n: {m for m in graph[n] if m in nodes and m != n and not n.startswith(m + ".")}
        for n in nodes
    }
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(nodes):
        if node not in state and (found := visit(node)):
            return found
    return None


def violations(root: Path) -> list[str]:
    graph = import_graph(root)
    found: list[str] = []
    for module, imported in sorted(graph.items()):
        for name in sorted(imported):
            if _within(module, ("rbac", "recordings")) and _within(name, ("gateway",)):
                found.append(f"{module} imports {name}: rbac and recordings never import gateway")
            if _within(module, ("gateway.sessions",)) and _within(name, FRONT_ENDS):
                found.append(f"{module} imports front end {name}")
            if _within(module, FRONT_ENDS) and _within(name, DATA_LIBRARIES):
                found.append(f"front end {module} imports {name}")
    cli = {m for m in graph if _within(m, ("gateway.cli",))}
    cycle = _cycle(graph, cli)
    if cycle:
        found.append("gateway.cli import cycle: " + " -> ".join(cycle))
    return sorted(set(found))


def test_the_tree_keeps_the_import_rules() -> None:
    assert violations(ROOT) == []


def test_the_packages_the_rules_name_exist() -> None:
    graph = import_graph(ROOT)
    for package in ("gateway.cli", "gateway.sessions", "gateway.ssh", "gateway.web", "rbac"):
        assert package in graph, package
    assert any(m.startswith("gateway.cli.") for m in graph)


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for top in ("gateway", "rbac", "recordings"):
        (tmp_path / top).mkdir(exist_ok=True)
        (tmp_path / top / "__init__.py").touch()
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.parent != tmp_path and not (path.parent / "__init__.py").exists():
            (path.parent / "__init__.py").touch()
        path.write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    "files,expected",
    [
        ({"rbac/x.py": "from gateway.errors import ConduitError\n"}, "rbac.x imports gateway"),
        ({"recordings/y.py": "def f():\n    import gateway.keys\n"}, "recordings.y imports"),
        ({"gateway/sessions/b.py": "from gateway.ssh import upstream\n"}, "front end gateway.ssh"),
        (
            {"gateway/sessions/b.py": "from typing import TYPE_CHECKING\n"
             "if TYPE_CHECKING:\n    from gateway.web.app import App\n"},
            "front end gateway.web",
        ),
        ({"gateway/web/p.py": "from sqlalchemy import select\n"}, "front end gateway.web.p"),
        ({"gateway/ssh/s.py": "import casbin\n"}, "front end gateway.ssh.s imports casbin"),
        (
            {"gateway/cli/a.py": "from gateway.cli import b\n",
             "gateway/cli/b.py": "def f():\n    from gateway.cli.a import x\n"},
            "gateway.cli import cycle",
        ),
    ],
)  # fmt: skip
def test_each_rule_catches_its_violation(
    tmp_path: Path, files: dict[str, str], expected: str
) -> None:
    found = violations(_tree(tmp_path, files))
    assert any(expected in v for v in found), found


def test_allowed_imports_pass(tmp_path: Path) -> None:
    files = {
        "gateway/ssh/server.py": "from gateway.sessions.broker import Broker\nimport asyncssh\n",
        "gateway/sessions/broker.py": "from sqlalchemy import select\nfrom rbac import names\n",
        "gateway/cli/main.py": "from gateway.cli import common\n",
        "gateway/cli/common.py": "from gateway.config import Settings\n",
        "rbac/policy.py": "from rbac.names import check_action\n",
    }
    assert violations(_tree(tmp_path, files)) == []
