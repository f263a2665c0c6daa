"""The signals operators alert on, produced on purpose in real containers, per namespace."""

from __future__ import annotations

from typing import Any, List

import pytest

from conftest import in_netns, pid_of
from integration.test_collect_docker import background, by_tags, collect_json, ss_count

pytestmark = pytest.mark.docker

CLOSE_WAIT = r"""
import socket, time
srv = socket.socket(socket.AF_INET6); srv.bind(("::", 9000)); srv.listen(16)
held = []
for _ in range({k}):
    c = socket.create_connection(("127.0.0.1", 9000))
    a, _ = srv.accept()
    c.close()          # the peer closes...
    held.append(a)     # ...and the app never does: CLOSE_WAIT
print("ready", flush=True)
time.sleep(600)
"""

OVERFLOW = r"""
import socket, time
srv = socket.socket(); srv.bind(("127.0.0.1", 9100)); srv.listen(1)   # never accepts
clients = []
for _ in range(12):
    c = socket.socket(); c.setblocking(False)
    c.connect_ex(("127.0.0.1", 9100))
    clients.append(c)
time.sleep(1.5)
"""

RST = r"""
import socket
for _ in range({k}):
    s = socket.socket()
    assert s.connect_ex(("127.0.0.1", 9)) != 0   # nobody listens: the kernel answers RST
    s.close()
"""


def _pod(run_container: Any, name: str) -> Any:
    labels = {"io.kubernetes.pod.name": name, "io.kubernetes.pod.namespace": "prod",
              "io.kubernetes.pod.uid": "9e1c7f1a-0000-4000-8000-000000000001"}
    sandbox = run_container(name=f"k8s_POD_{name}", network_mode="none", labels={
        **labels, "io.kubernetes.docker.type": "podsandbox", "io.kubernetes.container.name": "POD"})
    apps = [
        run_container(name=f"k8s_{app}_{name}", network_mode=f"container:{sandbox.id}", labels={
            **labels, "io.kubernetes.docker.type": "container", "io.kubernetes.container.name": app})
        for app in ("app", "sidecar")
    ]
    return sandbox, apps


def test_pod_with_two_apps_is_one_report_and_close_wait_leak_is_its_own(run_container: Any, holders: List[Any]) -> None:
    sandbox, apps = _pod(run_container, "leaky-5f9c")
    control = run_container(name="control", network_mode="none")
    holders.append(background(pid_of(apps[0]), CLOSE_WAIT.format(k=4)))
    items, _ = collect_json("--tcp-states")
    got = by_tags(items)
    pod = got["namespace=prod,pod=leaky-5f9c"]
    assert pod["tcp.state.close_wait"] == 4 == ss_count(pid_of(sandbox), "close-wait")
    assert pod["tcp.state.listen"] == 1
    assert got[f"container={control.name}"]["tcp.state.close_wait"] == 0
    # one report for the pod: no tags name any of its containers
    assert not [t for t in got if any(c.name in t for c in [sandbox, *apps])]
    assert len([i for i in items if i["tags"] == "namespace=prod,pod=leaky-5f9c"]) == len(pod)
    # on this kernel CurrEstab counts CLOSE_WAIT (commit a46d0ea5c942)
    assert pod["tcp.established"] == pod["tcp.state.established"] + pod["tcp.state.close_wait"]


def test_states_are_on_by_default_where_sock_diag_works(run_container: Any) -> None:
    c = run_container(name="plain", network_mode="none")
    items, err = collect_json("--log-level", "info")
    got = by_tags(items)[f"container={c.name}"]
    assert got["tcp.state.listen"] == 0 and got["tcp.ports.pressure_pct"] == 0
    assert "tcp.retrans_segs" in got  # counters are on by default
    assert "TCP states: sock_diag inside each network namespace" in err
    without = by_tags(collect_json("--metrics", "basic,counters")[0])[f"container={c.name}"]
    assert not [k for k in without if k.startswith(("tcp.state.", "tcp.listen.", "tcp.ports."))]


def test_listen_overflow_counts_in_that_namespace_alone(run_container: Any) -> None:
    victim = run_container(name="overflow", network_mode="none")
    control = run_container(name="calm", network_mode="none")
    before = by_tags(collect_json()[0])
    in_netns(pid_of(victim), OVERFLOW)
    after = by_tags(collect_json()[0])
    v, c = f"container={victim.name}", f"container={control.name}"
    assert after[v]["tcp.listen_overflows"] - before[v]["tcp.listen_overflows"] > 0
    assert after[v]["tcp.listen_drops"] >= after[v]["tcp.listen_overflows"]
    assert after[c]["tcp.listen_overflows"] == before[c]["tcp.listen_overflows"] == 0


def test_rst_storm_increments_out_rsts(run_container: Any) -> None:
    victim = run_container(name="rst", network_mode="none")
    control = run_container(name="quiet", network_mode="none")
    before = by_tags(collect_json()[0])
    in_netns(pid_of(victim), RST.format(k=25))
    after = by_tags(collect_json()[0])
    v, c = f"container={victim.name}", f"container={control.name}"
    assert after[v]["tcp.out_rsts"] - before[v]["tcp.out_rsts"] == 25
    assert after[v]["tcp.attempt_fails"] - before[v]["tcp.attempt_fails"] == 25
    assert after[c]["tcp.out_rsts"] == 0


def test_include_and_exclude_on_real_containers(run_container: Any) -> None:
    a = run_container(name="keep", network_mode="none", labels={"tier": "db=primary"})
    b = run_container(name="drop", network_mode="none", labels={"tier": "web"})
    got = by_tags(collect_json("--include", "tier=db=*")[0])
    assert f"container={a.name}" in got and f"container={b.name}" not in got
    got = by_tags(collect_json("--exclude", a.name, "--include", "tier=*")[0])
    assert f"container={b.name}" in got and f"container={a.name}" not in got
    got = by_tags(collect_json("--metrics", "counters", "--include", a.name)[0])
    assert "tcp.inuse" not in got[f"container={a.name}"] and "tcp.out_rsts" in got[f"container={a.name}"]


def test_timewait_counts_closed_fin_wait2_as_the_kernel_does(run_container: Any, holders: List[Any]) -> None:
    # The peers that closed first in CLOSE_WAIT pairs sit in FIN_WAIT2 with no process:
    # the kernel keeps them as timewait mini-sockets, so sockstat's tw counts them.
    c = run_container(name="fw2", network_mode="none")
    pid = pid_of(c)
    holders.append(background(pid, CLOSE_WAIT.format(k=3)))
    got = by_tags(collect_json("--tcp-states")[0])[f"container={c.name}"]
    assert ss_count(pid, "fin-wait-2") == 3 and ss_count(pid, "time-wait") == 0
    assert got["tcp.timewait"] == 3
    assert got["tcp.state.fin_wait2"] == 3 and got["tcp.orphan"] == 3
