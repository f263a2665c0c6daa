"""Each pid source under a fake root, built from recorded layouts.

cgroup v1 cgroupfs trees are built here; the pure cgroup v2 tree and its processes are
tests/fixtures/cgroup2 (recorded in scripts/setup-cgroup2.sh's set-up, see its SOURCES.md).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any, Iterator, List, Optional

import pytest

from container_netstat import pids
from container_netstat.pids import PidResolver, Resolved, detect_layout, pod_cgroups
from container_netstat.procfs import ProcFS

CGROUP2 = Path(__file__).parent / "fixtures" / "cgroup2"
# The fixture's containers: a plain one with two processes, a burstable and a guaranteed pod's.
V2_PLAIN = "0049c6d5bbd43f93519e0b054cf5ed30c7cc8fa25c02b7c7d16272c195246920"
V2_BURSTABLE = "85b580d66c9a44b00879b30483a71f8e421f1338ee50da2eef7b31cd44af9f45"
V2_GUARANTEED = "b87fcd3ff51a1aac23436f2281c3bd2bcee4dc287527b3b87d9ef9f77a5d6bcd"
UID_BURSTABLE = "76e85c6e-77ee-4133-9e31-bd624a837ba5"
UID_GUARANTEED = "8452dbe0-9f18-4949-bd62-5adec9c44c84"

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


@pytest.mark.parametrize("uid", ["0b5b2c0e-1111-2222-3333-444455556666", ""])
def test_kubernetes_pod_cgroup_with_or_without_the_pod_uid(tmp_path: Path, uid: str) -> None:
    real_uid = "0b5b2c0e-1111-2222-3333-444455556666"
    fake_proc(tmp_path, 10, CID)
    fake_cgroup(tmp_path, f"pids/kubepods/burstable/pod{real_uid}/{CID}", [10])
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


@pytest.fixture
def opens(monkeypatch: pytest.MonkeyPatch) -> Iterator[List[str]]:
    """Every cgroup.procs or pid file the resolver opens, in order."""
    opened: List[str] = []
    read = pids._read_pids

    def counting(path: str) -> List[int]:
        opened.append(path)
        return read(path)

    monkeypatch.setattr(pids, "_read_pids", counting)
    yield opened


def v2_resolver(inspect: Any = None) -> PidResolver:
    return PidResolver(ProcFS(str(CGROUP2 / "proc")), str(CGROUP2 / "sys-fs-cgroup"), "/nonexistent",
                       inspect=inspect)


def test_layouts_are_detected_from_the_cgroup_root(tmp_path: Path) -> None:
    assert detect_layout(str(CGROUP2 / "sys-fs-cgroup")) == ("",)  # cgroup2 at the root
    for name in ("memory", "pids", "cpu", "unified"):  # this machine's hybrid layout, in part
        (tmp_path / "hybrid" / name).mkdir(parents=True)
    assert detect_layout(str(tmp_path / "hybrid")) == ("pids", "memory", "cpu", "unified")
    (tmp_path / "empty").mkdir()
    assert detect_layout(str(tmp_path / "empty")) == pids._HIERARCHIES


def test_pure_v2_tree_resolves_every_container_with_and_without_pod_uids() -> None:
    asked: List[str] = []
    want = {V2_PLAIN: 30504, V2_BURSTABLE: 30569, V2_GUARANTEED: 30791}
    with_uids = [(V2_PLAIN, ""), (V2_BURSTABLE, UID_BURSTABLE), (V2_GUARANTEED, UID_GUARANTEED)]
    for containers in (with_uids, [(cid, "") for cid, _ in with_uids]):
        found = v2_resolver(asked.append).resolve(containers)
        # 30504 is the plain container's init: its child 30531 is in the same cgroup
        assert found == {cid: Resolved(pid, "cgroup") for cid, pid in want.items()}
    assert asked == []


def test_cgroup2_layout_is_tried_first(opens: List[str]) -> None:
    """The first pod container on cgroup v2 opened 52 cgroup.procs files when the six v1
    hierarchy names came first (8 places each); now only the cgroup2 places are tried."""
    resolver = v2_resolver()
    assert resolver.from_cgroup(V2_BURSTABLE, UID_BURSTABLE) == 30569
    root = str(CGROUP2 / "sys-fs-cgroup")
    assert [os.path.relpath(p, root) for p in opens] == [
        f"docker/{V2_BURSTABLE}/cgroup.procs",
        f"system.slice/docker-{V2_BURSTABLE}.scope/cgroup.procs",
        f"kubepods/pod{UID_BURSTABLE}/{V2_BURSTABLE}/cgroup.procs",
        f"kubepods/burstable/pod{UID_BURSTABLE}/{V2_BURSTABLE}/cgroup.procs",
    ]
    opens.clear()
    assert resolver.from_cgroup(V2_GUARANTEED, UID_GUARANTEED) == 30791
    assert len(opens) == 4  # the burstable place first, then as above: a guaranteed pod
    opens.clear()
    assert resolver.from_cgroup(V2_GUARANTEED, UID_GUARANTEED) == 30791
    assert len(opens) == 1  # the place of the last hit, with this container's own uid


def test_pod_container_without_its_uid_is_found_in_the_pod_listing(opens: List[str]) -> None:
    resolver = v2_resolver()
    assert resolver.from_cgroup(V2_BURSTABLE) == 30569
    # the two plain places miss, then the listing names the directory: one more open
    assert len(opens) == 3
    assert opens[-1].endswith(f"kubepods/burstable/pod{UID_BURSTABLE}/{V2_BURSTABLE}/cgroup.procs")
    opens.clear()
    assert resolver.from_cgroup(V2_GUARANTEED) == 30791
    assert len(opens) == 1  # the listing is made once and tried first after a hit from it
    opens.clear()
    assert resolver.from_cgroup(V2_PLAIN) == 30504
    assert len(opens) == 1  # not in the listing (no open for that), then docker/<id>


def test_hybrid_root_finds_a_container_only_in_the_unified_hierarchy(tmp_path: Path) -> None:
    # What the host sees of a dockerd that runs on cgroup2 (scripts/setup-cgroup2.sh):
    # v1 hierarchies without the container, the same cgroup2 tree under unified/.
    fake_proc(tmp_path, 3600, CID)
    for name in ("pids", "memory"):
        (tmp_path / "cgroup" / name / "docker").mkdir(parents=True)
    fake_cgroup(tmp_path, f"unified/docker/{CID}", [3600])
    (tmp_path / "cgroup" / "unified" / "cgroup.controllers").write_text("hugetlb\n")
    assert resolver(tmp_path).resolve([(CID, "")]) == {CID: Resolved(3600, "cgroup")}


def test_hybrid_root_lists_the_pod_cgroups_of_each_hierarchy(tmp_path: Path) -> None:
    # Another runtime's pods in the v1 hierarchies, this container's pod in unified/ only.
    uid = "0b5b2c0e-1111-2222-3333-444455556666"
    fake_proc(tmp_path, 3600, CID)
    fake_proc(tmp_path, 3700, OTHER)
    fake_cgroup(tmp_path, f"pids/kubepods/besteffort/pod{uuid.uuid4()}/{OTHER}", [3700])
    fake_cgroup(tmp_path, f"unified/kubepods/burstable/pod{uid}/{CID}", [3600])
    found = resolver(tmp_path).resolve([(OTHER, ""), (CID, "")])
    assert found == {OTHER: Resolved(3700, "cgroup"), CID: Resolved(3600, "cgroup")}


def test_pod_listing_names_every_runtime_shape_and_skips_conmon(tmp_path: Path) -> None:
    ids = [uuid.uuid4().hex * 2 for _ in range(5)]
    uid = str(uuid.uuid4())
    uid_ = uid.replace("-", "_")
    dirs = {
        ids[0]: f"kubepods/besteffort/pod{uid}/{ids[0]}",
        ids[1]: f"kubepods/besteffort/pod{uid}/crio-{ids[1]}",
        ids[2]: f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/docker-{ids[2]}.scope",
        ids[3]: f"kubepods.slice/kubepods-pod{uid_}.slice/cri-containerd-{ids[3]}.scope",
    }
    for rel in dirs.values():
        (tmp_path / rel / "container").mkdir(parents=True)  # crun's sub-cgroup is not a container
    (tmp_path / f"kubepods/besteffort/pod{uid}/crio-conmon-{ids[4]}").mkdir()
    assert pod_cgroups(str(tmp_path), "") == dirs


def test_pod_listing_cost_with_hundreds_of_pods(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 opens: List[str]) -> None:
    """300 pods of 2 containers, none with its uid: one listing per directory of the pod
    tree, made once, then one cgroup.procs open per container after the first."""
    (tmp_path / "cgroup").mkdir()
    (tmp_path / "cgroup" / "cgroup.controllers").write_text("cpu memory pids\n")  # cgroup v2
    containers = []
    for n in range(300):
        qos = ("burstable/", "besteffort/", "")[n % 3]
        pod = tmp_path / "cgroup" / "kubepods" / f"{qos}pod{uuid.uuid4()}"
        for _ in range(2):
            cid = uuid.uuid4().hex * 2
            (pod / cid).mkdir(parents=True)
            (pod / cid / "cgroup.procs").write_text(f"{1000 + len(containers)}\n")
            fake_proc(tmp_path, 1000 + len(containers), cid)
            containers.append(cid)
    listed: List[str] = []
    scandir = os.scandir
    monkeypatch.setattr(os, "scandir", lambda path: (listed.append(path), scandir(path))[1])
    found = resolver(tmp_path).resolve([(cid, "") for cid in containers])
    assert {cid: r.pid for cid, r in found.items()} == {cid: 1000 + n for n, cid in enumerate(containers)}
    assert len(listed) == 1 + 2 + 300  # kubepods, its two QoS directories, every pod
    assert len(opens) == 2 + 300 * 2  # the first container's two plain misses, then one each


def test_still_owned_after_the_pid_was_reused(tmp_path: Path) -> None:
    fake_proc(tmp_path, 3600, CID)
    r = resolver(tmp_path)
    assert r.still_owned(CID, 3600)
    (tmp_path / "proc" / "3600" / "cgroup").write_text(CGROUP_V1.format(id=OTHER))  # exited, pid reused
    assert not r.still_owned(CID, 3600) and r.still_owned(OTHER, 3600)
    assert not r.still_owned(CID, 4242)  # gone, nothing in its place


def test_a_cgroup_named_after_another_container_does_not_make_its_process_that_container_s(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for pid in (3601, 3602):  # two processes of CID in a cgroup it made and named after OTHER
        d = tmp_path / "proc" / str(pid)
        d.mkdir(parents=True)
        (d / "cgroup").write_text(CGROUP_V1.format(id=f"{CID}/docker/{OTHER}"))
    pids._WARNED.clear()  # once per run: a run is one process
    r = resolver(tmp_path)
    with caplog.at_level("WARNING"):
        assert [r.belongs(p, OTHER) for p in (3601, 3602)] == [False, False]
        assert r.still_owned(CID, 3601)
    warnings = [rec.getMessage() for rec in caplog.records if rec.levelname == "WARNING"]
    assert len(warnings) == 1, warnings  # one per pair and run
    assert CID[:12] in warnings[0] and OTHER[:12] in warnings[0] and "outer" in warnings[0]
