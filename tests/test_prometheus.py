"""Prometheus text exposition and the atomic textfile: names, labels, escaping, no timestamps, races."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
from prometheus_client.parser import text_string_to_metric_families

from container_netstat import metrics, prometheus
from container_netstat.metrics import COUNTER, GAUGE
from container_netstat.records import Container, HostStats, NetnsStats, Readings, Sample, Snapshot
from container_netstat.prometheus import RunHealth, TextfileError, render, write_textfile

from conftest import unavailable
from names import exposed_name

# cAdvisor's network series (kubelet serves the tcp/udp ones as 0): none of ours may be one of them.
CADVISOR = (
    "container_network_tcp_usage_total", "container_network_tcp6_usage_total",
    "container_network_udp_usage_total", "container_network_udp6_usage_total",
    "container_network_advance_tcp_stats_total", "container_network_receive_bytes_total",
    "container_network_transmit_bytes_total", "container_network_receive_errors_total",
    "container_network_receive_packets_dropped_total", "container_sockets", "container_threads",
)

WEB = (("container", "web-1"),)
POD = (("namespace", "shop"), ("pod", "cart-7d9f"))
NASTY = 'a "quoted" \\back\\slash\nnew line, comma=equals é 日本 \x7f'


def parse(text: bytes) -> Dict[str, Tuple[str, str, List[Tuple[str, Dict[str, str], float, object]]]]:
    """name -> (type, help, [(sample name, labels, value, timestamp)]), via the client library's parser."""
    return {
        f.name: (f.type, f.documentation, [(s.name, s.labels, s.value, s.timestamp) for s in f.samples])
        for f in text_string_to_metric_families(text.decode("utf-8"))
    }


def every_catalogue_sample(tags: Tuple[Tuple[str, str], ...] = WEB) -> List[Sample]:
    samples = [Sample(metrics.PREFIX + m.name, 7, m.counter_type, tags) for m in metrics.NETNS_METRICS]
    samples += [Sample(metrics.PREFIX + m.name, 3, m.counter_type) for m in metrics.HOST_METRICS]
    samples += [Sample(metrics.PREFIX + name, 1, GAUGE) for name, _ in metrics.COLLECTOR_METRICS]
    return samples


# -- the run's own health ---------------------------------------------------------------------


def _snapshot(namespaces: int, gone: int, failed: int) -> Snapshot:
    owners = [Container(f"id{i}", f"c{i}", "bridge") for i in range(namespaces)]
    return Snapshot(
        host=HostStats("6.1", 1, {}),
        namespaces=tuple(NetnsStats(c, (c.name,), 100 + i, 200 + i, (("container", c.name),), Readings())
                         for i, c in enumerate(owners)),
        containers=namespaces + gone + failed, gone=tuple(f"g{i}" for i in range(gone)),
        failed=tuple((f"f{i}", "permission denied") for i in range(failed)), host_network=(),
    )


def test_the_health_gauges_are_the_duration_and_the_namespaces_read_and_skipped() -> None:
    health = RunHealth.of(_snapshot(namespaces=3, gone=2, failed=1), started=100.0, clock=lambda: 102.25)
    assert (health.duration, health.namespaces_read, health.namespaces_skipped) == (2.25, 3, 3)
    families = parse(render([], collected_at=1700000000, health=health))
    got = {name: (kind, rows[0][2]) for name, (kind, _, rows) in families.items()}
    assert got == {
        prometheus.TIMESTAMP_METRIC: ("gauge", 1700000000.0),
        prometheus.DURATION_METRIC: ("gauge", 2.25),
        prometheus.READ_METRIC: ("gauge", 3.0),
        prometheus.SKIPPED_METRIC: ("gauge", 3.0),
    }
    assert all(not rows[0][1] for _, (_, _, rows) in families.items())  # no labels: once per run


def test_namespaces_left_late_by_the_deadline_count_as_skipped() -> None:
    import dataclasses

    base = _snapshot(namespaces=1, gone=1, failed=0)
    late = dataclasses.replace(base, late=("l1", "l2"))
    assert RunHealth.of(base, 0.0).namespaces_skipped == 1
    assert RunHealth.of(late, 0.0).namespaces_skipped == 3


