"""The rooms of ``bench/`` and the direction of imports between them (docs/architecture.md).

Every ``import`` of every module under ``bench/`` is parsed, including imports inside functions
and under ``TYPE_CHECKING``: a module may import from its own room and from rooms below it,
never from a room above. A new module must sit in a known room.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"

#: Bottom to top. A room is a subpackage of bench/ or a named top-level module.
ROOMS: tuple[tuple[str, ...], ...] = (
    ("core",),
    ("data",),
    ("models",),
    ("protocol",),
    ("distill",),
    ("registry", "methods_api", "trajectory_api"),  # the plugin face: what a method author reads
    ("grid",),
    ("reports",),
    ("commands",),
)
LEVEL = {name: level for level, names in enumerate(ROOMS) for name in names}
#: The only top-level modules besides the rooms' packages.
TOP_LEVEL_MODULES = {"__init__", "registry", "methods_api", "trajectory_api"}


def room_of_module(dotted: str) -> str | None:
    """The room of ``bench.<room>...`` (None for ``bench`` itself or a module outside bench)."""
    parts = dotted.split(".")
    if parts[0] != "bench" or len(parts) < 2:
        return None
    return parts[1]


def room_of_file(path: Path, root: Path = BENCH) -> str:
    rel = path.relative_to(root)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imported_modules(path: Path, root: Path = BENCH) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in ``path``, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = ["bench", *path.relative_to(root).parent.parts]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module == "bench":  # from bench import grid: the names are the modules
                found += [(node.lineno, f"bench.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, module))
    return found


def upward_imports(root: Path = BENCH) -> list[str]:
    problems = []
    for path in sorted(root.rglob("*.py")):
        mine = room_of_file(path, root)
        if mine == "__init__":
            continue
        for line, module in imported_modules(path, root):
            theirs = room_of_module(module)
            if theirs is None or theirs == mine:
                continue
            if theirs not in LEVEL:
                problems.append(f"{path.relative_to(root.parent)}:{line} imports {module}: not a known room")
            elif LEVEL[theirs] > LEVEL[mine]:
                problems.append(f"{path.relative_to(root.parent)}:{line} ({mine}) imports {module} ({theirs}): "
                                "an upward import")
    return problems


def test_every_module_is_in_a_known_room():
    rooms = {room_of_file(p) for p in BENCH.rglob("*.py")} - {"__init__"}
    assert rooms <= set(LEVEL), f"modules outside the rooms of docs/architecture.md: {sorted(rooms - set(LEVEL))}"
    top = {p.stem for p in BENCH.glob("*.py")}
    assert top <= TOP_LEVEL_MODULES, f"top-level modules beyond the plugin face: {sorted(top - TOP_LEVEL_MODULES)}"


def test_every_room_says_its_job():
    for room in (r for names in ROOMS for r in names if (BENCH / r).is_dir()):
        doc = ast.get_docstring(ast.parse((BENCH / room / "__init__.py").read_text(encoding="utf-8")))
        assert doc and len(doc.split()) >= 8, f"bench/{room}/__init__.py must say the room's job in a docstring"


def test_no_import_runs_upward():
    problems = upward_imports()
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("source, room, expected", [
    ("from bench.grid.store import ResultStore\n", "protocol", "an upward import"),
    ("from ..reports import tables\n", "grid", "an upward import"),
    ("from bench import commands\n", "data", "an upward import"),
    ("def f():\n    from bench.commands.cli import main\n", "core", "an upward import"),
    ("from bench.attic import thing\n", "core", "not a known room"),
])
def test_the_check_finds_an_upward_import(tmp_path, source, room, expected):
    """The check itself: an upward import planted in a copy of one room is reported."""
    fake = tmp_path / "bench"
    (fake / room).mkdir(parents=True)
    (fake / room / "__init__.py").write_text('"""x"""\n')
    (fake / room / "planted.py").write_text(source)
    problems = upward_imports(fake)
    assert len(problems) == 1 and expected in problems[0], problems


def test_imports_within_and_below_a_room_pass(tmp_path):
    fake = tmp_path / "bench"
    (fake / "grid").mkdir(parents=True)
    (fake / "grid" / "cell.py").write_text(
        "from bench.grid.store import ResultStore\nfrom bench.core.io import stable_hash\n"
        "from bench.registry import get_method\nfrom . import spec\nimport torch\n")
    assert upward_imports(fake) == []
