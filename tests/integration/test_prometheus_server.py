"""The shipped alert rules and the Grafana dashboard on a real Prometheus server.

Debian's ``prometheus`` runs here as a plain process (its package starts no service we could
rely on): its own storage directory, a 127.0.0.1 port, scrape and rule evaluation every
second. It scrapes a real node_exporter that serves the tool's textfile, which a thread
rewrites every 2 seconds with ``collect --textfile`` over this module's containers only. The
trouble is real, in real containers, on loopback inside their own network namespaces:

- a pod (dockershim labels: a sandbox and an app container joining its namespace) whose
  server leaks CLOSE_WAIT sockets, one more every second; its tenant put template syntax in
  its pod name, which the alert's annotations must show as text;
- a listener with a full accept queue (backlog 2, never accepting, 5 clients);
- a client holding 80 of the 100 ports of its local range
  (``net.ipv4.ip_local_port_range=40000 40099``) to one remote address and port;
- a healthy server with a few held connections, which must set nothing off.

The rules are ``alerts/container-netstat.rules.yml`` as shipped, loaded from a test copy
whose only change is ``for:`` shortened to 2 seconds (the real 5 to 15 minutes would not fit
a test); expressions, windows, thresholds and annotations are untouched.

A real Grafana cannot be installed here (Debian bookworm has no package, PyPI and npm only
client libraries): the dashboard's proof is that every target expression of every panel,
with its template variables substituted as Grafana does (All is ``.*`` under ``=~``,
``$__rate_interval`` is ``1m``), parses and returns data from this Prometheus.

Every wait polls the HTTP API with a total timeout; the server, node_exporter, the writer
thread and the containers are stopped whatever happens.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple

import pytest
import yaml

from conftest import TEST_LABEL, container_starter, pid_of, remove_all, unavailable
from integration.test_outputs_docker import NodeExporter, background, free_port
from integration.test_states_docker import FAN_OUT
from integration.workloads import hold

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parent.parent.parent
RULES = REPO / "alerts" / "container-netstat.rules.yml"
DASHBOARD = REPO / "contrib" / "grafana" / "container-netstat.json"
TEXTFILE = "container_netstat.prom"
SHORT_FOR = "2s"
WAIT = 120.0  # the longest any one condition is waited for, in seconds

# A CLOSE_WAIT leak that grows: the peers close, the server never does; one more a second.
GROWING_CLOSE_WAIT = r"""
import socket, time
srv = socket.socket(); srv.bind(("127.0.0.1", 9090)); srv.listen(512)
leaked = []
def leak(k):
    for _ in range(k):
        c = socket.create_connection(("127.0.0.1", 9090)); leaked.append(srv.accept()[0]); c.close()
leak({start})
time.sleep(0.2)
print("ready", flush=True)
while len(leaked) < 400:
    time.sleep(1); leak(1)
time.sleep(600)
"""

# A listener that never accepts, backlog 2, 5 clients: 3 queued (fill 150 %), 2 left in SYN_SENT.
STUCK_LISTENER = r"""
import socket, time
stuck = socket.socket(socket.AF_INET6); stuck.bind(("::", 9001)); stuck.listen(2)
waiting = []
for _ in range(5):
    c = socket.socket(); c.setblocking(False); c.connect_ex(("127.0.0.1", 9001)); waiting.append(c)
