"""deploy/daemonset.yaml's container contract, run under plain Docker (there is no Kubernetes here).

The pod spec is read from the manifest and turned into ``docker run`` options field by
field: the image built by deploy/build-image.sh, its entrypoint and the manifest's args,
host PID and network namespaces, user, capabilities, read-only root, no privilege
escalation, memory limit, the read-only hostPath mounts and the emptyDir spool. A field
this translation does not know fails the test, so the manifest cannot grow a privilege
that was never tried. Only two things differ from a node: the falcon-agent is the test
receiver (an environment variable) and the interval is 3 s instead of 60.

deploy/daemonset-sock-diag.yaml is the same manifest plus CAP_SYS_ADMIN and CAP_SYS_PTRACE
(capabilities.add), what the sock_diag path needs; the two are checked to differ in that
only, and each is run: TCP states off (or from /proc on request, without the percentages)
without the capabilities, from sock_diag with them, equal to a run as root on the host.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
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
MANIFEST_SOCK_DIAG = REPO / "deploy" / "daemonset-sock-diag.yaml"
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


def manifest_docs(manifest: Path = MANIFEST) -> List[Dict[str, Any]]:
    try:
        import yaml
    except ImportError:
        unavailable("PyYAML is needed to read the manifest (pip install pyyaml)")
    return [d for d in yaml.safe_load_all(manifest.read_text()) if d]


def daemonset(manifest: Path = MANIFEST) -> Dict[str, Any]:
    (ds,) = [d for d in manifest_docs(manifest) if d["kind"] == "DaemonSet"]
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


# TCP states in the pod: deploy/daemonset.yaml (no capability: the /proc fallback) and
# deploy/daemonset-sock-diag.yaml (CAP_SYS_ADMIN for setns, CAP_SYS_PTRACE to open another
# process's /proc/<pid>/ns/net), each against a run as root on the host.

SOCK_DIAG_CAPS = ["SYS_ADMIN", "SYS_PTRACE"]
CAP_BITS = {"SYS_PTRACE": 19, "SYS_ADMIN": 21}  # include/uapi/linux/capability.h
PORT_RANGE = (40000, 40019)  # set inside the listener's namespace: 20 ephemeral ports
SOCK_DIAG_ONLY = {"container.net.tcp.listen.fill_max_pct", "container.net.tcp.listen.near_full",
                  "container.net.tcp.ports.pressure_pct"}

# In the container's namespace: a narrow ephemeral range, a listener with backlog 4 that
# never accepts, and 3 clients (Recv-Q 3, Send-Q 4 in `ss -ltn`; 3 sockets to one remote).
_LISTENER = r"""
import socket, time
with open("/proc/sys/net/ipv4/ip_local_port_range", "w") as f:
    f.write("{lo} {hi}")
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 8080)); srv.listen(4)
held = [socket.create_connection(("127.0.0.1", 8080)) for _ in range(3)]
print("ready", flush=True)
time.sleep(600)
"""


def state_metrics() -> "set[str]":
    from container_netstat.metrics import NETNS_METRICS, PREFIX, STATES

    return {PREFIX + m.name for m in NETNS_METRICS if m.group == STATES}


def of(items: List[Dict[str, Any]], tags: str, names: "set[str]") -> Dict[str, int]:
    return {i["metric"]: i["value"] for i in items if i["tags"] == tags and i["metric"] in names}


def listener(run_container: Any, holders: "List[subprocess.Popen[str]]") -> Any:
    app = run_container(name="ds-listener")
    holders.append(background(pid_of(app), _LISTENER.format(lo=PORT_RANGE[0], hi=PORT_RANGE[1])))
    return app


def ss_listen_queues(pid: int) -> "tuple[int, int]":
    """Recv-Q (accept queue) and Send-Q (backlog) of the namespace's one listener."""
    (line,) = subprocess.run(["nsenter", "-t", str(pid), "-n", "ss", "-Hltn"], capture_output=True, text=True,
                             check=True).stdout.splitlines()
    fields = line.split()
    return int(fields[1]), int(fields[2])


