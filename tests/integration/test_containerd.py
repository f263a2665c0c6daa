"""Real containerd, no Docker API involved: the proc backend finds, groups and names pods.

scripts/setup-runtimes.sh starts a private containerd (its own socket, root and state;
the state directory is <run>/run/containerd, the standard layout under another /run)
and imports the busybox image into the namespace cntest. Each pod here is what the CRI
plugin would make: a sandbox with its own network namespace and app containers joining
it, in the kubelet's cgroupfs pod cgroups, with the CRI plugin's annotations.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import pytest

from conftest import IMAGE, in_netns, unavailable
from integration.workloads import hold, time_wait

pytestmark = pytest.mark.docker

RUN = os.environ.get("CONTAINER_NETSTAT_TEST_RUN", "/run/container-netstat-test")
SOCKET = os.path.join(RUN, "containerd.sock")
RUN_ROOT = os.path.join(RUN, "run")  # holds containerd/io.containerd.runtime.v2.task/<ns>/<id>
NAMESPACE = "cntest"
CTR_IMAGE = f"docker.io/{IMAGE}"




def ctr(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ctr", "-a", SOCKET, "-n", NAMESPACE, *args],
                          capture_output=True, text=True, timeout=60, check=check)


class Pods:
    """Starts ctr containers shaped like CRI pods; removes them afterwards."""

    def __init__(self) -> None:
        self.started: List[str] = []

    def run(self, pod_uid: str, annotations: Dict[str, str], join: Optional[int] = None,
            host_network: bool = False) -> Tuple[str, int]:
        cid = uuid.uuid4().hex + uuid.uuid4().hex  # 64 hex, like the CRI plugin's ids
        args = ["run", "-d", "--cgroup", f"/kubepods/besteffort/pod{pod_uid}/{cid}"]
        for key, value in annotations.items():
            args += ["--annotation", f"{key}={value}"]
        if join is not None:
            args += ["--with-ns", f"network:/proc/{join}/ns/net"]
        if host_network:
            args.append("--net-host")
        ctr(*args, CTR_IMAGE, cid, "sleep", "100000")
        self.started.append(cid)
        return cid, self.pid(cid)

    def pid(self, cid: str) -> int:
        for _ in range(50):
            for line in ctr("tasks", "ls").stdout.splitlines()[1:]:
                fields = line.split()
                if fields[0] == cid and fields[2] == "RUNNING":
                    return int(fields[1])
            time.sleep(0.1)
        raise AssertionError(f"task {cid} is not running")

    def pod(self, namespace: str, name: str, apps: List[str], host_network: bool = False
            ) -> Tuple[str, int, Dict[str, int]]:
        """A sandbox and its app containers, all in the sandbox's network namespace."""
        uid = str(uuid.uuid4())
        common = {"io.kubernetes.cri.sandbox-name": name, "io.kubernetes.cri.sandbox-namespace": namespace}
        sandbox, spid = self.run(uid, {**common, "io.kubernetes.cri.container-type": "sandbox",
                                       "io.kubernetes.cri.sandbox-uid": uid}, host_network=host_network)
        pids = {}
        for app in apps:
            _, pids[app] = self.run(uid, {**common, "io.kubernetes.cri.container-type": "container",
                                          "io.kubernetes.cri.container-name": app,
                                          "io.kubernetes.cri.sandbox-id": sandbox}, join=spid)
        return uid, spid, pids

    def remove(self) -> None:
        for cid in reversed(self.started):
            ctr("tasks", "kill", "-s", "KILL", cid, check=False)
        for cid in reversed(self.started):
            for _ in range(50):
                if ctr("tasks", "delete", cid, check=False).returncode == 0:
                    break
                time.sleep(0.1)
            ctr("containers", "delete", cid, check=False)


@pytest.fixture
def pods() -> Iterator[Pods]:
    if not shutil.which("ctr"):
        unavailable("ctr is not installed (scripts/setup-runtimes.sh installs containerd)")
    if ctr("version", check=False).returncode != 0:
        unavailable(f"no containerd answers on {SOCKET} (scripts/setup-runtimes.sh starts one)")
    if CTR_IMAGE not in ctr("images", "ls", "-q").stdout.split():
        unavailable(f"image {CTR_IMAGE} missing in containerd namespace {NAMESPACE}")
    made = Pods()
    yield made
    made.remove()


