"""Every snippet of README.md and docs/*.md works as written.

A reader copies snippets, so each fenced block is checked by what it claims to be:

- ```yaml: a whole grid loads with :func:`bench.grid.spec.load_grid`; a block after
  ``<!-- snippet: fragment -->`` holds whole top-level sections, which replace those of
  ``configs/quickstart.yaml``, and the result loads.
- ```json: loads; after ``<!-- snippet: karpathy SPLIT -->`` it is a Karpathy annotation file
  that :func:`bench.data.karpathy.parse_split` accepts for that split.
- ```python: only the README's plugin, which must be ``examples/my_methods.py`` verbatim.
- ```bash: every ``python run_bench.py ...`` parses with the CLI's own parser, every config and
  plugin file it names exists, and what it would run is validated before compute the way the
  command does it (the grid with its ``--set``/``--plugin``; ``tune``'s search space);
  ``methods`` and ``protocols`` are run. A ``python benchmarks/X.py`` line names a script whose
  ``--help`` lists every option used. Any other shell line needs the block to be marked
  ``<!-- snippet: not-run: <why> -->`` (or be one of the README's two commands).

The checkers are tested on broken snippets too (``test_checker_*``), so a broken snippet fails.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
BASE_CONFIG = REPO / "configs" / "quickstart.yaml"
FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MARKER = re.compile(r"^<!--\s*(?:snippet:\s*(?P<snippet>.*?)|(?P<command>main-command|test-command))\s*-->$")


@dataclass(frozen=True)
class Snippet:
    """One fenced block: where it is, its language, its text and the marker just above it."""

    file: str
    line: int
    lang: str
    text: str
    marker: str | None = None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


def parse_snippets(text: str, name: str) -> list[Snippet]:
    """The fenced blocks of a markdown text; ``marker`` is the HTML comment on the last
    non-blank line before the opening fence (``fragment``, ``not-run: ...``, ``main-command``)."""
    out: list[Snippet] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opening = re.match(r"^```(\S*)\s*$", lines[i])
        if not opening:
            i += 1
            continue
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        assert j < len(lines), f"{name}:{i + 1}: a fence that never closes"
        k = i - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        found = MARKER.match(lines[k].strip()) if k >= 0 else None
        marker = (found.group("snippet") or found.group("command")) if found else None
        out.append(Snippet(name, i + 1, opening.group(1), "\n".join(lines[i + 1:j]) + "\n", marker))
        i = j + 1
    return out


def all_snippets(lang: str) -> list[Snippet]:
    found = []
    for path in FILES:
        found += [s for s in parse_snippets(path.read_text(encoding="utf-8"), path.relative_to(REPO).as_posix())
                  if s.lang == lang]
    return found


def _ids(snippets: list[Snippet]) -> list[str]:
    return [str(s) for s in snippets]


# ---------------------------------------------------------------------------------------------
# YAML


def merge(base: dict, fragment: dict) -> dict:
    """``fragment``'s top-level sections replace ``base``'s: a fragment shows a whole section
    (``datasets:``, ``model:``), so nothing of the base's version of it stays behind."""
    return {**copy.deepcopy(base), **copy.deepcopy(fragment)}


def check_yaml(snippet: Snippet, tmp_path: Path) -> None:
    from bench.grid.spec import load_grid

    data = yaml.safe_load(snippet.text)
    assert isinstance(data, dict), f"{snippet}: a YAML snippet must be a mapping"
    if snippet.marker == "fragment":
        data = merge(yaml.safe_load(BASE_CONFIG.read_text()), data)
    else:
        assert snippet.marker is None, f"{snippet}: unknown marker {snippet.marker!r} for a YAML block"
    path = tmp_path / "snippet.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    load_grid(path)


YAML_SNIPPETS = all_snippets("yaml")


