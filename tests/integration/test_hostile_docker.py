"""Hostile labels on real containers: a 64 KiB value, 5000 labels, unicode, newlines, control
characters, and the characters that break open-falcon tags (``,`` ``=`` space) or graph
(``\\r \\n ' " >``, non-printable) or the API (``/``).

Every way out is checked against an independent reading: the open-falcon tags as transfer
parses them (docs/facts.rst, "The open-falcon push": remove spaces, split on ``,``, then on the first ``=``), the Prometheus
text as prometheus_client's parser reads it, the table as a terminal would show it; and stderr
stays one line per diagnostic.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from conftest import IMAGE, TEST_LABEL, remove_all
from receiver import AGENT, TRANSFER, Receiver, TransferRpc

pytestmark = pytest.mark.docker

PREFIX = "container-netstat: "
NASTY = ",=\" '>/\\\n\r\t\x1b[31m\u202e\u200b é日本語🙂"
HUGE = 64 * 1024
MANY = 5000
SAFE = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:@+-")


def huge_pod(last: str) -> str:
    head = "web-" + NASTY
    return head + "x" * (HUGE - len(head) - 1) + last


@pytest.fixture(scope="module")
def scene(docker_client: Any) -> Iterator[Dict[str, Any]]:
    """Six containers (network none), each in a namespace of its own; removed afterwards."""
    run_id = uuid.uuid4().hex[:8]
    many = {f"cn.hostile.key{i:05d}": f"value-{i}-{NASTY}" for i in range(MANY)}
    many["cn.hostile.key02500"] = "needle"
    pods: Dict[str, Tuple[str, str]] = {
        "big-a": ("ns-" + NASTY, huge_pod("A")),
        "big-b": ("ns-" + NASTY, huge_pod("B")),  # differs from big-a in its last character only
        "many": ("many", "many-labels-pod"),
        "uni": ("ns", "ünïcødé\n日本語\u202e🙂\r\nsecond line"),
        "dup-1": ("shop", "cart-" + NASTY),  # two namespaces claiming one pod
        "dup-2": ("shop", "cart-" + NASTY),
    }
    started: List[Any] = []
    try:
        for name, (namespace, pod) in pods.items():
            labels = {TEST_LABEL: run_id, "io.kubernetes.pod.namespace": namespace, "io.kubernetes.pod.name": pod}
            if name == "many":
                labels.update(many)
            container = docker_client.containers.run(IMAGE, ["sleep", "100000"], name=f"cnt-{run_id}-{name}",
                                                     detach=True, network_mode="none", labels=labels)
            started.append(container)
        for container in started:
            container.reload()
        assert len(started[2].labels) == MANY + 3 and len(started[0].labels["io.kubernetes.pod.name"]) == HUGE
        yield {"run_id": run_id, "pods": pods, "include": f"{TEST_LABEL}={run_id}"}
    finally:
        remove_all(started)


def collect(*args: str) -> "subprocess.CompletedProcess[str]":
    """The run, its output decoded without newline translation (text=True would turn a label's
    raw "\r", legal in the Prometheus text format, into a line break)."""
    done = subprocess.run([sys.executable, "-m", "container_netstat", "collect", *args],
                          capture_output=True, timeout=60)
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())


def one_line_each(stderr: str) -> List[str]:
    lines = stderr.rstrip("\n").split("\n") if stderr else []
    assert "\r" not in stderr, stderr
    assert all(line.startswith(PREFIX) for line in lines), lines
    return lines


def transfer_tags(tags: str) -> List[Tuple[str, str]]:
    """Transfer's reading of a tag string, written afresh: (key, value) pairs in order."""
    pairs = []
    for piece in tags.replace(" ", "").split(",") if tags else []:
        key, sep, value = piece.partition("=")
        if sep:
            pairs.append((key, value))
    return pairs


@pytest.mark.parametrize("path", [AGENT, TRANSFER])
def test_pushed_tags_decode_to_exactly_namespace_and_pod(scene: Dict[str, Any], tmp_path: Any, path: str) -> None:
    with Receiver() as receiver:
        result = collect("--falcon-url", receiver.url(path), "--spool-dir", str(tmp_path), "--include",
                         scene["include"], "--log-level", "info")
        assert result.returncode == 0, result.stderr[-2000:]
        one_line_each(result.stderr)
        items = receiver.items(path)
        assert items and receiver.invalid() == [] and receiver.problems() == []
    tagged = [i for i in items if i["tags"]]
    by_tags: Dict[str, int] = {}
    for item in tagged:
        pairs = transfer_tags(item["tags"])
        assert [k for k, _ in pairs] == ["namespace", "pod"], item["tags"]
        assert all(value and set(value) <= SAFE for _, value in pairs), item["tags"]
        assert ",".join(f"{k}={v}" for k, v in pairs) == item["tags"]  # transfer changes nothing
        assert len(item["metric"]) + 1 + len(item["tags"].encode()) <= 255
        by_tags[item["tags"]] = by_tags.get(item["tags"], 0) + 1
    # five distinct pods (the two long names stay two series; the duplicated pod is one)
    assert len(by_tags) == 5, sorted(by_tags)
    namespaces = {dict(transfer_tags(t))["namespace"] for t in by_tags}
    assert len(namespaces) == 4


