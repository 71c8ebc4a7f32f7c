"""The installed distribution's version, read from package metadata."""

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__"]

try:
    __version__ = version("keyapi-async")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
"""The installed version of keyapi-async (PEP 440)."""
