"""Vision-language dataset distillation and coreset benchmark: the framework package.

Rooms, bottom to top (a room imports only from rooms below it; tests/test_layers.py checks):
core, data, models, protocol, distill, the plugin face (registry.py, methods_api.py), grid,
reports, commands. docs/architecture.md says what each holds.
"""

__version__ = "0.1.0"
