"""A container cannot take another container's identity through a cgroup it names (docs/security.rst).

Played for real: a victim container B and an attacker container A from the busybox image. From
the host (as a tenant with cgroup delegation, a privileged container or a writable cgroupfs
could), a cgroup named after B's full id is made inside A's cgroup in every hierarchy, in the
form this host's runtime uses (``/docker/<id>``, cgroupfs driver, read from A's own
``/proc/<pid>/cgroup``), and A's init is moved into it. The real tool then runs with
``--runtime proc`` and with the Docker API: A's namespace is never reported as B's, B keeps
its own figures, and a warning names the conflict. A second test makes a cgroup outside every
container that claims B's id (only a writable cgroupfs can): both claims are reported apart,
by namespace key. The third does it to host-network containers (the hostnet group).
The attacker's cgroups are removed again, once its processes are gone.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any, Dict, Iterator, List

import pytest

from conftest import TEST_LABEL, in_netns, pid_of
from integration.test_collect_docker import by_tags, run_cli
from integration.test_hostnet_docker import SERVER, python_container
from integration.workloads import hold

pytestmark = pytest.mark.docker

CGROUP_ROOT = "/sys/fs/cgroup"


def mounts(pid: int) -> Dict[str, str]:
    """Mount directory under /sys/fs/cgroup -> the process's path in that hierarchy."""
    out: Dict[str, str] = {}
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            name = controllers[len("name="):] if controllers.startswith("name=") else controllers or "unified"
            for candidate in (name, *name.split(",")):
                if os.path.isdir(os.path.join(CGROUP_ROOT, candidate)):
                    out[candidate] = path
                    break
    return out


@pytest.fixture
def cgroups_made() -> Iterator[List[str]]:
    """Directories a test makes under the cgroup root; removed, deepest first, at the end."""
    made: List[str] = []
    yield made
    for path in made:  # the attacker's processes, if the test ended before its container was removed
        try:
            with open(os.path.join(path, "cgroup.procs")) as f:
                for pid in f.read().split():
                    os.kill(int(pid), signal.SIGKILL)
        except OSError:
            pass
    deadline = time.monotonic() + 20
    for path in sorted(made, key=len, reverse=True):
        while os.path.isdir(path):
            try:
                os.rmdir(path)
            except OSError:
                assert time.monotonic() < deadline, f"cannot remove {path}"
                time.sleep(0.2)  # its processes are still exiting


def move(pid: int, rel_of: Dict[str, str], made: List[str]) -> None:
    """Make ``rel_of[hierarchy]`` in each hierarchy (parents too) and move ``pid`` into it."""
    for hierarchy, rel in rel_of.items():
        path = os.path.join(CGROUP_ROOT, hierarchy, rel.lstrip("/"))
        parts = rel.strip("/").split("/")
        for n in range(1, len(parts) + 1):
            step = os.path.join(CGROUP_ROOT, hierarchy, *parts[:n])
            if not os.path.isdir(step):
                os.mkdir(step)
                made.append(step)
                for name in ("cpuset.cpus", "cpuset.mems"):  # a v1 cpuset cgroup takes no task before these
                    if os.path.exists(os.path.join(step, name)):
                        with open(os.path.join(os.path.dirname(step), name)) as f, \
                                open(os.path.join(step, name), "w") as out:
                            out.write(f.read())
        with open(os.path.join(path, "cgroup.procs"), "w") as f:
            f.write(str(pid))


def nest(attacker: Any, victim_id: str, made: List[str]) -> int:
    """Move the attacker's init into ``<its cgroup>/docker/<victim id>``, wherever its cgroup names it."""
    pid = pid_of(attacker)
    inside = {h: f"{p}/docker/{victim_id}" for h, p in mounts(pid).items() if attacker.id in p}
    assert inside, mounts(pid)
    move(pid, inside, made)
    with open(f"/proc/{pid}/cgroup") as f:
        assert f"/docker/{attacker.id}/docker/{victim_id}" in f.read()
    return pid


def collect(*args: str) -> Any:
    result = run_cli("--dry-run", "--metrics", "basic", "--log-level", "warning", *args)
    assert result.returncode == 0, result.stderr
    return by_tags(json.loads(result.stdout)), result.stderr


def warnings(stderr: str) -> List[str]:
    return [line for line in stderr.splitlines() if "WARNING" in line]


