"""The exception tree: one base, translated from OS and library errors at the boundary."""

from __future__ import annotations


class ContainerNetstatError(Exception):
    """Base of every error this package raises on purpose."""


class ParseError(ContainerNetstatError):
    """A /proc file did not have the format we expect."""

    def __init__(self, path: str, message: str, line: int | None = None) -> None:
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {message}")
        self.path = path
        self.line = line


class ProcessGone(ContainerNetstatError):
    """The process (and so, usually, its container) exited before we could read it."""

    def __init__(self, pid: int, path: str) -> None:
        super().__init__(f"process {pid} is gone ({path})")
        self.pid = pid
        self.path = path


class ProcReadError(ContainerNetstatError):
    """A /proc file exists but could not be read (permissions, I/O)."""


class DockerUnavailable(ContainerNetstatError):
    """The Docker daemon could not be reached or refused us."""


class PushError(ContainerNetstatError):
    """The receiver could not be reached or did not accept a batch."""
