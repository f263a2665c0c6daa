"""Discovery backends on fake host trees: the /proc scan, naming from node files, and auto."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from container_netstat import node_files, discovery
from container_netstat import kubernetes, pids
from container_netstat.records import Container
from container_netstat.node_files import NodeFiles
from container_netstat.pids import PidResolver
from container_netstat.procfs import ProcFS
from container_netstat.discovery import Paths

DOCKER_ID = "a" * 64
SANDBOX_ID = "b" * 64
APP_ID = "c" * 64
CRIO_ID = "d" * 64
PODMAN_ID = "e" * 64
LOGGED_ID = "1" * 64
UID = "0b5b2c0e-1111-2222-3333-444455556666"


class Host:
    """A fake host: <tmp>/proc, <tmp>/run, <tmp>/var, and <tmp> for the rest (/etc...)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.paths = Paths(str(root / "proc"), str(root / "run"), str(root / "var"), str(root))
        (root / "proc" / "1" / "ns").mkdir(parents=True)
        for kind in ("mnt", "pid"):
            (root / "proc" / "1" / "ns" / kind).write_text("")

    def process(self, pid: int, cgroup: str, ppid: int = 1, cwd: Optional[Path] = None, comm: str = "sh",
                host_ns: bool = True) -> None:
        """A process; in the host's mount and pid namespaces (pid 1's), else in namespaces of its own."""
        d = self.root / "proc" / str(pid)
        d.mkdir(exist_ok=pid == 1)
        (d / "ns").mkdir(exist_ok=pid == 1)
        for kind in ("mnt", "pid") if pid != 1 else ():
            if host_ns:
                (d / "ns" / kind).symlink_to(self.root / "proc" / "1" / "ns" / kind)
            else:
                (d / "ns" / kind).write_text("")
        (d / "cgroup").write_text(cgroup)
        (d / "stat").write_text(f"{pid} ({comm}) S {ppid} {pid} {pid} 0 -1\n")
        (d / "comm").write_text(comm + "\n")
        if cwd is not None:
            os.symlink(cwd, d / "cwd")

    def file(self, rel: str, text: str) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def bundle(self, rel: str, annotations: Dict[str, str]) -> Path:
        return self.file(rel + "/config.json", json.dumps({"ociVersion": "1.0.2", "annotations": annotations}))


def v1(path: str) -> str:
    return f"9:name=systemd:{path}\n8:pids:{path}\n4:memory:{path}\n0::{path}\n"


CRI_SANDBOX = {
    "io.kubernetes.cri.container-type": "sandbox",
    "io.kubernetes.cri.sandbox-name": "web-7d4b9",
    "io.kubernetes.cri.sandbox-namespace": "shop",
    "io.kubernetes.cri.sandbox-uid": UID,
    "io.kubernetes.cri.sandbox-id": SANDBOX_ID,
}
CRI_APP = {
    "io.kubernetes.cri.container-type": "container",
    "io.kubernetes.cri.container-name": "app",
    "io.kubernetes.cri.sandbox-name": "web-7d4b9",
    "io.kubernetes.cri.sandbox-namespace": "shop",
    "io.kubernetes.cri.sandbox-id": SANDBOX_ID,
}
CRIO_APP = {
    "io.kubernetes.cri-o.ContainerType": "container",
    "io.kubernetes.cri-o.Labels": json.dumps({
        "io.kubernetes.pod.name": "db-0",
        "io.kubernetes.pod.namespace": "data",
        "io.kubernetes.pod.uid": "9f0e",
        "io.kubernetes.container.name": "postgres",
    }),
}


