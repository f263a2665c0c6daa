"""The hostnet group in every output: catalogue, samples, table section, Prometheus, doctor, CLI."""

from __future__ import annotations

from typing import Dict, Optional

from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from container_netstat import cli, tcp_summary, doctor, metrics, prometheus, table
from container_netstat import records
from container_netstat.metrics import HOSTNET
from container_netstat.records import HostStats, Snapshot
from container_netstat.tcp_summary import TcpSocket
from container_netstat.records import Container
from container_netstat.hostnet import attribute, index
from container_netstat.records import Figures, GroupStats, Report
from container_netstat.tcp_reader import SOCK_DIAG

INGRESS = (("namespace", "edge"), ("pod", "ingress-7c9d"))
AGENT = (("container", "node-agent"),)
HOST = index(
    [TcpSocket(10, (bytes(4), 0), 3, 4, 1), TcpSocket(8, (bytes([10, 0, 0, 9]), 443), 0, 0, 2),
     TcpSocket(1, (bytes([10, 0, 0, 9]), 443), 0, 0, 3), TcpSocket(6, (bytes([10, 0, 0, 9]), 443), 0, 0, 0)],
    [TcpSocket(7, (bytes(4), 0), 0, 0, 20)],
    SOCK_DIAG,
)


def stats(tags: tuple, inodes: set, name: str = "c") -> GroupStats:
    owner = Container("a" * 64, name, "host")
    return GroupStats(owner, (name,), tags, 1, attribute(inodes, HOST))


def snapshot(report: Optional[Report]) -> Snapshot:
    return Snapshot(host=HostStats("6.18.44", 1, {"TCP": {"orphan": 0, "alloc": 0, "mem": 0, "tw": 0},
                                                   "UDP": {"mem": 0}, "sockets": {"used": 0}}),
                    namespaces=(), containers=3, gone=(), failed=(), host_network=("ingress-pod", "node-agent"),
                    host_joined=(("ingress-app", "ingress-pod"),), hostnet=report)


REPORT = Report(groups=(stats(INGRESS, {1, 2, 3, 20}, "ingress-pod"), stats(AGENT, {3}, "node-agent")),
                path=SOCK_DIAG,
                not_permitted=(("other", "/proc/9/fd: Permission denied: needs ptrace access (CAP_SYS_PTRACE)"),),
                over_cap=(("big", "process 7 has more than 10 open fds (the cap) (java, in container big)"),))


def values(samples: list, tags: tuple) -> Dict[str, int]:
    return {s.metric[len(metrics.PREFIX):]: s.value for s in samples if s.tags == tags}


def test_catalogue_has_its_own_prefix_and_no_unattributable_state() -> None:
    names = [m.name for m in metrics.HOSTNET_METRICS]
    assert all(n.startswith("hostnet.") for n in names) and len(set(names)) == len(names)
    assert not {n for n in names} & {m.name for m in metrics.NETNS_METRICS}
    assert not [n for n in names if n.endswith(("time_wait", "syn_recv", "orphan"))]
    assert "hostnet.tcp.state.close_wait" in names and "hostnet.tcp.ports.peer_max" in names


def test_samples_of_a_group() -> None:
    samples, failed = metrics.snapshot_samples(snapshot(REPORT), {"tw": "netns", "sockets_used": "netns"},
                                               {"basic", HOSTNET})
    assert not failed
    pod = values(samples, INGRESS)
    assert (pod["hostnet.tcp.inuse"], pod["hostnet.udp.inuse"]) == (3, 1)
    states = ("listen", "close_wait", "established")
    assert tuple(pod[f"hostnet.tcp.state.{s}"] for s in states) == (1, 1, 1)
    listen = ("queue_max", "fill_max_pct", "near_full")
    assert tuple(pod[f"hostnet.tcp.listen.{f}"] for f in listen) == (3, 75, 0)
    assert pod["hostnet.tcp.ports.peer_max"] == 2  # the TIME_WAIT to the same remote is nobody's
    agent = values(samples, AGENT)
    assert "hostnet.tcp.listen.queue_max" not in agent  # no listener: left out, not 0
    assert agent["hostnet.tcp.inuse"] == 1
    assert all(s.metric.startswith(metrics.PREFIX + "hostnet.") for s in samples if s.tags in (INGRESS, AGENT))
    assert values(samples, ())["collector.failed"] == 0  # skipped and over-cap groups are not failures