time.sleep(1.5)
print("ready", flush=True)
time.sleep(600)
"""

Who = Tuple[str, ...]  # ("container", name) or ("pod", namespace, pod)


def who(labels: Dict[str, str]) -> Who:
    if labels.get("container"):
        return ("container", labels["container"])
    return ("pod", labels.get("namespace", ""), labels.get("pod", ""))


class PrometheusServer:
    """Debian's prometheus as a plain process: a config, a storage directory and a port of its own."""

    def __init__(self, directory: Path, rules: Path, target: str) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            unavailable("prometheus (Debian package prometheus) is not installed")
        directory.mkdir()
        config = directory / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [{"job_name": "node", "static_configs": [{"targets": [target]}]}],
        }))
        self.port = free_port()
        self.log = directory / "prometheus.log"
        self.process = subprocess.Popen(
            [str(binary), f"--config.file={config}", f"--storage.tsdb.path={directory / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=self.log.open("wb"),
        )
        try:
            until(self._ready, 60, "prometheus to be ready", self.process)
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=5) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; the ``data`` of a success, an AssertionError with the error otherwise."""
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as err:
            body = json.load(err)
        assert body["status"] == "success", (path, params, body)
        return body["data"]

    def query(self, expr: str) -> List[Dict[str, Any]]:
        data = self.api("query", query=expr)
        result: List[Dict[str, Any]] = data["result"]
        return result

    def alerts(self) -> List[Dict[str, Any]]:
        found: List[Dict[str, Any]] = self.api("alerts")["alerts"]
        return found

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(15)


def until(condition: Callable[[], Any], timeout: float, what: str,
          process: Optional[subprocess.Popen] = None) -> Any:
    """Poll every 0.5 s until condition() is truthy; fail after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while True:
        got = condition()
        if got:
            return got
        if process is not None and process.poll() is not None:
            raise AssertionError(f"gave up waiting for {what}: the process exited {process.returncode}")
        if time.monotonic() > end:
            raise AssertionError(f"gave up waiting for {what} after {timeout:.0f} s")
        time.sleep(0.5)


class Writer(threading.Thread):
    """``collect --textfile`` over one run's containers every 2 s, as cron would every minute."""

    def __init__(self, path: Path, run_id: str) -> None:
        super().__init__(daemon=True)
        self.path, self.run_id = path, run_id
        self.halt = threading.Event()
        self.runs = 0
        self.errors: List[str] = []

    def once(self) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "container_netstat", "collect", "--textfile", str(self.path),
             "--include", f"{TEST_LABEL}={self.run_id}"], capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            self.errors.append(f"exit {result.returncode}: {result.stderr}")
        self.runs += 1

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                self.once()
            except subprocess.TimeoutExpired as err:
                self.errors.append(str(err))
            self.halt.wait(2)

    def stop(self) -> None:
        self.halt.set()
        self.join(90)


