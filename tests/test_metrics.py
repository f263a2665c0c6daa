"""The metric catalogue and the kernel scope table, on recorded files."""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import pytest

from container_netstat import tcp_summary, metrics, procnet

from container_netstat import kernel_scopes
from container_netstat.tcp_reader import PROC
from container_netstat.records import TcpReading
from container_netstat.records import HostStats, NetnsStats, Readings, Snapshot
from container_netstat.records import Container
from container_netstat.errors import ContainerNetstatError

from conftest import PROC_NET


BASIC_COUNTERS = {"basic", "counters"}


def _ns(folder: str, tags=(("container", "web"),)) -> NetnsStats:
    d: Path = PROC_NET / folder
    six = d / "sockstat6"
    netstat = d / "netstat"
    return NetnsStats(
        owner=Container("a" * 64, "web", "default"),
        members=("web",),
        pid=42,
        key=7,
        tags=tags,
        readings=Readings(
            sockstat=procnet.parse_sockstat((d / "sockstat").read_text()),
            sockstat6=procnet.parse_sockstat(six.read_text()) if six.exists() else {},
            snmp=procnet.parse_snmp((d / "snmp").read_text()),
            netstat=procnet.parse_snmp(netstat.read_text()) if netstat.exists() else {},
        ),
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
    assert kernel_scopes.field_scopes(release) == {"tw": tw, "sockets_used": sockets}


def test_scope_override_for_backports() -> None:
    # e.g. a 3.10 distribution kernel with the tw change backported
    assert kernel_scopes.field_scopes("3.10.0", {"tw": "netns"}) == {"tw": "netns", "sockets_used": "host"}
    assert kernel_scopes.field_scopes("6.1.0", {"sockets_used": "host"})["sockets_used"] == "host"
    with pytest.raises(ContainerNetstatError, match="bad scope override"):
        kernel_scopes.field_scopes("6.1.0", {"orphan": "netns"})
    with pytest.raises(ContainerNetstatError, match="bad scope override"):
        kernel_scopes.field_scopes("6.1.0", {"tw": "pod"})


def test_six_values_this_kernel_server_fixture() -> None:
    # 5 held connections: 5 client + 5 accepted sockets ESTABLISHED; the listener is
    # AF_INET6 and the accepted IPv4 clients count under TCP6.
    scopes = kernel_scopes.field_scopes("6.18.44")
    values = _values(metrics.netns_samples(_ns("linux-6.18-server"), scopes, {"basic"}))
    assert values == {
        "tcp.established": 10,
        "tcp.inuse": 5 + 6,
        "tcp.timewait": 11,
        "udp.inuse": 2 + 1,
        "sockets.used": 15,
    }


def test_old_kernel_leaves_host_wide_fields_out_of_containers() -> None:
    scopes = kernel_scopes.field_scopes("2.6.32")
    ns_values = _values(metrics.netns_samples(_ns("pcp-rhel6-bigsys"), scopes, {"basic"}))
    assert set(ns_values) == {"tcp.established", "tcp.inuse", "udp.inuse"}
    host_values = _values(metrics.host_samples(_host("pcp-rhel6-bigsys", "2.6.32"), scopes))
    assert host_values["host.sockets.used"] == 1147
    assert "host.tcp.timewait" in host_values


def test_seed_host_values_are_host_metrics_only() -> None:
    scopes = kernel_scopes.field_scopes("3.10.0")
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
    scopes = kernel_scopes.field_scopes("6.18.44")
    host = _values(metrics.host_samples(_host("linux-6.18-host", "6.18.44"), scopes))
    assert set(host) == {"host.tcp.orphan", "host.tcp.alloc", "host.tcp.mem", "host.udp.mem"}


def test_no_container_ever_carries_orphan_alloc_or_mem() -> None:
    for release in ("2.6.32", "4.14", "6.18"):
        for sample in metrics.netns_samples(_ns("linux-6.18-server"), kernel_scopes.field_scopes(release), BASIC_COUNTERS):
            assert not any(word in sample.metric for word in ("orphan", "alloc", "mem"))


def test_missing_sockstat6_counts_as_no_ipv6_sockets() -> None:
    ns = _ns("linux-6.18-server")
    ns = NetnsStats(**{**ns.__dict__, "readings": Readings(sockstat=ns.readings.sockstat, snmp=ns.readings.snmp)})
    values = _values(metrics.netns_samples(ns, kernel_scopes.field_scopes("6.18"), {"basic"}))
    assert values["tcp.inuse"] == 5 and values["udp.inuse"] == 2


def test_snapshot_counts_a_namespace_missing_a_field_as_failed(caplog) -> None:
    good = _ns("linux-6.18-server")
    bad = NetnsStats(**{**good.__dict__, "readings": Readings(sockstat=good.readings.sockstat, snmp={"Tcp": {}}),
                        "tags": (("container", "bad"),),
                        "owner": Container("b" * 64, "bad", "default")})
    snap = Snapshot(_host("linux-6.18-host", "6.18"), (good, bad), 3, (), (), ())
    samples, failed = metrics.snapshot_samples(snap, kernel_scopes.field_scopes("6.18"), BASIC_COUNTERS)
    assert [name for name, _ in failed] == ["bad"]
    assert "missing field Tcp: CurrEstab" in caplog.text
    values = {(s.metric, s.tags): s.value for s in samples}
    assert values[("container.net.collector.namespaces", ())] == 1
    assert values[("container.net.collector.failed", ())] == 1
    assert values[("container.net.collector.containers", ())] == 3
    assert not any(tags == (("container", "bad"),) for _, tags in values)


def test_counters_are_counter_items_by_name() -> None:
    values = {s.metric[len(metrics.PREFIX):]: s for s in
              metrics.netns_samples(_ns("linux-6.18-server"), kernel_scopes.field_scopes("6.18"), {"counters"})}
    assert values["tcp.active_opens"].value == 16 and values["tcp.active_opens"].counter_type == "COUNTER"
    assert values["tcp.passive_opens"].value == 16
    assert "tcp.listen_overflows" in values and "udp.no_ports" in values
    assert "tcp.established" not in values  # basic group not asked for


@pytest.mark.parametrize("folder", ["pcp-rhel6-bigsys", "node_exporter", "procfs-26231", "go-sysinfo-fedora30",
                                    "datadog", "oshi", "linux-6.18-server"])
def test_counters_on_older_kernels_skip_missing_fields(folder: str) -> None:
    samples = metrics.netns_samples(_ns_snmp_netstat(folder), kernel_scopes.field_scopes("6.18"), {"counters"})
    names = {s.metric for s in samples}
    assert metrics.PREFIX + "tcp.retrans_segs" in names
    assert metrics.PREFIX + "tcp.listen_overflows" in names
    assert all(s.counter_type == "COUNTER" for s in samples)


def test_udp_counters_absent_before_rcvbuf_errors_are_skipped() -> None:
    ns = _ns_snmp_netstat("pcp-rhel6-bigsys")
    udp = ns.readings.snmp["Udp"]
    del udp["RcvbufErrors"]
    names = {s.metric for s in metrics.netns_samples(ns, kernel_scopes.field_scopes("6.18"), {"counters"})}
    assert metrics.PREFIX + "udp.rcvbuf_errors" not in names
    assert metrics.PREFIX + "udp.in_errors" in names


def _ns_snmp_netstat(folder: str) -> NetnsStats:
    d = PROC_NET / folder
    return NetnsStats(
        owner=Container("a" * 64, "web", "default"), members=("web",), pid=1, key=1, tags=(),
        readings=Readings(snmp=procnet.parse_snmp((d / "snmp").read_text()),
                          netstat=procnet.parse_snmp((d / "netstat").read_text())),
    )


def test_tcp_states_and_per_namespace_orphans() -> None:
    d = PROC_NET / "linux-6.18-states"
    sockets = procnet.parse_tcp_sockets((d / "tcp").read_text()) + procnet.parse_tcp_sockets((d / "tcp6").read_text())
    reading = TcpReading(tcp_summary.summarize(sockets), None, PROC)
    ns = NetnsStats(owner=Container("a" * 64, "web", "default"), members=("web",), pid=1, key=1,
                    tags=(("container", "web"),), readings=Readings(tcp=reading))
    values = _values(metrics.netns_samples(ns, kernel_scopes.field_scopes("6.18"), {"states"}))
    # The /proc path has no backlog and no port range: those two percentages are left out.
    assert values.pop("tcp.listen.queue_max") == 0  # one listener, nothing queued
    assert values.pop("tcp.ports.peer_max") == 7  # 3 ESTABLISHED, 2 FIN_WAIT2, 2 TIME_WAIT to 127.0.0.1:8080
    assert "tcp.listen.fill_max_pct" not in values and "tcp.ports.pressure_pct" not in values
    assert values["tcp.state.established"] == 6
    assert values["tcp.state.close_wait"] == 2
    assert values["tcp.state.fin_wait2"] == 2
    assert values["tcp.state.time_wait"] == 2
    assert values["tcp.state.listen"] == 1
    assert values["tcp.orphan"] == 2  # the closed clients' FIN_WAIT2 sockets
    assert len(values) == 12


def test_containers_not_read_before_the_deadline_count_as_failed() -> None:
    good = _ns("linux-6.18-server")
    snap = Snapshot(_host("linux-6.18-host", "6.18"), (good,), 4, (), (("x", "unreadable"),), (), late=("l1", "l2"))
    samples, failed = metrics.snapshot_samples(snap, kernel_scopes.field_scopes("6.18"), BASIC_COUNTERS)
    values = {(s.metric, s.tags): s.value for s in samples}
    assert values[("container.net.collector.failed", ())] == 3
    assert [name for name, _ in failed] == ["x"]  # the exit code counts late containers on its own (cli.py)


@pytest.mark.parametrize("release", ["3.10.0", "4.19.0", "6.18.44"])
@pytest.mark.parametrize("groups", [{"basic"}, {"counters"}, {"basic", "counters"}])
def test_the_plan_made_once_gives_the_samples_made_each_time(release: str, groups: set) -> None:
    scopes = kernel_scopes.field_scopes(release)
    plan = metrics._netns_plan(scopes, groups)
    assert [m.name for m, _ in plan] == [m.name for m in metrics.NETNS_METRICS
                                         if m.group in groups and (m.scope_field is None
                                                                   or scopes[m.scope_field] == kernel_scopes.NETNS)]
    for folder in ("linux-6.18-server", "pcp-rhel6-bigsys"):
        ns = _ns(folder)
        made = metrics.netns_samples(ns, scopes, groups, plan)
        assert made and made == metrics.netns_samples(ns, scopes, groups)
