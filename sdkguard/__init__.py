"""sdkguard: make every call made with the anthropic SDK survive a bad network."""

from sdkguard._version import __version__

__all__ = ["__version__"]
