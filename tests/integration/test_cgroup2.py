"""cgroup v2: a private Docker on a cgroup2 mount, on a host that boots cgroup v1.

scripts/setup-cgroup2.sh makes it (a mount namespace with cgroup2 on /sys/fs/cgroup, held
by a sleeping process; a private containerd and dockerd in it with the cgroupfs driver; a
bridge and a FORWARD rule of their own) and undoes it; the fixture gives each run its own
directory, bridge and subnet, and undoes it even when a test fails.

Limit: this is a hybrid layout. Every controller but hugetlb stays bound to the host's v1
hierarchies, and /proc/<pid>/cgroup still lists those hierarchies beside the ``0::`` line
(the tool must pick the line that names the container). The cgroup2 tree mounted here is
the host's one v2 hierarchy, so the host sees it under /sys/fs/cgroup/unified. A host that
boots pure cgroup v2 is covered by the recorded fixtures in tests/fixtures/cgroup2
(tests/test_pids.py, tests/test_cgroups.py).
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional

import pytest

from conftest import IMAGE, TEST_LABEL, in_netns, unavailable
from integration.workloads import hold, time_wait

pytestmark = pytest.mark.docker

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "scripts", "setup-cgroup2.sh")
POD_UID = "io.kubernetes.pod.uid"

_CONNECT = r"""
import socket, time
held = [socket.create_connection(("{ip}", {port}), timeout=10) for _ in range({n})]
print("ready", flush=True)
time.sleep(600)
"""


@dataclass
class Setup:
    holder: int
    docker_host: str
    env: Dict[str, str]

    @property
    def cgroup_root(self) -> str:
        """The namespace's cgroup2 mount, reached from outside through the holder."""
        return f"/proc/{self.holder}/root/sys/fs/cgroup"

    def docker(self, *args: str, check: bool = True) -> str:
        result = subprocess.run(["docker", "-H", self.docker_host, *args],
                                capture_output=True, text=True, timeout=120)
        if check:
            assert result.returncode == 0, result.stderr
        return result.stdout.strip()


def _free_address() -> str:
    """A /24 for the bridge that no interface of this host uses."""
    used = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True).stdout
    nets = [ipaddress.ip_interface(word).network for word in used.split() if "/" in word and word[0].isdigit()]
    for third in random.sample(range(1, 255), 254):
        net = ipaddress.ip_network(f"10.213.{third}.0/24")
        if not any(net.overlaps(other) for other in nets):
            return f"10.213.{third}.1/24"
    raise AssertionError("no free 10.213.x.0/24 for the test bridge")


@pytest.fixture(scope="module")
def cgroup2() -> Iterator[Setup]:
    for tool in ("unshare", "nsenter", "dockerd", "containerd", "docker", "iptables", "ip", "ss"):
        if not shutil.which(tool):
            unavailable(f"{tool} is not installed (scripts/setup-cgroup2.sh installs it)")
    if os.geteuid() != 0:
        unavailable("the cgroup v2 set-up needs root (mount, unshare, iptables)")
    env = {
        **os.environ,
        "CN_CGROUP2_DIR": tempfile.mkdtemp(prefix="cn-v2-", dir="/tmp"),
        "CN_CGROUP2_BRIDGE": f"cn-v2-{uuid.uuid4().hex[:6]}",
        "CN_CGROUP2_ADDR": _free_address(),
    }
    made = None
    try:
        made = subprocess.run(["bash", SCRIPT, "start"], env=env, capture_output=True, text=True, timeout=300)
        if made.returncode != 0:
            unavailable(f"scripts/setup-cgroup2.sh start failed: {made.stderr.strip()[-600:]}")
        values = dict(line.split("=", 1) for line in made.stdout.splitlines() if "=" in line)
        yield Setup(int(values["HOLDER"]), values["DOCKER_HOST"], env)
    finally:
        # Always undone, test failures or not; a failed start has undone itself already.
        undone = subprocess.run(["bash", SCRIPT, "stop"], env=env, capture_output=True, text=True, timeout=300)
        shutil.rmtree(env["CN_CGROUP2_DIR"], ignore_errors=True)
        if made is not None and made.returncode == 0:
            assert undone.returncode == 0, undone.stderr


