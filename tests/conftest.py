import pytest

from bench import registry


@pytest.fixture
def isolated_registry(monkeypatch):
    """Plugins registered inside a test disappear after it (each test's tmp_path plugin file
    is a different module, and two modules claiming one name is, rightly, an error)."""
    registry.discover()
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    yield registry