@pytest.fixture
def host(tmp_path: Path) -> Host:
    h = Host(tmp_path)
    # host processes: init, a kernel thread, dockerd, a podman conmon
    h.process(1, v1("/"), ppid=0)
    h.process(2, "0::/\n", ppid=0)
    h.process(90, v1("/system.slice/docker.service"))
    h.process(95, "9:name=systemd:/\n8:pids:/libpod_parent/conmon\n0::/\n")
    # Docker (cgroupfs): init 300 with a child 301, and a reused lower pid 120 also inside
    h.process(300, v1(f"/docker/{DOCKER_ID}"), ppid=250)
    h.process(301, v1(f"/docker/{DOCKER_ID}"), ppid=300)
    h.process(120, v1(f"/docker/{DOCKER_ID}"), ppid=301)
    h.file(f"var/lib/docker/containers/{DOCKER_ID}/config.v2.json",
           json.dumps({"Name": "/web", "Config": {"Labels": {"tier": "front"}}}))
    h.file(f"var/lib/docker/containers/{DOCKER_ID}/hostconfig.json", json.dumps({"NetworkMode": "bridge"}))
    # containerd CRI pod (cgroupfs): sandbox 400 and app 410, shims 399 and 409
    h.process(400, v1(f"/kubepods/besteffort/pod{UID}/{SANDBOX_ID}"), ppid=399)
    h.process(410, v1(f"/kubepods/besteffort/pod{UID}/{APP_ID}"), ppid=409)
    tasks = "run/containerd/io.containerd.runtime.v2.task/k8s.io"
    h.bundle(f"{tasks}/{SANDBOX_ID}", CRI_SANDBOX)
    h.bundle(f"{tasks}/{APP_ID}", CRI_APP)
    # CRI-O (systemd, cgroup v2, crun subgroup) with its conmon next to it
    slice_ = f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID.replace('-', '_')}.slice"
    h.process(500, f"0::{slice_}/crio-{CRIO_ID}.scope/container\n", ppid=499)
    h.process(499, f"0::{slice_}/crio-conmon-{CRIO_ID}.scope\n")
    h.bundle(f"run/containers/storage/overlay-containers/{CRIO_ID}/userdata", CRIO_APP)
    # Podman (cgroupfs): bundle without names; the name is in containers.json
    h.process(600, v1(f"/libpod_parent/libpod-{PODMAN_ID}"), ppid=95)
    h.bundle(f"var/lib/containers/storage/overlay-containers/{PODMAN_ID}/userdata", {"io.container.manager": "libpod"})
    h.file("var/lib/containers/storage/overlay-containers/containers.json",
           json.dumps([{"id": PODMAN_ID, "names": ["pmt1"]}, {"id": "x", "names": []}]))
    return h


def by_id(containers: List[Container]) -> Dict[str, Container]:
    return {c.id: c for c in containers}


def test_scan_finds_every_container_process_and_nothing_else(host: Host) -> None:
    found = discovery.scan(ProcFS(host.paths.proc_root))
    assert sorted(found) == sorted([DOCKER_ID, SANDBOX_ID, APP_ID, CRIO_ID, PODMAN_ID])
    assert sorted(m.pid for m in found[DOCKER_ID]) == [120, 300, 301]
    assert found[CRIO_ID][0].owner.pod_uid == UID


def test_init_is_the_member_whose_parent_is_outside(host: Host) -> None:
    proc = ProcFS(host.paths.proc_root)
    assert discovery.init_member(proc, discovery.scan(proc)[DOCKER_ID]).pid == 300


def test_vanished_process_is_skipped(host: Host) -> None:
    (host.root / "proc" / "77").mkdir()  # listed, but gone before its cgroup was read
    assert DOCKER_ID in discovery.scan(ProcFS(host.paths.proc_root))


def test_proc_backend_names_containers_from_node_files(host: Host) -> None:
    got = by_id(discovery.ProcBackend(host.paths).containers())
    assert len(got) == 5
    docker = got[DOCKER_ID]
    assert (docker.name, docker.network_mode, docker.labels["tier"], docker.pid) == ("web", "bridge", "front", 300)
    sandbox, app = got[SANDBOX_ID], got[APP_ID]
    assert sandbox.is_sandbox and not app.is_sandbox
    assert sandbox.pod == app.pod == ("shop", "web-7d4b9")
    assert (sandbox.name, app.name) == ("shop/web-7d4b9/POD", "shop/web-7d4b9/app")
    assert app.labels["io.kubernetes.pod.uid"] == UID  # from the cgroup path when the annotations lack it
    assert app.labels["io.kubernetes.container.name"] == "app"
    crio = got[CRIO_ID]
    assert (crio.pod, crio.name, crio.pid) == (("data", "db-0"), "data/db-0/postgres", 500)
    podman = got[PODMAN_ID]
    assert (podman.name, podman.pod, podman.pid) == ("pmt1", None, 600)