@dataclass
class Fleet:
    setup: Setup
    names: Dict[str, str] = field(default_factory=dict)  # role -> container name
    ids: Dict[str, str] = field(default_factory=dict)
    pids: Dict[str, int] = field(default_factory=dict)
    pod_dirs: List[str] = field(default_factory=list)
    holders: List[subprocess.Popen] = field(default_factory=list)

    def run(self, role: str, parent: str = "", labels: Optional[Dict[str, str]] = None) -> str:
        name = f"cnt-v2-{uuid.uuid4().hex[:6]}-{role}"
        args = ["run", "-d", "--name", name, "--label", f"{TEST_LABEL}=cgroup2"]
        for key, value in (labels or {}).items():
            args += ["--label", f"{key}={value}"]
        if parent:
            args += ["--cgroup-parent", parent]
            self.pod_dirs.append(parent)
        cid = self.setup.docker(*args, IMAGE, "sleep", "100000")
        self.names[role], self.ids[role] = name, cid
        self.pids[role] = int(self.setup.docker("inspect", "-f", "{{.State.Pid}}", cid))
        return cid

    def background(self, role: str, code: str) -> None:
        proc = in_netns(self.pids[role], code, background=True)
        self.holders.append(proc)
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()


@pytest.fixture(scope="module")
def fleet(cgroup2: Setup) -> Iterator[Fleet]:
    """A plain container, a pod container with its uid label and one without it, with traffic
    on loopback and across the set-up's bridge (through its FORWARD rule)."""
    made = Fleet(cgroup2)
    try:
        uid_labelled, uid_bare = str(uuid.uuid4()), str(uuid.uuid4())
        made.run("plain")
        made.run("pod", f"/kubepods/burstable/pod{uid_labelled}",
                 {POD_UID: uid_labelled, "io.kubernetes.pod.namespace": "shop",
                  "io.kubernetes.pod.name": "web-0", "io.kubernetes.container.name": "app"})
        made.run("bare", f"/kubepods/besteffort/pod{uid_bare}")
        made.background("plain", hold(3, udp=2, udp6=1))
        in_netns(made.pids["pod"], time_wait(4))
        made.background("pod", hold(2))
        ip = cgroup2.docker("inspect", "-f", "{{.NetworkSettings.IPAddress}}", made.ids["plain"])
        made.background("bare", _CONNECT.format(ip=ip, port=8080, n=2))
        yield made
    finally:
        for proc in made.holders:
            proc.kill()
            proc.wait()
        for cid in made.ids.values():
            cgroup2.docker("rm", "-f", cid, check=False)
        for parent in made.pod_dirs:  # runc leaves the parents it made; nothing else uses them
            try:
                os.rmdir(cgroup2.cgroup_root + parent)
            except OSError:
                pass


def host_mounts_cgroup2() -> bool:
    """True if the host's /sys/fs/cgroup shows the cgroup2 hierarchy (at unified/ when hybrid)."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields, _, tail = line.partition(" - ")
            if tail.split()[0] == "cgroup2" and fields.split()[4] in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
                return True
    return False


def cli(setup: Setup, where: str, *args: str) -> subprocess.CompletedProcess:
    """The tool against the set-up's dockerd: inside the namespace, or from outside."""
    command = [sys.executable, "-m", "container_netstat", *args, "--docker-host", setup.docker_host]
    if where == "inside":
        command = ["nsenter", "-t", str(setup.holder), "-m", "--", *command]
    elif where == "outside":
        command += ["--cgroup-root", setup.cgroup_root]
    # "host": the host's own /sys/fs/cgroup, where the same tree is the hybrid unified/
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO)


