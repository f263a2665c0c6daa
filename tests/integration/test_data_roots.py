"""A real Docker with a data-root of its own: ``--runtime proc`` still names its containers.

Each private dockerd has its own socket, exec-root, pidfile and bridge (never ``--bridge
none``: it deletes docker0, which belongs to the daemon the other tests use), and keeps its
containers under a non-default data-root, given once on its command line and once in its
daemon.json. The tool finds that directory from the running dockerd alone (runtime_dirs.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from conftest import IMAGE, TEST_LABEL, unavailable
from integration.test_collect_docker import background
from integration.workloads import hold

pytestmark = pytest.mark.docker

POD = {"io.kubernetes.pod.name": "web-1", "io.kubernetes.pod.namespace": "dr-shop",
       "io.kubernetes.pod.uid": "6f1c1d2e-0000-4000-8000-00000000d00c"}


class PrivateDocker:
    """A dockerd of the test's own, with the busybox image, and the containers it started."""

    def __init__(self, base: str, data_root: str, process: "subprocess.Popen[bytes]", url: str) -> None:
        self.base, self.data_root, self.process, self.url = base, data_root, process, url
        self.run_id = uuid.uuid4().hex[:8]
        self.started: List[Any] = []
        import docker

        self.client = docker.DockerClient(base_url=url, timeout=60)

    def run(self, name: str, **kwargs: Any) -> Any:
        labels = {TEST_LABEL: self.run_id, **kwargs.pop("labels", {})}
        container = self.client.containers.run(IMAGE, ["sh", "-c", "sleep 100000"], detach=True,
                                               name=f"cnt-dr-{self.run_id}-{name}", labels=labels, **kwargs)
        self.started.append(container)
        container.reload()
        return container

    def remove_all(self) -> None:
        for container in reversed(self.started):
            try:
                container.remove(force=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.started.clear()


def _start(how: str, bridge: str) -> Iterator[PrivateDocker]:
    if not shutil.which("dockerd"):
        unavailable("dockerd is not installed")
    base = tempfile.mkdtemp(prefix="cnt-dr-", dir="/tmp")
    data_root = os.path.join(base, "custom-root")
    sock = os.path.join(base, "docker.sock")
    args = ["dockerd", "--host", f"unix://{sock}", "--exec-root", os.path.join(base, "exec"),
            "--pidfile", os.path.join(base, "docker.pid"), "--bridge", bridge,
            "--iptables=false", "--ip-masq=false", "--ip-forward=false"]
    if how == "flag":
        args += ["--data-root", data_root]
    else:
        config = os.path.join(base, "daemon.json")
        with open(config, "w") as f:
            json.dump({"data-root": data_root}, f)
        args += ["--config-file", config]
    subprocess.run(["ip", "link", "del", bridge], capture_output=True)
    subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
    log = open(os.path.join(base, "dockerd.log"), "w")
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    daemon = None
    try:
        cli = ["docker", "-H", f"unix://{sock}"]
        deadline = time.monotonic() + 60
        while subprocess.run([*cli, "info"], capture_output=True, timeout=30).returncode != 0:
            if time.monotonic() > deadline or process.poll() is not None:
                unavailable(f"private dockerd did not start; see {base}/dockerd.log")
            time.sleep(0.3)
        saved = subprocess.run(["docker", "save", IMAGE], capture_output=True, timeout=120, check=True).stdout
        subprocess.run([*cli, "load"], input=saved, capture_output=True, timeout=120, check=True)
        daemon = PrivateDocker(base, data_root, process, f"unix://{sock}")
        yield daemon
    finally:
        if daemon is not None:
            daemon.remove_all()
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def docker_by_flag() -> Iterator[PrivateDocker]:
    """dockerd --data-root <base>/custom-root."""
    yield from _start("flag", "cnt-dr0")


@pytest.fixture(scope="module")
def docker_by_config() -> Iterator[PrivateDocker]:
    """dockerd --config-file <base>/daemon.json, which sets data-root."""
    yield from _start("config", "cnt-dr1")


def collect(*args: str) -> Tuple[Dict[str, Dict[str, int]], str]:
    result = subprocess.run([sys.executable, "-m", "container_netstat", "collect", "--dry-run", "--runtime", "proc",
                             "--log-level", "debug", *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    out: Dict[str, Dict[str, int]] = {}
    for item in json.loads(result.stdout):
        out.setdefault(item["tags"], {})[item["metric"].replace("container.net.", "")] = item["value"]
    return out, result.stderr


def pid(container: Any) -> int:
    container.reload()
    return int(container.attrs["State"]["Pid"])


def test_containers_of_a_docker_with_its_data_root_on_its_command_line(
    docker_by_flag: PrivateDocker, holders: List["subprocess.Popen[str]"]
) -> None:
    docker = docker_by_flag
    web = docker.run("web", network_mode="none")
    sandbox = docker.run("k8s_POD_web-1", network_mode="none",
                         labels={**POD, "io.kubernetes.docker.type": "podsandbox", "io.kubernetes.container.name": "POD"})
    app = docker.run("k8s_app_web-1", network_mode=f"container:{sandbox.id}",
                     labels={**POD, "io.kubernetes.docker.type": "container", "io.kubernetes.container.name": "app"})
    holders.append(background(pid(app), hold(2)))
    holders.append(background(pid(web), hold(1)))

    got, err = collect("--include", f"{TEST_LABEL}={docker.run_id}")
    assert set(got) - {""} == {f"container={web.name}", "namespace=dr-shop,pod=web-1"}
    assert got["namespace=dr-shop,pod=web-1"]["tcp.established"] == 4  # the pod's namespace, read once
    assert got[f"container={web.name}"]["tcp.established"] == 2
    assert got[""]["collector.containers"] == 3
    assert f"Docker data-root {docker.data_root} (dockerd {docker.process.pid}: --data-root)" in err
    for container in (web, sandbox, app):
        assert f"container {container.id[:12]}: docker runtime, pid {pid(container)}, named from docker config.v2.json" in err


def test_containers_of_a_docker_with_its_data_root_in_daemon_json(docker_by_config: PrivateDocker) -> None:
    docker = docker_by_config
    web = docker.run("web", network_mode="none")
    got, err = collect("--include", f"{TEST_LABEL}={docker.run_id}")
    assert set(got) - {""} == {f"container={web.name}"}
    config = os.path.join(docker.base, "daemon.json")
    assert f"Docker data-root {docker.data_root} (dockerd {docker.process.pid}: {config})" in err


def test_host_root_and_runtime_dir(docker_by_flag: PrivateDocker, tmp_path: Path) -> None:
    """As in a DaemonSet pod: the host's paths under --host-root, or named by --runtime-dir."""
    docker = docker_by_flag
    web = docker.run("web2", network_mode="none")
    short = web.id[:12]
    view = tmp_path / "host"
    view.mkdir()

    # what the pod sees when the data-root is not mounted: short ids, and a warning that says why
    got, err = collect("--host-root", str(view), "--include", short)
    assert set(got) - {""} == {f"container={short}"}
    warning = [line for line in err.splitlines() if "WARNING" in line and docker.data_root in line]
    assert len(warning) == 1, err
    assert f"not readable at {view}{docker.data_root}/containers" in warning[0]
    assert "named by short id" in warning[0]

    # mounted where the host has it, under the host root
    (view / docker.data_root.lstrip("/")).parent.mkdir(parents=True)
    (view / docker.data_root.lstrip("/")).symlink_to(docker.data_root)
    got, _ = collect("--host-root", str(view), "--include", f"{TEST_LABEL}={docker.run_id}")
    assert f"container={web.name}" in got

    # --runtime-dir names a directory on the host, read under the host root too, and replaces
    # what the running daemons say
    (view / "srv").mkdir()
    (view / "srv" / "docker").symlink_to(docker.data_root)
    got, err = collect("--host-root", str(view), "--runtime-dir", "docker=/srv/docker",
                       "--include", f"{TEST_LABEL}={docker.run_id}")
    assert f"container={web.name}" in got
    assert "--runtime-dir" in err and "Docker data-root /srv/docker" in err
    got, _ = collect("--runtime-dir", "docker=/nonexistent/cnt-dr", "--include", short)
    assert set(got) - {""} == {f"container={short}"}


@pytest.fixture
def private_podman() -> Iterator[Dict[str, str]]:
    """A Podman container in a store of its own: ``podman --root <graph> --runroot <run> run``."""
    from integration.test_podman import CONTAINERS_CONF, PODMAN_IMAGE, podman

    if not shutil.which("podman"):
        unavailable("podman is not installed (scripts/setup-runtimes.sh installs it)")
    if not os.path.exists(CONTAINERS_CONF):
        unavailable(f"{CONTAINERS_CONF} missing (scripts/setup-runtimes.sh writes it)")
    if podman("image", "exists", PODMAN_IMAGE, check=False).returncode != 0:
        unavailable(f"podman image {PODMAN_IMAGE} missing (scripts/setup-runtimes.sh imports it)")
    base = tempfile.mkdtemp(prefix="cnt-dr-", dir="/tmp")
    graph, run = os.path.join(base, "graph"), os.path.join(base, "run")
    store = ("--root", graph, "--runroot", run)
    name = f"cnt-dr-{uuid.uuid4().hex[:8]}-pm"
    try:
        podman("save", "-o", os.path.join(base, "image.tar"), PODMAN_IMAGE)
        podman(*store, "load", "-i", os.path.join(base, "image.tar"))
        cid = podman(*store, "run", "-d", "--ulimit", "host", "--network", "none", "--name", name,
                     PODMAN_IMAGE, "sh", "-c", "sleep 100000").stdout.strip().splitlines()[-1]
        yield {"base": base, "graph": graph, "run": run, "id": cid, "name": name}
    finally:
        podman(*store, "rm", "-f", "-t", "0", name, check=False)
        podman(*store, "rmi", "-a", "-f", check=False)
        shutil.rmtree(base, ignore_errors=True)


def test_podman_with_a_store_of_its_own(private_podman: Dict[str, str], tmp_path: Path) -> None:
    from integration.test_podman import podman_env

    store, name, short = private_podman, private_podman["name"], private_podman["id"][:12]
    # `podman run` leaves no podman process: nothing says where that store is
    got, _ = collect("--include", short)
    assert set(got) - {""} == {f"container={short}"}

    # the host's storage.conf does, under the host root
    view = tmp_path / "host"
    (view / "etc" / "containers").mkdir(parents=True)
    (view / "etc" / "containers" / "storage.conf").write_text(
        f'[storage]\ndriver = "overlay"\ngraphroot = "{store["graph"]}"\nrunroot = "{store["run"]}"\n')
    (view / store["base"].lstrip("/")).parent.mkdir(parents=True)
    (view / store["base"].lstrip("/")).symlink_to(store["base"])
    got, err = collect("--host-root", str(view), "--include", name)
    assert set(got) - {""} == {f"container={name}"}
    assert f"containers/storage graphroot {store['graph']} (podman: /etc/containers/storage.conf)" in err

    # so does --runtime-dir
    got, _ = collect("--runtime-dir", f"graphroot={store['graph']}", "--include", name)
    assert set(got) - {""} == {f"container={name}"}

    # and a running `podman --root ... system service`
    sock = os.path.join(store["base"], "podman.sock")
    service = subprocess.Popen(["podman", "--root", store["graph"], "--runroot", store["run"], "system", "service",
                                "--time=0", f"unix://{sock}"], env=podman_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(sock) and time.monotonic() < deadline and service.poll() is None:
            time.sleep(0.1)
        got, err = collect("--include", name)
    finally:
        service.terminate()
        service.wait(timeout=30)
    assert set(got) - {""} == {f"container={name}"}
    assert f"containers/storage graphroot {store['graph']} (podman {service.pid}: --root)" in err
    assert f"container {short}: podman runtime" in err and "named from podman bundle" in err
