"""Per-container network connection health for container hosts."""

__version__ = "0.1.0"
