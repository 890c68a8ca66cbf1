"""The README's two commands are what CI and users run: keep them well-formed."""

from pathlib import Path

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _command(marker: str) -> str:
    after = README.split(f"<!-- {marker} -->", 1)[1]
    block = after.split("```bash\n", 1)[1].split("```", 1)[0]
    return block.strip()


def test_main_command_installs_and_runs_the_quickstart():
    cmd = _command("main-command")
    assert "pip install -e ." in cmd and cmd.endswith("python run_bench.py")


def test_test_command_installs_dev_extra_and_runs_pytest():
    cmd = _command("test-command")
    assert 'pip install -e ".[dev]"' in cmd and "pytest" in cmd
