"""The metric catalogue and the kernel scope table, on recorded files."""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import pytest

from container_netstat import metrics, procnet
from container_netstat.collect import HostStats, NetnsStats, Snapshot
from container_netstat.discovery import Container
from container_netstat.errors import ContainerNetstatError

from conftest import PROC_NET


def _ns(folder: str, tags=(("container", "web"),)) -> NetnsStats:
    d: Path = PROC_NET / folder
    six = d / "sockstat6"
    return NetnsStats(
        owner=Container("a" * 64, "web", "default"),
        members=("web",),
        pid=42,
        key=7,
        tags=tags,
        sockstat=procnet.parse_sockstat((d / "sockstat").read_text()),
        sockstat6=procnet.parse_sockstat(six.read_text()) if six.exists() else {},
        snmp=procnet.parse_snmp((d / "snmp").read_text()),
    )


def _host(folder: str, release: str) -> HostStats:
    return HostStats(release, 1, procnet.parse_sockstat((PROC_NET / folder / "sockstat").read_text()))


def _values(samples) -> Dict[str, int]:
    return {s.metric[len(metrics.PREFIX):]: s.value for s in samples}


@pytest.mark.parametrize(
    "release, tw, sockets",
    [
        ("2.6.32-504.el6.x86_64", "host", "host"),
        ("3.10.0-1160.el7.x86_64", "host", "host"),
        ("4.12.14", "host", "host"),
        ("4.13.0", "netns", "host"),
        ("4.15.14", "netns", "host"),
        ("4.16.0", "netns", "netns"),
        ("5.0.7-100.fc28.x86_64", "netns", "netns"),
        ("6.18.44-fc-v669", "netns", "netns"),
        ("garbage", "host", "host"),
    ],
)
def test_scope_table(release: str, tw: str, sockets: str) -> None:
    assert metrics.field_scopes(release) == {"tw": tw, "sockets_used": sockets}


def test_scope_override_for_backports() -> None:
    # e.g. a 3.10 distribution kernel with the tw change backported
    assert metrics.field_scopes("3.10.0", {"tw": "netns"}) == {"tw": "netns", "sockets_used": "host"}
    assert metrics.field_scopes("6.1.0", {"sockets_used": "host"})["sockets_used"] == "host"
    with pytest.raises(ContainerNetstatError, match="bad scope override"):
        metrics.field_scopes("6.1.0", {"orphan": "netns"})
    with pytest.raises(ContainerNetstatError, match="bad scope override"):
        metrics.field_scopes("6.1.0", {"tw": "pod"})


def test_six_values_this_kernel_server_fixture() -> None:
    # 5 held connections: 5 client + 5 accepted sockets ESTABLISHED; the listener is
    # AF_INET6 and the accepted IPv4 clients count under TCP6.
    scopes = metrics.field_scopes("6.18.44")
    values = _values(metrics.netns_samples(_ns("linux-6.18-server"), scopes))
    assert values == {
        "tcp.established": 10,
        "tcp.inuse": 5 + 6,
        "tcp.timewait": 11,
        "udp.inuse": 2 + 1,
        "sockets.used": 15,
    }


def test_old_kernel_leaves_host_wide_fields_out_of_containers() -> None:
    scopes = metrics.field_scopes("2.6.32")
    ns_values = _values(metrics.netns_samples(_ns("pcp-rhel6-bigsys"), scopes))
    assert set(ns_values) == {"tcp.established", "tcp.inuse", "udp.inuse"}
    host_values = _values(metrics.host_samples(_host("pcp-rhel6-bigsys", "2.6.32"), scopes))
    assert host_values["host.sockets.used"] == 1147
    assert "host.tcp.timewait" in host_values


def test_seed_host_values_are_host_metrics_only() -> None:
    scopes = metrics.field_scopes("3.10.0")
    host = metrics.host_samples(_host("seed", "3.10.0"), scopes)
    assert _values(host) == {
        "host.tcp.orphan": 96,
        "host.tcp.alloc": 21341,
        "host.tcp.mem": 13896,
        "host.udp.mem": 116,
        "host.tcp.timewait": 7181,
        "host.sockets.used": 141118,
    }
    assert all(s.tags == () for s in host)


def test_modern_kernel_host_metrics_are_only_the_global_ones() -> None:
    scopes = metrics.field_scopes("6.18.44")
    host = _values(metrics.host_samples(_host("linux-6.18-host", "6.18.44"), scopes))
    assert set(host) == {"host.tcp.orphan", "host.tcp.alloc", "host.tcp.mem", "host.udp.mem"}


def test_no_container_ever_carries_orphan_alloc_or_mem() -> None:
    for release in ("2.6.32", "4.14", "6.18"):
        for sample in metrics.netns_samples(_ns("linux-6.18-server"), metrics.field_scopes(release)):
            assert not any(word in sample.metric for word in ("orphan", "alloc", "mem"))


def test_missing_sockstat6_counts_as_no_ipv6_sockets() -> None:
    ns = _ns("linux-6.18-server")
    ns = NetnsStats(**{**ns.__dict__, "sockstat6": {}})
    values = _values(metrics.netns_samples(ns, metrics.field_scopes("6.18")))
    assert values["tcp.inuse"] == 5 and values["udp.inuse"] == 2


def test_snapshot_counts_a_namespace_missing_a_field_as_failed(caplog) -> None:
    good = _ns("linux-6.18-server")
    bad = NetnsStats(**{**good.__dict__, "snmp": {"Tcp": {}}, "tags": (("container", "bad"),),
                        "owner": Container("b" * 64, "bad", "default")})
    snap = Snapshot(_host("linux-6.18-host", "6.18"), (good, bad), 3, (), (), ())
    samples, failed = metrics.snapshot_samples(snap, metrics.field_scopes("6.18"))
    assert failed == ("bad",)
    assert "missing field Tcp: CurrEstab" in caplog.text
    values = {(s.metric, s.tags): s.value for s in samples}
    assert values[("container.net.collector.namespaces", ())] == 1
    assert values[("container.net.collector.failed", ())] == 1
    assert values[("container.net.collector.containers", ())] == 3
    assert not any(tags == (("container", "bad"),) for _, tags in values)
