"""Which kernel-dependent fields are per network namespace on the running kernel.

Rules (docs/facts.rst, "What in /proc/<pid>/net is per network namespace"):
- ``TCP: inuse``/``UDP: inuse`` (sockstat) and ``TCP6``/``UDP6`` (sockstat6), and snmp's
  ``Tcp:``/``Udp:`` MIBs are per network namespace on every kernel.
- ``TCP: tw`` is per namespace since the TIME_WAIT accounting moved into the
  per-netns ``tcp_death_row`` ("Namespaceify tcp_max_tw_buckets", about 4.13).
- ``sockets: used`` is per namespace since commit 648845ab7e20 ("sock: Move the
  socket inuse to namespace", 4.16).
- ``TCP: orphan``, ``alloc``, ``mem`` and ``UDP: mem`` are global counters on every
  kernel: they are reported once, as host metrics, never tagged as a container.
- ``net.ipv4.ip_local_port_range`` is per namespace since commit 0bbf87d852d7 (3.18).
Distributions backport, so the version table can be overridden per field (``--field-scope``).
"""

from __future__ import annotations

import re
from typing import Dict, Mapping, Optional, Tuple

from container_netstat.errors import ContainerNetstatError

NETNS = "netns"
HOST = "host"
SCOPES = (NETNS, HOST)

# field -> (first kernel where it is per namespace, why)
SCOPE_TABLE: Dict[str, Tuple[Tuple[int, int], str]] = {
    "tw": ((4, 13), "per-netns tcp_death_row, 'Namespaceify tcp_max_tw_buckets'"),
    "sockets_used": ((4, 16), "commit 648845ab7e20 'sock: Move the socket inuse to namespace'"),
}
# net.ipv4.ip_local_port_range is read inside each namespace either way: before this the
# host's range is the one that applies there, so tcp.ports.pressure_pct holds on both sides.
PORT_RANGE_SCOPE = ((3, 18), "commit 0bbf87d852d7 'net ipv4: Convert ipv4.ip_local_port_range to be per netns'")


def check_overrides(overrides: Mapping[str, str]) -> None:
    """ContainerNetstatError for an override naming an unknown field or scope."""
    for name, scope in overrides.items():
        if name not in SCOPE_TABLE or scope not in SCOPES:
            raise ContainerNetstatError(
                f"bad scope override {name}={scope}: fields are {', '.join(SCOPE_TABLE)}, scopes {', '.join(SCOPES)}"
            )


def kernel_version(release: str) -> Optional[Tuple[int, int]]:
    """(major, minor) from a release string such as ``6.18.44-fc-v669``; None if unreadable."""
    match = re.match(r"(\d+)\.(\d+)", release)
    return (int(match.group(1)), int(match.group(2))) if match else None


def field_scopes(release: str, overrides: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """Decide, per kernel-dependent field, whether it is per namespace on this kernel.

    An unreadable release is treated as an old kernel: reporting a host value as a
    container's is the worse mistake.
    """
    version = kernel_version(release)
    scopes = {
        name: NETNS if version is not None and version >= since else HOST
        for name, (since, _why) in SCOPE_TABLE.items()
    }
    check_overrides(overrides or {})
    scopes.update(overrides or {})
    return scopes
