"""The settings of one run, frozen: what the options and the environment gave, and nothing else.

cli.py builds them from click's options; run.py and outputs.py take them. Defaults here are the
options' defaults, so a test or another program gets the same run as the command line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, AbstractSet, Mapping, Optional, Tuple

from container_netstat.metrics import DEFAULT_GROUPS
from container_netstat.push import DEFAULT_URL, Target

if TYPE_CHECKING:  # pragma: no cover
    from container_netstat.runtime_dirs import Dirs


# Worker threads reading namespaces: one per CPU this process may run on, at most 4. Dumps
# spend their time in the kernel (recv releases the GIL); more than 4 only add contention
# on the host's one TCP table.
DEFAULT_WORKERS = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 4)


@dataclass(frozen=True)
class HostPaths:
    """Where the host's trees are seen from here (``/host/...`` when the tool runs in a container)."""

    proc_root: str = "/proc"
    cgroup_root: str = "/sys/fs/cgroup"
    run_root: str = "/run"
    var_root: str = "/var"
    host_root: str = "/"
    runtime_dirs: Optional["Dirs"] = None  # --runtime-dir: a runtime's directories, not found but given


@dataclass(frozen=True)
class Settings:
    """What one snapshot reads, from where, and how."""

    runtime: str = "auto"  # discovery.RUNTIMES
    docker_host: Optional[str] = None
    docker_timeout: float = 10.0
    paths: HostPaths = field(default_factory=HostPaths)
    groups: AbstractSet[str] = DEFAULT_GROUPS
    # The privileged path: True when TCP states were asked for (--tcp-states, --metrics with
    # states, --sort close_wait), so they are read from /proc where sock_diag cannot be used;
    # False leaves them out there (the /proc path costs 4-12x a run without them).
    states_asked: bool = False
    include: Tuple[str, ...] = ()
    exclude: Tuple[str, ...] = ()
    scope_overrides: Mapping[str, str] = field(default_factory=dict)  # --field-scope
    fd_cap: int = 65536  # --hostnet-fd-cap
    workers: int = DEFAULT_WORKERS  # --workers: namespaces read at once (1: one after another)


@dataclass(frozen=True)
class Delivery:
    """Where the items go and under which endpoint (push, and the JSON that shows what is pushed)."""

    falcon_url: str = DEFAULT_URL
    endpoint: Optional[str] = None  # --endpoint: else the falcon-agent's name (agent.py), else the host name
    step: int = 60
    connect_timeout: float = Target.connect_timeout
    read_timeout: float = Target.read_timeout
    batch_size: int = 1000
    # Where the falcon-agent's transfer is (transfer.py): --transfer-addr, else --agent-config,
    # else the running agent's configuration.
    transfer_addrs: Tuple[str, ...] = ()
    agent_config: Optional[str] = None