@pytest.fixture
def pair(run_container: Any) -> Iterator[Any]:
    """(attacker, victim, include option): the attacker starts first, so its init has the lower pid,
    the one a deepest-component rule would have taken for the victim's."""
    attacker = run_container(name="attacker", network_mode="none")
    victim = run_container(name="victim", network_mode="none")
    holder = in_netns(pid_of(victim), hold(3), background=True)  # 6 established + 1 listener, the victim's
    assert holder.stdout.readline().strip() == "ready"
    yield attacker, victim, ["--include", f"{TEST_LABEL}={victim.labels[TEST_LABEL]}"]
    holder.kill()
    holder.wait()


def tcp_inuse(got: Dict[str, Dict[str, int]], name: str) -> int:
    return got[f"container={name}"]["tcp.inuse"]


def test_a_cgroup_named_after_another_container_does_not_take_its_identity(
        pair: Any, cgroups_made: List[str]) -> None:
    attacker, victim, include = pair
    before, _ = collect("--runtime", "proc", *include)
    assert tcp_inuse(before, victim.name) == 7 and tcp_inuse(before, attacker.name) == 0
    nest(attacker, victim.id, cgroups_made)
    for runtime in ("proc", "docker"):
        got, stderr = collect("--runtime", runtime, *include)
        assert tcp_inuse(got, victim.name) == 7, (runtime, got, stderr)  # the victim keeps its own figures
        assert tcp_inuse(got, attacker.name) == 0, (runtime, got, stderr)  # and the attacker its own
        assert not [t for t in got if "@netns" in t], got
        if runtime == "proc":  # the scan reads every process's cgroup: it sees the conflict
            lines = [w for w in warnings(stderr) if "also names container" in w]
            assert len(lines) == 1, stderr
            assert attacker.id[:12] in lines[0] and victim.id[:12] in lines[0] and "the outer one" in lines[0]
    attacker.remove(force=True)  # before the cgroups are removed: a cgroup with processes cannot be


def test_a_second_claim_on_one_id_is_reported_apart_by_namespace(pair: Any, cgroups_made: List[str]) -> None:
    attacker, victim, include = pair
    pid = pid_of(attacker)
    # outside every container, a cgroup that names the victim's id in the systemd driver's shape
    move(pid, {h: f"/system.slice/docker-{victim.id}.scope" for h in mounts(pid) if h != "unified"}, cgroups_made)
    got, stderr = collect("--runtime", "proc", *include)
    keys = {os.stat(f"/proc/{p}/net/sockstat").st_ino: p for p in (pid_of(victim), pid)}
    claims = {t: v["tcp.inuse"] for t, v in got.items() if victim.name in t}
    assert claims == {f"container={victim.name}@netns:{k}": (7 if p == pid_of(victim) else 0)
                      for k, p in keys.items()}, (got, stderr)
    lines = [w for w in warnings(stderr) if "claim its id" in w]
    assert len(lines) == 1 and victim.id[:12] in lines[0], stderr
    # the Docker path asks Docker for the victim's cgroup, not the second claim
    via_docker, _ = collect("--runtime", "docker", *include)
    assert tcp_inuse(via_docker, victim.name) == 7
    attacker.remove(force=True)


def test_host_network_sockets_stay_with_the_container_that_holds_them(
        run_container: Any, cgroups_made: List[str]) -> None:
    attacker = python_container(run_container, "hn-attacker", SERVER.format(port=47131, n=3), network_mode="host")
    victim = python_container(run_container, "hn-victim", SERVER.format(port=47132, n=1), network_mode="host")
    nest(attacker, victim.id, cgroups_made)
    include = ["--include", f"{TEST_LABEL}={victim.labels[TEST_LABEL]}"]
    for runtime in ("proc", "docker"):
        result = run_cli("--dry-run", "--metrics", "basic,states,hostnet", "--runtime", runtime, *include)
        assert result.returncode == 0, result.stderr
        got = by_tags(json.loads(result.stdout))
        mine = got[f"container={victim.name}"]
        theirs = got[f"container={attacker.name}"]
        # each: one listener and 2n established connections of its own
        assert (mine["hostnet.tcp.state.listen"], mine["hostnet.tcp.state.established"]) == (1, 2), (runtime, got)
        assert (theirs["hostnet.tcp.state.listen"], theirs["hostnet.tcp.state.established"]) == (1, 6), (runtime, got)
    attacker.remove(force=True)
