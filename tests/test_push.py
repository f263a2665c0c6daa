"""Delivery: replies understood, outages spooled and replayed in order, deadlines kept.

The receiver is a real HTTP server on 127.0.0.1 (tests/receiver.py) that enforces the
falcon-agent's decoding, transfer's per-item checks and Nightingale's rules
(docs/facts.rst, "The open-falcon push" and "Nightingale and categraf").
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Sequence

import pytest
import requests

from container_netstat import cli, push
from container_netstat import units
from container_netstat.push import (Deadline, HttpSender, Outcome, Rejected, Reply, Target, TooLarge, Unreachable,
                                    WrongAddress)
from container_netstat.spool import Bounds, Spool

from receiver import AGENT, NIGHTINGALE, TRANSFER, Receiver, TransferRpc

T0 = int(time.time()) - 600


def item(timestamp: Any = T0, **override: Any) -> Dict[str, Any]:
    base = {"endpoint": "host-1", "metric": "container.net.tcp.inuse", "timestamp": timestamp, "step": 60,
            "value": 3, "counterType": "GAUGE", "tags": "container=web-1,image=nginx"}
    base.update(override)
    return base


def run_items(timestamp: int, n: int = 5) -> List[Dict[str, Any]]:
    return [item(timestamp, metric=f"container.net.m{i}") for i in range(n)]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as server:
        yield server


class Logs(logging.Handler):
    """The package's log lines, whatever the CLI did to propagation in this process."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname}: {record.getMessage()}")

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


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
def spool(tmp_path: Path) -> Spool:
    spool = Spool(tmp_path / "spool", Bounds(max_age=7 * 86400, max_bytes=10**8))
    spool.open()
    spool.lock()
    return spool


def post(url: str, body: Any) -> requests.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(url, data=data, timeout=10)


# -- the receiver behaves like the real ones -----------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"step": 60.0},
        {"timestamp": time.time()},
        {"step": "60"},
        {"timestamp": str(T0)},
        {"endpoint": 42},
        {"tags": ["container=web"]},
        {"counterType": 1},
    ],
    ids=["float step", "float timestamp", "string step", "string timestamp", "number endpoint", "list tags",
         "number counterType"],
)
def test_agent_refuses_the_whole_batch_for_one_wrong_json_type(receiver: Receiver, change: Dict[str, Any]) -> None:
    response = post(receiver.url(AGENT), [item(), item(**change)])
    assert (response.status_code, response.text) == (400, "connot decode body\n")
    response = post(receiver.url(TRANSFER), [item(), item(**change)])
    assert (response.status_code, response.text) == (400, "decode error\n")


def test_agent_refuses_a_top_level_object_and_a_blank_body(receiver: Receiver) -> None:
    assert post(receiver.url(AGENT), item()).status_code == 400
    assert post(receiver.url(AGENT), b"").text == "body is blank\n"


def test_agent_says_success_even_for_items_transfer_drops(receiver: Receiver) -> None:
    bad = [item(counterType="gauge"), item(step=0), item(value=True), item(value=""), item(metric="kernel.hostname"),
           item(endpoint=""), item(metric="m" * 300, tags="k=" + "v" * 300)]
    good = [item(), item(value="1.5"), item(value=2.5, counterType="COUNTER")]
    response = post(receiver.url(AGENT), good + bad)
    assert (response.status_code, response.text) == (200, "success")
    assert len(receiver.invalid()) == len(bad)
    response = post(receiver.url(TRANSFER), good + bad)
    data = response.json()["data"]
    assert (data["Total"], data["Invalid"]) == (len(good + bad), len(bad))


def test_receiver_flags_tags_that_transfer_would_rewrite(receiver: Receiver) -> None:
    post(receiver.url(AGENT), [item(tags="b=2, a=1"), item(tags="a=1,b=x,y"), item(tags="a=1,b=2")])
    problems = receiver.problems()
    assert len(problems) == 2 and "become 'a=1,b=2'" in problems[0]


def test_nightingale_counts_failures_in_its_own_reply(receiver: Receiver) -> None:
    response = post(receiver.url(NIGHTINGALE), [item(), item(metric="has space"), item(tags="bad key=1")])
    assert response.json() == {"succ": 1, "fail": 2, "msg": "received"}
    assert post(receiver.url(NIGHTINGALE), [item(timestamp=1.5)]).status_code == 400


# -- what a reply means ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "status, body, expected",
    [
        (200, "success", Reply("agent", 7, 0, "success")),
        (200, '{"msg":"success","data":{"Message":"ok","Total":7,"Invalid":2,"Latency":0}}',
         Reply("transfer", 7, 2, "ok")),
        (200, '{"succ":5,"fail":2,"msg":"received"}', Reply("nightingale", 7, 2, "received")),
        (200, "<html>fine</html>", Reply("other", 7, 0, "<html>fine</html>")),
        (204, "", Reply("other", 7, 0, "")),
    ],
)
def test_delivered_replies_are_understood(status: int, body: str, expected: Reply) -> None:
    assert push.interpret(status, body, 7) == expected


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408, 429, 499])
def test_server_errors_and_try_later_answers_are_transient(status: int) -> None:
    with pytest.raises(Unreachable, match=str(status)):
        push.interpret(status, "busy", 7)


