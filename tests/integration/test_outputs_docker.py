"""Every way out, on real containers: a real node_exporter serving the textfile, promtool, the table
in a real terminal, the falcon-agent plugin's stdout and a Nightingale push through the strict receiver.

Traffic stays on loopback inside the containers' own network namespaces; node_exporter and the
receiver listen on 127.0.0.1 only.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import shutil
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Dict, FrozenSet, Iterator, List, Optional, Tuple

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import TEST_LABEL, container_starter, in_netns, pid_of, remove_all, unavailable
from integration.workloads import hold
from receiver import AGENT, NIGHTINGALE, TRANSFER, Receiver, go_decode
from test_alerts import rule_metric_names

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parent.parent.parent
PLUGIN = REPO / "contrib" / "falcon-agent-plugin" / "60_container-netstat"
TEXTFILE = "container_netstat.prom"
N_CLIENTS = 5
SeriesKey = Tuple[str, FrozenSet[Tuple[str, str]]]

# n loopback clients held open against a listener on [::]:8080 (busybox-free: Python in the netns).

# A CLOSE_WAIT leak: the peer closes, the server never does.
CLOSE_WAIT = r"""
import socket, time
srv = socket.socket(); srv.bind(("127.0.0.1", 9090)); srv.listen(16)
leaked = []
for _ in range({n}):
    c = socket.create_connection(("127.0.0.1", 9090))
    leaked.append(srv.accept()[0])
    c.close()
time.sleep(0.2)
print("ready", flush=True)
time.sleep(600)
"""

NASTY_NAMESPACE = 'we"ird\\ns\nline é 日本'
NASTY_POD = "p{o}d,=1 #x"


# -- helpers ---------------------------------------------------------------------------------


def run_cli(*args: str, env: Optional[Dict[str, str]] = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "container_netstat", "collect", *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


def series(text: str) -> Dict[SeriesKey, float]:
    """(sample name, labels) -> value, as the client library's parser reads the text."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def ours(parsed: Dict[SeriesKey, float]) -> Dict[SeriesKey, float]:
    return {k: v for k, v in parsed.items() if k[0].startswith("container_netstat_")}