def test_unnamed_container_gets_its_short_id(host: Host) -> None:
    lone = "9" * 64
    host.process(700, v1(f"/docker/{lone}"))
    got = by_id(discovery.ProcBackend(host.paths).containers())
    assert got[lone].name == lone[:12] and got[lone].network_mode == "default"


def test_bundle_found_through_the_shim_working_directory(host: Host, tmp_path: Path) -> None:
    # A containerd whose state lives elsewhere: the shim (the init's parent) runs in the bundle.
    odd = "7" * 64
    bundle = host.bundle(f"elsewhere/state/io.containerd.runtime.v2.task/cntest/{odd}", CRI_SANDBOX).parent
    host.process(809, v1("/system.slice/containerd.service"), cwd=bundle, comm="containerd-shim")
    host.process(810, v1(f"/kubepods/besteffort/pod{UID}/{odd}"), ppid=809)
    got = by_id(discovery.ProcBackend(host.paths).containers())
    assert got[odd].pod == ("shop", "web-7d4b9") and got[odd].is_sandbox


def test_a_container_process_calling_itself_a_shim_is_not_believed(host: Host, tmp_path: Path) -> None:
    # A process of the container names itself containerd-shim, moves itself to the root cgroup
    # (a writable cgroupfs) so that the container's init looks like its child, and runs in a
    # directory holding a forged bundle: it is not in the host's mount and pid namespaces, so its
    # cwd is not read.
    odd = "8" * 64
    forged = host.bundle(f"overlay/upper/{odd}", CRI_SANDBOX).parent
    host.process(811, v1("/"), cwd=forged, comm="containerd-shim", host_ns=False)
    host.process(812, v1(f"/kubepods/besteffort/pod{UID}/{odd}"), ppid=811)
    got = by_id(discovery.ProcBackend(host.paths).containers())
    assert got[odd].pod is None and got[odd].name == odd[:12]


def test_only_a_containerd_shim_working_directory_is_taken_for_a_bundle(host: Host) -> None:
    # conmon (or anything else) runs wherever it was started: its directory says nothing.
    odd = "6" * 64
    elsewhere = host.bundle("home/someone/project", CRI_SANDBOX).parent
    host.process(819, v1("/libpod_parent/conmon"), cwd=elsewhere, comm="conmon")
    host.process(820, v1(f"/libpod_parent/libpod-{odd}"), ppid=819)
    got = by_id(discovery.ProcBackend(host.paths).containers())
    assert got[odd].pod is None and got[odd].name == odd[:12]


def test_kubelet_log_dirs_name_a_pod_without_annotations(host: Host) -> None:
    uid = "5c1d0a3e-aaaa-bbbb-cccc-ddddeeeeffff"
    sandbox = "2" * 64
    host.process(900, v1(f"/kubepods/pod{uid}/{sandbox}"))
    host.process(910, v1(f"/kubepods/pod{uid}/{LOGGED_ID}"))
    (host.root / f"var/log/pods/kube-system_coredns-5d78c_{uid}/coredns").mkdir(parents=True)
    host.file(f"var/log/containers/coredns-5d78c_kube-system_coredns-{LOGGED_ID}.log", "")
    got = by_id(discovery.ProcBackend(host.paths).containers())
    assert got[LOGGED_ID].name == "kube-system/coredns-5d78c/coredns"
    assert got[LOGGED_ID].pod == got[sandbox].pod == ("kube-system", "coredns-5d78c")
    assert got[sandbox].labels["io.kubernetes.container.name"] == "POD"


def test_known_pid_is_trusted_only_after_the_cgroup_check(host: Host) -> None:
    proc = ProcFS(host.paths.proc_root)
    resolver = PidResolver(proc, str(host.root / "cgroup"), host.paths.run_root)
    got = resolver.resolve([(DOCKER_ID, ""), (APP_ID, "")], known={DOCKER_ID: 300, APP_ID: 300})
    assert got[DOCKER_ID].pid == 300 and got[DOCKER_ID].via == "proc-scan"
    assert APP_ID not in got  # pid 300 is not in that container, and nothing else finds it


