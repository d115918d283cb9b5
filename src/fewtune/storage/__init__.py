"""Saved classifier folders: the format, its schema, atomic writes and one writer per model."""
