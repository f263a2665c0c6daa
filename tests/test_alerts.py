"""The shipped alerts: promtool-clean Prometheus rules that fire when meant to, and open-falcon
strategies the falcon-plus API and judge accept, each reading a metric the tool emits."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Set

import pytest
import yaml

from container_netstat import metrics, prometheus

from conftest import unavailable
from names import exposed_name

ALERTS = Path(__file__).parent.parent / "alerts"
RULES = ALERTS / "container-netstat.rules.yml"
RULE_TESTS = ALERTS / "container-netstat.rules.test.yml"
STRATEGIES = ALERTS / "open-falcon-strategies.json"

# PromQL words that are not metric names.
KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool"}
# node_exporter's own series that a rule may read.
NODE_EXPORTER = {"node_textfile_scrape_error", "node_textfile_mtime_seconds"}


def emitted_prometheus_names() -> Set[str]:
    names = {exposed_name(metrics.PREFIX + m.name, m.counter_type)
             for m in metrics.NETNS_METRICS + metrics.HOST_METRICS}
    names |= {exposed_name(metrics.PREFIX + n, metrics.GAUGE) for n, _ in metrics.COLLECTOR_METRICS}
    return names | {name for name, _ in prometheus.HEALTH_METRICS}


def rules() -> List[Dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def metric_names(expr: str) -> Set[str]:
    """The series names a PromQL expression reads (strings, label matchers and ranges removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", text)
    text = re.sub(r"\b(on|ignoring|by|without|group_left|group_right)\s*\([^)]*\)", "", text)  # label lists
    names = set()
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        if text[match.end():].lstrip().startswith("(") or match.group() in KEYWORDS:
            continue  # a function or an operator
        names.add(match.group())
    return names


def rule_metric_names() -> Set[str]:
    return {name for rule in rules() for name in metric_names(rule["expr"])}


def strategies() -> List[Dict[str, Any]]:
    loaded: List[Dict[str, Any]] = json.loads(STRATEGIES.read_text())
    return loaded


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        unavailable("promtool (Debian package prometheus) is not installed")
    return str(path)


def test_promtool_check_rules_is_clean() -> None:
    result = subprocess.run([_promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout
    assert "WARNING" not in result.stdout + result.stderr


def test_the_rules_fire_when_meant_to_and_not_otherwise() -> None:
    result = subprocess.run([_promtool(), "test", "rules", RULE_TESTS.name], capture_output=True, text=True,
                            timeout=120, cwd=ALERTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test() -> None:
    tested = {case["alertname"] for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
              for case in test["alert_rule_test"]}
    assert tested == {rule["alert"] for rule in rules()}


def test_the_docs_list_every_alert_and_strategy() -> None:
    outputs = (ALERTS.parent / "docs" / "outputs.rst").read_text()
    section = re.split(r"\n[^\n]+\n-{3,}\n", outputs.split("\nAlerts\n------\n", 1)[1], maxsplit=1)[0]
    missing = [rule["alert"] for rule in rules() if f"``{rule['alert']}``" not in section]
    missing += [s["metric"] for s in strategies() if f"``{s['metric']}``" not in section]
    assert not missing, f"not in docs/outputs.rst's Alerts section: {missing}"


def test_every_name_a_rule_reads_is_one_the_tool_emits() -> None:
    names = rule_metric_names()
    assert names, "no metric found in the rules"
    unknown = names - emitted_prometheus_names() - NODE_EXPORTER
    assert not unknown, f"rules read series the tool does not emit: {sorted(unknown)}"


@pytest.mark.parametrize(
    "expr, names",
    [("rate(a_total[5m]) > 10", {"a_total"}),
     ('x{pod=~"a.*"} and on(instance) delta(y[30m]) > 0', {"x", "y"}),
     ("time() - t > 300", {"t"}),
     ("sum by (pod) (rate(z_total[5m])) > bool 1", {"z_total"})],
)
def test_metric_names_are_found_in_promql(expr: str, names: Set[str]) -> None:
    assert metric_names(expr) == names


# falcon-plus: api/app/controller/strategy APICreateStrategyInput.CheckFormat and judge/store/func.go
# ParseFuncFromString; the judge sees a COUNTER's raw value, so counters are judged with diff().
FALCON_OP = re.compile(r"^(>|=|<|!)(=)?$")
FALCON_RIGHT_VALUE = re.compile(r"^-?\d+(\.\d+)?$")
FALCON_FUNC = re.compile(r"^(max|min|all|sum|avg|diff|pdiff)\(#(\d+)\)$|^lookup\(#(\d+),(\d+)\)$")
# The portal's strategy table (falcon-plus scripts/mysql/db_schema/2_portal-db-schema.sql): MySQL
# in strict mode refuses a longer value, and otherwise cuts it.
FALCON_COLUMNS = {"metric": 128, "tags": 256, "func": 16, "op": 8, "right_value": 64, "note": 128,
                  "run_begin": 16, "run_end": 16}


def falcon_names() -> Dict[str, str]:
    catalogue = {metrics.PREFIX + m.name: m.counter_type for m in metrics.NETNS_METRICS + metrics.HOST_METRICS}
    catalogue.update({metrics.PREFIX + n: metrics.GAUGE for n, _ in metrics.COLLECTOR_METRICS})
    return catalogue


@pytest.mark.parametrize("strategy", strategies(), ids=lambda s: s["metric"])
def test_open_falcon_strategy_is_one_the_api_and_judge_accept(strategy: Dict[str, Any]) -> None:
    assert set(strategy) == {"metric", "tags", "func", "op", "right_value", "max_step", "priority", "note",
                             "run_begin", "run_end"}
    assert strategy["metric"] in falcon_names()
    assert FALCON_OP.match(strategy["op"]) and strategy["op"] != "="  # "=" parses but "==" reads better
    assert isinstance(strategy["right_value"], str) and FALCON_RIGHT_VALUE.match(strategy["right_value"])
    match = FALCON_FUNC.match(strategy["func"])
    assert match, strategy["func"]
    assert isinstance(strategy["max_step"], int) and strategy["max_step"] >= 1
    assert isinstance(strategy["priority"], int) and 0 <= strategy["priority"] <= 5
    too_long = {k: len(strategy[k]) for k, most in FALCON_COLUMNS.items() if len(strategy[k]) > most}
    assert not too_long, f"longer than the portal's columns: {too_long}"
    if falcon_names()[strategy["metric"]] == metrics.COUNTER:
        assert strategy["func"].startswith("diff("), "a counter's raw value only grows: judge its diff"


# The signals operators ask for, and each listener and port-pressure gauge (docs/metrics.rst,
# "Listeners" and "Ephemeral-port pressure"): each has a Prometheus rule and an open-falcon strategy.
SIGNALS = ("tcp.state.close_wait", "tcp.listen_overflows", "tcp.retrans_segs",
           "tcp.listen.queue_max", "tcp.listen.fill_max_pct", "tcp.listen.near_full",
           "tcp.ports.peer_max", "tcp.ports.pressure_pct")


@pytest.mark.parametrize("short", SIGNALS)
def test_the_signals_operators_ask_for_are_covered(short: str) -> None:
    name = metrics.PREFIX + short
    assert name in {s["metric"] for s in strategies()}
    assert exposed_name(name, falcon_names()[name]) in rule_metric_names()


def test_the_collector_staleness_is_covered() -> None:
    assert prometheus.TIMESTAMP_METRIC in rule_metric_names()


def test_port_pressure_is_judged_on_the_namespace_range_not_on_time_wait() -> None:
    # TIME_WAIT against the default range's 28232 ports misjudges a tuned range, and adds up
    # sockets toward every remote, while connect() reuses a local port toward another remote
    # (net/ipv4/inet_hashtables.c __inet_hash_connect, __inet_check_established).
    timewait = metrics.PREFIX + "tcp.timewait"
    assert exposed_name(timewait, metrics.GAUGE) not in rule_metric_names()
    assert timewait not in {s["metric"] for s in strategies()}