@pytest.mark.parametrize("snippet", YAML_SNIPPETS, ids=_ids(YAML_SNIPPETS))
def test_yaml_snippet_loads(snippet, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    check_yaml(snippet, tmp_path)


def test_checker_rejects_a_broken_yaml_fragment(tmp_path, monkeypatch):
    """The README's real-data fragment once said `dataset:` where the config wants `datasets:`."""
    from bench.core.config import ConfigError

    monkeypatch.chdir(REPO)
    broken = Snippet("x.md", 1, "yaml", "dataset:\n  source: karpathy\n", "fragment")
    with pytest.raises(ConfigError, match="unknown config key 'dataset'"):
        check_yaml(broken, tmp_path)


# ---------------------------------------------------------------------------------------------
# JSON


def check_json(snippet: Snippet, tmp_path: Path) -> None:
    data = json.loads(snippet.text)
    if snippet.marker is None:
        return
    kind, _, split = snippet.marker.partition(" ")
    assert kind == "karpathy", f"{snippet}: unknown marker {snippet.marker!r} for a JSON block"
    from bench.data.karpathy import parse_split

    path = tmp_path / f"{split}.json"
    path.write_text(json.dumps(data))
    parsed = parse_split(path, split)
    assert parsed.image_paths and parsed.captions


JSON_SNIPPETS = all_snippets("json")


def test_readme_shows_both_karpathy_layouts():
    markers = {s.marker for s in JSON_SNIPPETS if s.file == "README.md"}
    assert {"karpathy train", "karpathy test"} <= markers


@pytest.mark.parametrize("snippet", JSON_SNIPPETS, ids=_ids(JSON_SNIPPETS))
def test_json_snippet_loads(snippet, tmp_path):
    check_json(snippet, tmp_path)


def test_checker_rejects_a_train_entry_with_a_caption_list(tmp_path):
    from bench.data.karpathy import AnnotationError

    broken = Snippet("x.md", 1, "json", '[{"image": "a.jpg", "caption": ["one", "two"]}]', "karpathy train")
    with pytest.raises(AnnotationError, match="must be a string in a train file"):
        check_json(broken, tmp_path)


@pytest.fixture
def plugin_registry(isolated_registry):
    """An isolated registry whose plugin files are imported afresh: a plugin module stays in
    ``sys.modules`` (and is not run again) once imported, so each test drops the ones it added."""
    before = set(sys.modules)
    yield isolated_registry
    for name in set(sys.modules) - before:
        if name.startswith("vl_bench_plugin_"):
            del sys.modules[name]


# ---------------------------------------------------------------------------------------------
# Python


def test_python_snippets_are_the_example_plugin():
    """The only Python block is the README's plugin, kept as a real file that the tests run."""
    plugin = (REPO / "examples" / "my_methods.py").read_text()
    blocks = all_snippets("python")
    assert [str(s) for s in blocks if s.text != plugin] == []
    assert any(s.file == "README.md" for s in blocks)


def test_example_plugin_registers_and_selects(plugin_registry):
    from bench.registry import get_method, load_plugins

    load_plugins([str(REPO / "examples" / "my_methods.py")])
    cls = get_method("longest-captions")
    assert cls.kind == "coreset"

    class Ctx:
        n_pairs = 4

        class data:  # noqa: N801 - stands in for PreparedDataset
            class train:  # noqa: N801
                captions = ("a", "a much longer one", "mid size", "xx")

        @staticmethod
        def real_subset(indices):
            return list(indices)

    assert list(cls(None).run(Ctx, 2, 0).pairs) == [1, 2]


# ---------------------------------------------------------------------------------------------
# Shell


def shell_commands(text: str) -> list[list[str]]:
    """The commands of a bash block: continuation lines joined, comments dropped, split at
    ``&&``, ``;`` and ``|``; each as its words (a redirection or ``&`` ends the words)."""
    joined = re.sub(r"\\\n", " ", text)
    commands: list[list[str]] = []
    for line in joined.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        words: list[str] = []
        for token in lexer:
            if token in ("&&", ";", "|", "||", "&"):
                if words:
                    commands.append(words)
                words = []
            elif token in (">", ">>", "2>&1", "<", "2>", "&>") or token.startswith((">", "2>", "<")):
                words.append(None)  # type: ignore[arg-type]  # the rest is a redirection target
            else:
                words.append(token)
        if words:
            commands.append(words)
    return [[w for w in _until_redirect(c)] for c in commands if c]


def _until_redirect(words: list[str | None]) -> list[str]:
    out = []
    for word in words:
        if word is None:
            break
        out.append(word)
    return out


def _normalised(argv: list[str]) -> list[str]:
    """As :func:`bench.commands.cli.main` reads its arguments: no command means ``run``."""
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        return ["run", *argv]
    return argv


def check_run_bench(argv: list[str], where: str, written: set[str] | None = None) -> None:
    """Parse ``python run_bench.py ARGV`` and validate what it would run, before any compute.
    A config in ``written`` is one an earlier line of the block writes (``recipes --output``):
    it cannot be read before it exists, so its command is only parsed."""
    from bench.commands import cli
    from bench.registry import load_plugins

    argv = _normalised(argv)
    try:
        args = cli.build_parser().parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(f"{where}: `run_bench.py {shlex.join(argv)}` does not parse (exit {exc.code})") from None
    config = getattr(args, "config", None)
    if config is not None and config in (written or set()):
        return
    if config is not None:
        assert (REPO / config).is_file(), f"{where}: config {config} does not exist"
    for plugin in getattr(args, "plugin", []):
        if plugin.endswith(".py"):
            assert (REPO / plugin).is_file(), f"{where}: plugin {plugin} does not exist"
    if args.command in ("run", "cache"):
        cli._load_grid(args)
    elif args.command == "tune":
        from bench.commands.tune import _find_method, check_trials, parse_space, tuning_data
        from bench.core.config import apply_overrides, load_yaml
        from bench.grid.spec import build_grid

        load_plugins(args.plugin)
        raw = apply_overrides(load_yaml(args.config), list(args.set))
        space = parse_space(args.space)
        for budget in args.budget:
            data, found = tuning_data(raw, args.method, budget, space, args.method_seeds)
            check_trials(_find_method(raw, args.method), budget, found, args.space)
            build_grid(data)
    elif args.command in ("methods", "protocols"):
        assert cli.main(argv) == 0, f"{where}: `run_bench.py {shlex.join(argv)}` failed"


_HELP: dict[str, str] = {}


def check_benchmark(script: str, argv: list[str], where: str) -> None:
    """A benchmark script exists, and its ``--help`` lists every option the snippet uses."""
    path = REPO / script
    assert path.is_file(), f"{where}: {script} does not exist"
    if script not in _HELP:
        done = subprocess.run([sys.executable, str(path), "--help"], cwd=REPO, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, f"{where}: {script} --help failed: {done.stderr[-500:]}"
        _HELP[script] = done.stdout
    for word in argv:
        option = word.split("=", 1)[0]
        if option.startswith("--"):
            assert re.search(rf"{re.escape(option)}\b", _HELP[script]), f"{where}: {script} has no option {option}"
        elif word.endswith(".yaml"):
            assert (REPO / word).is_file(), f"{where}: config {word} does not exist"


def check_bash(snippet: Snippet) -> None:
    marker = snippet.marker or ""
    if marker.startswith("not-run"):
        assert marker.partition(":")[2].strip(), f"{snippet}: `not-run` needs a reason (`not-run: why`)"
    written: set[str] = set()  # configs an earlier line writes
    for words in shell_commands(snippet.text):
        where = f"{snippet} `{shlex.join(words)}`"
        if words[:2] == ["python", "run_bench.py"]:
            check_run_bench(words[2:], where, written)
            if words[2:3] == ["recipes"] and "--output" in words:
                written.add(words[words.index("--output") + 1])
        elif words[0] == "python" and len(words) > 1 and words[1].startswith("benchmarks/"):
            check_benchmark(words[1], words[2:], where)
        elif not marker.startswith("not-run") and marker not in ("main-command", "test-command"):
            raise AssertionError(f"{where}: a shell line the tests do not run; run it in a test or mark the "
                                 "block `<!-- snippet: not-run: <why> -->`")


BASH_SNIPPETS = all_snippets("bash")


@pytest.mark.parametrize("snippet", BASH_SNIPPETS, ids=_ids(BASH_SNIPPETS))
def test_bash_snippet_parses_and_validates(snippet, plugin_registry, monkeypatch):
    monkeypatch.chdir(REPO)
    check_bash(snippet)


def test_every_snippet_has_a_known_language():
    every = [s for path in FILES for s in parse_snippets(path.read_text(encoding="utf-8"), path.name)]
    assert {s.lang for s in every} <= {"", "bash", "yaml", "json", "python"}


@pytest.mark.parametrize("text, match", [
    ("python run_bench.py --confg configs/quickstart.yaml\n", "does not parse"),
    ("python run_bench.py --config configs/nope.yaml\n", "does not exist"),
    ("python run_bench.py methods --plugin examples/nope.py\n", "does not exist"),
    ("ray start --head\n", "shell line the tests do not run"),
    ("python benchmarks/nope.py --x 1\n", "does not exist"),
])
def test_checker_rejects_a_broken_bash_line(text, match, plugin_registry, monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(AssertionError, match=match):
        check_bash(Snippet("x.md", 1, "bash", text))


def test_checker_accepts_a_config_an_earlier_line_writes_and_no_other(plugin_registry, monkeypatch):
    monkeypatch.chdir(REPO)
    text = "python run_bench.py recipes results/x --output r.yaml\npython run_bench.py --config r.yaml\n"
    check_bash(Snippet("x.md", 1, "bash", text))
    with pytest.raises(AssertionError, match="config r.yaml does not exist"):
        check_bash(Snippet("x.md", 1, "bash", "python run_bench.py --config r.yaml\n"))


def test_checker_validates_overrides_of_a_command(plugin_registry, monkeypatch):
    """A `--set` into a key the config has not is caught, as the command itself would."""
    from bench.core.config import ConfigError

    monkeypatch.chdir(REPO)
    with pytest.raises(ConfigError, match="evaluation.seedz"):
        check_bash(Snippet("x.md", 1, "bash", "python run_bench.py --set evaluation.seedz=[0]\n"))


def test_shell_commands_split_as_a_shell_does():
    text = "a --x 'y z' \\\n  --w 1 > log 2>&1 &  # note\necho $! > pid && b c | d\n"
    assert shell_commands(text) == [["a", "--x", "y z", "--w", "1"], ["echo", "$!"], ["b", "c"], ["d"]]


def test_not_run_blocks_say_why():
    for snippet in BASH_SNIPPETS:
        if (snippet.marker or "").startswith("not-run"):
            assert snippet.marker.partition(":")[2].strip(), snippet


# ---------------------------------------------------------------------------------------------
# The README's recipe for stopping one's own Ray head (never `ray stop`)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _pids_of(pattern: str) -> list[int]:
    done = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
    return [int(p) for p in done.stdout.split()]


@pytest.mark.skipif(shutil.which("pgrep") is None or shutil.which("ray") is None and
                    not (Path(sys.executable).parent / "ray").exists(), reason="needs pgrep and the ray CLI")
@pytest.mark.timeout(300)
def test_ray_head_stops_by_its_pid(tmp_path):
    """The README's cluster block, run as written on a free port: the head starts with one pid,
    its address file stays in its own temp dir (where a plain ray.init() would find and join it),
    `pgrep` + the GCS's parent find that pid, and `kill` of that one pid ends every process of
    that head."""
    block = next(s for s in BASH_SNIPPETS if s.file == "README.md" and "ray start --head" in s.text)
    port = _free_port()
    lines = [line.replace("6390", str(port)) for line in block.text.splitlines()]
    start = [line for line in lines if line.startswith(("ray start", "echo $!"))]
    kill = next(line for line in lines if line.startswith("kill "))
    temp_dir = f"/tmp/ray-head-{port}"
    # The dashboard's fixed port would clash with another head on this machine; the recipe is the rest.
    start[0] = start[0].replace("--block", f"--block --dashboard-port={_free_port()} --num-cpus=1")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run(["bash", "-c", "\n".join(start)], cwd=tmp_path, env=env, check=True, timeout=60)
    head = int((tmp_path / "ray-head.pid").read_text())
    try:
        log = tmp_path / "ray-head.log"  # opened by the background job, maybe after bash returned
        deadline = time.monotonic() + 180
        while not (log.exists() and "address='" in log.read_text()) and time.monotonic() < deadline:
            time.sleep(1)
        address = re.search(r"address='([^']*)'", log.read_text())
        assert address and address.group(1).endswith(f":{port}"), log.read_text()[-2000:]
        assert (Path(temp_dir) / "ray_current_cluster").read_text().strip().endswith(f":{port}")
        shared = Path("/tmp/ray/ray_current_cluster")
        assert not shared.exists() or not shared.read_text().strip().endswith(f":{port}")
        # Why the README gives the head its own --temp-dir: a plain ray.init() (a run without
        # --ray-address) joins the head recorded in its temp dir's address file.
        joined = subprocess.run([sys.executable, "-c", "import ray; ray.init(_temp_dir=%r, include_dashboard=False); "
                                 "print('GCS', ray.get_runtime_context().gcs_address)" % temp_dir],
                                capture_output=True, text=True, env=env, timeout=120)
        assert f"GCS {address.group(1)}" in joined.stdout, joined.stderr[-2000:]
        gcs = _pids_of(f"gcs_server.*--gcs_server_port={port}")
        assert len(gcs) == 1
        parent = subprocess.run(["ps", "-o", "ppid=", "-p", str(gcs[0])], capture_output=True, text=True).stdout
        assert int(parent) == head
        subprocess.run(["bash", "-c", kill], cwd=tmp_path, check=True, timeout=30)
        deadline = time.monotonic() + 90
        while _pids_of(temp_dir) and time.monotonic() < deadline:
            time.sleep(1)
        assert _pids_of(temp_dir) == []
    finally:
        for pid in [head, *_pids_of(temp_dir)]:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        shutil.rmtree(temp_dir, ignore_errors=True)
