"""A push to the falcon-agent, checked against transfer: the real command, a real container,
the agent stand-in (tests/receiver.py, which answers ``success`` whatever transfer did, as
falcon-plus ``modules/agent/http/push.go`` does) forwarding by real ``Transfer.Update`` calls
to a real TCP server that answers ``Transfer.Ping`` as transfer does, and a falcon-agent of the
host's found by its process (comm, ``-c``, working directory).

The hostile tenant runs its own ``falcon-agent`` in a container, with a command line naming a
configuration that points at a transfer of its own, which always answers: believed, it would
hide an outage and let the agent swallow every batch.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator, List

import pytest

from container_netstat import cli
from receiver import AGENT, Receiver, TransferRpc

pytestmark = pytest.mark.docker

FAKE_AGENT = ("import time; open('/proc/self/comm', 'w').write('falcon-agent'); print('ready', flush=True);"
              " time.sleep(600)")


@pytest.fixture
def rpc() -> Iterator[TransferRpc]:
    with TransferRpc() as server:
        yield server


@pytest.fixture
def agent(rpc: TransferRpc) -> Iterator[Receiver]:
    with Receiver(transfer=rpc) as server:
        yield server


@pytest.fixture
def host_agents() -> Iterator[List["subprocess.Popen[bytes]"]]:
    started: List["subprocess.Popen[bytes]"] = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait()


def start_host_agent(started: List["subprocess.Popen[bytes]"], home: Path, *addrs: str) -> int:
    """A process of the host's that looks like ``falcon-agent -c cfg.json`` run in ``home``."""
    home.mkdir(exist_ok=True)
    (home / "cfg.json").write_text(json.dumps({"transfer": {"enabled": True, "addrs": list(addrs),
                                                            "interval": 60, "timeout": 1000}}))
    proc = subprocess.Popen(["falcon-agent", "-c", FAKE_AGENT, "-c", "cfg.json"], executable=sys.executable,
                            cwd=home, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    started.append(proc)
    return proc.pid


def collect(agent: Receiver, spool: Path, container: str, *args: str) -> "subprocess.CompletedProcess[str]":
    command = [sys.executable, "-m", "container_netstat", "collect", "--falcon-url", agent.url(AGENT),
               "--spool-dir", str(spool), "--include", container, "--log-level", "info", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def spooled(spool: Path) -> List[str]:
    return sorted(p.name for p in spool.iterdir() if p.name.endswith(".json.gz"))


def minutes(rpc: TransferRpc) -> List[int]:
    """The collection time of each batch transfer took, in the order it took them."""
    return [batch[0]["timestamp"] for batch in rpc.updates if batch]


def test_a_stopped_transfer_spools_and_the_next_run_delivers_everything_oldest_first(
        run_container: Any, agent: Receiver, rpc: TransferRpc, host_agents: List["subprocess.Popen[bytes]"],
        tmp_path: Path) -> None:
    name = str(run_container(name="transfer", network_mode="none").name)
    pid = start_host_agent(host_agents, tmp_path / "agent", rpc.addr)
    spool = tmp_path / "spool"

    doctor = subprocess.run([sys.executable, "-m", "container_netstat", "doctor"],
                            capture_output=True, text=True, timeout=120)
    found = json.loads(doctor.stdout)["transfer"]
    assert found["learned_from"] == f"falcon-agent {pid}: {tmp_path}/agent/cfg.json", found
    assert found["addrs"] == [rpc.addr] and found["ping"][0]["answers"] is True

    first = collect(agent, spool, name)
    assert first.returncode == cli.EXIT_OK, first.stderr
    assert any(f"container={name}" in i["tags"] for i in rpc.items())
    assert "proves only" not in first.stderr

    rpc.down()
    pushed = len(agent.accepted())
    for _ in range(2):
        time.sleep(1.1)  # distinct collection seconds
        result = collect(agent, spool, name)
        assert result.returncode == cli.EXIT_SPOOLED, result.stderr
        lines = [line for line in result.stderr.splitlines() if "no transfer answers Transfer.Ping" in line]
        assert len(lines) == 1 and rpc.addr in lines[0] and "Connection refused" in lines[0], result.stderr
    assert len(agent.accepted()) == pushed, "a batch was given to an agent that could not forward it"
    waiting = spooled(spool)
    assert len(waiting) >= 2

    # Transfer answers the question before the push and is gone by the time the agent
    # forwards: the agent still says success; the question after the push keeps it all.
    rpc.up()
    rpc.stop_after(1)
    time.sleep(1.1)
    result = collect(agent, spool, name)
    assert result.returncode == cli.EXIT_SPOOLED, result.stderr
    assert "after the push" in result.stderr and agent.forwarded[-1] is not None
    assert set(waiting) < set(spooled(spool))

    rpc.up()
    took = len(rpc.updates)
    time.sleep(1.1)
    last = collect(agent, spool, name)
    assert last.returncode == cli.EXIT_OK, last.stderr
    replayed = minutes(rpc)[took:]
    assert replayed == sorted(replayed) and len(set(replayed)) == 4, replayed  # 3 spooled runs, then this one
    assert spooled(spool) == []
    containers = {i["tags"] for batch in rpc.updates[took:] for i in batch if f"container={name}" in i["tags"]}
    assert containers


def test_a_tenants_own_falcon_agent_is_not_believed(
        run_container: Any, agent: Receiver, rpc: TransferRpc, host_agents: List["subprocess.Popen[bytes]"],
        tmp_path: Path) -> None:
    # The tenant's transfer answers every Ping: believed, it would hide the real one's outage.
    with TransferRpc() as evil:
        config = tmp_path / "evil.json"
        config.write_text(json.dumps({"transfer": {"enabled": True, "addrs": [evil.addr]}}))
        # Its process: comm falcon-agent, and `-c <a path that exists on the host>` as the
        # last -c of its command line, in its own namespaces.
        script = "echo -n falcon-agent > /proc/self/comm; while :; do sleep 1; done"
        tenant = run_container(f"exec sh -c '{script}' -c {config}", name="evil", network_mode="none")
        name = str(tenant.name)
        deadline = time.monotonic() + 10
        while "falcon-agent" not in subprocess.run(["docker", "top", name, "-o", "pid,comm"], capture_output=True,
                                                   text=True).stdout:
            assert time.monotonic() < deadline, "the tenant's process never took the name"
            time.sleep(0.2)
        rpc.down()

        alone = collect(agent, spool := tmp_path / "spool", name)
        assert alone.returncode == cli.EXIT_OK, alone.stderr  # pushed as before: nothing learned
        assert "no transfer address learned" in alone.stderr and "not the host's" in alone.stderr
        assert evil.calls == []

        start_host_agent(host_agents, tmp_path / "agent", rpc.addr)
        time.sleep(1.1)
        result = collect(agent, spool, name)
        assert result.returncode == cli.EXIT_SPOOLED, result.stderr
        assert "no transfer answers Transfer.Ping" in result.stderr
        assert evil.calls == [], "the tenant's transfer was asked"