def ss_count(pid: int, *args: str) -> int:
    out = subprocess.run(["nsenter", "-t", str(pid), "-n", "ss", "-H", *args],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    return len(out.splitlines())


def own_cgroup_line(pid: int) -> List[str]:
    with open(f"/proc/{pid}/cgroup") as f:
        return f.read().splitlines()


def test_docker_info_says_cgroup_version_2(cgroup2: Setup) -> None:
    assert cgroup2.docker("info", "--format", "{{.CgroupVersion}} {{.CgroupDriver}}") == "2 cgroupfs"
    holder_view = subprocess.run(["nsenter", "-t", str(cgroup2.holder), "-m", "--", "stat", "-f", "-c", "%T",
                                  "/sys/fs/cgroup"], capture_output=True, text=True, check=True)
    assert holder_view.stdout.strip() == "cgroup2fs"


def test_containers_cgroups_are_v2_paths(fleet: Fleet) -> None:
    lines = {role: own_cgroup_line(pid) for role, pid in fleet.pids.items()}
    pod_parent, bare_parent = fleet.pod_dirs
    assert f"0::/docker/{fleet.ids['plain']}" in lines["plain"]
    assert f"0::{pod_parent}/{fleet.ids['pod']}" in lines["pod"]
    assert pod_parent.startswith("/kubepods/burstable/pod")
    assert f"0::{bare_parent}/{fleet.ids['bare']}" in lines["bare"]
    # the hybrid limit: the v1 hierarchies are listed too, and name no container
    for role, text in lines.items():
        v1 = [line for line in text if not line.startswith("0::")]
        assert v1, role
        assert not [line for line in v1 if fleet.ids[role] in line], role


@pytest.mark.parametrize("where", ["inside", "outside", "host"])
def test_every_pid_from_cgroup_procs(fleet: Fleet, where: str) -> None:
    if where == "host" and not host_mounts_cgroup2():
        pytest.skip("this host mounts no cgroup2 under /sys/fs/cgroup: it cannot see the set-up's tree")
    result = cli(fleet.setup, where, "doctor")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    sources = {tuple(ns["containers"]): (ns["pid"], ns["pid_source"]) for ns in report["namespaces"]}
    expected = {}
    for role, name in fleet.names.items():
        expected[(name,)] = (fleet.pids[role], "cgroup")
    assert sources == expected, result.stderr


@pytest.mark.parametrize("where", ["inside", "outside"])
def test_values_match_ss_in_every_namespace(fleet: Fleet, where: str) -> None:
    result = cli(fleet.setup, where, "collect", "--dry-run", "--log-level", "debug")
    assert result.returncode == 0, result.stderr
    got: Dict[str, Dict[str, Any]] = {}
    for item in json.loads(result.stdout):
        got.setdefault(item["tags"], {})[item["metric"].replace("container.net.", "")] = item["value"]
    tags = {"plain": f"container={fleet.names['plain']}", "pod": "namespace=shop,pod=web-0",
            "bare": f"container={fleet.names['bare']}"}
    assert set(got) - {""} == set(tags.values())
    for role, tag in tags.items():
        pid, values = fleet.pids[role], got[tag]
        timewait = ss_count(pid, "-tan", "state", "time-wait")
        assert values["tcp.established"] == ss_count(pid, "-tan", "state", "established"), role
        assert values["tcp.timewait"] == timewait, role
        assert values["tcp.inuse"] == ss_count(pid, "-tan") - timewait, role
        assert values["udp.inuse"] == ss_count(pid, "-uan"), role
    # the traffic is there: not a comparison of zeros
    assert got[tags["plain"]]["tcp.established"] == 3 * 2 + 2  # its own pairs, the bare's two
    assert got[tags["pod"]]["tcp.timewait"] == 4
    assert got[tags["bare"]]["tcp.established"] == 2
    for role in fleet.names:
        assert f"pid {fleet.pids[role]} from cgroup" in result.stderr, role


def test_pod_container_without_its_uid_label_is_found_in_the_pod_cgroups(fleet: Fleet) -> None:
    labels = fleet.setup.docker("inspect", "-f", "{{json .Config.Labels}}", fleet.ids["bare"])
    assert POD_UID not in json.loads(labels)
    result = cli(fleet.setup, "inside", "collect", "--dry-run", "--log-level", "debug",
                 "--include", fleet.names["bare"])
    assert result.returncode == 0, result.stderr
    assert f"container {fleet.ids['bare'][:12]}: pid {fleet.pids['bare']} from cgroup" in result.stderr
    assert "from inspect" not in result.stderr
