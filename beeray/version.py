"""The package version, in one place (beeray/__init__.py re-exports it)."""

__version__ = "0.1.0"
