"""doctor, and a malformed /proc file in one real container (a proc root with one file replaced)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import pid_of
from integration.test_collect_docker import by_tags

pytestmark = pytest.mark.docker


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "container_netstat", *args],
                          capture_output=True, text=True, timeout=120)


def proc_root_with_bad_snmp(tmp_path: Path, pid: int) -> str:
    """A proc root that is the real /proc except for one pid's net/snmp."""
    root = tmp_path / "proc"
    root.mkdir()
    for name in os.listdir("/proc"):
        if name != str(pid):
            (root / name).symlink_to(f"/proc/{name}")
    piddir = root / str(pid)
    piddir.mkdir()
    for name in os.listdir(f"/proc/{pid}"):
        if name != "net":
            (piddir / name).symlink_to(f"/proc/{pid}/{name}")
    net = piddir / "net"
    net.mkdir()
    for name in os.listdir(f"/proc/{pid}/net"):
        if name != "snmp":
            (net / name).symlink_to(f"/proc/{pid}/net/{name}")
    (net / "snmp").write_text("Tcp: RtoAlgorithm CurrEstab\nTcp: 1\n")  # truncated value line
    return str(root)


def test_malformed_proc_file_fails_that_container_only(run_container: Any, tmp_path: Path) -> None:
    bad = run_container(name="bad", network_mode="none")
    good = run_container(name="good", network_mode="none")
    root = proc_root_with_bad_snmp(tmp_path, pid_of(bad))
    result = run("collect", "--dry-run", "--proc-root", root)
    assert result.returncode == 4, result.stderr
    items = json.loads(result.stdout)
    got = by_tags(items)
    assert f"container={good.name}" in got
    assert f"container={bad.name}" not in got  # never reported as zeros
    assert got[""]["collector.failed"] == 1
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1
    assert f"container {bad.name}" in errors[0] and "/net/snmp:2" in errors[0] and "2 names but 1 values" in errors[0]

    result = run("doctor", "--proc-root", root)
    assert result.returncode == 4
    data = json.loads(result.stdout)
    assert [u["container"] for u in data["unreadable"]] == [bad.name]
    assert "2 names but 1 values" in data["unreadable"][0]["reason"]


def test_doctor_explains_the_host(run_container: Any) -> None:
    owner = run_container(name="owner", network_mode="none")
    joiner = run_container(name="joiner", network_mode=f"container:{owner.id}")
    host_c = run_container(name="hostnet", network_mode="host")
    result = run("doctor")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["kernel"] == os.uname().release
    assert data["docker"]["api_version"].startswith("1.")
    assert data["docker"]["server_version"]
    assert data["field_scopes"]["tw"]["scope"] == "netns"
    assert data["metrics"]["container.net.host.tcp.orphan"] == "host-wide on every kernel"
    assert data["metrics"]["container.net.tcp.timewait"] == "per network namespace"
    ns = [n for n in data["namespaces"] if n["owner"] == owner.name]
    assert len(ns) == 1 and sorted(ns[0]["containers"]) == sorted([owner.name, joiner.name])
    assert ns[0]["pid_source"] == "cgroup"
    assert host_c.name in data["host_network"]

    old = run("doctor", "--field-scope", "tw=host", "--format", "text")
    assert old.returncode == 0
    assert "container.net.tcp.timewait" in old.stdout and "host-wide on this kernel" in old.stdout
    assert "tw            host" in old.stdout


def table_of(data: Any) -> Any:
    return data["tcp_table"]


def test_doctor_reports_who_shares_the_hosts_tcp_table(run_container: Any) -> None:
    """A tenant that gives its own namespace a table of its own (tcp_child_ehash_entries set
    in its namespace, then its init unshares into a new one) changes only its own line: the
    host's figures stay the host's, its neighbour still shares."""
    if not os.path.exists("/proc/sys/net/ipv4/tcp_child_ehash_entries"):
        pytest.skip("kernel before 6.1: no per-namespace TCP tables")
    with open("/proc/sys/net/ipv4/tcp_ehash_entries") as f:
        host = abs(int(f.read()))
    with open("/proc/sys/net/ipv4/tcp_child_ehash_entries") as f:
        child = int(f.read())
    shared = run_container("nc -l -p 80 & exec sleep 100000", name="shared", network_mode="none")
    tenant = run_container(
        "exec unshare -n sh -c 'nc -l -p 80 & exec sleep 100000'",
        name="own-table", network_mode="none", cap_add=["SYS_ADMIN"],
        sysctls={"net.ipv4.tcp_child_ehash_entries": "1000"})
    inside = ""
    for _ in range(100):  # until its init has moved
        inside = subprocess.run(["nsenter", "-t", str(pid_of(tenant)), "-n", "cat",
                                 "/proc/sys/net/ipv4/tcp_ehash_entries"], capture_output=True, text=True).stdout
        if inside.strip() == "1024":
            break
        time.sleep(0.1)
    assert inside.strip() == "1024"
    prefix = shared.name.rsplit("-", 1)[0]
    result = run("doctor", "--include", f"{prefix}-*")
    assert result.returncode == 0, result.stderr
    table = table_of(json.loads(result.stdout))
    assert table["host_buckets"] == host and table["child_ehash_entries"] == child
    assert table["sampled"] == 2 and table["sharing_host_table"] == 1
    assert table["own_table"] == {tenant.name: 1024}
    assert table["dump_ms"]["sharing"]["timed"] == 1 and table["dump_ms"]["own_table"]["timed"] == 1
    assert table["dumped_per_run"] == 2
    if child == 0:
        assert "sysctl -w net.ipv4.tcp_child_ehash_entries=1024" in table["advice"]

    text = run("doctor", "--include", f"{prefix}-*", "--format", "text")
    assert text.returncode == 0
    assert f"the host's: {host} buckets" in text.stdout
    assert "1 share the host's table, 1 have their own" in text.stdout
