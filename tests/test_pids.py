"""Each pid source under a fake root, built from recorded layouts (cgroup v1 cgroupfs here)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import pytest

from container_netstat.pids import PidResolver, Resolved
from container_netstat.procfs import ProcFS

CID = "3879b73a86c7680b932e27d864fa587667df096cff2163bf65aa5330d2ac889a"
OTHER = "f" * 64
# /proc/<pid>/cgroup of a Docker 20.10 container on this machine (cgroup v1, cgroupfs).
CGROUP_V1 = "".join(
    f"{n}:{c}:/docker/{{id}}\n"
    for n, c in [(9, "name=systemd"), (8, "pids"), (4, "memory"), (1, "cpu"), (0, "")]
)


def fake_proc(root: Path, pid: int, container_id: str, state: str = "S") -> None:
    d = root / "proc" / str(pid)
    d.mkdir(parents=True)
    (d / "cgroup").write_text(CGROUP_V1.format(id=container_id))
    (d / "stat").write_text(f"{pid} (sleep) {state} 1 1 1 0 -1\n")


def fake_cgroup(root: Path, rel: str, pids: List[int]) -> None:
    d = root / "cgroup" / rel
    d.mkdir(parents=True)
    (d / "cgroup.procs").write_text("".join(f"{p}\n" for p in pids))


def resolver(root: Path, inspect=None) -> PidResolver:
    return PidResolver(ProcFS(str(root / "proc")), str(root / "cgroup"), str(root / "run"), inspect=inspect)


@pytest.mark.parametrize(
    "rel",
    [
        "pids/docker/{id}",
        "memory/system.slice/docker-{id}.scope",
        "system.slice/docker-{id}.scope",  # cgroup v2, systemd driver
        "docker/{id}",  # cgroup v2, cgroupfs driver
    ],
)
def test_cgroup_source_layouts(tmp_path: Path, rel: str) -> None:
    fake_proc(tmp_path, 3600, CID)
    fake_proc(tmp_path, 3700, CID)
    fake_cgroup(tmp_path, rel.format(id=CID), [3700, 3600])
    assert resolver(tmp_path).from_cgroup(CID) == 3600  # the lowest: the container's init


def test_kubernetes_pod_cgroup_needs_the_pod_uid(tmp_path: Path) -> None:
    uid = "0b5b2c0e-1111-2222-3333-444455556666"
    fake_proc(tmp_path, 10, CID)
    fake_cgroup(tmp_path, f"pids/kubepods/burstable/pod{uid}/{CID}", [10])
    assert resolver(tmp_path).from_cgroup(CID) is None
    assert resolver(tmp_path).from_cgroup(CID, uid) == 10


def test_cgroup_pid_of_another_container_is_rejected(tmp_path: Path) -> None:
    fake_proc(tmp_path, 3600, OTHER)
    fake_cgroup(tmp_path, f"pids/docker/{CID}", [3600])
    assert resolver(tmp_path).from_cgroup(CID) is None


def test_pid_file_source(tmp_path: Path) -> None:
    fake_proc(tmp_path, 77, CID)
    path = tmp_path / "run/docker/containerd/daemon/io.containerd.runtime.v2.task/moby" / CID
    path.mkdir(parents=True)
    (path / "init.pid").write_text("77")
    assert resolver(tmp_path).from_pid_file(CID) == 77


def test_stale_pid_file_pointing_at_a_reused_pid_is_rejected(tmp_path: Path) -> None:
    fake_proc(tmp_path, 77, OTHER)  # pid 77 now belongs to something else
    path = tmp_path / "run/containerd/io.containerd.runtime.v2.task/moby" / CID
    path.mkdir(parents=True)
    (path / "init.pid").write_text("77")
    assert resolver(tmp_path).from_pid_file(CID) is None


def test_order_and_fallback_to_inspect(tmp_path: Path) -> None:
    asked: List[str] = []

    def inspect(container_id: str) -> Optional[int]:
        asked.append(container_id)
        return {OTHER: 900}.get(container_id)

    fake_proc(tmp_path, 3600, CID)
    fake_cgroup(tmp_path, f"pids/docker/{CID}", [3600])
    gone = "e" * 64
    found = resolver(tmp_path, inspect).resolve([(CID, ""), (OTHER, ""), (gone, "")])
    assert found == {CID: Resolved(3600, "cgroup"), OTHER: Resolved(900, "inspect")}
    assert sorted(asked) == sorted([OTHER, gone])  # the fast path served CID without inspect


def test_missing_sources_without_inspect_resolve_nothing(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    assert resolver(tmp_path).resolve([(CID, "")]) == {}