@pytest.mark.parametrize("status, body", [(400, "connot decode body\n"), (400, "decode error\n"),
                                          (422, "unprocessable"), (410, "gone")])
def test_other_4xx_are_rejections_of_the_payload(status: int, body: str) -> None:
    with pytest.raises(Rejected) as caught:
        push.interpret(status, body, 7)
    assert not isinstance(caught.value, TooLarge)
    assert caught.value.status == status


@pytest.mark.parametrize("status, body", [(301, ""), (302, ""), (303, ""), (307, ""), (308, ""),
                                          (401, "unauthorized"), (403, "forbidden"), (404, "404 page not found"),
                                          (405, "method not allowed")])
def test_redirects_and_a_wrong_url_or_credentials_are_a_wrong_address(status: int, body: str) -> None:
    """Changed: these were rejections, never retried; the batch is now kept (README: Changes)."""
    with pytest.raises(WrongAddress) as caught:
        push.interpret(status, body, 7, location="https://elsewhere.example/v1/push")
    assert isinstance(caught.value, Unreachable) and not isinstance(caught.value, Rejected)
    assert caught.value.status == status
    assert ("redirected to https://elsewhere.example/v1/push" in str(caught.value)) == (status < 400)


def test_a_413_splits_like_the_agents_item_limit() -> None:
    with pytest.raises(TooLarge):
        push.interpret(413, "Request Entity Too Large", 7)


def test_the_agents_item_limit_is_recognised() -> None:
    with pytest.raises(TooLarge):
        push.interpret(400, "metrics exceed maxMetricValueSize\n", 7)


def test_batches_are_consecutive_slices() -> None:
    items = run_items(T0, 7)
    assert push.batches(items, 3) == [items[0:3], items[3:6], items[6:7]]
    assert push.batches([], 3) == []


@pytest.mark.parametrize(
    "outcome, partial, code",
    [
        (Outcome(sent_items=5), False, cli.EXIT_OK),
        (Outcome(sent_items=5), True, cli.EXIT_PARTIAL),
        (Outcome(spooled_batches=1), True, cli.EXIT_SPOOLED),
        (Outcome(spooled_batches=1, rejected_items=3), False, cli.EXIT_REJECTED),
        (Outcome(invalid_items=1), False, cli.EXIT_REJECTED),
        (Outcome(dropped_batches=1, spooled_batches=1), False, cli.EXIT_LOST),
        (Outcome(lost_items=5), False, cli.EXIT_LOST),
        (Outcome(wrong_address=1, spooled_batches=1), True, cli.EXIT_REJECTED),
        (Outcome(wrong_address=1, dropped_batches=1), False, cli.EXIT_LOST),
        (Outcome(replayed_batches=2, kept_batches=2), False, cli.EXIT_SPOOLED),  # sent, not confirmed
    ],
)
def test_exit_code_names_the_most_serious_outcome(outcome: Outcome, partial: bool, code: int) -> None:
    assert cli._push_exit_code(outcome, partial) == code


@pytest.mark.parametrize(
    "outcome, code",
    [
        (Outcome(), cli.EXIT_DOCKER),
        (Outcome(replayed_batches=2), cli.EXIT_DOCKER),
        (Outcome(waiting_batches=2, failure="Connection refused"), cli.EXIT_DOCKER),
        (Outcome(wrong_address=1, waiting_batches=2), cli.EXIT_REJECTED),
        (Outcome(rejected_items=5), cli.EXIT_REJECTED),
        (Outcome(dropped_batches=1), cli.EXIT_LOST),
    ],
)
def test_with_docker_down_only_a_loss_or_a_refusal_outranks_3(outcome: Outcome, code: int) -> None:
    assert cli._push_exit_code(outcome, False, docker_down=True) == code


# -- the real HTTP client against the real receiver -----------------------------------------


def sender(url: str, connect: float = 2.0, read: float = 5.0) -> HttpSender:
    return HttpSender(Target(url, connect, read))


@pytest.mark.parametrize("path, kind", [(AGENT, "agent"), (TRANSFER, "transfer"), (NIGHTINGALE, "nightingale")])
def test_each_receiver_kind_is_understood_over_http(receiver: Receiver, path: str, kind: str) -> None:
    body = json.dumps([item(), item(metric="kernel.hostname")]).encode()
    reply = sender(receiver.url(path)).send(body, 2, 10)
    assert reply.kind == kind
    assert reply.invalid == (0 if kind in ("agent", "nightingale") else 1)


def test_a_receiver_that_is_down_is_unreachable(receiver: Receiver) -> None:
    receiver.down()
    with pytest.raises(Unreachable, match="Connection refused"):
        sender(receiver.url()).send(b"[]", 0, 10)


@pytest.mark.parametrize("mode", ["fail500", "cut", "fail499"])
def test_5xx_and_cut_connections_are_unreachable(receiver: Receiver, mode: str) -> None:
    if mode == "cut":
        receiver.cut()
    else:
        receiver.fail(int(mode[4:]))
    with pytest.raises(Unreachable):
        sender(receiver.url()).send(json.dumps([item()] * 200).encode(), 200, 10)