def test_without_health_only_the_timestamp_is_written() -> None:
    families = parse(render([], collected_at=5))
    assert set(families) == {prometheus.TIMESTAMP_METRIC}


def test_a_start_after_the_clock_gives_no_negative_duration() -> None:
    health = RunHealth.of(_snapshot(namespaces=0, gone=0, failed=0), started=10.0, clock=lambda: 9.0)
    assert parse(render([], health=health))[prometheus.DURATION_METRIC][2][0][2] == 0.0


def test_the_cli_writes_the_health_gauges_of_its_own_run(tmp_path: Path) -> None:
    # A real run with the proc backend on this host (no container needed): its own gauges.
    before = time.time()
    result = subprocess.run(
        [sys.executable, "-m", "container_netstat", "collect", "--runtime", "proc", "--format", "prometheus",
         "--include", "no-such-container-anywhere-*"],
        capture_output=True, timeout=120)
    elapsed = time.time() - before
    assert result.returncode == 0, result.stderr.decode()
    families = parse(result.stdout)
    duration = families[prometheus.DURATION_METRIC][2][0][2]
    assert 0 < duration <= elapsed
    assert families[prometheus.READ_METRIC][2][0][2] == 0
    assert families[prometheus.SKIPPED_METRIC][2][0][2] == 0
    assert before - 1 <= families[prometheus.TIMESTAMP_METRIC][2][0][2] <= time.time() + 1


# -- names -------------------------------------------------------------------------------------


def test_every_catalogue_metric_gets_our_prefix_and_counters_end_in_total() -> None:
    for m in metrics.NETNS_METRICS + metrics.HOST_METRICS:
        name = exposed_name(metrics.PREFIX + m.name, m.counter_type)
        assert name.startswith("container_netstat_"), name
        assert name.endswith("_total") == (m.counter_type == COUNTER), name
        assert name not in CADVISOR
    assert exposed_name("container.net.tcp.state.close_wait", GAUGE) == "container_netstat_tcp_state_close_wait"
    assert exposed_name("container.net.tcp.listen_overflows", COUNTER) == (
        "container_netstat_tcp_listen_overflows_total")


def test_rendered_names_are_what_exposed_name_says() -> None:
    samples = every_catalogue_sample()
    served = {s[0] for _, (_, _, rows) in parse(render(samples)).items() for s in rows}
    assert served == {exposed_name(s.metric, s.counter_type) for s in samples}


@pytest.mark.parametrize(
    "key, name",
    [("namespace", "namespace"), ("io.kubernetes.pod.name", "io_kubernetes_pod_name"), ("9lives", "_9lives"),
     ("__name__", "tag__name__"), ("", "_"), ("pöd", "p_d")],
)
def test_tag_keys_become_legal_label_names(key: str, name: str) -> None:
    assert prometheus.label_name(key) == name


# -- the text format -----------------------------------------------------------------------------


def test_help_and_type_for_every_family_and_no_timestamps() -> None:
    text = render(every_catalogue_sample(), collected_at=1700000000)
    families = parse(text)
    for name, (kind, help_text, rows) in families.items():
        assert help_text, name
        assert kind in ("gauge", "counter"), name
        assert all(timestamp is None for _, _, _, timestamp in rows), name
    assert families["container_netstat_tcp_listen_overflows"][0] == "counter"
    assert "ListenOverflows" in families["container_netstat_tcp_listen_overflows"][1]
    assert families["container_netstat_collector_timestamp_seconds"][2][0][2] == 1700000000
    # node_exporter skips a whole file that has a timestamp: a sample line is `name{labels} value`.
    for line in text.decode().splitlines():
        assert line.startswith("# ") or re.fullmatch(r'[a-z0-9_]+(\{[^}]*\})? [0-9.e+-]+', line), line


def test_label_values_survive_any_text_escaped() -> None:
    tags = (("namespace", NASTY), ("pod", "p\\"))
    families = parse(render([Sample("container.net.tcp.inuse", 5, GAUGE, tags)]))
    (_, labels, value, _), = families["container_netstat_tcp_inuse"][2]
    assert labels == {"namespace": NASTY, "pod": "p\\"}
    assert value == 5