def value(parsed: Dict[SeriesKey, float], name: str, **labels: str) -> float:
    found = [v for (n, ls), v in parsed.items() if n == name and {k: x for k, x in ls if x} == labels]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def only(scene: Dict[str, Any]) -> List[str]:
    """Report only this module's containers: the host may run many others (and --tcp-states costs)."""
    return ["--include", f"{TEST_LABEL}={scene['run_id']}"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NodeExporter:
    """A real node_exporter on 127.0.0.1 with only the textfile collector, on a directory of our own."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
        if binary is None:
            unavailable("node_exporter (Debian package prometheus-node-exporter) is not installed")
        self.directory = directory
        self.port = free_port()
        self.log = directory.parent / "node_exporter.log"
        self.process = subprocess.Popen(
            [str(binary), f"--web.listen-address=127.0.0.1:{self.port}", "--collector.disable-defaults",
             "--collector.textfile", f"--collector.textfile.directory={directory}", "--web.disable-exporter-metrics"],
            stdout=subprocess.DEVNULL, stderr=self.log.open("wb"),
        )
        deadline = time.monotonic() + 15
        while True:
            try:
                self.scrape()
                return
            except OSError as err:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError(f"node_exporter did not start: {self.log.read_text()}") from err
                time.sleep(0.1)

    def scrape(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as response:
            return str(response.read().decode("utf-8"))

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def textfile_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "textfile"
    directory.mkdir()
    return directory


@pytest.fixture
def node_exporter(textfile_dir: Path) -> Iterator[NodeExporter]:
    exporter = NodeExporter(textfile_dir)
    yield exporter
    exporter.stop()


def background(pid: int, code: str) -> subprocess.Popen:
    proc = in_netns(pid, code, background=True)
    line = proc.stdout.readline()
    assert line.strip() == "ready", proc.stderr.read()
    return proc


@pytest.fixture(scope="module")
def scene(docker_client: Any) -> Iterator[Dict[str, Any]]:
    """A server with clients and UDP sockets, a CLOSE_WAIT leak, a pod of two, hostile labels, twin pods.

    Shared by the module's tests, which only read it.
    """
    run_id = uuid.uuid4().hex[:8]
    started: List[Any] = []
    procs: List[subprocess.Popen] = []

    run = container_starter(docker_client, run_id, started)

    try:
        server = run("server", network_mode="none")
        procs.append(background(pid_of(server), hold(N_CLIENTS, udp=2, udp6=3)))
        leaky = run("leaky", network_mode="none")
        procs.append(background(pid_of(leaky), CLOSE_WAIT.format(n=3)))
        pod = {"io.kubernetes.pod.namespace": "shop", "io.kubernetes.pod.name": "cart-1"}
        sandbox = run("k8s_POD_cart", network_mode="none", labels={
            **pod, "io.kubernetes.docker.type": "podsandbox", "io.kubernetes.container.name": "POD"})
        run("k8s_app_cart", network_mode=f"container:{sandbox.id}", labels={
            **pod, "io.kubernetes.docker.type": "container", "io.kubernetes.container.name": "app"})
        run("nasty", network_mode="none", labels={
            "io.kubernetes.pod.namespace": NASTY_NAMESPACE, "io.kubernetes.pod.name": NASTY_POD})
        twins = {"io.kubernetes.pod.namespace": "dup", "io.kubernetes.pod.name": "twin"}
        run("twin-a", network_mode="none", labels=twins)
        run("twin-b", network_mode="none", labels=twins)
        yield {"server": server, "leaky": leaky, "run_id": run_id}
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        remove_all(started)


# -- Prometheus: node_exporter's textfile collector -----------------------------------------------


def test_node_exporter_serves_what_the_tool_wrote_from_real_containers(
    scene: Dict[str, Any], textfile_dir: Path, node_exporter: NodeExporter
) -> None:
    path = textfile_dir / TEXTFILE
    result = run_cli("--textfile", str(path), "--tcp-states", *only(scene))
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert path.stat().st_mode & 0o777 == 0o644
    written = series(path.read_text())
    served = series(node_exporter.scrape())

    assert value(served, "node_textfile_scrape_error") == 0
    assert ours(served) == ours(written)

    server, leaky = scene["server"].name, scene["leaky"].name
    assert value(served, "container_netstat_tcp_established", container=server) == 2 * N_CLIENTS
    assert value(served, "container_netstat_tcp_inuse", container=server) == 2 * N_CLIENTS + 1
    assert value(served, "container_netstat_udp_inuse", container=server) == 5
    assert value(served, "container_netstat_tcp_state_close_wait", container=leaky) == 3
    assert value(served, "container_netstat_tcp_passive_opens_total", container=server) == N_CLIENTS
    # The pod is one series under its own labels, whatever its containers.
    assert value(served, "container_netstat_tcp_inuse", namespace="shop", pod="cart-1") == 0
    # Hostile label values come back exactly, through the file and node_exporter's parser.
    assert value(served, "container_netstat_tcp_inuse", namespace=NASTY_NAMESPACE, pod=NASTY_POD) == 0
    # Two containers claiming one pod: one series kept (a duplicate would fail the whole file).
    assert value(served, "container_netstat_tcp_inuse", namespace="dup", pod="twin") == 0
    assert result.stderr.count("namespace='dup',pod='twin': two namespaces with these labels") == 1
    assert time.time() - value(served, "container_netstat_collector_timestamp_seconds") < 120


def test_promtool_accepts_the_real_file(scene: Dict[str, Any], textfile_dir: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        unavailable("promtool (Debian package prometheus) is not installed")
    path = textfile_dir / TEXTFILE
    result = run_cli("--textfile", str(path), "--tcp-states", *only(scene))
    assert result.returncode == 0, result.stderr
    check = subprocess.run([promtool, "check", "metrics"], stdin=path.open("rb"), capture_output=True, timeout=60)
    assert check.returncode == 0 and not check.stdout.strip() and not check.stderr.strip(), check


def test_every_metric_an_alert_rule_reads_is_served(
    scene: Dict[str, Any], textfile_dir: Path, node_exporter: NodeExporter
) -> None:
    result = run_cli("--textfile", str(textfile_dir / TEXTFILE), "--tcp-states", *only(scene))
    assert result.returncode == 0, result.stderr
    served = {name for name, _ in series(node_exporter.scrape())}
    missing = rule_metric_names() - served
    assert not missing, f"alert rules read series a real run does not produce: {sorted(missing)}"


def test_scrapes_racing_repeated_runs_always_see_a_whole_file(
    scene: Dict[str, Any], textfile_dir: Path, node_exporter: NodeExporter
) -> None:
    # The whole host, for a file as large as it gets; 4: another test's container could not be read.
    path = textfile_dir / TEXTFILE
    assert run_cli("--textfile", str(path)).returncode in (0, 4)
    families = {name for name, _ in ours(series(path.read_text()))}
    assert len(ours(series(path.read_text()))) > 100
    stop = threading.Event()
    scrapes: List[str] = []

    def scraper() -> None:
        while not stop.is_set():
            scrapes.append(node_exporter.scrape())

    thread = threading.Thread(target=scraper)
    thread.start()
    try:
        for _ in range(3):
            assert run_cli("--textfile", str(path)).returncode in (0, 4)
    finally:
        stop.set()
        thread.join(30)
    assert len(scrapes) >= 3
    for text in scrapes:
        parsed = series(text)
        assert value(parsed, "node_textfile_scrape_error") == 0
        assert {name for name, _ in ours(parsed)} == families


def test_format_prometheus_prints_the_same_bytes_it_writes(scene: Dict[str, Any], textfile_dir: Path) -> None:
    path = textfile_dir / TEXTFILE
    result = run_cli("--format", "prometheus", "--textfile", str(path), *only(scene))
    assert result.returncode == 0, result.stderr
    assert result.stdout == path.read_text()
    assert "# TYPE container_netstat_tcp_inuse gauge" in result.stdout


def test_a_symlink_in_place_of_the_textfile_is_exit_8_one_line(scene: Dict[str, Any], textfile_dir: Path) -> None:
    target = textfile_dir.parent / "target"
    target.write_text("keep\n")
    (textfile_dir / TEXTFILE).symlink_to(target)
    result = run_cli("--textfile", str(textfile_dir / TEXTFILE), "--include", scene["server"].name)
    assert result.returncode == 8
    assert result.stdout == "" and target.read_text() == "keep\n"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "symbolic link" in lines[0] and "--textfile" in lines[0], lines


def test_a_missing_textfile_directory_is_a_usage_error(tmp_path: Path) -> None:
    result = run_cli("--textfile", str(tmp_path / "missing" / TEXTFILE))
    assert result.returncode == 2
    assert "no such directory" in result.stderr


# -- the table --------------------------------------------------------------------------------


def run_in_terminal(args: List[str], env: Dict[str, str], columns: int = 100) -> str:
    """Run the CLI with a real pseudo-terminal as stdout, of the given width; return what it showed."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = {k: v for k, v in env.items() if k != "COLUMNS"}
    proc = subprocess.Popen([sys.executable, "-m", "container_netstat", "collect", *args],
                            stdout=slave, stderr=subprocess.PIPE, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(60) == 0, proc.stderr.read() if proc.stderr else ""
    return b"".join(chunks).decode("utf-8").replace("\r\n", "\n")


def table_rows(text: str) -> Dict[str, List[str]]:
    lines = re.sub(r"\x1b\[[0-9;]*m", "", text).strip().splitlines()
    return {line.split()[0]: line.split()[1:] for line in lines[1:-1]}


def test_table_of_real_containers_piped_and_in_a_terminal(scene: Dict[str, Any]) -> None:
    only_ours = ["--format", "table", "--tcp-states", *only(scene)]
    piped = run_cli(*only_ours)
    assert piped.returncode == 0, piped.stderr
    assert "\x1b" not in piped.stdout
    lines = piped.stdout.rstrip("\n").splitlines()
    assert lines[0].split() == ["NAME", "ESTAB", "INUSE", "TIME_WAIT", "UDP", "CLOSE_WAIT", "LISTEN_FILL"]
    assert all(len(line) <= 80 for line in lines)
    rows = table_rows(piped.stdout)
    # Its listener has accepted every client: an empty accept queue, 0 % of its backlog.
    assert rows[scene["server"].name] == [str(2 * N_CLIENTS), str(2 * N_CLIENTS + 1), "0", "5", "0", "0"]
    assert rows[scene["leaky"].name][4] == "3"
    assert "shop/cart-1" in rows
    assert list(rows)[0] == scene["server"].name  # most sockets in use first
    assert lines[-1].startswith(f"{len(rows) + 1} namespaces")  # the twins share one row

    env = dict(os.environ)
    env.pop("NO_COLOR", None)
    # A terminal as wide as the pipe's 80 columns: names are cut alike, rows compare equal.
    shown = run_in_terminal([*only_ours, "--sort", "close_wait"], env, columns=80)
    assert "\x1b[1mNAME" in shown and "\x1b[33m3\x1b[0m" in shown
    assert list(table_rows(shown))[0] == scene["leaky"].name
    assert table_rows(shown) == rows

    plain = run_in_terminal(only_ours, {**env, "NO_COLOR": "1"}, columns=80)
    assert "\x1b" not in plain
    assert table_rows(plain) == rows


# -- open-falcon: the agent's plugin, and Nightingale ---------------------------------------------


def run_plugin(directory: Path, env: Dict[str, str]) -> subprocess.CompletedProcess:
    """Run a plugin as falcon-agent does (plugins/scheduler.go): no arguments, killed after step - 0.5 s."""
    plugin = directory / PLUGIN.name
    cycle = int(plugin.name.split("_")[0])
    return subprocess.run([str(plugin)], capture_output=True, timeout=cycle - 0.5, env=env, cwd=directory,
                          start_new_session=True)


def test_plugin_output_passes_the_agent_transfer_and_nightingale(
    scene: Dict[str, Any], tmp_path: Path
) -> None:
    plugins = tmp_path / "plugin" / "net"
    plugins.mkdir(parents=True)
    shutil.copy2(PLUGIN, plugins / PLUGIN.name)
    assert os.access(plugins / PLUGIN.name, os.X_OK)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    result = run_plugin(plugins, env)
    assert result.returncode == 0, result.stderr
    items = go_decode(result.stdout)  # what the agent's json.Unmarshal into []*MetricValue does
    assert items and all(item is not None and item["step"] == 60 for item in items)
    mine = [i for i in items if i and i["tags"] == f"container={scene['server'].name}"]
    assert {i["metric"]: i["value"] for i in mine}["container.net.tcp.established"] == 2 * N_CLIENTS

    with Receiver() as receiver:
        for path in (AGENT, TRANSFER, NIGHTINGALE):
            request = urllib.request.Request(receiver.url(path), data=result.stdout, method="POST")
            with urllib.request.urlopen(request, timeout=30) as response:
                assert response.status == 200
                reply = response.read().decode()
            if path == TRANSFER:
                assert json.loads(reply)["data"]["Invalid"] == 0
            if path == NIGHTINGALE:
                assert json.loads(reply) == {"succ": len(items), "fail": 0, "msg": "received"}
        assert receiver.invalid() == [] and receiver.problems() == []


def test_plugin_turns_exit_4_into_0_and_keeps_other_failures(tmp_path: Path) -> None:
    # The agent throws away everything a plugin printed if it exits non-zero; exit 4 still printed
    # a valid array (with container.net.collector.failed), so the plugin must exit 0 then.
    fake = tmp_path / "bin"
    fake.mkdir()
    tool = fake / "container-netstat"
    shutil.copy2(PLUGIN, tmp_path / PLUGIN.name)
    env = {**os.environ, "PATH": f"{fake}:{os.environ.get('PATH', '')}"}
    for code, expected in ((4, 0), (3, 3), (0, 0), (8, 8)):
        tool.write_text(f"#!/bin/sh\necho '[]'\nexit {code}\n")
        tool.chmod(0o755)
        result = run_plugin(tmp_path, env)
        assert (result.returncode, result.stdout) == (expected, b"[]\n"), code


def test_push_to_nightingale_end_to_end(scene: Dict[str, Any], tmp_path: Path) -> None:
    only_ours = only(scene)
    with Receiver() as receiver:
        result = run_cli("--falcon-url", receiver.url(NIGHTINGALE), "--spool-dir", str(tmp_path / "spool"),
                         *only_ours)
        assert result.returncode == 0, result.stderr
        assert result.stdout == ""
        pushed = receiver.items(NIGHTINGALE)
        assert receiver.invalid() == []
    printed = json.loads(run_cli("--dry-run", *only_ours).stdout)
    assert sorted((i["metric"], i["tags"]) for i in pushed) == sorted((i["metric"], i["tags"]) for i in printed)
    server = {i["metric"]: i["value"] for i in pushed if i["tags"] == f"container={scene['server'].name}"}
    assert server["container.net.tcp.established"] == 2 * N_CLIENTS