# --- ondisk parsers ---

def test_docker_config_parser() -> None:
    identity = node_files.parse_docker_config(
        json.dumps({"Name": "/k8s_POD_web", "Config": {"Labels": {"io.kubernetes.docker.type": "podsandbox"}}}),
        json.dumps({"NetworkMode": "container:" + "f" * 64}),
    )
    assert identity is not None
    assert identity.name == "k8s_POD_web" and identity.network_mode == "container:" + "f" * 64
    assert node_files.parse_docker_config("{not json") is None
    assert node_files.parse_docker_config("[]") is None


def test_bundle_parser_keeps_annotations_and_adds_kubelet_labels() -> None:
    identity = node_files.parse_bundle_config(json.dumps({"annotations": CRI_APP}), APP_ID, "t")
    assert identity is not None
    assert identity.labels["io.kubernetes.cri.container-name"] == "app"
    assert identity.labels["io.kubernetes.pod.namespace"] == "shop"
    plain = node_files.parse_bundle_config(json.dumps({"ociVersion": "1.0.2"}), APP_ID, "t")
    assert plain is not None and plain.name == APP_ID[:12] and plain.labels == {}
    assert node_files.parse_bundle_config("", APP_ID, "t") is None
    broken = node_files.parse_bundle_config(json.dumps({"annotations": {kubernetes.CRIO_LABELS: "{"}}), APP_ID, "t")
    assert broken is not None and "io.kubernetes.pod.name" not in broken.labels


@pytest.mark.parametrize("name, expected", [
    ("kube-system_coredns-5d78c_0b5b2c0e-1111", ("kube-system", "coredns-5d78c", "0b5b2c0e-1111")),
    ("no-underscores", None),
    ("a__b", None),
])
def test_pod_dir_parser(name: str, expected: object) -> None:
    assert kubernetes.parse_pod_dir(name) == expected


def test_container_log_parser() -> None:
    name = f"web-7d4b9_shop_app-{APP_ID}.log"
    assert kubernetes.parse_container_log(name) == ("shop", "web-7d4b9", "app", APP_ID)
    assert kubernetes.parse_container_log("web_shop_app-123.log") is None


def test_storage_names_parser() -> None:
    assert node_files.parse_storage_names(json.dumps([{"id": "x", "names": ["n1", "n2"]}, {"id": "y"}])) == {"x": "n1"}
    assert node_files.parse_storage_names("{}") == {}


def test_missing_roots_name_nothing(tmp_path: Path) -> None:
    files = NodeFiles(str(tmp_path / "run"), str(tmp_path / "var"), str(tmp_path / "proc"))
    identity = files.identify(APP_ID, "", UID, pid=None)
    assert identity.name == APP_ID[:12] and identity.labels == {"io.kubernetes.pod.uid": UID}


# --- choosing a backend ---

def choose(runtime: str, env: Dict[str, str], present: tuple = (), docker_host: Optional[str] = None):  # type: ignore[no-untyped-def]
    return discovery.choose(runtime, env, 5.0, Paths(), docker_host, exists=lambda p: p in present)


def test_auto_prefers_configured_docker() -> None:
    assert choose("auto", {"DOCKER_HOST": "tcp://10.0.0.1:2376"}).name == "docker"
    backend = choose("auto", {}, docker_host="unix:///tmp/d.sock")
    assert backend.name == "docker" and backend.where == "unix:///tmp/d.sock"


def test_auto_picks_a_present_docker_socket_even_if_podman_is_there() -> None:
    assert choose("auto", {}, (discovery.DOCKER_SOCKET, discovery.PODMAN_SOCKET)).name == "docker"


def test_auto_picks_podman_by_socket_or_container_host() -> None:
    backend = choose("auto", {}, (discovery.PODMAN_SOCKET,))
    assert backend.name == "podman" and backend.where == f"unix://{discovery.PODMAN_SOCKET}"
    backend = choose("auto", {"CONTAINER_HOST": "unix:///run/user/1000/podman/podman.sock"})
    assert backend.name == "podman" and backend.where.endswith("/1000/podman/podman.sock")


def test_auto_falls_back_to_proc_and_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="container_netstat"):
        backend = choose("auto", {})
    assert backend.name == "proc"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "--runtime proc" in warnings[0].getMessage()