def shortened_rules(directory: Path) -> Path:
    """The shipped rules with every ``for:`` cut to SHORT_FOR, nothing else changed."""
    doc = yaml.safe_load(RULES.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = SHORT_FOR
    copy = directory / "rules.yml"
    copy.write_text(yaml.safe_dump(doc, sort_keys=False))
    return copy


def shipped_rules() -> List[Dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


@pytest.fixture(scope="module")
def stack(docker_client: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dict[str, Any]]:
    run_id = uuid.uuid4().hex[:8]
    base = tmp_path_factory.mktemp("prometheus-server")
    started: List[Any] = []
    procs: List[subprocess.Popen] = []
    stops: List[Callable[[], None]] = []

    run = container_starter(docker_client, run_id, started)

    try:
        # The pod's name is the tenant's: template syntax in it must come out as text, never run.
        pod = {"io.kubernetes.pod.namespace": f"shop-{run_id}",
               "io.kubernetes.pod.name": f"leaky-{run_id}-{{{{ $value }}}}{{{{ humanize 1e9 }}}}"}
        sandbox = run("k8s_POD_leaky", network_mode="none", labels={
            **pod, "io.kubernetes.docker.type": "podsandbox", "io.kubernetes.container.name": "POD"})
        run("k8s_app_leaky", network_mode=f"container:{sandbox.id}", labels={
            **pod, "io.kubernetes.docker.type": "container", "io.kubernetes.container.name": "app"})
        procs.append(background(pid_of(sandbox), GROWING_CLOSE_WAIT.format(start=25)))
        stuck = run("stuck", network_mode="none")
        procs.append(background(pid_of(stuck), STUCK_LISTENER))
        ports = run("ports", network_mode="none", sysctls={"net.ipv4.ip_local_port_range": "40000 40099"})
        procs.append(background(pid_of(ports), FAN_OUT.format(n=80)))
        healthy = run("healthy", network_mode="none")
        procs.append(background(pid_of(healthy), hold(3, udp=1)))

        textfile_dir = base / "textfile"
        textfile_dir.mkdir()
        writer = Writer(textfile_dir / TEXTFILE, run_id)
        writer.once()  # a file before the first scrape
        writer.start()
        stops.append(writer.stop)
        exporter = NodeExporter(textfile_dir)
        stops.append(exporter.stop)
        server = PrometheusServer(base / "server", shortened_rules(base), f"127.0.0.1:{exporter.port}")
        stops.append(server.stop)
        yield {
            "server": server, "writer": writer, "path": textfile_dir / TEXTFILE,
            "pod": ("pod", pod["io.kubernetes.pod.namespace"], pod["io.kubernetes.pod.name"]),
            "stuck": ("container", stuck.name), "ports": ("container", ports.name),
            "healthy": ("container", healthy.name),
        }
    finally:
        for stop in reversed(stops):
            stop()
        for proc in procs:
            proc.kill()
            proc.wait()
        remove_all(started)


# -- the rules ---------------------------------------------------------------------------------


def test_every_shipped_rule_loads_and_evaluates_with_health_ok(stack: Dict[str, Any]) -> None:
    server: PrometheusServer = stack["server"]

    def evaluated() -> List[Dict[str, Any]]:
        loaded = [r for g in server.api("rules")["groups"] for r in g["rules"]]
        done = [r for r in loaded if not r["lastEvaluation"].startswith("0001-")]
        return loaded if loaded and len(done) == len(loaded) else []

    loaded = until(evaluated, 30, "every rule to be evaluated once")
    assert sorted(r["name"] for r in loaded) == sorted(r["alert"] for r in shipped_rules())
    assert len(loaded) == 11
    bad = [(r["name"], r["health"], r.get("lastError")) for r in loaded if r["health"] != "ok" or r.get("lastError")]
    assert not bad
    # The copy changed only the durations.
    shipped = {r["alert"]: r for r in shipped_rules()}
    for rule in loaded:
        assert rule["annotations"] == shipped[rule["name"]]["annotations"]
        assert rule["labels"] == shipped[rule["name"]]["labels"]
        assert rule["duration"] == (2 if "for" in shipped[rule["name"]] else 0)


def test_the_alerts_fire_for_exactly_the_containers_in_trouble(stack: Dict[str, Any]) -> None:
    server: PrometheusServer = stack["server"]
    expected: Dict[str, Set[Who]] = {
        "ContainerNetstatCloseWaitGrowing": {stack["pod"]},
        "ContainerNetstatListenQueueFull": {stack["stuck"]},
        "ContainerNetstatListenQueueNearFull": {stack["stuck"]},
        "ContainerNetstatPortPressure": {stack["ports"]},
    }
    # Overflows are the stuck listener's too (its clients retry their SYNs into the full queue),
    # but when the kernel's retry lands is not the test's to choose: if it fires, only there.
    allowed = {**expected, "ContainerNetstatListenQueueOverflow": {stack["stuck"]}}

    def firing() -> Dict[str, Set[Who]]:
        got: Dict[str, Set[Who]] = {}
        for alert in server.alerts():
            if alert["state"] == "firing":
                got.setdefault(alert["labels"]["alertname"], set()).add(who(alert["labels"]))
        return got if all(expected[name] <= got.get(name, set()) for name in expected) else {}

    until(firing, WAIT, f"{sorted(expected)} to fire")
    time.sleep(3)  # a few more evaluations: nothing else may join
    active = server.alerts()
    by_name: Dict[str, Set[Who]] = {}
    for alert in active:
        by_name.setdefault(alert["labels"]["alertname"], set()).add(who(alert["labels"]))
    assert set(by_name) <= set(allowed), by_name
    for name, whom in by_name.items():
        assert whom <= allowed[name], (name, whom)
    for name in expected:
        assert by_name[name] == expected[name]
    assert all(stack["healthy"] not in whom for whom in by_name.values())
    assert "ContainerNetstatStale" not in by_name  # fresh: the writer runs every 2 s
    for alert in active:
        shown = alert["annotations"]["summary"] + alert["annotations"]["description"]
        assert "error expanding template" not in shown and "<no value>" not in shown, alert
        place = who(alert["labels"])
        named = f"container {place[1]}" if place[0] == "container" else f"pod {place[1]}/{place[2]}"
        assert named in alert["annotations"]["summary"], alert  # the pod's "{{ $value }}" shown, not run
        assert alert["labels"]["instance"] in alert["annotations"]["summary"]
        assert alert["labels"]["severity"] in ("warning", "critical")
    assert not stack["writer"].errors, stack["writer"].errors[:3]


# -- the dashboard -----------------------------------------------------------------------------


def panels(dashboard: Dict[str, Any]) -> Iterator[Dict[str, Any]]:
    """Every panel, those nested in collapsed rows included."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def substituted(expr: str) -> str:
    """As Grafana sends it with every variable at All (allValue ``.*``) and a 1m rate interval."""
    text = expr.replace("$__rate_interval", "1m")
    for name in ("instance", "namespace", "pod", "container"):
        text = text.replace("${" + name + "}", ".*").replace("$" + name, ".*")
    assert "$" not in text.replace('"$1"', ""), text
    return text


def test_every_dashboard_query_returns_data_from_the_real_server(stack: Dict[str, Any]) -> None:
    server: PrometheusServer = stack["server"]
    dashboard = json.loads(DASHBOARD.read_text())
    targets = [(p["title"], t["expr"]) for p in panels(dashboard) for t in p.get("targets", [])]
    assert len(targets) >= 12
    for title, expr in targets:
        assert re.search(r'=\s*"\$', expr) is None, f"{title}: a variable under = cannot hold All (.*)"
        query = substituted(expr)
        result = until(lambda q=query: server.query(q), 30, f"{title!r}: {query} to return a series")
        assert result, (title, query)
    # The template variables: label_values(selector, label) has values.
    for var in dashboard["templating"]["list"]:
        if var["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", var["query"]["query"])
        assert match, var["query"]
        selector, label = substituted(match.group(1)), match.group(2)
        found = server.api("series", **{"match[]": selector})
        assert {s[label] for s in found if s.get(label)}, (var["name"], selector)


def test_the_runs_own_health_is_scraped(stack: Dict[str, Any]) -> None:
    server: PrometheusServer = stack["server"]

    def one(name: str) -> float:
        [sample] = server.query(name)
        return float(sample["value"][1])

    # Four namespaces: the pod's (sandbox and app container share it), stuck, ports, healthy.
    assert one("container_netstat_collector_namespaces_read") == 4
    assert one("container_netstat_collector_namespaces_skipped") == 0
    assert 0 < one("container_netstat_collector_duration_seconds") < 40  # the default --deadline


# -- staleness ---------------------------------------------------------------------------------


def test_a_stopped_writer_sets_off_the_stale_alert_and_the_textfile_age_panel(stack: Dict[str, Any]) -> None:
    # Last in the module: it stops the writer.
    server: PrometheusServer = stack["server"]
    stale = "ContainerNetstatStale"
    assert stale not in {a["labels"]["alertname"] for a in server.alerts()}
    stack["writer"].stop()
    path: Path = stack["path"]
    back = int(time.time()) - 600
    text, count = re.subn(r"(?m)^(container_netstat_collector_timestamp_seconds) \S+$", rf"\g<1> {back}",
                          path.read_text())
    assert count == 1
    temporary = path.with_name(".stale.tmp")
    temporary.write_text(text)
    os.utime(temporary, (back, back))
    temporary.rename(path)  # atomically, as the tool writes it

    def fired() -> bool:
        return any(a["labels"]["alertname"] == stale and a["state"] == "firing" for a in server.alerts())

    until(fired, 60, f"{stale} to fire")
    # node_exporter 1.5 labels the mtime with the file's full path: a bare name matches nothing.
    assert server.query(f'node_textfile_mtime_seconds{{file="{TEXTFILE}"}}') == []
    mtime = server.query(f'node_textfile_mtime_seconds{{file="{path}"}}')
    assert [float(s["value"][1]) for s in mtime] == [float(back)]
    dashboard = json.loads(DASHBOARD.read_text())
    ages = [t["expr"] for p in panels(dashboard) for t in p.get("targets", []) if "node_textfile_mtime" in t["expr"]]
    assert len(ages) == 1
    result = server.query(substituted(ages[0]))
    assert len(result) == 1 and 590 <= float(result[0]["value"][1]) <= 700, result
