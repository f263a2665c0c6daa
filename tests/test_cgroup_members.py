"""Every process of a container, from its cgroup tree under a fake root (layouts as in
tests/test_cgroups.py), and the cases where the tree does not answer. The real tree of a
real container is in tests/integration/test_hostnet_docker.py."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import pytest

from container_netstat import cgroups
from container_netstat.errors import ProcessGone
from container_netstat.cgroup_members import MemberFinder, MembersUnknown, read_procs, walk
from container_netstat.procfs import ProcFS

ID = "3879b73a86c7680b932e27d864fa587667df096cff2163bf65aa5330d2ac889a"
OTHER = "f" * 64
UID = "0b5b2c0e-1111-2222-3333-444455556666"
# This machine's /proc/<pid>/cgroup for a Docker container (cgroup v1 hybrid, cgroupfs).
V1 = "9:name=systemd:{p}\n8:pids:{p}\n4:memory:{p}\n2:cpuacct:{p}\n1:cpu:{p}\n0::{p}\n"


def fake_proc(root: Path, pids: Dict[int, str]) -> ProcFS:
    for pid, text in pids.items():
        d = root / "proc" / str(pid)
        d.mkdir(parents=True)
        (d / "cgroup").write_text(text)
        (d / "stat").write_text(f"{pid} (sh) S 1 1 1 0 -1\n")
    return ProcFS(str(root / "proc"))


def cgroup_dir(root: Path, rel: str, pids: List[int]) -> None:
    d = root / "cgroup" / rel
    d.mkdir(parents=True, exist_ok=True)
    (d / "cgroup.procs").write_text("".join(f"{p}\n" for p in pids))


def finder(root: Path, proc: ProcFS, **kw: object) -> MemberFinder:
    return MemberFinder(proc, str(root / "cgroup"), **kw)  # type: ignore[arg-type]


def test_container_dirs_end_at_the_container() -> None:
    text = V1.format(p=f"/docker/{ID}") + f"0::/system.slice/docker-{ID}.scope/init.scope\n"
    dirs = cgroups.container_dirs(text, ID)
    assert ("pids", f"docker/{ID}") in dirs and ("name=systemd", f"docker/{ID}") in dirs
    assert ("", f"system.slice/docker-{ID}.scope") in dirs
    assert cgroups.container_dirs(text, OTHER) == []


def test_container_dirs_of_a_cgroup_named_after_another_container_are_the_outer_ones() -> None:
    text = f"0::/docker/{ID}/docker/{OTHER}\n"
    assert cgroups.container_dirs(text, ID) == [("", f"docker/{ID}")]
    assert cgroups.container_dirs(text, OTHER) == []  # the process is never the inner id's


def test_a_process_in_a_cgroup_named_after_another_container_stays_with_its_own(tmp_path: Path) -> None:
    # Container ID made docker/ID/docker/OTHER and moved process 12 there; OTHER is elsewhere.
    proc = fake_proc(tmp_path, {10: V1.format(p=f"/docker/{ID}"), 12: V1.format(p=f"/docker/{ID}/docker/{OTHER}"),
                                20: V1.format(p=f"/docker/{OTHER}")})
    cgroup_dir(tmp_path, f"pids/docker/{ID}", [10])
    cgroup_dir(tmp_path, f"pids/docker/{ID}/docker/{OTHER}", [12])
    cgroup_dir(tmp_path, f"pids/docker/{OTHER}", [20])
    found = finder(tmp_path, proc)
    assert found.pids(ID, 12) == [10, 12]  # found from the moved process too
    assert found.pids(OTHER, 20) == [20]
    scanned = finder(tmp_path, proc)
    assert scanned._from_scan(OTHER) == [20] and scanned._from_scan(ID) == [10, 12]


def test_v1_tree_with_nested_cgroups(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, {10: V1.format(p=f"/docker/{ID}")})
    cgroup_dir(tmp_path, f"pids/docker/{ID}", [10, 11])
    cgroup_dir(tmp_path, f"pids/docker/{ID}/worker", [12, 13, 12])  # repeated, as the kernel may
    cgroup_dir(tmp_path, f"pids/docker/{ID}/worker/deeper", [14])
    cgroup_dir(tmp_path, f"pids/docker/{OTHER}", [20])
    found = finder(tmp_path, proc)
    assert found.pids(ID, 10) == [10, 11, 12, 13, 14]
    assert found.sources[ID].endswith(f"pids/docker/{ID}")


def test_v2_is_preferred_and_a_hybrid_host_has_it_under_unified(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, {10: V1.format(p=f"/docker/{ID}")})
    cgroup_dir(tmp_path, f"unified/docker/{ID}", [10, 11])
    cgroup_dir(tmp_path, f"pids/docker/{ID}", [10])
    assert finder(tmp_path, proc).pids(ID, 10) == [10, 11]


def test_unified_host_systemd_scope_with_sub_cgroups(tmp_path: Path) -> None:
    pod_slice = f"kubepods-besteffort-pod{UID.replace('-', '_')}.slice"
    rel = f"kubepods.slice/kubepods-besteffort.slice/{pod_slice}/cri-containerd-{ID}.scope"
    proc = fake_proc(tmp_path, {30: f"0::/{rel}/container\n"})
    cgroup_dir(tmp_path, rel, [])  # a v2 cgroup with children holds no process itself
    cgroup_dir(tmp_path, f"{rel}/container", [30, 31])
    cgroup_dir(tmp_path, f"{rel}/init.scope", [32])
    assert finder(tmp_path, proc).pids(ID, 30) == [30, 31, 32]


def test_cpu_cpuacct_comounted(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, {10: f"3:cpu,cpuacct:/docker/{ID}\n"})
    cgroup_dir(tmp_path, f"cpu,cpuacct/docker/{ID}", [10, 11])
    assert finder(tmp_path, proc).pids(ID, 10) == [10, 11]


def test_tree_without_the_known_pid_falls_back_to_one_scan(tmp_path: Path) -> None:
    # seen from another cgroup namespace, the path under our root is not the container's
    text = f"0::/../../docker/{ID}\n"
    proc = fake_proc(tmp_path, {10: text, 11: text, 12: f"0::/docker/{OTHER}\n", 13: "0::/user.slice\n"})
    cgroup_dir(tmp_path, f"docker/{ID}", [99])
    found = finder(tmp_path, proc)
    assert found.pids(ID, 10) == [10, 11]
    assert found.pids(OTHER, 12) == [12]  # the same scan, not a second one
    assert found.sources[ID] == "proc-scan"


def test_known_members_from_the_backend_scan_are_used(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, {})
    assert finder(tmp_path, proc, known={ID: [7, 5, 7]}).pids(ID, 5) == [5, 7]


def test_no_source_lists_the_container(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, {10: f"0::/docker/{ID}\n"})
    with pytest.raises(MembersUnknown, match=ID[:12]):
        finder(tmp_path, proc, known={}).pids(ID, 10)


def test_known_pid_gone(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, {})
    with pytest.raises(ProcessGone):
        finder(tmp_path, proc).pids(ID, 10)


def test_long_cgroup_procs_is_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "cgroup.procs"
    path.write_text("".join(f"{p}\n" for p in range(100000, 130000)))  # 210 KB
    assert len(read_procs(str(path)) or []) == 30000


def test_walk_of_a_missing_cgroup(tmp_path: Path) -> None:
    assert walk(str(tmp_path / "nope")) is None


CGROUP2 = Path(__file__).parent / "fixtures" / "cgroup2"  # recorded on a pure cgroup v2 host


@pytest.mark.parametrize("pid, container_id", [
    (30504, "0049c6d5bbd43f93519e0b054cf5ed30c7cc8fa25c02b7c7d16272c195246920"),
    (30569, "85b580d66c9a44b00879b30483a71f8e421f1338ee50da2eef7b31cd44af9f45"),
])
def test_recorded_cgroup2_host(pid: int, container_id: str) -> None:
    proc = ProcFS(str(CGROUP2 / "proc"))
    found = MemberFinder(proc, str(CGROUP2 / "sys-fs-cgroup"))
    pids = found.pids(container_id, pid)
    assert pid in pids
    rel = cgroups.container_dirs(proc.read_cgroup(pid), container_id)[0][1]
    assert pids == sorted(read_procs(str(CGROUP2 / "sys-fs-cgroup" / rel / "cgroup.procs")) or [])
    assert found.sources[container_id] == f"cgroup {CGROUP2 / 'sys-fs-cgroup' / rel}"