def ss_peer_max(pid: int) -> int:
    """The most sockets, LISTEN left out, sharing one peer address and port."""
    out = subprocess.run(["nsenter", "-t", str(pid), "-n", "ss", "-Htan"], capture_output=True, text=True,
                         check=True).stdout
    peers: Dict[str, int] = {}
    for line in out.splitlines():
        fields = line.split()
        if fields[0] != "LISTEN":
            peers[fields[4]] = peers.get(fields[4], 0) + 1
    return max(peers.values())


def deploy(ds: Mapping[str, Any], deployed: List[str], agent: Receiver) -> str:
    name = f"cnt-ds-{uuid.uuid4().hex[:8]}"
    deployed.append(name)
    env = {"CONTAINER_NETSTAT_INTERVAL": "3", "CONTAINER_NETSTAT_COLLECT_FALCON_URL": agent.url()}
    started = subprocess.run(docker_run_args(ds, name, env), capture_output=True, text=True, timeout=60)
    assert started.returncode == 0, started.stderr
    return name


def in_pod(ds: Mapping[str, Any], name: str, command: str, *extra: str) -> "subprocess.CompletedProcess[str]":
    """`container-netstat COMMAND` with the pod's args, in the running pod (as `kubectl exec`)."""
    (container,) = ds["spec"]["template"]["spec"]["containers"]
    done = subprocess.run(["docker", "exec", name, "container-netstat", command, *container["args"], *extra],
                          capture_output=True, text=True, timeout=120)
    # 4: another container on this host exited or could not be read during the run
    assert done.returncode in (0, 4), done.stderr
    return done


def pushed_run(agent: Receiver, tags: str, timeout: float = 120) -> Dict[str, int]:
    """metric -> value of the first run the pod pushed for these tags, complete once a second one came."""
    deadline = time.monotonic() + timeout
    while True:
        runs: Dict[int, Dict[str, int]] = {}
        for item in agent.items():
            if item["tags"] == tags:
                runs.setdefault(item["timestamp"], {})[item["metric"]] = item["value"]
        if len(runs) >= 2:
            return runs[min(runs)]
        assert time.monotonic() < deadline, f"{len(runs)} runs for {tags} received in {timeout} s"
        time.sleep(0.5)


