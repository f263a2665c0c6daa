"""The endpoint from the falcon-agent: GET /proc/kernel/hostname, checked, with a fallback.

The agent side is the project's receiver (tests/receiver.py), answering that path as
falcon-plus modules/agent/http/kernel.go and AutoRender in modules/agent/http/http.go do.
"""

from __future__ import annotations

import base64
import json
import logging
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator, List

import pytest

from container_netstat import agent, cli
from container_netstat.push import Deadline
from container_netstat.spool import NAME_FILE, Spool

from receiver import AGENT, HOSTNAME, NIGHTINGALE, TRANSFER, Receiver, TransferRpc

NAME = "falcon-check-agent"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as server:
        yield server


class Logs(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: List[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def at(self, level: int) -> List[str]:
        return [r.getMessage() for r in self.records if r.levelno == level]


@pytest.fixture
def logs() -> Iterator[Logs]:
    logger = logging.getLogger("container_netstat")
    handler, level = Logs(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    spool = Spool(tmp_path / "spool")
    spool.open()
    spool.lock()
    yield spool
    spool.close()


def endpoint(receiver: Receiver, spool: Any = None, seconds: float = 10) -> Any:
    return agent.endpoint(receiver.url(AGENT), 2.0, 20.0, Deadline.after(seconds), spool)


# -- which URL is asked ----------------------------------------------------------------------


@pytest.mark.parametrize("push_url, asked", [
    ("http://127.0.0.1:1988/v1/push", "http://127.0.0.1:1988/proc/kernel/hostname"),
    ("https://u:p@agent.example:443/v1/push?x=1", "https://u:p@agent.example:443/proc/kernel/hostname"),
    ("http://[::1]:1988/v1/push", "http://[::1]:1988/proc/kernel/hostname"),
    ("http://transfer:6060/api/push", None),
    ("http://n9e:17000/openfalcon/push", None),
    ("http://127.0.0.1:1988/v1/push/", None),
    ("ftp://127.0.0.1/v1/push", None),
    ("http://127.0.0.1:99999/v1/push", None),
    ("not a url", None),
])
def test_only_an_agents_push_url_is_asked(push_url: str, asked: Any) -> None:
    assert agent.hostname_url(push_url) == asked


# -- what an answer means --------------------------------------------------------------------


@pytest.mark.parametrize("name", [NAME, "10.1.2.3", "host-1.example.com", "a:b@c+d_e", "x" * 255])
def test_a_safe_name_is_taken(name: str) -> None:
    assert agent.parse(200, json.dumps({"msg": "success", "data": name})) == agent.Answer(name)


@pytest.mark.parametrize("status, body, reason", [
    (200, '{"msg":"os.Hostname() fail"}', "it says 'os.Hostname() fail'"),
    (404, "404 page not found\n", "HTTP 404: 404 page not found"),
    (500, "", "HTTP 500"),
    (200, "success", "not JSON: success"),
    (200, '["vm"]', "not a JSON object"),
    (200, '{"msg":"success","data":""}', "no name in its answer"),
    (200, '{"msg":"success","data":42}', "no name in its answer"),
    (200, '{"msg":"success"}', "no name in its answer"),
    (200, '{"msg":"success","data":"my host"}', "its name 'my host' is not a safe endpoint"),
    (200, '{"msg":"success","data":"a/b"}', "not a safe endpoint"),
    (200, '{"msg":"success","data":"h\\u00f6st"}', "not a safe endpoint"),
    (200, json.dumps({"msg": "success", "data": "x" * 256}), "not a safe endpoint"),
    (200, '{"msg":"success","data":"vm\\n"}', "not a safe endpoint"),
])
def test_an_answer_without_a_usable_name_says_why(status: int, body: str, reason: str) -> None:
    answer = agent.parse(status, body)
    assert answer.name is None and reason in answer.reason, answer


# -- through the receiver ----------------------------------------------------------------------


def test_the_agents_name_is_used_and_remembered(receiver: Receiver, spool: Spool, logs: Logs) -> None:
    receiver.hostname(NAME)
    assert endpoint(receiver, spool) == NAME
    assert receiver.lookups == [HOSTNAME] and receiver.pushes == []
    assert spool.remembered_name() == NAME and logs.at(logging.WARNING) == []
    assert [e.path.name for e in spool.entries()] == []  # the name file is not taken for a batch


def test_the_default_answer_is_this_hosts_name(receiver: Receiver) -> None:
    assert endpoint(receiver) == socket.gethostname()


@pytest.mark.parametrize("how", ["error", "unsafe", "404", "not json"])
def test_an_answer_without_a_usable_name_falls_back_with_one_warning(receiver: Receiver, logs: Logs,
                                                                     how: str) -> None:
    if how == "error":
        receiver.hostname(error="os.Hostname() fail")
    elif how == "unsafe":
        receiver.hostname("vm\r\nmetric")
    elif how == "404":
        receiver.hostname(status=404, body="404 page not found\n")
    else:
        receiver.hostname(body="<html>agent</html>")
    assert endpoint(receiver) is None
    (line,) = logs.at(logging.WARNING)
    assert line.startswith(f"no host name from the falcon-agent at {receiver.url(HOSTNAME)} (")
    assert f"items carry this host's name, {socket.gethostname()!r}; --endpoint sets one" in line
    assert "\n" not in line and "\r" not in line


def test_credentials_in_the_url_are_sent_and_never_shown(receiver: Receiver, logs: Logs) -> None:
    url = receiver.url(AGENT).replace("http://", "http://falcon:p%40ss-word@")
    receiver.hostname(NAME)
    assert agent.endpoint(url, 2.0, 20.0, Deadline.after(10), None) == NAME
    assert receiver.lookup_auth == ["Basic " + base64.b64encode(b"falcon:p@ss-word").decode()]
    receiver.hostname(error="os.Hostname() fail")
    assert agent.endpoint(url, 2.0, 20.0, Deadline.after(10), None) is None
    (line,) = logs.at(logging.WARNING)
    assert line.startswith(f"no host name from the falcon-agent at {receiver.url(HOSTNAME)} (")
    assert "falcon:" not in line and "p%40ss" not in line and "p@ss" not in line


def test_a_hung_agent_costs_at_most_the_short_read_timeout(receiver: Receiver, logs: Logs) -> None:
    receiver.hostname(NAME, delay=30)
    started = time.monotonic()
    assert endpoint(receiver) is None
    assert time.monotonic() - started < 2 + 2  # the 2 s read timeout; generous
    (line,) = logs.at(logging.WARNING)
    assert "no answer within 2.0 s" in line


def test_the_deadline_cuts_the_lookup_short(receiver: Receiver) -> None:
    receiver.hostname(NAME, delay=30)
    started = time.monotonic()
    assert agent.ask(receiver.url(HOSTNAME), 2.0, 20.0, Deadline.after(0.8)).name is None
    assert time.monotonic() - started < 0.8 + 1.5
    assert agent.ask(receiver.url(HOSTNAME), 2.0, 20.0, Deadline(end=0.0)).reason == "the run's deadline was reached"
    assert receiver.lookups == [HOSTNAME]  # the spent deadline made no request


@pytest.mark.parametrize("headers", [False, True], ids=["body", "headers"])
def test_an_agent_answering_a_byte_at_a_time_costs_at_most_connect_plus_read(receiver: Receiver, logs: Logs,
                                                                            headers: bool) -> None:
    # A byte every 0.5 s never lets the 2 s read timeout expire.
    receiver.hostname(NAME)
    receiver.drip(0.5, headers=headers, push=False)
    started = time.monotonic()
    assert endpoint(receiver) is None
    assert time.monotonic() - started < 2.0 + 2.0 + 1.5
    (line,) = logs.at(logging.WARNING)
    assert "no complete answer within 4.0 s" in line


def test_the_deadline_bounds_a_dripping_lookup(receiver: Receiver) -> None:
    receiver.drip(0.5, push=False)
    started = time.monotonic()
    answer = agent.ask(receiver.url(HOSTNAME), 2.0, 20.0, Deadline.after(1.2))
    assert answer.name is None and answer.reason == "no complete answer within 1.2 s"
    assert time.monotonic() - started < 1.2 + 1.0


def test_no_agent_listening_is_said_at_info_level(receiver: Receiver, logs: Logs) -> None:
    receiver.down()
    assert endpoint(receiver) is None
    assert logs.at(logging.WARNING) == []
    (line,) = logs.at(logging.INFO)
    assert "Connection refused" in line and "this host's name" in line


def test_when_the_agent_cannot_be_asked_its_last_name_is_used(receiver: Receiver, spool: Spool, logs: Logs) -> None:
    """Items spooled while the agent restarts still land under its name."""
    receiver.hostname(NAME)
    assert endpoint(receiver, spool) == NAME
    receiver.down()
    assert endpoint(receiver, spool) == NAME
    (line,) = logs.at(logging.INFO)
    assert f"items carry the name it gave last, {NAME!r}" in line
    receiver.up()
    receiver.hostname(error="os.Hostname() fail")
    assert endpoint(receiver, spool) == NAME
    receiver.hostname("renamed-host")
    assert endpoint(receiver, spool) == "renamed-host" and spool.remembered_name() == "renamed-host"


def test_a_remembered_name_that_is_not_safe_is_not_used(receiver: Receiver, spool: Spool) -> None:
    (spool.directory / NAME_FILE).write_text("bad name\n")
    receiver.down()
    assert endpoint(receiver, spool) is None


# -- the command, against real Docker and the receiver ---------------------------------------


def collect(*args: str) -> "subprocess.CompletedProcess[str]":
    command = [sys.executable, "-m", "container_netstat", "collect", "--include", "cnt-agent-no-container", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=90)


def endpoints(items: List[Any]) -> List[str]:
    return sorted({i["endpoint"] for i in items})


@pytest.fixture
def docker_up(docker_client: Any) -> None:
    """The command collects from the real daemon."""


@pytest.fixture
def transfer_rpc() -> Iterator[TransferRpc]:
    """A transfer that answers Transfer.Ping: the push to the agent goes without a warning."""
    with TransferRpc() as server:
        yield server


@pytest.mark.docker
def test_a_push_carries_the_agents_name(receiver: Receiver, tmp_path: Path, docker_up: None,
                                        transfer_rpc: TransferRpc) -> None:
    receiver.hostname(NAME)
    result = collect("--falcon-url", receiver.url(AGENT), "--spool-dir", str(tmp_path),
                     "--transfer-addr", transfer_rpc.addr)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and receiver.lookups == [HOSTNAME] and transfer_rpc.calls == ["Transfer.Ping"] * 2
    assert receiver.items() and endpoints(receiver.items()) == [NAME]


@pytest.mark.docker
def test_dry_run_prints_what_the_push_sends(receiver: Receiver, tmp_path: Path, docker_up: None) -> None:
    """--dry-run (the falcon-agent plugin mode) asks the agent at --falcon-url as the push does."""
    receiver.hostname(NAME)
    result = collect("--dry-run", "--falcon-url", receiver.url(AGENT))
    assert result.returncode == 0, result.stderr
    assert endpoints(json.loads(result.stdout)) == [NAME] and receiver.lookups == [HOSTNAME]
    assert receiver.pushes == []


@pytest.mark.docker
@pytest.mark.parametrize("args", [("--endpoint", "chosen-name"), ("--format", "table"), ("--format", "prometheus")])
def test_no_question_when_the_endpoint_is_given_or_not_printed(receiver: Receiver, tmp_path: Path, docker_up: None,
                                                               args: Any) -> None:
    receiver.hostname(NAME)
    result = collect("--dry-run", "--falcon-url", receiver.url(AGENT), *args)
    assert result.returncode == 0, result.stderr
    assert receiver.lookups == []
    if args[0] == "--endpoint":
        assert endpoints(json.loads(result.stdout)) == ["chosen-name"]
        result = collect("--falcon-url", receiver.url(AGENT), "--spool-dir", str(tmp_path), *args)
        assert result.returncode == 0, result.stderr
        assert receiver.lookups == [] and endpoints(receiver.items()) == ["chosen-name"]


@pytest.mark.docker
@pytest.mark.parametrize("path", [TRANSFER, NIGHTINGALE])
def test_transfer_and_nightingale_are_not_asked(receiver: Receiver, tmp_path: Path, docker_up: None,
                                                path: str) -> None:
    receiver.hostname(NAME)
    result = collect("--falcon-url", receiver.url(path), "--spool-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert receiver.lookups == [] and endpoints(receiver.items(path)) == [socket.gethostname()]


@pytest.mark.docker
@pytest.mark.parametrize("how", ["unsafe", "hang"])
def test_a_bad_or_hung_agent_answer_still_delivers_under_the_host_name(receiver: Receiver, tmp_path: Path,
                                                                       docker_up: None, how: str,
                                                                       transfer_rpc: TransferRpc) -> None:
    receiver.hostname("name with spaces", delay=30 if how == "hang" else 0)
    started = time.monotonic()
    result = collect("--falcon-url", receiver.url(AGENT), "--spool-dir", str(tmp_path), "--deadline", "20",
                     "--transfer-addr", transfer_rpc.addr)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 20  # the lookup gave up after 2 s; the push went on
    (line,) = result.stderr.splitlines()
    assert "WARNING: no host name from the falcon-agent" in line and "--endpoint sets one" in line
    assert ("no answer within 2.0 s" if how == "hang" else "is not a safe endpoint") in line
    assert endpoints(receiver.items()) == [socket.gethostname()]


@pytest.mark.docker
def test_items_spooled_while_the_agent_is_down_keep_its_name(receiver: Receiver, tmp_path: Path,
                                                             docker_up: None) -> None:
    receiver.hostname(NAME)
    assert collect("--falcon-url", receiver.url(AGENT), "--spool-dir", str(tmp_path)).returncode == 0
    time.sleep(1.1)  # each run in a second of its own
    receiver.down()
    result = collect("--falcon-url", receiver.url(AGENT), "--spool-dir", str(tmp_path))
    assert result.returncode == cli.EXIT_SPOOLED, result.stderr
    receiver.up()
    time.sleep(1.1)
    assert collect("--falcon-url", receiver.url(AGENT), "--spool-dir", str(tmp_path)).returncode == 0
    assert len({p.items[0]["timestamp"] for p in receiver.accepted()}) == 3
    assert endpoints(receiver.items()) == [NAME]
