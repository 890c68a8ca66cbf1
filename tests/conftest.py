import pytest

from bench import registry


@pytest.fixture
def isolated_registry(monkeypatch):
    """Plugins registered inside a test disappear after it (each test's tmp_path plugin file
    is a different module, and two modules claiming one name is, rightly, an error)."""
    registry.discover()
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    yield registry


@pytest.fixture
def one_thread():
    """One torch thread for tiny problems: a second thread only spins, and crawls when the
    other core is busy. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    from bench.core.env import torch_threads

    with torch_threads(1):
        yield