def root_run(tags: str) -> Dict[str, int]:
    """The states items of a run as root on the host (sock_diag), for these tags."""
    done = subprocess.run([sys.executable, "-m", "container_netstat", "collect", "--dry-run", "--runtime", "proc",
                           "--run-root", f"{RUN}/run", "--log-level", "info"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode in (0, 4), done.stderr
    assert "TCP states: sock_diag" in done.stderr, done.stderr
    reference = of(json.loads(done.stdout), tags, state_metrics())
    assert SOCK_DIAG_ONLY <= set(reference), reference
    return reference


def test_manifests_differ_only_in_capabilities() -> None:
    shipped, variant = manifest_docs(MANIFEST), manifest_docs(MANIFEST_SOCK_DIAG)
    (ds,) = [d for d in variant if d["kind"] == "DaemonSet"]
    (container,) = ds["spec"]["template"]["spec"]["containers"]
    capabilities = container["securityContext"]["capabilities"]
    assert capabilities.pop("add") == SOCK_DIAG_CAPS
    assert capabilities == {"drop": ["ALL"]}
    assert variant == shipped  # everything else, field by field


def test_no_capability_manifest_reads_states_from_proc_on_request(deployed: List[str], run_container: Any,
                                                                  holders: "List[subprocess.Popen[str]]") -> None:
    app = listener(run_container, holders)
    tags, ds = f"container={app.name}", daemonset(MANIFEST)
    with Receiver() as agent:
        name = deploy(ds, deployed, agent)
        run = pushed_run(agent, tags)
        doctor = json.loads(in_pod(ds, name, "doctor").stdout)["tcp_states"]
        default = in_pod(ds, name, "collect", "--dry-run", "--log-level", "info")
        asked = in_pod(ds, name, "collect", "--dry-run", "--tcp-states")
    reference = root_run(tags)

    # every minute: no states, since only /proc could give them; doctor and the info line say why
    assert "container.net.tcp.established" in run and not state_metrics() & set(run), run
    assert doctor["path"] == "proc" and "needs CAP_SYS_ADMIN" in doctor["why"], doctor
    assert doctor["default"].startswith("off") and "omitted" in doctor, doctor
    assert "TCP states: off (setns refused" in default.stderr, default.stderr
    assert of(json.loads(default.stdout), tags, state_metrics()) == {}

    # --tcp-states: the counts of root's sock_diag run, from /proc, and no percentage
    states = of(json.loads(asked.stdout), tags, state_metrics())
    assert states == {m: v for m, v in reference.items() if m not in SOCK_DIAG_ONLY}
    assert states["container.net.tcp.listen.queue_max"] == ss_listen_queues(pid_of(app))[0]
    assert states["container.net.tcp.state.established"] == ss_established(pid_of(app))
    assert states["container.net.tcp.ports.peer_max"] == ss_peer_max(pid_of(app))


def test_sock_diag_manifest_reads_states_by_sock_diag(deployed: List[str], run_container: Any,
                                                      holders: "List[subprocess.Popen[str]]") -> None:
    app = listener(run_container, holders)
    tags, ds = f"container={app.name}", daemonset(MANIFEST_SOCK_DIAG)
    with Receiver() as agent:
        name = deploy(ds, deployed, agent)
        run = {m: v for m, v in pushed_run(agent, tags).items() if m in state_metrics()}
        status = subprocess.run(["docker", "exec", name, "grep", "-E", "^(CapEff|Seccomp):", "/proc/self/status"],
                                capture_output=True, text=True, timeout=30).stdout
        doctor = json.loads(in_pod(ds, name, "doctor").stdout)["tcp_states"]
        one = in_pod(ds, name, "collect", "--dry-run", "--log-level", "info")
    reference = root_run(tags)

    # exactly the two capabilities, under the runtime's default seccomp filter (mode 2)
    caps = sum(1 << CAP_BITS[c] for c in SOCK_DIAG_CAPS)
    assert f"CapEff:\t{caps:016x}" in status and "Seccomp:\t2" in status, status
    assert doctor["path"] == "sock_diag" and doctor["read_from_proc"] == [], doctor
    assert "TCP states: sock_diag inside each network namespace" in one.stderr, one.stderr

    # every minute: states on, percentages included, the values of root's run and of ss
    assert run == reference
    queue, backlog = ss_listen_queues(pid_of(app))
    peers = ss_peer_max(pid_of(app))
    assert run["container.net.tcp.listen.queue_max"] == queue
    assert run["container.net.tcp.listen.fill_max_pct"] == queue * 100 // backlog
    assert run["container.net.tcp.ports.peer_max"] == peers
    assert run["container.net.tcp.ports.pressure_pct"] == peers * 100 // (PORT_RANGE[1] - PORT_RANGE[0] + 1)


@pytest.mark.parametrize("missing", SOCK_DIAG_CAPS)
def test_sock_diag_needs_both_capabilities(missing: str, deployed: List[str], run_container: Any,
                                           holders: "List[subprocess.Popen[str]]") -> None:
    app = listener(run_container, holders)
    tags, ds = f"container={app.name}", daemonset(MANIFEST_SOCK_DIAG)
    security = ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    security["capabilities"]["add"] = [c for c in SOCK_DIAG_CAPS if c != missing]
    with Receiver() as agent:
        name = deploy(ds, deployed, agent)
        doctor = json.loads(in_pod(ds, name, "doctor").stdout)["tcp_states"]
        asked = in_pod(ds, name, "collect", "--dry-run", "--tcp-states")

    states = of(json.loads(asked.stdout), tags, state_metrics())
    assert "container.net.tcp.state.listen" in states and not SOCK_DIAG_ONLY & set(states), states
    if missing == "SYS_ADMIN":  # setns refused: every namespace from /proc
        assert doctor["path"] == "proc" and "needs CAP_SYS_ADMIN" in doctor["why"], doctor
    else:  # setns allowed, but no ptrace access to the ns files of more privileged processes:
        # the first container's ns file shows it, so states are not switched on only to be
        # read from /proc namespace by namespace
        assert doctor["path"] == "proc" and "needs ptrace access (CAP_SYS_PTRACE)" in doctor["why"], doctor
