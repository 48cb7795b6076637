"""Reporters: each is a plugin that renders what a run produced (they never compute)."""
