"""A container that passes for the host's runtime, and files that would hang or flood a run.

The attacker is real: a busybox container whose process is called ``dockerd`` (a script of
that name, so ``/proc/<pid>/comm`` says it), runs as root in the container, has moved itself
out of its container's cgroups (it was given ``CAP_SYS_ADMIN``: it mounts the cgroup
hierarchies and writes its pid to their root ``cgroup.procs``, so ``/proc/<pid>/cgroup``
names no container), and says ``--data-root`` is a directory of its own file system as the
host sees it (its overlay upper directory, from its mountinfo), where it wrote
``containers/<id>/config.v2.json`` for its neighbours: a Docker container and a containerd
pod shaped like the CRI plugin's. ``collect --runtime proc`` must name both as their own
runtimes do, with or without the attacker, and no planted name or label may show anywhere.

Then the host files themselves: a fifo, a link to /dev/zero and a huge file where the
configuration and the state files are read, under a test ``--host-root``/``--var-root``:
the run ends well within its deadline, names the containers by short id, and says one line
per file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import pid_of

from integration.test_containerd import Pods, pods  # noqa: F401 - the containerd pods fixture

pytestmark = pytest.mark.docker

PREFIX = "container-netstat: "

# The attacker's dockerd: leaves every cgroup of its container for the hierarchy's root, then
# stays (its child sleeps; the script keeps its comm, "dockerd").
FAKE_DOCKERD = r"""#!/bin/sh
cp /proc/$$/cgroup /x/cgroups
i=0
while IFS=: read -r n controllers path; do
  i=$((i+1)); d=/mnt/h$i; mkdir -p $d
  if [ -z "$controllers" ]; then mount -t cgroup2 none $d
  elif [ "${controllers#name=}" != "$controllers" ]; then mount -t cgroup -o none,$controllers cgroup $d
  else mount -t cgroup -o $controllers cgroup $d; fi
  echo $$ > $d/cgroup.procs
done < /x/cgroups
cp /proc/$$/cgroup /x/moved
sleep 100000
"""


def attack(victims: list[str], run_id: str) -> str:
    """The attacker container's command: plant the files, start the fake dockerd."""
    forged = json.dumps({"Name": f"/forged-name-{run_id}", "Config": {"Labels": {
        "tier": f"forged-{run_id}", "io.kubernetes.pod.name": f"forged-pod-{run_id}",
        "io.kubernetes.pod.namespace": f"forged-ns-{run_id}", "io.kubernetes.container.name": f"forged-{run_id}"}}})
    plant = "".join(f"mkdir -p /x/containers/{v} && echo '{forged}' > /x/containers/{v}/config.v2.json\n"
                    for v in victims)
    return (
        "set -e\n"
        "up=$(sed -n 's/.*upperdir=\\([^,]*\\).*/\\1/p' /proc/self/mountinfo | head -n 1)\n"
        f"{plant}"
        f"cat > /x/dockerd <<'EOF'\n{FAKE_DOCKERD}EOF\n"
        "chmod +x /x/dockerd\n"
        '/x/dockerd --data-root "$up/x" &\n'
        "while [ ! -e /x/moved ]; do sleep 1; done\n"
        'echo "ready $up"\n'
        "wait\n"
    )


def collect(*args: str, timeout: float = 120) -> tuple[list[dict[str, Any]], str, float]:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "container_netstat", "collect", "--dry-run", "--runtime", "proc",
                             *args], capture_output=True, text=True, timeout=timeout, check=False)
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), result.stderr, took


def tags(items: list[dict[str, Any]]) -> list[str]:
    return sorted({i["tags"] for i in items if i["tags"]})


def wait_ready(container: Any) -> str:
    for _ in range(60):
        logs = container.logs().decode()
        if "ready" in logs:
            return logs.split("ready", 1)[1].strip()
        container.reload()
        assert container.status == "running", logs
        time.sleep(1)
    raise AssertionError(f"the attacker never got ready: {container.logs().decode()}")