def test_a_lone_surrogate_from_a_label_does_not_break_the_file() -> None:
    text = render([Sample("container.net.tcp.inuse", 1, GAUGE, (("container", "bad\udc80name"),))])
    (_, labels, _, _), = parse(text)["container_netstat_tcp_inuse"][2]
    assert labels == {"container": "bad?name"}


def test_series_of_one_metric_share_the_union_of_label_names() -> None:
    samples = [Sample("container.net.tcp.inuse", 1, GAUGE, WEB), Sample("container.net.tcp.inuse", 2, GAUGE, POD)]
    rows = parse(render(samples))["container_netstat_tcp_inuse"][2]
    assert [(labels, value) for _, labels, value, _ in rows] == [
        ({"container": "web-1", "namespace": "", "pod": ""}, 1),
        ({"container": "", "namespace": "shop", "pod": "cart-7d9f"}, 2),
    ]


def test_a_duplicate_series_is_dropped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    # Two containers carrying the same pod labels would otherwise make node_exporter drop the file's data.
    samples = [Sample("container.net.tcp.inuse", 1, GAUGE, POD), Sample("container.net.tcp.inuse", 2, GAUGE, POD)]
    with caplog.at_level(logging.WARNING, logger="container_netstat"):
        rows = parse(render(samples))["container_netstat_tcp_inuse"][2]
    assert [value for _, _, value, _ in rows] == [1]
    assert caplog.text.count("two namespaces with these labels") == 1


def test_output_is_stable_whatever_the_sample_order() -> None:
    samples = every_catalogue_sample(WEB) + every_catalogue_sample(POD)
    assert render(samples, 1) == render(list(reversed(samples)), 1)


def test_promtool_finds_nothing_to_complain_about(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        unavailable("promtool (Debian package prometheus) is not installed")
    samples = every_catalogue_sample(WEB) + every_catalogue_sample(POD)
    samples.append(Sample("container.net.tcp.inuse", 9, GAUGE, (("container", NASTY),)))
    result = subprocess.run([promtool, "check", "metrics"], input=render(samples, time.time()),
                            capture_output=True, timeout=60)
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), result


# -- the textfile ---------------------------------------------------------------------------------


def test_write_replaces_the_file_with_mode_0644_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "container_netstat.prom"
    path.write_text("old\n")
    old = os.umask(0o077)
    try:
        write_textfile(path, b"new\n")
    finally:
        os.umask(old)
    assert path.read_bytes() == b"new\n"
    assert path.stat().st_mode & 0o777 == 0o644
    assert sorted(os.listdir(tmp_path)) == ["container_netstat.prom"]


def test_a_symbolic_link_is_refused_and_its_target_left_alone(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("precious\n")
    link = tmp_path / "container_netstat.prom"
    link.symlink_to(target)
    with pytest.raises(TextfileError, match="symbolic link"):
        write_textfile(link, b"data\n")
    assert target.read_text() == "precious\n" and link.is_symlink()
    assert sorted(os.listdir(tmp_path)) == ["container_netstat.prom", "elsewhere"]


def test_a_directory_in_the_way_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.prom").mkdir()
    with pytest.raises(TextfileError, match="not a regular file"):
        write_textfile(tmp_path / "x.prom", b"data\n")


def test_a_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TextfileError, match="cannot create a temporary file in .*/missing"):
        write_textfile(tmp_path / "missing" / "x.prom", b"data\n")


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "x.prom"
    path.write_text("old\n")

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(TextfileError, match="No space left on device"):
        write_textfile(path, b"new\n")
    assert path.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["x.prom"]


def test_temporaries_of_killed_runs_are_removed_but_not_a_running_ones(tmp_path: Path) -> None:
    stale = tmp_path / ".x.prom.abc123.tmp"
    fresh = tmp_path / ".x.prom.def456.tmp"
    other = tmp_path / ".other.prom.abc123.tmp"
    for f in (stale, fresh, other):
        f.write_text("partial")
    long_ago = time.time() - prometheus.STALE_TEMP_SECONDS - 60
    os.utime(stale, (long_ago, long_ago))
    os.utime(other, (long_ago, long_ago))
    write_textfile(tmp_path / "x.prom", b"data\n")
    assert sorted(os.listdir(tmp_path)) == sorted([".x.prom.def456.tmp", ".other.prom.abc123.tmp", "x.prom"])


