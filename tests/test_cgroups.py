"""/proc/<pid>/cgroup -> container, one table row per runtime, driver and cgroup version.

This machine has cgroup v1 (hybrid, with an empty v2 hierarchy) and the cgroupfs
driver only: rows marked "recorded here" were read from real processes on it; the
others are built from the runtimes' documentation or source, cited on the row. The
``0::``-only files of tests/fixtures/cgroup2 are what a pure cgroup v2 host prints for the
containers recorded in scripts/setup-cgroup2.sh's set-up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import pytest

from container_netstat import cgroups, discovery
from container_netstat.cgroups import CONTAINERD, CRIO, DOCKER, PODMAN, UNKNOWN, CgroupOwner
from container_netstat.procfs import ProcFS

CGROUP2_PROC = Path(__file__).parent / "fixtures" / "cgroup2" / "proc"

ID = "3879b73a86c7680b932e27d864fa587667df096cff2163bf65aa5330d2ac889a"
INNER = "f" * 64
UID = "0b5b2c0e-1111-2222-3333-444455556666"
UID_ = UID.replace("-", "_")  # the kubelet's systemd driver writes the uid's dashes as _


def v1(path: str) -> str:
    """A cgroup v1 (hybrid) file as this machine prints it: every hierarchy, then the v2 line."""
    hierarchies = ["name=systemd", "pids", "blkio", "freezer", "devices", "memory", "cpuset", "cpuacct", "cpu"]
    lines = [f"{9 - i}:{h}:{path}" for i, h in enumerate(hierarchies)]
    return "\n".join(lines + [f"0::{path}"]) + "\n"


def v2(path: str) -> str:
    return f"0::{path}\n"


ROWS = [
    # --- Docker ---
    # recorded here: Docker 20.10 (Debian docker.io), cgroup v1, cgroupfs driver
    ("docker v1 cgroupfs", v1(f"/docker/{ID}"), CgroupOwner(DOCKER, ID)),
    # docs.docker.com/engine/containers/runmetrics "Find the cgroup for a given container":
    # memory/system.slice/docker-<longid>.scope (v1, systemd), docker/<longid> (v2,
    # cgroupfs), system.slice/docker-<longid>.scope (v2, systemd)
    ("docker v1 systemd", v1(f"/system.slice/docker-{ID}.scope"), CgroupOwner(DOCKER, ID)),
    ("docker v2 cgroupfs", v2(f"/docker/{ID}"), CgroupOwner(DOCKER, ID)),
    ("docker v2 systemd", v2(f"/system.slice/docker-{ID}.scope"), CgroupOwner(DOCKER, ID)),
    # systemd running inside a container puts its processes in sub-cgroups of the container's
    ("systemd inside a docker container", v2(f"/docker/{ID}/init.scope"), CgroupOwner(DOCKER, ID)),
    # A cgroup inside a container's, named after another container (Docker in Docker, or a
    # tenant with delegation claiming a victim's id): the outer container owns it
    ("docker in docker", v1(f"/docker/{ID}/docker/{INNER}"), CgroupOwner(DOCKER, ID)),
    ("another runtime's shape inside", v2(f"/docker/{ID}/libpod-{INNER}.scope/container"), CgroupOwner(DOCKER, ID)),
    ("a monitor's name inside a container", v2(f"/docker/{ID}/conmon"), CgroupOwner(DOCKER, ID)),
    # dockershim / cri-dockerd with the kubelet's systemd driver
    ("cri-dockerd systemd",
     v2(f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/docker-{ID}.scope"),
     CgroupOwner(DOCKER, ID, UID)),
    # --- containerd (CRI plugin) ---
    # containerd pkg/cri getCgroupsPath: cgroupfs -> filepath.Join(parent, id); the kubelet's
    # cgroupfs pod cgroups are kubepods/<qos>/pod<uid> (kubepods/pod<uid> for Guaranteed).
    # Recorded here too: `ctr run --cgroup /kubepods/besteffort/pod<uid>/<id>`.
    ("containerd cgroupfs v1 burstable", v1(f"/kubepods/burstable/pod{UID}/{ID}"), CgroupOwner(UNKNOWN, ID, UID)),
    ("containerd cgroupfs v1 guaranteed", v1(f"/kubepods/pod{UID}/{ID}"), CgroupOwner(UNKNOWN, ID, UID)),
    ("containerd cgroupfs v2", v2(f"/kubepods/besteffort/pod{UID}/{ID}"), CgroupOwner(UNKNOWN, ID, UID)),
    # getCgroupsPath, systemd: "<pod slice>:cri-containerd:<id>", which runc turns into the unit
    # <prefix>-<name>.scope under the slice (runc docs/systemd.md); the kubelet's pod slice is
    # kubepods-<qos>-pod<uid with _>.slice under kubepods.slice/kubepods-<qos>.slice.
    ("containerd systemd v2",
     v2(f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope"),
     CgroupOwner(CONTAINERD, ID, UID)),
    ("containerd systemd v2 guaranteed",
     v2(f"/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope"), CgroupOwner(CONTAINERD, ID, UID)),
    ("containerd systemd v1",
     v1(f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope"),
     CgroupOwner(CONTAINERD, ID, UID)),
    # Kernel Documentation/admin-guide/cgroup-v2.rst, "Namespace": a reader in another cgroup
    # namespace (a DaemonSet pod on cgroup v2) sees paths outside its root as /../...
    ("seen from another cgroup namespace",
     v2(f"/../../kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope"), CgroupOwner(CONTAINERD, ID, UID)),
    # --- CRI-O ---
    # cri-o internal/config/cgmgr: containerCgroupPath(id) = "crio-" + id; cgroupfs joins it
    # to the sandbox parent, systemd gives "<slice>:crio:<id>" -> crio-<id>.scope
    ("cri-o cgroupfs v1", v1(f"/kubepods/besteffort/pod{UID}/crio-{ID}"), CgroupOwner(CRIO, ID, UID)),
    ("cri-o systemd v2",
     v2(f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-{ID}.scope"),
     CgroupOwner(CRIO, ID, UID)),
    # crun (CRI-O's default runtime on many distributions) adds a sub-cgroup "container" under the
    # scope on cgroup v2 (crun.1.md, run.oci.systemd.subgroup)
    ("cri-o systemd v2 crun subgroup",
     v2(f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-{ID}.scope/container"),
     CgroupOwner(CRIO, ID, UID)),
    # cri-o cgmgr MoveConmonToCgroup: conmon, CRI-O's monitor, lives in crio-conmon-<id>
    ("cri-o conmon cgroupfs", v1(f"/kubepods/besteffort/pod{UID}/crio-conmon-{ID}"), None),
    ("cri-o conmon systemd",
     v2(f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-conmon-{ID}.scope"),
     None),
    # --- Podman ---
    # recorded here: Podman 4.3.1 rootful, runc, cgroupfs manager (cgroup v1)
    ("podman cgroupfs v1", v1(f"/libpod_parent/libpod-{ID}"), CgroupOwner(PODMAN, ID)),
    ("podman conmon cgroupfs (recorded)",
     "9:name=systemd:/\n8:pids:/libpod_parent/conmon\n4:memory:/libpod_parent/conmon\n0::/\n", None),
    # Podman with the systemd manager: machine.slice:libpod:<id> -> libpod-<id>.scope, conmon in
    # libpod-conmon-<id>.scope; rootless under the user's user.slice (runc docs/cgroup-v2.md
    # shows that placement for rootless containers); crun's "container" subgroup on v2
    ("podman systemd v2", v2(f"/machine.slice/libpod-{ID}.scope/container"), CgroupOwner(PODMAN, ID)),
    ("podman systemd v1", v1(f"/machine.slice/libpod-{ID}.scope"), CgroupOwner(PODMAN, ID)),
    ("podman conmon systemd", v2(f"/machine.slice/libpod-conmon-{ID}.scope"), None),
    ("podman rootless v2",
     v2(f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container"),
     CgroupOwner(PODMAN, ID)),
    # --- not a container ---
    # recorded here: a shell on the host, a kernel thread, dockerd, a login session
    ("host process (recorded)", "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/36e5eb4b\n0::/\n", None),
    ("kernel thread", v2("/"), None),
    ("dockerd", v2("/system.slice/docker.service"), None),
    ("containerd daemon and its shims", v2("/system.slice/containerd.service"), None),
    ("login session", v2("/user.slice/user-0.slice/session-3.scope"), None),
    ("pod cgroup itself", v1(f"/kubepods/burstable/pod{UID}"), None),
    ("short id is not an id", v1("/docker/3879b73a86c7"), None),
    ("plain ctr run: /<namespace>/<name> (recorded)", v1("/cntest/plain1"), None),
]


@pytest.mark.parametrize("text, expected", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_cgroup_table(text: str, expected: Optional[CgroupOwner]) -> None:
    assert cgroups.parse(text) == expected


def test_the_first_line_naming_a_container_wins() -> None:
    # On hybrid hosts the v2 line can stay at / while the v1 hierarchies name the container.
    text = f"9:name=systemd:/docker/{ID}\n8:pids:/docker/{ID}\n0::/\n"
    assert cgroups.parse(text) == CgroupOwner(DOCKER, ID)


@pytest.mark.parametrize("text", ["", "garbage", "0:", "::::", "0::\n", "x:y:/docker/" + "g" * 64])
def test_malformed_text_names_no_container(text: str) -> None:
    assert cgroups.parse(text) is None


def test_uppercase_ids_are_not_container_ids() -> None:
    # Every runtime writes ids in lower-case hex; anything else is not theirs.
    assert cgroups.parse(v2(f"/docker/{ID.upper()}")) is None


def test_static_pod_uid_without_dashes() -> None:
    # Static pods' uids are a 32-hex config hash, not a dashed UUID.
    uid = "6b3d0c1f2e5a4b7c8d9e0f1a2b3c4d5e"
    assert cgroups.parse(v1(f"/kubepods/burstable/pod{uid}/{ID}")) == CgroupOwner(UNKNOWN, ID, uid)


# pid -> owner of tests/fixtures/cgroup2/proc/<pid>/cgroup: a plain container (two processes),
# a burstable pod's container and a guaranteed pod's, from `docker run [--cgroup-parent ...]`.
V2_FILES = {
    30504: CgroupOwner(DOCKER, "0049c6d5bbd43f93519e0b054cf5ed30c7cc8fa25c02b7c7d16272c195246920"),
    30531: CgroupOwner(DOCKER, "0049c6d5bbd43f93519e0b054cf5ed30c7cc8fa25c02b7c7d16272c195246920"),
    30569: CgroupOwner(UNKNOWN, "85b580d66c9a44b00879b30483a71f8e421f1338ee50da2eef7b31cd44af9f45",
                       "76e85c6e-77ee-4133-9e31-bd624a837ba5"),
    30791: CgroupOwner(UNKNOWN, "b87fcd3ff51a1aac23436f2281c3bd2bcee4dc287527b3b87d9ef9f77a5d6bcd",
                       "8452dbe0-9f18-4949-bd62-5adec9c44c84"),
}


@pytest.mark.parametrize("pid", sorted(V2_FILES))
def test_pure_v2_cgroup_files(pid: int) -> None:
    text = (CGROUP2_PROC / str(pid) / "cgroup").read_text()
    assert text.count("\n") == 1 and text.startswith("0::/")  # the single unified line
    assert cgroups.parse(text) == V2_FILES[pid]


def test_proc_scan_of_pure_v2_files_groups_each_container() -> None:
    found = discovery.scan(ProcFS(str(CGROUP2_PROC)))
    assert {cid: sorted(m.pid for m in members) for cid, members in found.items()} == {
        owner.id: sorted(p for p, o in V2_FILES.items() if o == owner) for owner in V2_FILES.values()
    }
    plain = found[V2_FILES[30504].id]
    assert discovery.init_member(ProcFS(str(CGROUP2_PROC)), plain).pid == 30504  # 30531's parent


def test_the_outer_container_wins_and_the_others_are_named() -> None:
    text = v1(f"/docker/{ID}/docker/{INNER}/x")
    found = cgroups.attribute(text)
    assert found == cgroups.Attribution(CgroupOwner(DOCKER, ID), f"docker/{ID}", frozenset({INNER}))
    assert cgroups.container_dirs(text, ID)[0] == ("name=systemd", f"docker/{ID}")
    assert cgroups.container_dirs(text, INNER) == []  # no line gives the process to the inner id


def test_lines_that_disagree_go_to_the_first_and_name_the_other() -> None:
    # A v1 hierarchy moved by hand into another container's cgroup: the first line still rules.
    text = f"9:name=systemd:/docker/{ID}\n8:pids:/docker/{INNER}\n0::/docker/{ID}\n"
    found = cgroups.attribute(text)
    assert (found.owner, found.others) == (CgroupOwner(DOCKER, ID), frozenset({INNER}))


def test_an_ordinary_container_names_no_other() -> None:
    assert cgroups.attribute(v1(f"/docker/{ID}/init.scope")).others == frozenset()
    assert cgroups.attribute(v1("/user.slice")) == cgroups.Attribution(None)


def test_a_monitor_cgroup_is_nobody_s_whatever_is_below_it() -> None:
    assert cgroups.attribute(v2(f"/machine.slice/libpod-conmon-{ID}.scope/{INNER}")) == cgroups.Attribution(None)


def test_places_tell_two_claims_of_one_id_apart() -> None:
    a = cgroups.attribute(v1(f"/docker/{ID}"))
    b = cgroups.attribute(v1(f"/system.slice/docker-{ID}.scope/sub"))
    assert a.owner is not None and b.owner is not None and a.owner.id == b.owner.id == ID
    assert (a.place, b.place) == (f"docker/{ID}", f"system.slice/docker-{ID}.scope")


def test_a_remembered_answer_is_the_parse_of_the_same_text() -> None:
    texts = [text for _, text, _ in ROWS]
    for text in texts + texts[::-1] + texts:  # asked again, in another order: the same answers
        assert cgroups.attribute(text) == cgroups.attribute.__wrapped__(text)
    mine, other = v1(f"/docker/{ID}"), v1(f"/docker/{INNER}")
    assert cgroups.attribute(mine).owner == CgroupOwner(DOCKER, ID)
    assert cgroups.attribute(other).owner == CgroupOwner(DOCKER, INNER)  # the pid reused elsewhere
    assert cgroups.attribute(mine).owner == CgroupOwner(DOCKER, ID)
    assert cgroups.attribute.cache_info().maxsize == 1024  # bounded, whatever the texts