def collect(*args: str) -> Tuple[Dict[str, Dict[str, int]], str]:
    result = subprocess.run([sys.executable, "-m", "container_netstat", "collect", "--dry-run",
                             "--runtime", "proc", *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    out: Dict[str, Dict[str, int]] = {}
    for item in json.loads(result.stdout):
        out.setdefault(item["tags"], {})[item["metric"].replace("container.net.", "")] = item["value"]
    return out, result.stderr


def ss_count(pid: int, *filters: str) -> int:
    out = subprocess.run(["nsenter", "-t", str(pid), "-n", "ss", "-Htan", *filters],
                         capture_output=True, text=True, check=True).stdout
    return len(out.splitlines())


def test_every_pod_namespace_once_with_pod_tags_values_as_ss(pods: Pods, holders: List[subprocess.Popen]) -> None:
    _, web_pid, web_apps = pods.pod("shop", "web-7d4b9", ["app", "sidecar"])
    _, dns_pid, _ = pods.pod("kube-system", "coredns-5d78c", ["coredns"])
    holders.append(in_netns(web_apps["app"], hold(3), background=True))
    assert holders[-1].stdout.readline().strip() == "ready"
    in_netns(web_apps["sidecar"], time_wait(5))

    got, err = collect("--run-root", RUN_ROOT, "--include", "io.kubernetes.cri.sandbox-name=*",
                       "--log-level", "debug")
    web, dns = got["namespace=shop,pod=web-7d4b9"], got["namespace=kube-system,pod=coredns-5d78c"]
    assert web["tcp.established"] == 6 == ss_count(web_pid, "state", "established")
    assert web["tcp.timewait"] == 5 == ss_count(web_pid, "state", "time-wait")
    assert web["tcp.inuse"] == ss_count(web_pid) - web["tcp.timewait"]
    assert dns["tcp.established"] == 0 == ss_count(dns_pid)
    # three containers share the web pod's namespace, read once, owned by the sandbox
    assert "shop/web-7d4b9/POD" in err and "share it; owner shop/web-7d4b9/POD" in err
    assert len([t for t in got if "web-7d4b9" in t]) == 1
    assert "named from containerd bundle (cntest)" in err


def test_state_dir_found_from_the_running_containerd(pods: Pods) -> None:
    pods.pod("shop", "cart-0", ["cart"])
    # default --run-root /run: this containerd's state is not under /run/containerd, but its
    # --config file says where it is
    got, err = collect("--include", "io.kubernetes.cri.sandbox-name=cart-0", "--log-level", "debug")
    assert "namespace=shop,pod=cart-0" in got
    assert "named from containerd bundle (cntest)" in err
    assert f"containerd state {RUN_ROOT}/containerd (containerd " in err


def test_bundles_found_through_the_shim_when_the_state_dir_is_unknown(pods: Pods) -> None:
    pods.pod("shop", "cart-1", ["cart"])
    got, err = collect("--runtime-dir", "containerd=/nonexistent/state", "--include",
                       "io.kubernetes.cri.sandbox-name=cart-1", "--log-level", "debug")
    assert "namespace=shop,pod=cart-1" in got
    assert "named from shim bundle" in err


def test_kubelet_log_dirs_name_pods_without_annotations(pods: Pods, tmp_path: Path) -> None:
    uid = str(uuid.uuid4())
    sandbox, spid = pods.run(uid, {})
    app, _ = pods.run(uid, {}, join=spid)
    (tmp_path / "log" / "pods" / f"batch_report-28391_{uid}" / "report").mkdir(parents=True)
    (tmp_path / "log" / "containers").mkdir()
    (tmp_path / "log" / "containers" / f"report-28391_batch_report-{app}.log").touch()
    got, err = collect("--run-root", RUN_ROOT, "--var-root", str(tmp_path),
                       "--include", "io.kubernetes.pod.namespace=batch", "--log-level", "debug")
    assert list(got.keys() - {""}) == ["namespace=batch,pod=report-28391"]
    assert "named from kubelet log dirs" in err
    assert "batch/report-28391/POD" in err and "batch/report-28391/report" in err


def test_host_network_pod_is_not_reported(pods: Pods) -> None:
    pods.pod("kube-system", "kube-proxy-x", ["kube-proxy"], host_network=True)
    got, err = collect("--run-root", RUN_ROOT, "--log-level", "debug")
    assert not [t for t in got if "kube-proxy-x" in t]
    assert "kube-system/kube-proxy-x/POD: in the host's network namespace" in err
