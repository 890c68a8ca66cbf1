"""Vision-language dataset distillation and coreset benchmark: the framework package."""

__version__ = "0.1.0"