# A reader in another process, reading by path as node_exporter does, until told to stop. Every
# read must be one whole generation: SERIES sample lines, all with the same value.
READER = textwrap.dedent("""
    import os, sys
    path, stop, series = sys.argv[1], sys.argv[2], int(sys.argv[3])
    reads = bad = 0
    seen = set()
    while not os.path.exists(stop):
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            continue
        reads += 1
        values = [line.rsplit(b" ", 1)[-1] for line in data.split(b"\\n") if line and not line.startswith(b"#")]
        if len(values) != series or len(set(values)) != 1 or not data.endswith(b"\\n"):
            bad += 1
        else:
            seen.add(values[0])
    print(reads, bad, len(seen))
""")


def _race(tmp_path: Path, write: "object", series: int = 5000, seconds: float = 3.0) -> Tuple[int, int, int, int]:
    path, stop = tmp_path / "race.prom", tmp_path / "stop"
    labels = [(("container", f"container-{i:05d}-{'x' * 40}"),) for i in range(series - 1)]
    payloads = [render([Sample("container.net.tcp.inuse", g, GAUGE, t) for t in labels], collected_at=g)
                for g in (1, 2)]
    write(path, payloads[0])  # type: ignore[operator]
    reader = subprocess.Popen([sys.executable, "-c", READER, str(path), str(stop), str(series)],
                              stdout=subprocess.PIPE, text=True)
    writes = 0
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            write(path, payloads[writes % 2])  # type: ignore[operator]
            writes += 1
    finally:
        stop.touch()
        out, _ = reader.communicate(timeout=60)
    reads, bad, generations = map(int, out.split())
    return writes, reads, bad, generations


def test_a_reader_racing_the_writer_never_sees_a_partial_or_mixed_file(tmp_path: Path) -> None:
    writes, reads, bad, generations = _race(tmp_path, write_textfile)
    assert writes > 20 and reads > 20, (writes, reads)
    assert generations == 2, "the reader never saw both generations: it did not race the writer"
    assert bad == 0, f"{bad} of {reads} reads saw a partial or mixed file"


def test_the_race_test_catches_a_writer_that_is_not_atomic(tmp_path: Path) -> None:
    def in_place(path: Path, data: bytes) -> None:
        with open(path, "wb") as out:  # truncates, then writes piecemeal: what the rename avoids
            for i in range(0, len(data), 65536):
                out.write(data[i:i + 65536])
                out.flush()

    _, reads, bad, _ = _race(tmp_path, in_place, seconds=2.0)
    assert bad > 0, f"{reads} reads of a file rewritten in place, none partial: the race test is blind"


def test_concurrent_writers_leave_one_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "x.prom"
    payloads = [render([Sample("container.net.tcp.inuse", g, GAUGE, WEB)], collected_at=g) for g in range(8)]
    errors: List[BaseException] = []

    def writer(data: bytes) -> None:
        try:
            for _ in range(50):
                write_textfile(path, data)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert path.read_bytes() in payloads
    assert os.listdir(tmp_path) == ["x.prom"]


# -- documentation ----------------------------------------------------------------------------------


def test_every_series_name_is_documented_with_its_closest_cadvisor_series() -> None:
    root = Path(__file__).parent.parent
    text = (root / "docs" / "metrics.rst").read_text()
    names = {exposed_name(metrics.PREFIX + m.name, m.counter_type)
             for m in metrics.NETNS_METRICS + metrics.HOST_METRICS if not m.name.startswith("tcp.state.")}
    names |= {prometheus.metric_name(metrics.PREFIX + n) for n, _ in metrics.COLLECTOR_METRICS}
    names |= {name for name, _ in prometheus.HEALTH_METRICS}
    missing = sorted(n for n in names if f"``{n}``" not in text)
    assert not missing
    assert "``container_netstat_tcp_state_<state>``" in text