def test_without_the_group_nothing_is_emitted() -> None:
    samples, _ = metrics.snapshot_samples(snapshot(REPORT), {"tw": "netns", "sockets_used": "netns"}, {"basic"})
    assert not [s for s in samples if "hostnet" in s.metric]


def test_table_section() -> None:
    samples, _ = metrics.snapshot_samples(snapshot(REPORT), {"tw": "netns", "sockets_used": "netns"},
                                          {"basic", HOSTNET})
    web = (("container", "web-1"),)
    samples += [records.Sample("container.net.tcp.established", 3, metrics.GAUGE, web),
                records.Sample("container.net.tcp.inuse", 10, metrics.GAUGE, web),
                records.Sample("container.net.udp.inuse", 1, metrics.GAUGE, web),
                records.Sample("container.net.tcp.timewait", 200, metrics.GAUGE, web)]
    assert table.render(samples) == """\
NAME               ESTAB  INUSE  TIME_WAIT  UDP  CLOSE_WAIT  LISTEN_FILL
web-1                  3     10        200    1           -            -
host network, the sockets its processes hold:
edge/ingress-7c9d      1      3          -    1           1           75
node-agent             1      1          -    0           0            -
0 namespaces, 3 running containers, 2 on the host network"""
    by_name = table.render(samples, "close_wait").splitlines()
    assert by_name[3].startswith("edge/ingress-7c9d") and by_name[1].startswith("web-1")


def test_prometheus_names_and_help() -> None:
    samples, _ = metrics.snapshot_samples(snapshot(REPORT), {"tw": "netns", "sockets_used": "netns"},
                                          {"basic", HOSTNET})
    families = {f.name: f for f in text_string_to_metric_families(prometheus.render(samples, 0).decode())}
    family = families["container_netstat_hostnet_tcp_state_close_wait"]
    assert "host-network" in family.documentation and "/proc/<pid>/fd" in family.documentation
    assert sorted(s.labels.get("pod") or s.labels["container"] for s in family.samples) == ["ingress-7c9d", "node-agent"]


def test_doctor_section() -> None:
    data = doctor.report(snapshot(REPORT), {"tw": "netns", "sockets_used": "netns"}, {"runtime": "docker"})
    info = data["hostnet"]
    assert info["containers"] == ["ingress-pod", "node-agent"]
    assert info["joined"] == [{"container": "ingress-app", "joins": "ingress-pod"}]
    assert info["skipped"][0]["container"] == "other" and "CAP_SYS_PTRACE" in info["skipped"][0]["reason"]
    assert info["over_fd_cap"][0]["container"] == "big"
    assert [g["tags"] for g in info["reported"]] == ["namespace=edge,pod=ingress-7c9d", "container=node-agent"]
    assert "TIME_WAIT" in info["not_attributable"] and "SYN_RECV" in info["not_attributable"]
    assert "orphans have inode 0" in info["not_attributable"]
    assert data["metrics"]["container.net.hostnet.tcp.inuse"].startswith("per host-network container or pod")
    text = doctor.format_text(data)
    assert "ingress-app joins ingress-pod" in text and "skipped     other:" in text
    assert "over fd cap big: process 7" in text
    off = doctor.report(snapshot(None), {"tw": "netns", "sockets_used": "netns"}, {"runtime": "docker"})
    assert off["hostnet"]["group"] == "off" and "reported" not in off["hostnet"]


def test_cli_knows_the_group_and_the_cap() -> None:
    bad = CliRunner().invoke(cli.main, ["collect", "--dry-run", "--metrics", "bogus"])
    assert bad.exit_code == 2 and "hostnet" in bad.output
    cap = CliRunner().invoke(cli.main, ["collect", "--dry-run", "--hostnet-fd-cap", "0"])
    assert cap.exit_code == 2
    help_text = CliRunner().invoke(cli.main, ["collect", "--help"]).output
    assert "--hostnet-fd-cap" in help_text and "hostnet" in help_text


def test_figures_of_nothing() -> None:
    assert attribute(set(), HOST) == Figures(tcp_summary.summarize([]), 0, 0)


def test_every_hostnet_metric_is_in_the_metrics_reference() -> None:
    from pathlib import Path

    reference = (Path(__file__).parent.parent / "docs" / "metrics.rst").read_text()
    assert not [m.name for m in metrics.HOSTNET_METRICS if f"``{metrics.PREFIX}{m.name}``" not in reference]