def test_dry_run_is_one_json_array_and_stderr_one_line_per_diagnostic(scene: Dict[str, Any]) -> None:
    result = collect("--dry-run", "--include", scene["include"], "--log-level", "debug")
    assert result.returncode == 0, result.stderr[-2000:]
    items = json.loads(result.stdout)
    assert {i["tags"] for i in items if i["tags"]} and one_line_each(result.stderr)


def exposition_labels(text: str, name: str) -> List[Dict[str, str]]:
    """The label sets of one metric's samples, read as the text format defines them: lines end
    at "\n" only, and a label value escapes only backslash, double quote and line feed."""
    found = []
    for line in text.split("\n"):
        if not line.startswith(name + "{"):
            continue
        i, labels = len(name) + 1, {}
        while line[i] != "}":
            equals = line.index("=", i)
            key, i = line[i:equals], equals + 2
            assert line[equals + 1] == '"', line
            value = []
            while line[i] != '"':
                if line[i] == "\\":
                    value.append({"\\": "\\", '"': '"', "n": "\n"}[line[i + 1]])
                    i += 2
                else:
                    value.append(line[i])
                    i += 1
            labels[key] = "".join(value)
            i += 1
            if line[i] == ",":
                i += 1
        found.append(labels)
    return found


def test_prometheus_labels_keep_the_exact_values(scene: Dict[str, Any], tmp_path: Any) -> None:
    result = collect("--format", "prometheus", "--include", scene["include"])
    assert result.returncode == 0, result.stderr[-2000:]
    seen = [(s["namespace"], s["pod"]) for s in exposition_labels(result.stdout, "container_netstat_tcp_inuse")]
    assert sorted(seen) == sorted(set(scene["pods"].values()))
    (tmp_path / "out.prom").write_text(result.stdout)
    check = subprocess.run(["promtool", "check", "metrics"], stdin=open(tmp_path / "out.prom"),
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    # the duplicated pod is written once, with one warning line that stays short
    (warning,) = one_line_each(result.stderr)
    assert "two namespaces with these labels" in warning and "\\n" in warning and len(warning) < 1000, warning


def test_table_rows_are_printable_and_fit(scene: Dict[str, Any]) -> None:
    result = collect("--format", "table", "--include", scene["include"])
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.rstrip("\n").split("\n")
    # header, a row per label set (the two namespaces claiming one pod share one), summary
    assert len(lines) == 1 + len(set(scene["pods"].values())) + 1, lines
    for line in lines:
        assert len(line) <= 80 and all(" " <= ch <= "~" for ch in line), repr(line)


def test_a_label_among_thousands_selects_its_container(scene: Dict[str, Any]) -> None:
    result = collect("--dry-run", "--include", "cn.hostile.key02500=needle")
    assert result.returncode == 0, result.stderr[-2000:]
    tags = {i["tags"] for i in json.loads(result.stdout) if i["tags"]}
    assert tags == {"namespace=many,pod=many-labels-pod"}


def test_a_hostile_receiver_reply_stays_one_printable_line(scene: Dict[str, Any], tmp_path: Any) -> None:
    # A transfer that answers, so that the run's only diagnostic is about the reply.
    with TransferRpc() as transfer, Receiver() as receiver:
        receiver.fail(400, "connot\x1b[2J decode\r\nbody\u2028\x85\x9b31m" + "y" * 5000)
        result = collect("--falcon-url", receiver.url(), "--spool-dir", str(tmp_path), "--include", scene["include"],
                         "--transfer-addr", transfer.addr)
    assert result.returncode == 6, result.stderr
    (line,) = one_line_each(result.stderr)
    assert "connot\\x1b[2J decode body" in line and len(line) < 1000, line  # the reply cut to 200 characters
    assert not [ch for ch in line if ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 or ch in "\u2028\u2029"], repr(line)
