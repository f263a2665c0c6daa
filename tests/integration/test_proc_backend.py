"""The proc backend on Docker containers gives the same report as the Docker backend.

Same containers, two discovery paths: one ``GET /containers/json`` against one scan of
/proc/*/cgroup named from Docker's own config.v2.json. Every item of this test's
containers must match, value for value (the workloads are held still while both run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, Dict, List, Tuple

import pytest

from conftest import TEST_LABEL, in_netns, pid_of
from integration.workloads import hold, time_wait

pytestmark = pytest.mark.docker





def run(*args: str) -> Tuple[List[Dict[str, Any]], str]:
    result = subprocess.run([sys.executable, "-m", "container_netstat", "collect", "--dry-run", *args],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), result.stderr


def comparable(items: List[Dict[str, Any]]) -> Dict[Tuple[str, str], Any]:
    """(tags, metric) -> value for container items and the collector's own counts."""
    return {
        (i["tags"], i["metric"]): i["value"]
        for i in items
        if i["tags"] or i["metric"] in ("container.net.collector.containers", "container.net.collector.namespaces")
    }


@pytest.fixture
def bridge(docker_client: Any) -> Any:
    """A bridge network of the test's own (docker0 may be missing on a busy test host)."""
    network = docker_client.networks.create(f"cnt-proc-{id(docker_client) % 100000}", driver="bridge",
                                            labels={TEST_LABEL: "proc-backend"})
    yield network
    network.remove()


def test_proc_backend_reports_what_the_docker_backend_reports(
    bridge: Any, run_container: Any, holders: List[Any]  # the network first: it goes last
) -> None:
    pod = {"io.kubernetes.pod.name": "web-1", "io.kubernetes.pod.namespace": "shop"}
    server = run_container(name="server", network_mode="none")
    run_container(name="joiner", network_mode=f"container:{server.id}")
    sandbox = run_container(name="k8s_POD", network_mode="none",
                            labels={**pod, "io.kubernetes.docker.type": "podsandbox",
                                    "io.kubernetes.container.name": "POD"})
    app = run_container(name="k8s_app", network_mode=f"container:{sandbox.id}",
                        labels={**pod, "io.kubernetes.docker.type": "container",
                                "io.kubernetes.container.name": "app"})
    bridged = run_container(name="bridged", network=bridge.name)
    run_container(name="hostnet", network_mode="host")
    for container, n in ((server, 3), (app, 2), (bridged, 1)):
        proc = in_netns(pid_of(container), hold(n), background=True)
        assert proc.stdout.readline().strip() == "ready"
        holders.append(proc)
    in_netns(pid_of(bridged), time_wait(4))

    label = f"{TEST_LABEL}={server.labels[TEST_LABEL]}"
    via_docker, _ = run("--runtime", "docker", "--include", label, "--tcp-states")
    via_proc, err = run("--runtime", "proc", "--include", label, "--tcp-states", "--log-level", "debug")
    docker_view, proc_view = comparable(via_docker), comparable(via_proc)
    assert proc_view == docker_view
    tags = {t for t, _ in docker_view if t}
    assert tags == {f"container={server.name}", "namespace=shop,pod=web-1", f"container={bridged.name}"}
    assert docker_view[("namespace=shop,pod=web-1", "container.net.tcp.established")] == 4
    assert docker_view[("", "container.net.collector.containers")] == 6
    assert "named from docker config.v2.json" in err
    assert "host network" in err


def test_auto_on_a_host_without_runtime_sockets_reads_proc_and_says_so_once(run_container: Any) -> None:
    """The README's first command on a machine with no Docker or Podman socket still reports."""
    lone = run_container(name="lone", network_mode="none")
    env = {k: v for k, v in os.environ.items() if k not in ("DOCKER_HOST", "CONTAINER_HOST")}
    # a private mount namespace whose /run (and so /var/run/docker.sock) is an empty tmpfs
    script = f"mount -t tmpfs tmpfs /run && exec {sys.executable} -m container_netstat collect --dry-run"
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    fallback = [line for line in result.stderr.splitlines() if "--runtime proc" in line]
    assert len(fallback) == 1 and "reading containers from /proc instead" in fallback[0]
    tags = {item["tags"] for item in json.loads(result.stdout)}
    assert f"container={lone.name}" in tags
