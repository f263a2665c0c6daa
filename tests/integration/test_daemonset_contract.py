"""deploy/daemonset.yaml's container contract, run under plain Docker (there is no Kubernetes here).

The pod spec is read from the manifest and turned into ``docker run`` options field by
field: the image built by deploy/build-image.sh, its entrypoint and the manifest's args,
host PID and network namespaces, user, capabilities, read-only root, no privilege
escalation, memory limit, the read-only hostPath mounts and the emptyDir spool. A field
this translation does not know fails the test, so the manifest cannot grow a privilege
that was never tried. Only two things differ from a node: the falcon-agent is the test
receiver (an environment variable) and the interval is 3 s instead of 60.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping

import pytest

from conftest import TEST_LABEL, pid_of, unavailable
from integration.test_collect_docker import background
from integration.workloads import hold
from receiver import Receiver

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[2]
MANIFEST = REPO / "deploy" / "daemonset.yaml"
BASE = "container-netstat/python-base:bookworm"
TAG = "container-netstat:contract-test"
RUN = os.environ.get("CONTAINER_NETSTAT_TEST_RUN", "/run/container-netstat-test")
# The test containerd keeps the standard bundle layout under another /run (setup-runtimes.sh).
HOST_PATHS = {
    "/run/containerd/io.containerd.runtime.v2.task": f"{RUN}/run/containerd/io.containerd.runtime.v2.task",
}


KNOWN_POD_FIELDS = {"hostPID", "hostNetwork", "dnsPolicy", "automountServiceAccountToken", "enableServiceLinks",
                    "tolerations", "terminationGracePeriodSeconds", "containers", "volumes"}
KNOWN_CONTAINER_FIELDS = {"name", "image", "args", "env", "securityContext", "resources", "volumeMounts"}
KNOWN_SECURITY_FIELDS = {"runAsUser", "runAsGroup", "privileged", "allowPrivilegeEscalation",
                         "readOnlyRootFilesystem", "capabilities", "seccompProfile"}


def daemonset() -> Dict[str, Any]:
    try:
        import yaml
    except ImportError:
        unavailable("PyYAML is needed to read the manifest (pip install pyyaml)")
    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    (ds,) = [d for d in docs if d["kind"] == "DaemonSet"]
    return ds


def quantity(value: str) -> str:
    """A Kubernetes memory quantity (Mi, Gi) as Docker writes it."""
    for suffix, unit in (("Mi", "m"), ("Gi", "g"), ("Ki", "k")):
        if value.endswith(suffix):
            return value[: -len(suffix)] + unit
    raise AssertionError(f"memory quantity the test does not know: {value}")


def docker_run_args(ds: Mapping[str, Any], name: str, env: Mapping[str, str]) -> List[str]:
    """``docker run`` options with the same namespaces, user, privileges and mounts as the pod."""
    spec = ds["spec"]["template"]["spec"]
    assert set(spec) <= KNOWN_POD_FIELDS, f"new pod fields to translate: {set(spec) - KNOWN_POD_FIELDS}"
    (container,) = spec["containers"]
    assert set(container) <= KNOWN_CONTAINER_FIELDS, set(container) - KNOWN_CONTAINER_FIELDS
    args = ["docker", "run", "-d", "--name", name, "--label", f"{TEST_LABEL}=daemonset",
            "--stop-timeout", str(spec["terminationGracePeriodSeconds"])]
    args += ["--pid", "host"] if spec.get("hostPID") else []
    args += ["--network", "host"] if spec.get("hostNetwork") else []

    security = container["securityContext"]
    assert set(security) <= KNOWN_SECURITY_FIELDS, set(security) - KNOWN_SECURITY_FIELDS
    args += ["--user", f"{security['runAsUser']}:{security.get('runAsGroup', 0)}"]
    args += ["--privileged"] if security.get("privileged") else []
    args += ["--security-opt", "no-new-privileges"] if security.get("allowPrivilegeEscalation") is False else []
    args += ["--read-only"] if security.get("readOnlyRootFilesystem") else []
    for cap in security.get("capabilities", {}).get("drop", []):
        args += ["--cap-drop", cap]
    for cap in security.get("capabilities", {}).get("add", []):
        args += ["--cap-add", cap]
    assert security.get("seccompProfile", {}).get("type", "RuntimeDefault") == "RuntimeDefault"  # Docker's default
    limits = container.get("resources", {}).get("limits", {})
    args += ["--memory", quantity(limits["memory"])] if "memory" in limits else []
    args += ["--cpus", str(limits["cpu"])] if "cpu" in limits else []

    volumes = {v["name"]: v for v in spec["volumes"]}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "hostPath" in volume:
            source = HOST_PATHS.get(volume["hostPath"]["path"], volume["hostPath"]["path"])
            assert volume["hostPath"].get("type") in ("DirectoryOrCreate", "Directory")
            assert mount.get("readOnly"), f"{mount['name']}: every host path is mounted read-only"
            os.makedirs(source, exist_ok=True)
            args += ["-v", f"{source}:{mount['mountPath']}:ro"]
        elif "emptyDir" in volume:
            size = volume["emptyDir"].get("sizeLimit")
            args += ["--tmpfs", mount["mountPath"] + (f":size={quantity(size)}" if size else "")]
        else:
            raise AssertionError(f"volume type the contract test does not know: {volume}")
    for var in container.get("env", []):
        assert "value" in var, f"{var['name']}: only plain values are translated"
        args += ["-e", f"{var['name']}={env.get(var['name'], var['value'])}"]
    for key, value in env.items():
        args += ["-e", f"{key}={value}"]
    return args + [TAG, *container.get("args", [])]


@pytest.fixture(scope="session")
def image(docker_client: Any) -> str:
    try:
        docker_client.images.get(BASE)
    except Exception:  # noqa: BLE001 - missing or unreachable
        unavailable(f"base image {BASE} missing (scripts/setup-runtimes.sh builds it with deploy/build-base.sh)")
    result = subprocess.run(["bash", str(REPO / "deploy" / "build-image.sh"), TAG], env={**os.environ, "BASE": BASE},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return TAG


@pytest.fixture
def deployed(image: str) -> Iterator[List[str]]:
    names: List[str] = []
    yield names
    for name in names:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)


@pytest.fixture
def holders() -> Iterator[List[subprocess.Popen]]:
    procs: List[subprocess.Popen] = []
    yield procs
    for p in procs:
        p.kill()
        p.wait()


def ss_established(pid: int) -> int:
    out = subprocess.run(["nsenter", "-t", str(pid), "-n", "ss", "-Htan", "state", "established"],
                         capture_output=True, text=True, check=True).stdout
    return len(out.splitlines())


def test_manifest_contract_under_docker(deployed: List[str], run_container: Any,
                                        holders: List[subprocess.Popen]) -> None:
    from integration.test_containerd import SOCKET, Pods, ctr  # the same CRI-shaped pods

    if ctr("version", check=False).returncode != 0:
        unavailable(f"no containerd answers on {SOCKET} (scripts/setup-runtimes.sh starts one)")
    pod = {"io.kubernetes.pod.name": "web-1", "io.kubernetes.pod.namespace": "docker-shop"}
    sandbox = run_container(name="k8s_POD", network_mode="none",
                            labels={**pod, "io.kubernetes.docker.type": "podsandbox"})
    app = run_container(name="k8s_app", network_mode=f"container:{sandbox.id}",
                        labels={**pod, "io.kubernetes.docker.type": "container"})
    holders.append(background(pid_of(app), hold(2)))
    pods = Pods()
    try:
        _, cri_pid, cri_apps = pods.pod("cri-shop", "cart-0", ["cart"])
        holders.append(background(cri_apps["cart"], hold(3)))

        with Receiver() as agent:
            name = f"cn-daemonset-{uuid.uuid4().hex[:8]}"
            deployed.append(name)
            env = {"CONTAINER_NETSTAT_INTERVAL": "3", "CONTAINER_NETSTAT_COLLECT_FALCON_URL": agent.url()}
            started = subprocess.run(docker_run_args(daemonset(), name, env), capture_output=True, text=True,
                                     timeout=60)
            assert started.returncode == 0, started.stderr
            runs = wait_for_runs(agent, 2, timeout=120)

            # no capability, no runtime socket, and still every pod is read
            caps = subprocess.run(["docker", "exec", name, "sh", "-c",
                                   "grep CapEff /proc/self/status; ls /var/run/docker.sock 2>&1 || true"],
                                  capture_output=True, text=True, timeout=30).stdout
            assert "CapEff:\t0000000000000000" in caps
            assert "No such file" in caps

            stop_started = time.monotonic()
            subprocess.run(["docker", "stop", name], capture_output=True, timeout=120, check=True)
            stop_took = time.monotonic() - stop_started
            state = subprocess.run(["docker", "inspect", "-f", "{{.State.ExitCode}}", name],
                                   capture_output=True, text=True, check=True).stdout.strip()
            logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True).stderr
    finally:
        pods.remove()

    latest = runs[max(runs)]
    assert latest["namespace=docker-shop,pod=web-1"] == 4 == ss_established(pid_of(sandbox))
    assert latest["namespace=cri-shop,pod=cart-0"] == 6
    endpoints = {i["endpoint"] for i in agent.items()}
    assert endpoints == {socket.gethostname()}  # the node's name, through the host network
    assert state == "0" and stop_took < 15, (state, stop_took, logs)
    assert "Traceback" not in logs and "collect exited with" not in logs, logs


def wait_for_runs(agent: Receiver, count: int, timeout: float) -> Dict[int, Dict[str, int]]:
    """timestamp -> {tags: tcp.established} for each run the agent received."""
    deadline = time.monotonic() + timeout
    while True:
        runs: Dict[int, Dict[str, int]] = {}
        for item in agent.items():
            if item["metric"] == "container.net.tcp.established":
                runs.setdefault(item["timestamp"], {})[item["tags"]] = item["value"]
        complete = {t: r for t, r in runs.items() if "namespace=cri-shop,pod=cart-0" in r}
        if len(complete) >= count:
            return complete
        assert time.monotonic() < deadline, f"{len(complete)} runs received in {timeout} s"
        time.sleep(0.5)