def test_a_dockerd_in_a_container_names_nobody(run_container: Any, pods: Pods) -> None:  # noqa: F811
    run_id = uuid.uuid4().hex[:8]
    victim = run_container(name="victim", network_mode="none", labels={"tier": f"real-{run_id}"})
    namespace = f"cnt-tenant-{run_id}"
    pod_uid, _, apps = pods.pod(namespace, "web", ["app"])
    pod_ids = [cid for cid in pods.started]
    selected = ("--include", f"tier=*-{run_id}", "--include", f"io.kubernetes.pod.namespace=*-{run_id}",
                "--include", f"forged-name-{run_id}", "--log-level", "debug")
    before, _, _ = collect(*selected)
    want = tags(before)
    assert f"container={victim.name}" in want
    assert any(f"namespace={namespace},pod=web" in t for t in want), want

    attacker = run_container(
        attack([victim.id, *pod_ids], run_id), name="attacker", network_mode="none",
        cap_add=["SYS_ADMIN"], security_opt=["seccomp=unconfined", "apparmor=unconfined"])
    upper = wait_ready(attacker)
    assert Path(upper, "x", "containers", victim.id, "config.v2.json").is_file()  # planted, seen from the host
    fake = [int(p) for p in subprocess.run(["pgrep", "-x", "dockerd"], capture_output=True, text=True, check=False).stdout.split()
            if Path(f"/proc/{p}/cmdline").read_bytes().find(upper.encode()) >= 0]
    assert len(fake) == 1, "the fake dockerd is not running"
    cgroup = Path(f"/proc/{fake[0]}/cgroup").read_text()
    assert attacker.id not in cgroup, cgroup  # it passes for a process outside any container
    assert os.stat(f"/proc/{fake[0]}/ns/mnt").st_ino == os.stat(f"/proc/{pid_of(attacker)}/ns/mnt").st_ino

    after, err, _ = collect(*selected)
    assert tags(after) == want
    assert "forged" not in json.dumps(after), tags(after)
    assert f"dockerd {fake[0]}: in a mount or pid namespace that is not the host's" in err
    assert upper not in err.replace(f"dockerd {fake[0]}", "")  # its data-root is never read
    assert pod_uid and apps


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """A test host root with hostile files where the runtimes' configuration is read."""
    root = tmp_path / "host"
    for d in ("etc/docker", "etc/containers", "usr/share/containers"):
        (root / d).mkdir(parents=True)
    os.mkfifo(root / "etc/docker/daemon.json")  # read: the host's dockerd has no --config-file
    (root / "etc/containers/storage.conf").symlink_to("/dev/zero")  # read for Podman, which has no daemon
    with open(root / "usr/share/containers/storage.conf", "wb") as f:  # read when /etc has none
        f.truncate(1 << 30)
    return root


def test_fifos_dev_zero_and_huge_files_cannot_hang_or_balloon_a_run(run_container: Any, host: Path,
                                                                   tmp_path: Path) -> None:
    fifo, zero, huge, outside = (run_container(name=n, network_mode="none") for n in ("fifo", "zero", "huge", "out"))
    containers = tmp_path / "var" / "lib" / "docker" / "containers"
    for c in (fifo, zero, huge, outside):
        (containers / c.id).mkdir(parents=True)
    os.mkfifo(containers / fifo.id / "config.v2.json")
    (containers / zero.id / "config.v2.json").symlink_to("/dev/zero")
    with open(containers / huge.id / "config.v2.json", "wb") as f:
        f.write(b'{"Name": "/huge-name", "Config": {"Labels": {"x": "')
        f.truncate(1 << 30)
    real = Path(f"/var/lib/docker/containers/{fifo.id}/config.v2.json")  # another container's real file
    (containers / outside.id / "config.v2.json").symlink_to(real)
    os.mkfifo(containers / outside.id / "hostconfig.json")
    short = {c.id[:12]: c for c in (fifo, zero, huge, outside)}
    deadline = 15
    items, err, took = collect("--host-root", str(host), "--var-root", str(tmp_path / "var"),
                               "--deadline", str(deadline), *(a for s in short for a in ("--include", s)),
                               timeout=deadline + 60)
    assert took < deadline + 30
    assert tags(items) == sorted(f"container={s}" for s in short)  # all read, each by its short id
    assert "huge-name" not in json.dumps(items) and fifo.name not in json.dumps(items)
    warned = [line for line in err.splitlines() if "WARNING" in line and "not read" in line]
    expected = {
        f"{host}/etc/docker/daemon.json: not a regular file",
        f"{host}/etc/containers/storage.conf: not a regular file",
        f"{host}/usr/share/containers/storage.conf: larger than {1 << 20} bytes",
        f"{containers}/{fifo.id}/config.v2.json: not a regular file",
        f"{containers}/{zero.id}/config.v2.json: a symbolic link: refusing to follow it",
        f"{containers}/{huge.id}/config.v2.json: larger than {1 << 20} bytes",
        f"{containers}/{outside.id}/config.v2.json: a symbolic link: refusing to follow it",
    }
    for what in expected:
        assert sum(what in line for line in warned) == 1, (what, err)
    assert len(warned) == len(expected), err
    assert pid_of(fifo) > 0
