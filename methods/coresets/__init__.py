"""Coreset methods: each module holds one selection rule (a pure ``select``) and its registration."""
