"""The import rule of piserver's layers: a module imports its own package and the
layers below it, never one above (nor a sibling package of its own layer).

The layers are drawn in ``piserver/__init__.py`` and ``docs/architecture.md``. Every
module's imports are read with ``ast`` (those inside functions and ``TYPE_CHECKING``
blocks too: a dependency is a dependency), so the rule cannot rot; a new top-level module
or package must be given a layer here before the test passes.
"""

import ast
from pathlib import Path

import attr

from tests.support.piagent import repository_root

# Top to bottom. Packages of one layer do not import each other; the entry points may.
LAYERS = (
    ("entry points", ("tap", "cli", "tokencli", "sessioncli", "auditcli", "config", "service")),
    ("application", ("api", "web", "ops")),
    ("sessions", ("sessions",)),
    ("wire", ("wire", "schema")),
    ("domains", ("agents", "repos", "security")),
    ("common", ("common", "")),
)
ENTRY_POINTS = LAYERS[0][0]


@attr.frozen
class Place:
    """Where a module sits: its layer (0 is the top) and its package within it."""

    rank: int
    layer: str
    package: str


def place(module: str) -> Place | None:
    """The place of a dotted ``piserver`` module, or None when no layer holds it."""
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else ""
    for rank, (layer, packages) in enumerate(LAYERS):
        if top in packages:
            package = layer if layer == ENTRY_POINTS else top
            return Place(rank, layer, package)
    return None


def modules(root: Path) -> dict[str, Path]:
    """Every module of the ``piserver`` package under ``root``, by dotted name."""
    found = {}
    for path in sorted((root / "piserver").rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imported(module: str, path: Path, known: set[str]) -> list[tuple[int, str]]:
    """``(line, module)`` for each ``piserver`` module that ``module`` imports."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            for alias in node.names:
                # ``from piserver.x import y``: y is a module or a name in x.
                name = f"{base}.{alias.name}"
                found.append((node.lineno, name if name in known else base))
    # One entry per line and module, however many names the line takes from it.
    return sorted({(line, name) for line, name in found if name.split(".")[0] == "piserver"})


def violations(root: Path) -> list[str]:
    """Each upward (or sideways) import under ``root``, and each module with no layer."""
    found = modules(root)
    problems = []
    for module, path in found.items():
        where = place(module)
        if where is None:
            problems.append(f"{module}: in no layer (add it to LAYERS in test_layers.py)")
            continue
        for line, target in imported(module, path, set(found)):
            there = place(target)
            if there is None or there.package == where.package or there.rank > where.rank:
                continue
            problems.append(
                f"{path.relative_to(root)}:{line}: {module} ({where.layer}) imports "
                f"{target} ({there.layer})"
            )
    return problems


def test_no_module_imports_a_layer_above_it():
    assert violations(repository_root()) == []


def test_every_layer_has_modules():
    """The picture is of the real code: no layer or package in it is empty."""
    places = {place(module) for module in modules(repository_root())}
    packages = {where.package for where in places if where}
    for layer, names in LAYERS[1:]:
        assert set(names) - {""} <= packages, layer


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def _clean_tree(root: Path) -> Path:
    return _tree(
        root,
        {
            "piserver/__init__.py": "",
            "piserver/common/__init__.py": "",
            "piserver/common/errors.py": "class Oops(Exception): pass\n",
            "piserver/wire/__init__.py": "",
            "piserver/wire/envelope.py": "from piserver.common.errors import Oops\n",
            "piserver/sessions/__init__.py": "from .stream import Stream\n",
            "piserver/sessions/stream.py": (
                "from piserver.wire import envelope\nfrom ..common import errors\nStream = 1\n"
            ),
            "piserver/service.py": "from piserver.tap import x\nfrom piserver import sessions\n",
            "piserver/tap.py": "x = 1\n",
        },
    )


def test_a_clean_tree_passes(tmp_path):
    assert violations(_clean_tree(tmp_path)) == []


def test_an_upward_import_fails(tmp_path):
    """The checker catches an upward import in each form a module can write it."""
    root = _clean_tree(tmp_path)
    (root / "piserver/common/errors.py").write_text(
        "def later():\n    from piserver.sessions.stream import Stream\n"
    )
    (root / "piserver/wire/envelope.py").write_text("from ..sessions import stream\n")
    (root / "piserver/common/__init__.py").write_text("import piserver.service\n")
    assert violations(root) == [
        "piserver/common/__init__.py:1: piserver.common (common) imports "
        "piserver.service (entry points)",
        "piserver/common/errors.py:2: piserver.common.errors (common) imports "
        "piserver.sessions.stream (sessions)",
        "piserver/wire/envelope.py:1: piserver.wire.envelope (wire) imports "
        "piserver.sessions.stream (sessions)",
    ]


def test_a_sideways_import_fails(tmp_path):
    """Packages of one layer stay independent of each other."""
    root = _tree(
        _clean_tree(tmp_path),
        {
            "piserver/agents/__init__.py": "",
            "piserver/repos/__init__.py": "",
            "piserver/repos/git.py": "from piserver.agents import launchers\n",
            "piserver/agents/launchers.py": "",
        },
    )
    assert violations(root) == [
        "piserver/repos/git.py:1: piserver.repos.git (domains) imports "
        "piserver.agents.launchers (domains)"
    ]


def test_a_module_outside_the_layers_fails(tmp_path):
    root = _tree(_clean_tree(tmp_path), {"piserver/helpers.py": ""})
    assert violations(root) == [
        "piserver.helpers: in no layer (add it to LAYERS in test_layers.py)"
    ]


def test_the_real_tree_would_fail_an_upward_import(tmp_path):
    """The same checker over a copy of the real package with one upward import added."""
    real = repository_root() / "piserver"
    for path in real.rglob("*.py"):
        copy = tmp_path / "piserver" / path.relative_to(real)
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_text(path.read_text())
    errors = tmp_path / "piserver/common/errors.py"
    errors.write_text(errors.read_text() + "\nfrom piserver.api import methods  # noqa\n")
    [problem] = violations(tmp_path)
    assert problem.startswith("piserver/common/errors.py:")
    assert problem.endswith(
        "piserver.common.errors (common) imports piserver.api.methods (application)"
    )