def test_explicit_runtimes() -> None:
    assert choose("docker", {}).name == "docker"
    assert choose("proc", {"DOCKER_HOST": "unix:///x"}).name == "proc"
    assert choose("podman", {}, docker_host="unix:///tmp/p.sock").where == "unix:///tmp/p.sock"
    with pytest.raises(ValueError):
        choose("lxc", {})


# --- a container naming a cgroup after another (docs/security.rst) ---

VICTIM_ID = "9" * 64


def netns(host: Host, pid: int, like: Optional[int] = None) -> None:
    """/proc/<pid>/net/sockstat, whose inode is the namespace key: a hard link shares one."""
    d = host.root / "proc" / str(pid) / "net"
    d.mkdir()
    if like is None:
        (d / "sockstat").write_text("sockets: used 1\n")
    else:
        os.link(host.root / "proc" / str(like) / "net" / "sockstat", d / "sockstat")


def test_a_cgroup_made_inside_a_container_stays_that_container_s(host: Host,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    host.process(800, v1(f"/docker/{VICTIM_ID}"), ppid=799)
    for pid in (700, 701):  # the attacker's processes, moved into the cgroup it named after the victim
        host.process(pid, v1(f"/docker/{DOCKER_ID}/docker/{VICTIM_ID}"), ppid=250)
    pids._WARNED.clear()  # once per run: a run is one process
    with caplog.at_level(logging.WARNING):
        found = discovery.scan(ProcFS(host.paths.proc_root))
    assert [m.pid for m in found[VICTIM_ID]] == [800]
    assert sorted(m.pid for m in found[DOCKER_ID]) == [120, 300, 301, 700, 701]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and DOCKER_ID[:12] in warnings[0] and VICTIM_ID[:12] in warnings[0], warnings


def test_two_cgroups_claiming_one_id_from_two_namespaces_are_reported_apart(
        host: Host, caplog: pytest.LogCaptureFixture) -> None:
    host.process(800, v1(f"/docker/{VICTIM_ID}"), ppid=799)
    host.process(801, v1(f"/docker/{VICTIM_ID}"), ppid=800)
    host.process(900, v1(f"/system.slice/docker-{VICTIM_ID}.scope"), ppid=1)  # made elsewhere, same id
    netns(host, 800)
    netns(host, 801, like=800)
    netns(host, 900)
    host.file(f"var/lib/docker/containers/{VICTIM_ID}/config.v2.json", json.dumps({"Name": "/victim"}))
    backend = discovery.ProcBackend(host.paths)
    with caplog.at_level(logging.WARNING):
        got = [c for c in backend.containers() if c.id == VICTIM_ID]
    keys = {pid: os.stat(host.root / "proc" / str(pid) / "net" / "sockstat").st_ino for pid in (800, 900)}
    assert sorted((c.name, c.pid) for c in got) == sorted((f"victim@netns:{keys[p]}", p) for p in (800, 900))
    assert backend.members is not None and VICTIM_ID not in backend.members  # read per claim, from its cgroup
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and VICTIM_ID[:12] in warnings[0] and "2 network namespaces" in warnings[0]


def test_two_places_in_one_namespace_stay_one_container(host: Host) -> None:
    host.process(800, v1(f"/docker/{VICTIM_ID}"), ppid=799)
    host.process(900, v1(f"/system.slice/docker-{VICTIM_ID}.scope"), ppid=1)
    netns(host, 800)
    netns(host, 900, like=800)
    got = [c for c in discovery.ProcBackend(host.paths).containers() if c.id == VICTIM_ID]
    assert [c.name for c in got] == [VICTIM_ID[:12]]


def test_a_disputed_pod_container_keeps_its_series_apart() -> None:
    record = Container("x" * 64, "app", "none", labels={kubernetes.POD_NAME: "web-1",
                                                         kubernetes.POD_NAMESPACE: "shop"})
    one, two = discovery.disputed(record, 11), discovery.disputed(record, 12)
    assert (one.name, one.pod, two.pod) == ("app@netns:11", ("shop", "web-1@netns:11"), ("shop", "web-1@netns:12"))
