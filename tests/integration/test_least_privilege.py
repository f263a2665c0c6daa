"""The main path as a non-root user in the docker group, and what it must never do."""

from __future__ import annotations

import json
from typing import Any, List

import pytest

from conftest import pid_of
from integration.workloads import hold
from integration.test_collect_docker import background, by_tags, collect_json

pytestmark = pytest.mark.docker

def test_docker_group_member_gets_the_same_numbers_as_root(docker_group_user: Any, run_container: Any) -> None:
    holders: List[Any] = []
    try:
        server = run_container(name="lp-server", network_mode="none")
        owner = run_container(name="lp-owner", network_mode="none")
        run_container(name="lp-joiner", network_mode=f"container:{owner.id}")
        holders.append(background(pid_of(server), hold(3)))
        as_user = docker_group_user("collect", "--dry-run", "--log-level", "debug")
        assert as_user.returncode == 0, as_user.stderr
        as_root = by_tags(collect_json()[0])
        got = by_tags(json.loads(as_user.stdout))
        for tags in (f"container={server.name}", f"container={owner.name}"):
            for metric in ("tcp.established", "tcp.inuse", "udp.inuse", "sockets.used"):
                assert got[tags][metric] == as_root[tags][metric], (tags, metric)
        assert got[f"container={server.name}"]["tcp.established"] == 6
        # served by the world-readable cgroup files, not by inspect or root-only pid files
        assert f"{server.id[:12]}: pid" in as_user.stderr and "from cgroup" in as_user.stderr
    finally:
        for h in holders:
            h.kill()
            h.wait()


def test_user_outside_the_docker_group_is_refused_clearly(docker_group_user: Any) -> None:
    result = docker_group_user("collect", "--dry-run", user="65534")
    assert result.returncode == 3
    assert result.stdout == ""
    assert "permission denied" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
