"""Distillation methods (trajectory matching variants)."""
