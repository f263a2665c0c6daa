"""--include / --exclude: which containers a run reports.

A pattern with ``=`` matches a label, ``KEY=VALUE`` (split at the first ``=``, so the
value may hold more ``=``; the value is a glob); any other pattern is a glob on the
container name. Filtering happens before namespaces are formed: a namespace is
reported if any of its containers is selected.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import List, Sequence

from container_netstat.records import Container


def matches(container: Container, pattern: str) -> bool:
    """True if the container's name (glob) or one of its labels (KEY=VALUE glob) matches."""
    key, sep, value = pattern.partition("=")
    if sep:
        return key in container.labels and fnmatchcase(container.labels[key], value)
    return fnmatchcase(container.name, pattern)


def select(containers: Sequence[Container], include: Sequence[str], exclude: Sequence[str]) -> List[Container]:
    """Containers matching any include pattern (all if none) and no exclude pattern."""
    return [
        c
        for c in containers
        if (not include or any(matches(c, p) for p in include)) and not any(matches(c, p) for p in exclude)
    ]
