"""The Grafana dashboard as a file: importable into Grafana 9 to 11, no pinned data source,
the variables and panels an operator needs, counters only as rates, and only series the
tool (or node_exporter) serves.

Whether each query returns data is checked on a real Prometheus in
tests/integration/test_prometheus_server.py (a real Grafana cannot be installed here).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict, Iterator, List, Set

import pytest

from container_netstat import metrics, prometheus
from names import exposed_name
from test_alerts import NODE_EXPORTER, emitted_prometheus_names, metric_names

DASHBOARD = Path(__file__).parent.parent / "contrib" / "grafana" / "container-netstat.json"
SELECTOR_VARIABLES = ("instance", "namespace", "pod", "container")
COUNTERS = {exposed_name(metrics.PREFIX + m.name, m.counter_type)
            for m in metrics.NETNS_METRICS if m.counter_type == metrics.COUNTER}


def load() -> Dict[str, Any]:
    loaded: Dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(dashboard: Dict[str, Any]) -> Iterator[Dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def exprs(dashboard: Dict[str, Any]) -> List[str]:
    return [t["expr"] for p in panels(dashboard) for t in p.get("targets", [])]


def raw_counters(expr: str) -> Set[str]:
    """Counters an expression reads other than as the direct argument of rate(), irate() or increase()."""
    raw = set()
    for name in COUNTERS:
        for match in re.finditer(rf"\b{name}\b", expr):
            before = expr[:match.start()].rstrip()
            if not re.search(r"\b(rate|irate|increase)\($", before):
                raw.add(name)
    return raw


def test_importable_into_grafana_9_to_11() -> None:
    dashboard = load()
    # schemaVersion 36 is Grafana 9.0's; 10 and 11 migrate it forward on import.
    assert dashboard["schemaVersion"] == 36
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", dashboard["uid"])
    assert dashboard["title"]
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids))
    for panel in panels(dashboard):
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]) and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24


def test_no_panel_or_query_is_pinned_to_a_data_source() -> None:
    dashboard = load()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    pinned = []
    for panel in panels(dashboard):
        for holder in [panel, *panel.get("targets", [])] if panel["type"] != "row" else []:
            if holder.get("datasource") != {"type": "prometheus", "uid": "${datasource}"}:
                pinned.append((panel["title"], holder.get("datasource")))
    for variable in variables.values():
        if variable["type"] == "query" and variable["datasource"] != {"type": "prometheus", "uid": "${datasource}"}:
            pinned.append((variable["name"], variable["datasource"]))
    assert not pinned


def test_instance_pod_namespace_pod_and_container_are_variables_filled_by_a_query() -> None:
    variables = {v["name"]: v for v in load()["templating"]["list"]}
    for name in SELECTOR_VARIABLES:
        variable = variables[name]
        assert variable["type"] == "query"
        assert re.fullmatch(rf"label_values\(container_netstat_\w+(\{{.*\}})?, {name}\)", variable["query"]["query"])
        assert variable["includeAll"] and variable["allValue"] == ".*" and variable["refresh"] in (1, 2)
    assert variables["namespace"]["label"] == "Pod namespace"


def test_every_per_container_query_filters_on_every_variable_with_a_regex_match() -> None:
    for expr in exprs(load()):
        if "collector_" in expr or "node_textfile" in expr:
            assert 'instance=~"$instance"' in expr  # once per run and host: instance only
            continue
        for name in SELECTOR_VARIABLES:
            assert f'{name}=~"${name}"' in expr, expr  # All is .*: only =~ takes it


def test_counters_are_shown_only_as_rates() -> None:
    found = exprs(load())
    assert all(not raw_counters(e) for e in found), [e for e in found if raw_counters(e)]
    assert {"container_netstat_tcp_retrans_segs_total", "container_netstat_tcp_estab_resets_total"} <= {
        n for e in found for n in COUNTERS if n in e}
    assert all("[$__rate_interval]" in e for e in found if "rate(" in e)


@pytest.mark.parametrize("expr", [
    "container_netstat_tcp_retrans_segs_total",
    "sum(container_netstat_tcp_out_rsts_total{pod=~\"$pod\"})",
    "delta(container_netstat_tcp_estab_resets_total[5m])",
    "rate(container_netstat_tcp_in_errs_total[1m]) + container_netstat_tcp_in_errs_total",
])
def test_the_rate_check_catches_a_raw_counter(expr: str) -> None:
    assert raw_counters(expr)


def test_it_reads_only_series_that_are_served() -> None:
    served = emitted_prometheus_names() | NODE_EXPORTER
    read = {n for e in exprs(load()) for n in metric_names(e)} - {"__name__"}
    assert read and read <= served, read - served
    # The states panel reads every state by a name regex: it must match the served state names.
    [states] = [e for e in exprs(load()) if "__name__=~" in e]
    pattern = re.search(r'__name__=~"([^"]+)"', states)
    assert pattern is not None
    matched = {n for n in served if re.fullmatch(pattern.group(1), n)}
    assert "container_netstat_tcp_state_close_wait" in matched
    assert matched == {exposed_name(metrics.PREFIX + m.name, m.counter_type)
                       for m in metrics.NETNS_METRICS if m.name.startswith("tcp.state.")}


def test_the_panels_an_operator_needs_are_there() -> None:
    dashboard = load()
    by_title = {p["title"]: p for p in panels(dashboard)}
    needed = {
        "Established": "container_netstat_tcp_established{",
        "TIME_WAIT": "container_netstat_tcp_timewait{",
        "UDP sockets": "container_netstat_udp_inuse{",
        "CLOSE_WAIT per container or pod": "container_netstat_tcp_state_close_wait{",
        "Top listeners by accept-queue fill": "topk(10, container_netstat_tcp_listen_fill_max_pct{",
        "Top containers by port pressure": "topk(10, container_netstat_tcp_ports_pressure_pct{",
        "Retransmitted segments /s": "rate(container_netstat_tcp_retrans_segs_total{",
        "Resets /s": "rate(container_netstat_tcp_estab_resets_total{",
        "Run duration": prometheus.DURATION_METRIC + "{",
        "Namespaces read and skipped": prometheus.SKIPPED_METRIC + "{",
        "Age of the data": "time() - " + prometheus.TIMESTAMP_METRIC + "{",
    }
    for title, text in needed.items():
        assert any(text in t["expr"] for t in by_title[title]["targets"]), title
    assert any(prometheus.READ_METRIC in t["expr"] for t in by_title["Namespaces read and skipped"]["targets"])
    # CLOSE_WAIT stands out in the states panel.
    states = by_title["TCP states, all selected namespaces"]
    override = [o for o in states["fieldConfig"]["overrides"] if o["matcher"]["options"] == "close_wait"]
    assert override and {"id": "color", "value": {"mode": "fixed", "fixedColor": "red"}} in override[0]["properties"]
    # The collector's own health sits in a collapsed row, nested.
    rows = [p for p in dashboard["panels"] if p["type"] == "row" and p["panels"]]
    assert {"Run duration", "Age of the data"} <= {p["title"] for r in rows for p in r["panels"]}


def test_the_textfile_age_matches_node_exporters_full_path_label() -> None:
    # node_exporter 1.5 labels node_textfile_mtime_seconds with the file's full path.
    [expr] = [e for e in exprs(load()) if "node_textfile_mtime_seconds" in e]
    match = re.search(r'file=~"([^"]+)"', expr)
    assert match is not None, "a bare file name never matches the full path"
    pattern = match.group(1)
    for path in ("/var/lib/prometheus/node-exporter/container_netstat.prom",
                 "/tmp/x/container-netstat.prom", "container_netstat.prom"):
        assert re.fullmatch(pattern, path), path  # Prometheus anchors regex matchers
    assert not re.fullmatch(pattern, "/var/lib/prometheus/node-exporter/other.prom")


def test_the_falcon_screen_counters_in_the_docs_are_items_the_tool_emits() -> None:
    text = (Path(__file__).parent.parent / "docs" / "outputs.rst").read_text()
    section = text[text.index("Open-falcon screens and Nightingale"):text.index("falcon-agent plugin\n")]
    named = set(re.findall(r"``(container\.net\.[a-z0-9_.<>]+)``", section))
    emitted = {metrics.PREFIX + m.name for m in metrics.NETNS_METRICS}
    emitted |= {metrics.PREFIX + n for n, _ in metrics.COLLECTOR_METRICS}
    states = {n for n in emitted if n.startswith(metrics.PREFIX + "tcp.state.")}
    assert metrics.PREFIX + "tcp.state.<state>" in named and states
    assert named - {metrics.PREFIX + "tcp.state.<state>"} <= emitted, named - emitted
    # Every per-container series a Grafana panel reads has its counter on the screen.
    read = {n for e in exprs(load()) for n in metric_names(e)} - {"__name__", *NODE_EXPORTER}
    falcon = {exposed_name(metrics.PREFIX + m.name, m.counter_type): metrics.PREFIX + m.name
              for m in metrics.NETNS_METRICS}
    assert {falcon[n] for n in read if n in falcon and not n.startswith("container_netstat_tcp_state_")} <= named
