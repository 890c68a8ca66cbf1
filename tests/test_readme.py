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


def test_readme_plugin_example_registers_and_selects(tmp_path, isolated_registry):
    """The README's 'Adding a method' example, run as written."""
    import numpy as np

    from bench.registry import get_method, load_plugins

    section = README.split("## Adding a method", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    plugin = tmp_path / "my_methods.py"
    plugin.write_text(code)
    load_plugins([str(plugin)])
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

    out = cls(None).run(Ctx, 2, 0)
    assert list(out.pairs) == [1, 2]
    assert isinstance(np.asarray(out.pairs), np.ndarray)
