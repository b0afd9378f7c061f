"""The package version (a leaf module: the package and its modules import it from here)."""

__version__ = "0.1.0"