def test_a_slow_receiver_times_out_within_the_read_timeout(receiver: Receiver) -> None:
    receiver.slow(5)
    started = time.monotonic()
    with pytest.raises(Unreachable, match="no answer within 0.5"):
        sender(receiver.url(), read=0.5).send(json.dumps([item()]).encode(), 1, 10)
    assert time.monotonic() - started < 2


def test_the_budget_shortens_the_timeouts(receiver: Receiver) -> None:
    receiver.slow(5)
    started = time.monotonic()
    with pytest.raises(Unreachable):
        sender(receiver.url(), read=20).send(json.dumps([item()]).encode(), 1, budget=0.4)
    assert time.monotonic() - started < 1.5


@pytest.mark.parametrize("headers", [False, True], ids=["body", "headers"])
def test_an_answer_sent_a_byte_at_a_time_is_cut_off_in_total(receiver: Receiver, headers: bool) -> None:
    # A byte every 0.3 s never lets the 1 s read timeout expire: only a bound on the whole
    # request ends it, after the connect plus the read timeout.
    receiver.drip(0.3, headers=headers, lookup=False)
    started = time.monotonic()
    with pytest.raises(Unreachable, match=r"no answer within 2\.0 s"):
        sender(receiver.url(), connect=1.0, read=1.0).send(json.dumps([item()]).encode(), 1, 10)
    assert time.monotonic() - started < 2.0 + 1.5
    assert [p.reply for p in receiver.pushes] == ["drip"]  # the request did arrive


def test_the_budget_bounds_a_dripping_answer_and_the_sender_sends_no_more(receiver: Receiver) -> None:
    receiver.drip(0.3, lookup=False)
    http = sender(receiver.url(), connect=3.0, read=20.0)
    started = time.monotonic()
    with pytest.raises(Unreachable):
        http.send(json.dumps([item()]).encode(), 1, budget=1.5)
    assert time.monotonic() - started < 1.5 + 1.0
    receiver.ok()
    # The request left running may still hold the session: nothing more goes through it.
    with pytest.raises(Unreachable, match="cut off"):
        http.send(json.dumps([item()]).encode(), 1, budget=10)
    assert len(receiver.pushes) == 1


def test_a_host_name_that_does_not_resolve_in_time_is_an_outage() -> None:
    import threading

    release = threading.Event()
    asked: List[Any] = []

    def hanging_resolver(host: str, port: int, *args: Any) -> Any:
        asked.append((host, port))
        release.wait(30)  # a resolver that never answers, as a dead nameserver does
        raise OSError("released")

    http = HttpSender(Target("http://falcon.example:1988/v1/push", 0.5, 20.0), resolve=hanging_resolver)
    started = time.monotonic()
    try:
        with pytest.raises(Unreachable, match=r"cannot resolve 'falcon.example' within 0\.5 s"):
            http.send(b"[]", 0, budget=10)
        assert time.monotonic() - started < 0.5 + 1.0
        assert asked == [("falcon.example", 1988)]
    finally:
        release.set()


