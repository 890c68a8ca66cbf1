"""The README is where a user starts: its two commands are what CI and users run, it stays
short, and it keeps the sections, markers and warnings a user needs. Its snippets are
checked one by one in tests/test_snippets.py."""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


def _command(marker: str) -> str:
    after = README.split(f"<!-- {marker} -->", 1)[1]
    block = after.split("```bash\n", 1)[1].split("```", 1)[0]
    return block.strip()


def _section(title: str) -> str:
    return README.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_main_command_installs_and_runs_the_quickstart():
    cmd = _command("main-command")
    assert "pip install -e ." in cmd and cmd.endswith("python run_bench.py")


def test_test_command_installs_dev_extra_and_runs_pytest():
    cmd = _command("test-command")
    assert 'pip install -e ".[dev]"' in cmd and "pytest" in cmd


def test_readme_is_short():
    assert len(README.splitlines()) <= 350


def test_readme_has_the_sections_a_user_starts_from():
    for title in ("The two commands", "What a run does, and where the results go", "Reading the results",
                  "Grid configs", "Adding a method", "Real data: Flickr30K and COCO", "Clusters and GPUs",
                  "Measured so far"):
        assert _section(title).strip(), title


def test_readme_plugin_example_is_the_example_file():
    """The 'Adding a method' code is examples/my_methods.py, which tests/test_snippets.py runs."""
    code = _section("Adding a method").split("```python\n", 1)[1].split("```", 1)[0]
    assert code == (REPO / "examples" / "my_methods.py").read_text()


def test_readme_leaves_slots_for_features_described_later():
    assert "<!-- slot: tuning -->" in README
    assert "<!-- slot: toy-real-data -->" in _section("Real data: Flickr30K and COCO")


def test_real_data_section_shows_the_config_key_and_offline_models():
    real = _section("Real data: Flickr30K and COCO")
    assert "\ndatasets:\n" in real and "\ndataset:\n" not in real
    assert "HF_HUB_OFFLINE=1" in real


def test_clusters_section_warns_against_ray_stop_and_stops_by_pid():
    clusters = _section("Clusters and GPUs")
    assert "`ray stop` stops *every* Ray on the machine" in clusters
    assert "--ray-address" in clusters and "--block" in clusters and 'kill "$(cat ray-head.pid)"' in clusters
    assert "ray stop\n" not in clusters and "\nray stop" not in clusters


def test_measured_results_live_in_docs_results():
    """The README keeps the headline numbers and points to docs/results.md for the rest."""
    measured = _section("Measured so far")
    assert "](docs/results.md)" in measured and "8.3 ± 0.3" in measured and "11.1 ± 0.3" in measured
    assert "| method | pairs |" not in README  # the tables moved
    results = (REPO / "docs" / "results.md").read_text()
    for kept in ("| distill-joint | 100 | 2.5 ± 0.8 | 8.6 ± 0.6 |", "### Memory and speed of matching",
                 "134 s", "python run_bench.py --config\nconfigs/embedded_full.yaml"):
        assert kept in results, kept