def test_a_name_the_resolver_refuses_is_an_outage() -> None:
    import socket

    def refusing(host: str, port: int, *args: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(Unreachable, match="cannot resolve 'falcon.example': Name or service not known"):
        HttpSender(Target("https://falcon.example/v1/push"), resolve=refusing).send(b"[]", 0, budget=10)


def test_an_endless_reply_is_read_no_further_than_the_cap() -> None:
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    written: List[int] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4294967296\r\n\r\n")
            chunk = b"x" * 65536
            try:
                while sum(written) < 2**30:  # 1 GiB at most, should the cap not hold
                    conn.sendall(chunk)
                    written.append(len(chunk))
            except OSError:
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        reply = sender(f"http://127.0.0.1:{port}/api/push").send(b"[]", 0, 10)
    finally:
        listener.close()
    thread.join(10)
    assert reply.kind == "other" and reply.message.startswith("xxx")
    # The sender stopped reading at MAX_REPLY: the server could only fill the socket buffers.
    assert sum(written) < 64 * 2**20, sum(written)


# -- delivery: outages, order, bounds -------------------------------------------------------


def deliver(items: Sequence[Dict[str, Any]], timestamp: int, receiver: Receiver, spool: Spool, path: str = AGENT,
            deadline: float = 10, batch_size: int = 1000, read: float = 5.0) -> Outcome:
    http = sender(receiver.url(path), read=read)
    try:
        return push.deliver(items, timestamp, http, spool, batch_size, Deadline.after(deadline))
    finally:
        http.close()


def stamps(receiver: Receiver) -> List[int]:
    return [i["timestamp"] for i in receiver.items()]


def test_an_outage_loses_nothing_and_replays_oldest_first_before_the_new_batch(receiver: Receiver,
                                                                              spool: Spool) -> None:
    receiver.down()
    for minute in range(3):
        outcome = deliver(run_items(T0 + 60 * minute), T0 + 60 * minute, receiver, spool)
        assert (outcome.sent_items, outcome.spooled_items, outcome.waiting_batches) == (0, 5, minute + 1)
    receiver.up()
    outcome = deliver(run_items(T0 + 180), T0 + 180, receiver, spool)
    assert (outcome.replayed_batches, outcome.replayed_items, outcome.sent_items) == (3, 15, 5)
    assert outcome.waiting_batches == 0 and spool.pending() == []
    assert stamps(receiver) == sorted(stamps(receiver))
    assert [p.items[0]["timestamp"] for p in receiver.accepted()] == [T0, T0 + 60, T0 + 120, T0 + 180]
    assert len(receiver.items()) == 20 and receiver.invalid() == [] and receiver.problems() == []


def test_server_errors_are_spooled_and_delivered_once_it_recovers(receiver: Receiver, spool: Spool) -> None:
    receiver.fail(500)
    assert deliver(run_items(T0), T0, receiver, spool).spooled_batches == 1
    receiver.fail(503, "Service Unavailable")
    assert deliver(run_items(T0 + 60), T0 + 60, receiver, spool).spooled_batches == 1
    receiver.ok()
    outcome = deliver(run_items(T0 + 120), T0 + 120, receiver, spool)
    assert (outcome.replayed_batches, outcome.sent_batches, outcome.spooled_batches) == (2, 1, 0)
    assert [p.items[0]["timestamp"] for p in receiver.accepted()] == [T0, T0 + 60, T0 + 120]


def test_a_slow_receiver_is_cut_off_by_the_deadline_and_the_rest_spooled(receiver: Receiver, spool: Spool) -> None:
    receiver.slow(10)
    started = time.monotonic()
    outcome = deliver(run_items(T0, 30), T0, receiver, spool, deadline=1.5, batch_size=10, read=20)
    assert time.monotonic() - started < 2.5
    assert (outcome.sent_items, outcome.spooled_batches, outcome.spooled_items) == (0, 3, 30)
    assert "deadline" in outcome.failure or "no answer" in outcome.failure


def test_a_400_is_reported_and_never_spooled(receiver: Receiver, spool: Spool,
                                             logs: Logs) -> None:
    receiver.fail(400, "connot decode body")
    outcome = deliver(run_items(T0, 5), T0, receiver, spool)
    assert (outcome.rejected_items, outcome.spooled_batches, outcome.waiting_batches) == (5, 0, 0)
    assert "refused a batch of 5 items (HTTP 400: connot decode body)" in logs.text


@pytest.mark.parametrize("status", [404, 401, 403, 405])
def test_a_wrong_address_keeps_the_batch_and_says_so(receiver: Receiver, spool: Spool, logs: Logs,
                                                     status: int) -> None:
    receiver.fail(status, "404 page not found" if status == 404 else "no")
    outcome = deliver(run_items(T0, 5), T0, receiver, spool)
    assert (outcome.wrong_address, outcome.rejected_items) == (1, 0)
    assert (outcome.spooled_items, outcome.waiting_batches) == (5, 1)
    assert cli._push_exit_code(outcome, False) == cli.EXIT_REJECTED
    (line,) = [x for x in logs.lines if x.startswith("ERROR")]
    assert f"wrong address (HTTP {status}" in line and "fix --falcon-url or its credentials" in line, line
    assert "the data is kept: 5 items of this run spooled, 1 batches wait" in line, line
    receiver.ok()
    outcome = deliver(run_items(T0 + 60, 5), T0 + 60, receiver, spool)
    assert (outcome.replayed_items, outcome.sent_items, outcome.waiting_batches) == (5, 5, 0)
    assert [p.items[0]["timestamp"] for p in receiver.accepted()] == [T0, T0 + 60]


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_not_followed_and_the_batch_is_kept(receiver: Receiver, spool: Spool, logs: Logs,
                                                          status: int) -> None:
    receiver.redirect(status, receiver.url(TRANSFER))
    spool.write(run_items(T0), T0, 0)
    outcome = deliver(run_items(T0 + 60), T0 + 60, receiver, spool)
    assert receiver.accepted() == [] and [p.status for p in receiver.pushes] == [status]  # one request, not followed
    assert (outcome.wrong_address, outcome.replayed_batches, outcome.spooled_batches, outcome.waiting_batches) == \
        (1, 0, 1, 2)
    assert f"redirected to {receiver.url(TRANSFER)}, not followed" in logs.text
    assert [e.path.name.endswith(".json.gz") for e in spool.entries()] == [True, True]  # nothing set aside


def test_a_413_is_split_into_smaller_batches(receiver: Receiver, spool: Spool, logs: Logs) -> None:
    one = len(json.dumps([item()]).encode())
    receiver.limit(max_bytes=4 * one)
    outcome = deliver(run_items(T0, 10), T0, receiver, spool, batch_size=10)
    assert (outcome.sent_items, outcome.rejected_items, outcome.spooled_items) == (10, 0, 0)
    assert 413 in [p.status for p in receiver.pushes]
    assert [i["metric"] for i in receiver.items()] == [i["metric"] for i in run_items(T0, 10)]
    assert logs.text.count("lower --batch-size") == 1


def test_a_spooled_batch_refused_on_replay_is_set_aside_not_retried(receiver: Receiver, spool: Spool) -> None:
    spool.write(run_items(T0), T0, 0)
    receiver.fail(400, "connot decode body")
    outcome = deliver([], T0 + 60, receiver, spool)
    assert (outcome.rejected_items, outcome.set_aside) == (5, 1)
    receiver.ok()
    assert deliver([], T0 + 120, receiver, spool).replayed_batches == 0
    assert [p.name.endswith(".rejected") for p in spool.directory.iterdir() if p.name != "lock"] == [True]


def test_invalid_items_reported_by_transfer_are_counted_and_named(receiver: Receiver, spool: Spool,
                                                                  logs: Logs) -> None:
    items = run_items(T0, 4) + [item(T0, counterType="gauge")]
    outcome = deliver(items, T0, receiver, spool, path=TRANSFER)
    assert (outcome.sent_items, outcome.invalid_items, outcome.spooled_batches) == (5, 1, 0)
    assert "dropped 1 of 5 items" in logs.text


def test_batches_respect_the_batch_size(receiver: Receiver, spool: Spool) -> None:
    outcome = deliver(run_items(T0, 25), T0, receiver, spool, batch_size=10)
    assert outcome.sent_batches == 3
    assert [len(p.items) for p in receiver.accepted()] == [10, 10, 5]


def test_the_agents_item_limit_splits_batches_and_says_so(receiver: Receiver, spool: Spool,
                                                          logs: Logs) -> None:
    receiver.limit(4)
    outcome = deliver(run_items(T0, 10), T0, receiver, spool, batch_size=10)
    assert (outcome.sent_items, outcome.rejected_items) == (10, 0)
    assert all(len(p.items) <= 4 for p in receiver.accepted())
    assert [i["metric"] for i in receiver.items()] == [i["metric"] for i in run_items(T0, 10)]
    assert logs.text.count("lower --batch-size") == 1


# -- delivery logic with a scripted sender --------------------------------------------------


class Scripted:
    """Answers from a script: 'ok', 'down' or 'reject', one per request; then 'ok'."""

    def __init__(self, *script: str) -> None:
        self.script = list(script)
        self.bodies: List[List[Dict[str, Any]]] = []

    def send(self, body: bytes, count: int, budget: float) -> Reply:
        step = self.script.pop(0) if self.script else "ok"
        if step == "down":
            raise Unreachable("Connection refused")
        if step == "reject":
            raise Rejected(400, "connot decode body")
        self.bodies.append(json.loads(body))
        return Reply("agent", count, 0, "success")


def test_once_a_replay_fails_nothing_newer_is_sent(spool: Spool) -> None:
    for minute in range(2):
        spool.write(run_items(T0 + 60 * minute), T0 + 60 * minute, 0)
    first = Scripted("ok", "down")
    outcome = push.deliver(run_items(T0 + 120), T0 + 120, first, spool, 1000, Deadline.after(10))
    assert [b[0]["timestamp"] for b in first.bodies] == [T0]
    assert (outcome.replayed_batches, outcome.sent_items, outcome.spooled_batches) == (1, 0, 1)
    second = Scripted()
    push.deliver(run_items(T0 + 180), T0 + 180, second, spool, 1000, Deadline.after(10))
    assert [b[0]["timestamp"] for b in second.bodies] == [T0 + 60, T0 + 120, T0 + 180]


def test_a_spent_deadline_spools_everything_without_a_request(spool: Spool) -> None:
    scripted = Scripted()
    outcome = push.deliver(run_items(T0, 20), T0, scripted, spool, 5, Deadline(end=0.0))
    assert scripted.bodies == []
    assert (outcome.spooled_batches, outcome.spooled_items) == (4, 20)
    assert [e.seq for e in spool.pending()] == [0, 1, 2, 3]


def test_a_corrupt_spool_file_is_moved_aside_and_the_rest_delivered(spool: Spool,
                                                                    logs: Logs) -> None:
    spool.write(run_items(T0), T0, 0)
    broken = spool.write(run_items(T0 + 60), T0 + 60, 0)
    broken.path.write_bytes(b"\x1f\x8b garbage")
    scripted = Scripted()
    outcome = push.deliver(run_items(T0 + 120), T0 + 120, scripted, spool, 1000, Deadline.after(10))
    assert (outcome.replayed_batches, outcome.set_aside, outcome.sent_batches) == (1, 1, 1)
    assert Path(str(broken.path) + ".corrupt").exists()
    assert "corrupt batch moved aside" in logs.text


# -- behind the falcon-agent: transfer asked before and after (transfer.py) ----------------


def test_a_refusing_sender_spools_everything_and_keeps_the_order(spool: Spool) -> None:
    spool.write(run_items(T0), T0, 0)
    outcome = push.deliver(run_items(T0 + 60, 12), T0 + 60, push.Refusing("no transfer answers"), spool, 5,
                           Deadline.after(10))
    assert (outcome.spooled_batches, outcome.spooled_items, outcome.waiting_batches) == (3, 12, 4)
    assert outcome.failure == "no transfer answers" and outcome.sent_items == 0
    scripted = Scripted()
    push.deliver([], T0 + 120, scripted, spool, 5, Deadline.after(10))
    assert [b[0]["timestamp"] for b in scripted.bodies] == [T0, T0 + 60, T0 + 60, T0 + 60]


def test_a_confirmed_push_removes_what_it_replayed(spool: Spool) -> None:
    spool.write(run_items(T0), T0, 0)
    asked: List[int] = []
    outcome = push.deliver(run_items(T0 + 60), T0 + 60, Scripted(), spool, 1000, Deadline.after(10),
                           confirm=lambda: asked.append(1) or None)  # type: ignore[func-returns-value]
    assert asked == [1] and spool.pending() == []
    assert (outcome.replayed_batches, outcome.sent_batches, outcome.kept_batches, outcome.failure) == (1, 1, 0, "")


def test_an_unconfirmed_push_keeps_what_it_sent_for_the_next_run_in_order(spool: Spool) -> None:
    spool.write(run_items(T0), T0, 0)
    outcome = push.deliver(run_items(T0 + 60, 12), T0 + 60, Scripted(), spool, 5, Deadline.after(10),
                           confirm=lambda: "no transfer answered after the push")
    assert (outcome.replayed_batches, outcome.sent_batches) == (1, 3)
    assert (outcome.kept_batches, outcome.kept_items, outcome.spooled_batches) == (4, 17, 3)
    assert outcome.failure == "no transfer answered after the push" and outcome.waiting_batches == 4
    assert cli._push_exit_code(outcome, False) == cli.EXIT_SPOOLED
    again = Scripted()
    push.deliver([], T0 + 120, again, spool, 5, Deadline.after(10))
    assert [len(b) for b in again.bodies] == [5, 5, 5, 2]
    assert [b[0]["timestamp"] for b in again.bodies] == [T0, T0 + 60, T0 + 60, T0 + 60]
    assert spool.pending() == []


def test_nothing_delivered_asks_for_no_confirmation(spool: Spool) -> None:
    asked: List[int] = []
    push.deliver(run_items(T0), T0, Scripted("down"), spool, 1000, Deadline.after(10),
                 confirm=lambda: asked.append(1) or None)  # type: ignore[func-returns-value]
    assert asked == []


def test_behind_a_real_agent_stand_in_a_transfer_outage_loses_nothing(spool: Spool, logs: Logs) -> None:
    """The agent stand-in forwards each push to a real JSON-RPC transfer and says success
    whatever happened; PushOutput asks transfer before and after."""
    from container_netstat.outputs import PushOutput
    from container_netstat.settings import Delivery

    with TransferRpc() as rpc, Receiver(transfer=rpc) as agent:
        delivery = Delivery(agent.url(AGENT), "host-1", transfer_addrs=(rpc.addr,), read_timeout=5)

        def run(minute: int) -> Outcome:
            output = PushOutput(delivery, spool, Deadline.after(10), "the agent")
            output.emit([], run_items(T0 + 60 * minute), T0 + 60 * minute)
            assert output.outcome is not None
            return output.outcome

        assert run(0).sent_items == 5 and len(rpc.items()) == 5
        rpc.down()
        for minute in (1, 2):
            outcome = run(minute)
            assert (outcome.sent_items, outcome.spooled_items) == (0, 5), outcome
            assert "no transfer answers Transfer.Ping" in outcome.failure
        assert len(agent.accepted()) == 1  # nothing was pushed while transfer was away
        # Transfer answers the question before the push, then dies: the agent says success
        # and its forward fails; the question after the push keeps everything.
        rpc.up()
        rpc.stop_after(1)
        outcome = run(3)
        assert (outcome.replayed_batches, outcome.sent_batches, outcome.kept_batches) == (2, 1, 3), outcome
        assert agent.forwarded[-1] is not None and len(rpc.items()) == 5
        assert "after the push" in outcome.failure
        rpc.up()
        outcome = run(4)
        assert (outcome.replayed_batches, outcome.sent_batches, outcome.kept_batches) == (3, 1, 0), outcome
        stamps = [batch[0]["timestamp"] for batch in rpc.updates]
        assert stamps == [T0, T0 + 60, T0 + 120, T0 + 180, T0 + 240]
        assert len(rpc.items()) == 25 and spool.pending() == []


def test_bounds_drop_old_batches_and_log_the_count(tmp_path: Path, logs: Logs) -> None:
    spool = Spool(tmp_path, Bounds(max_age=3600, max_bytes=10**8))
    spool.open()
    for minute in range(3):
        spool.write(run_items(T0 - 86400 + 60 * minute), T0 - 86400 + 60 * minute, 0)
    spool.write(run_items(T0), T0, 0)
    scripted = Scripted()
    outcome = push.deliver([], T0, scripted, spool, 1000, Deadline.after(10))
    assert (outcome.dropped_batches, outcome.replayed_batches) == (3, 1)
    assert "dropped 3 undelivered batches (3 older than 3600 s" in logs.text


def test_a_spool_that_cannot_be_written_loses_items_loudly(tmp_path: Path,
                                                           logs: Logs) -> None:
    spool = Spool(tmp_path / "gone")
    spool.open()
    (tmp_path / "gone").rmdir()
    outcome = push.deliver(run_items(T0), T0, Scripted("down"), spool, 1000, Deadline.after(10))
    assert (outcome.lost_items, outcome.spooled_batches) == (5, 0)
    assert "lost 5 items" in logs.text


# -- the command, against real Docker and the real receiver ---------------------------------


def collect(receiver: Receiver, spool_dir: Path, *args: str, path: str = AGENT,
            timeout: float = 90) -> "subprocess.CompletedProcess[str]":
    command = [sys.executable, "-m", "container_netstat", "collect", "--falcon-url", receiver.url(path),
               "--spool-dir", str(spool_dir), "--log-level", "info", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def runs_received(receiver: Receiver) -> int:
    """How many runs' worth of items arrived: one collection time per run."""
    return len({p.items[0]["timestamp"] for p in receiver.accepted() if p.items})


def batch_files(spool_dir: Path, suffix: str = ".json.gz") -> List[Path]:
    return sorted(p for p in spool_dir.iterdir() if p.name.endswith(suffix))


@pytest.fixture
def container(run_container: Any) -> str:
    # No network: the test needs a namespace of its own, not Docker's bridge.
    return str(run_container(name="push", network_mode="none").name)


@pytest.mark.docker
@pytest.mark.parametrize("path", [AGENT, TRANSFER, NIGHTINGALE])
def test_every_item_of_a_real_run_is_accepted(receiver: Receiver, tmp_path: Path, container: str, path: str) -> None:
    result = collect(receiver, tmp_path, path=path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    items = receiver.items(path)
    assert items and receiver.invalid() == [] and receiver.problems() == []
    assert any(f"container={container}" in i["tags"] for i in items)
    assert len({i["timestamp"] for i in items}) == 1
    assert f"delivered {len(items)} items" in result.stderr


@pytest.mark.docker
def test_a_receiver_outage_loses_no_minute(receiver: Receiver, tmp_path: Path, container: str) -> None:
    receiver.down()
    spooled: Dict[int, int] = {}
    for _ in range(2):
        before = set(batch_files(tmp_path))
        result = collect(receiver, tmp_path)
        assert result.returncode == cli.EXIT_SPOOLED, result.stderr
        assert "Connection refused" in result.stderr
        stamp = int(min(set(batch_files(tmp_path)) - before).name.split("-")[0])
        spooled[stamp] = int(re.search(r"(\d+) items of this run spooled", result.stderr).group(1))  # type: ignore
        time.sleep(1.1)  # distinct collection seconds
    receiver.up()
    result = collect(receiver, tmp_path)
    assert result.returncode == cli.EXIT_OK, result.stderr
    times = [p.items[0]["timestamp"] for p in receiver.accepted()]
    assert times == sorted(times), "a newer batch went before an older one"
    assert sorted(set(times))[:2] == sorted(spooled) and len(set(times)) == 3
    received = {t: sum(1 for i in receiver.items() if i["timestamp"] == t) for t in set(times)}
    assert all(received[t] == n for t, n in spooled.items()), (received, spooled)
    assert receiver.invalid() == [] and receiver.problems() == [] and batch_files(tmp_path) == []


@pytest.mark.docker
def test_a_rejected_payload_exits_6_and_is_not_spooled(receiver: Receiver, tmp_path: Path) -> None:
    receiver.fail(400, "connot decode body")
    result = collect(receiver, tmp_path)
    assert result.returncode == cli.EXIT_REJECTED, result.stderr
    assert "connot decode body" in result.stderr and batch_files(tmp_path) == []


@pytest.mark.docker
def test_the_run_ends_by_its_deadline_when_the_receiver_hangs(receiver: Receiver, tmp_path: Path) -> None:
    receiver.slow(60)
    started = time.monotonic()
    result = collect(receiver, tmp_path, "--deadline", "8")
    elapsed = time.monotonic() - started
    assert result.returncode == cli.EXIT_SPOOLED, result.stderr
    assert elapsed < 8 + 3, elapsed  # the deadline counts from the start of collect; 3 s for start-up
    assert batch_files(tmp_path)


@pytest.mark.docker
def test_two_runs_started_at_once_only_one_collects(receiver: Receiver, tmp_path: Path) -> None:
    receiver.slow(4)  # the winner holds the lock for at least this long
    command = [sys.executable, "-m", "container_netstat", "collect", "--falcon-url", receiver.url(),
               "--spool-dir", str(tmp_path), "--log-level", "info", "--batch-size", "1000000"]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=90), p.stderr.read() if p.stderr else "") for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [cli.EXIT_OK, cli.EXIT_LOCKED], results
    loser = next(err for code, err in results if code == cli.EXIT_LOCKED)
    assert "another run is in progress" in loser and "containers," not in loser  # it never collected
    assert runs_received(receiver) == 1


@pytest.mark.docker
def test_a_held_lock_stops_a_run_before_it_collects(receiver: Receiver, tmp_path: Path) -> None:
    holder = Spool(tmp_path)
    holder.open()
    holder.lock()
    result = collect(receiver, tmp_path)
    assert result.returncode == cli.EXIT_LOCKED and receiver.pushes == []
    holder.unlock()
    assert collect(receiver, tmp_path).returncode == cli.EXIT_OK


@pytest.mark.docker
def test_a_corrupt_spool_file_does_not_stop_the_run(receiver: Receiver, tmp_path: Path) -> None:
    tmp_path.chmod(0o700)
    (tmp_path / f"{T0:010d}-0000-deadbeef.json.gz").write_bytes(b"truncated")
    result = collect(receiver, tmp_path)
    assert result.returncode == cli.EXIT_OK, result.stderr
    assert "corrupt batch moved aside" in result.stderr
    assert (tmp_path / f"{T0:010d}-0000-deadbeef.json.gz.corrupt").exists()
    assert runs_received(receiver) == 1


@pytest.mark.docker
def test_spool_bounds_are_enforced_and_the_loss_reported(receiver: Receiver, tmp_path: Path) -> None:
    old = Spool(tmp_path)
    old.open()
    for minute in range(3):
        old.write(run_items(T0 - 3 * 86400 + 60 * minute), T0 - 3 * 86400 + 60 * minute, 0)
    result = collect(receiver, tmp_path, "--spool-max-age", "1d")
    assert result.returncode == cli.EXIT_LOST, result.stderr
    assert "dropped 3 undelivered batches" in result.stderr
    assert runs_received(receiver) == 1 and batch_files(tmp_path) == []


# -- Docker unreachable: the spool still drains -------------------------------------------

NO_DOCKER = ("--docker-host", "unix:///nonexistent.sock")


def spool_two_runs(spool_dir: Path) -> List[int]:
    spool = Spool(spool_dir)
    spool.open()
    for minute in range(2):
        spool.write(run_items(T0 + 60 * minute), T0 + 60 * minute, 0)
    spool.close()
    return [T0, T0 + 60]


def test_with_docker_down_the_spool_is_still_replayed(receiver: Receiver, tmp_path: Path) -> None:
    """Changed: a run that could not reach Docker exited 3 before any push (README: Changes)."""
    spooled = spool_two_runs(tmp_path)
    result = collect(receiver, tmp_path, *NO_DOCKER)
    assert result.returncode == cli.EXIT_DOCKER, result.stderr
    assert "cannot reach Docker at unix:///nonexistent.sock" in result.stderr
    assert [p.items[0]["timestamp"] for p in receiver.accepted()] == spooled  # oldest first
    assert len(receiver.items()) == 10 and batch_files(tmp_path) == []
    assert receiver.lookups == []  # no items of its own: no endpoint to ask for


def test_with_docker_down_and_nothing_spooled_nothing_is_sent(receiver: Receiver, tmp_path: Path) -> None:
    result = collect(receiver, tmp_path, *NO_DOCKER)
    assert result.returncode == cli.EXIT_DOCKER, result.stderr
    assert receiver.pushes == [] and receiver.lookups == []


def test_with_docker_and_the_receiver_down_the_spool_is_kept_and_the_run_exits_3(receiver: Receiver,
                                                                                 tmp_path: Path) -> None:
    spool_two_runs(tmp_path)
    before = batch_files(tmp_path)
    receiver.down()
    result = collect(receiver, tmp_path, *NO_DOCKER)
    assert result.returncode == cli.EXIT_DOCKER, result.stderr
    assert "Connection refused" in result.stderr and batch_files(tmp_path) == before


@pytest.mark.parametrize("fault, code", [("400", cli.EXIT_REJECTED), ("404", cli.EXIT_REJECTED),
                                         ("aged", cli.EXIT_LOST)])
def test_with_docker_down_a_refusal_or_a_loss_in_the_replay_is_not_hidden_by_3(
        receiver: Receiver, tmp_path: Path, fault: str, code: int) -> None:
    spool_two_runs(tmp_path)
    args = list(NO_DOCKER)
    if fault == "aged":
        args += ["--spool-max-age", str(int(time.time()) - T0 - 30)]  # the first batch is too old
    else:
        receiver.fail(int(fault), "connot decode body" if fault == "400" else "404 page not found")
    result = collect(receiver, tmp_path, *args)
    assert result.returncode == code, result.stderr
    assert "cannot reach Docker" in result.stderr
    if fault == "400":
        assert len(batch_files(tmp_path, ".rejected")) == 2 and batch_files(tmp_path) == []
    elif fault == "404":
        assert len(batch_files(tmp_path)) == 2 and "the data is kept" in result.stderr
    else:
        assert "dropped 1 undelivered batches" in result.stderr
        assert [p.items[0]["timestamp"] for p in receiver.accepted()] == [T0 + 60]


def test_with_docker_down_the_replay_ends_by_the_deadline(receiver: Receiver, tmp_path: Path) -> None:
    spool_two_runs(tmp_path)
    receiver.slow(60)
    started = time.monotonic()
    result = collect(receiver, tmp_path, *NO_DOCKER, "--deadline", "3")
    assert result.returncode == cli.EXIT_DOCKER, result.stderr
    assert time.monotonic() - started < 3 + 5  # generous: interpreter start-up, imports
    assert len(batch_files(tmp_path)) == 2


def test_usage_errors_for_bad_durations_and_sizes(tmp_path: Path) -> None:
    from click.testing import CliRunner

    for args in (["--spool-max-age", "1w"], ["--spool-max-bytes", "1.5G"], ["--batch-size", "0"]):
        result = CliRunner().invoke(cli.main, ["collect", "--spool-dir", str(tmp_path), *args])
        assert result.exit_code == cli.EXIT_USAGE, (args, result.output)


def test_quantities_accept_units() -> None:
    assert units.parse_quantity("90", units.DURATION_UNITS) == 90
    assert units.parse_quantity("30m", units.DURATION_UNITS) == 1800
    assert units.parse_quantity("1D", units.DURATION_UNITS) == 86400
    assert units.parse_quantity("64M", units.SIZE_UNITS) == 64 * 1024**2
    assert units.parse_quantity(" 500k", units.SIZE_UNITS) == 500 * 1024
    for bad in ("1w", "1.5G", "", "m", "-1"):
        with pytest.raises(ValueError):
            units.parse_quantity(bad, units.SIZE_UNITS)
