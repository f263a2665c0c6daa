"""Where transfer is and whether it answers: the agent's configuration, its command line,
Transfer.Ping against a real TCP server speaking Go's net/rpc JSON codec (tests/receiver.py),
and every hostile answer bounded by the run's deadline.

Recorded answers: tests/fixtures/falcon (SOURCES.md names the falcon-plus commit).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator, List

import pytest
import requests

from container_netstat import transfer
from container_netstat.deadline import Deadline
from container_netstat.settings import HostPaths
from container_netstat.transfer import Check, Source, TransferError

from receiver import AGENT, Receiver, TransferRpc

FIXTURES = Path(__file__).parent / "fixtures" / "falcon"


@pytest.fixture
def rpc() -> Iterator[TransferRpc]:
    with TransferRpc() as server:
        yield server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the agent's configuration ---------------------------------------------------------------


def test_the_example_configuration_gives_its_address_once() -> None:
    config = transfer.parse_config((FIXTURES / "agent-cfg.example.json").read_text())
    assert config == transfer.AgentConfig(("127.0.0.1:8433",), True)


@pytest.mark.parametrize("doc, addrs, enabled", [
    ({"transfer": {"enabled": False, "addrs": ["10.0.0.1:8433", "t2:8433"]}}, ("10.0.0.1:8433", "t2:8433"), False),
    ({"transfer": {"enabled": True, "addrs": []}}, (), True),
    ({"transfer": {"enabled": True}}, (), True),
    ({"hostname": "h"}, (), False),
    ({"transfer": {"addrs": ["[::1]:8433"]}}, ("[::1]:8433",), False),
])
def test_the_transfer_part_is_read(doc: Any, addrs: Any, enabled: bool) -> None:
    assert transfer.parse_config(json.dumps(doc)) == transfer.AgentConfig(addrs, enabled)


@pytest.mark.parametrize("text", [
    "not json", "[]", '{"transfer": []}', '{"transfer": {"addrs": "127.0.0.1:8433"}}',
    '{"transfer": {"addrs": [8433]}}', '{"transfer": {"addrs": ["nocolon"]}}',
    '{"transfer": {"addrs": ["h:99999"]}}', '{"transfer": {"enabled": "yes", "addrs": []}}',
])
def test_a_configuration_the_agent_could_not_use_is_refused(text: str) -> None:
    with pytest.raises(TransferError):
        transfer.parse_config(text)


@pytest.mark.parametrize("addr, expected", [
    ("127.0.0.1:8433", ("127.0.0.1", 8433)), ("transfer.example:8433", ("transfer.example", 8433)),
    ("[::1]:8433", ("::1", 8433)), (":8433", ("127.0.0.1", 8433)), (" t:1 ", ("t", 1)),
])
def test_addresses_split_as_go_splits_them(addr: str, expected: Any) -> None:
    assert transfer.split_addr(addr) == expected


@pytest.mark.parametrize("addr", ["8433", "::1:8433", "[::1]8433", "h:0", "h:port", "h:-1", "a b:1", "u@h:1", "h/x:1"])
def test_addresses_go_could_not_dial_are_refused(addr: str) -> None:
    with pytest.raises(TransferError):
        transfer.split_addr(addr)


@pytest.mark.parametrize("argv, expected", [
    (["falcon-agent"], "cfg.json"),
    (["falcon-agent", "-c", "/etc/agent.json"], "/etc/agent.json"),
    (["falcon-agent", "-c=/a.json"], "/a.json"),
    (["falcon-agent", "--c", "b.json"], "b.json"),
    (["falcon-agent", "--c=b.json", "-c", "last.json"], "last.json"),
    (["falcon-agent", "-check", "-c", "x.json"], "x.json"),
    (["falcon-agent", "-v", "-c", "x.json"], "x.json"),
    (["falcon-agent", "run", "-c", "x.json"], "cfg.json"),  # flag parsing stops at "run"
    (["falcon-agent", "--", "-c", "x.json"], "cfg.json"),
    (["falcon-agent", "-c"], "cfg.json"),
])
def test_the_config_flag_is_parsed_as_gos_flag_package_does(argv: List[str], expected: str) -> None:
    assert transfer.config_flag(argv) == expected


# -- the JSON-RPC exchange -------------------------------------------------------------------


def test_the_request_and_the_recorded_reply() -> None:
    recorded = json.loads((FIXTURES / "transfer-ping.json").read_text())
    assert json.loads(transfer.ping_request(1)) == json.loads(recorded["request"])
    assert transfer.ping_request(1).endswith(b"\n")
    assert transfer.parse_reply(recorded["reply"].encode(), 1) is None
    assert "can't find method" in str(transfer.parse_reply(recorded["unknown_method_reply"].encode(), 1))


@pytest.mark.parametrize("line, why", [
    (b'{"id":2,"result":{"code":0},"error":null}', "another call"),
    (b'{"id":true,"result":{"code":0},"error":null}', "another call"),
    (b'{"id":1,"result":null,"error":"boom"}', "boom"),
    (b'{"result":{"code":0},"error":null}', "not a JSON-RPC answer"),
    (b"HTTP/1.1 400 Bad Request", "not a JSON-RPC answer"),
    (b"[1]", "not a JSON-RPC answer"),
])
def test_any_other_reply_is_not_an_answer(line: bytes, why: str) -> None:
    assert why in str(transfer.parse_reply(line, 1))


def test_the_stand_in_answers_ping_as_recorded(rpc: TransferRpc) -> None:
    recorded = json.loads((FIXTURES / "transfer-ping.json").read_text())
    with socket.create_connection(("127.0.0.1", rpc.port), timeout=5) as conn:
        conn.sendall(recorded["request"].encode())
        assert conn.recv(4096).decode() == recorded["reply"]
        conn.sendall(recorded["request"].replace("Ping", "Pong").encode())
        assert conn.recv(4096).decode() == recorded["unknown_method_reply"]


def test_the_agent_stand_in_answers_as_recorded_whether_transfer_took_the_items(rpc: TransferRpc) -> None:
    decoded, blank, undecodable = json.loads((FIXTURES / "agent-push-answers.json").read_text())["answers"]
    body = [{"endpoint": "h", "metric": "m", "timestamp": int(time.time()), "step": 60, "value": 1,
             "counterType": "GAUGE", "tags": ""}]
    with Receiver(transfer=rpc) as agent:
        for transfer_up in (True, False):
            if not transfer_up:
                rpc.down()
            answer = requests.post(agent.url(AGENT), json=body, timeout=10)
            assert (answer.status_code, answer.text) == (decoded["status"], decoded["body"])
        assert agent.forwarded[0] is None and agent.forwarded[1] is not None  # the second went nowhere
        assert len(rpc.items()) == 1
        bad = requests.post(agent.url(AGENT), data=b"{}", timeout=10)
        assert (bad.status_code, bad.text) == (undecodable["status"], undecodable["body"])
        empty = requests.post(agent.url(AGENT), data=b"", timeout=10)
        assert (empty.status_code, empty.text) == (blank["status"], blank["body"])


# -- Transfer.Ping against the real server ----------------------------------------------------


def test_a_transfer_that_answers(rpc: TransferRpc) -> None:
    assert transfer.ping(rpc.addr, 1.0, Deadline.after(5)) == transfer.Ping(rpc.addr, True)
    assert rpc.calls == ["Transfer.Ping"]


def test_a_name_is_resolved(rpc: TransferRpc) -> None:
    assert transfer.ping(f"localhost:{rpc.port}", 1.0, Deadline.after(5)).alive


def test_a_stopped_transfer_is_refused_at_once(rpc: TransferRpc) -> None:
    rpc.down()
    started = time.monotonic()
    answer = transfer.ping(rpc.addr, 1.0, Deadline.after(5))
    assert not answer.alive and "refused" in answer.reason
    assert time.monotonic() - started < 2


def test_a_transfer_that_accepts_and_never_answers_times_out(rpc: TransferRpc) -> None:
    rpc.silent()
    started = time.monotonic()
    answer = transfer.ping(rpc.addr, 1.0, Deadline.after(30))
    assert not answer.alive and "no answer within 2.0 s" in answer.reason
    assert time.monotonic() - started < 2.0 + 1.5


def test_an_answer_sent_a_byte_at_a_time_is_cut_off_in_total(rpc: TransferRpc) -> None:
    rpc.drip(0.2)  # a byte every 0.2 s: no recv ever times out
    started = time.monotonic()
    answer = transfer.ping(rpc.addr, 1.0, Deadline.after(30))
    elapsed = time.monotonic() - started
    assert not answer.alive and "no complete answer within 3.0 s" in answer.reason
    assert 2.5 < elapsed < 3.0 + 1.5, elapsed


def test_the_run_deadline_bounds_the_ping(rpc: TransferRpc) -> None:
    rpc.silent()
    started = time.monotonic()
    answer = transfer.ping(rpc.addr, 3.0, Deadline.after(1.0))
    assert not answer.alive and time.monotonic() - started < 1.0 + 1.0
    assert transfer.ping(rpc.addr, 3.0, Deadline.after(0)).reason == "the run's deadline was reached"


def test_an_endless_line_is_read_no_further_than_the_cap(rpc: TransferRpc) -> None:
    rpc.answer(b"x" * (transfer.MAX_REPLY * 4))
    answer = transfer.ping(rpc.addr, 1.0, Deadline.after(10))
    assert not answer.alive and "longer than" in answer.reason


@pytest.mark.parametrize("line, why", [
    (b'{"id":99,"result":{"code":0},"error":null}\n', "another call"),
    (b'{"id":1,"result":null,"error":"rpc: can\'t find service Transfer.Ping"}\n', "can't find service"),
    (b"HTTP/1.1 400 Bad Request\r\n\r\n", "not a JSON-RPC answer"),
    (b"", "closed without an answer"),
])
def test_a_wrong_answer_is_not_alive(rpc: TransferRpc, line: bytes, why: str) -> None:
    rpc.answer(line, close=not line)
    answer = transfer.ping(rpc.addr, 1.0, Deadline.after(10))
    assert not answer.alive and why in answer.reason, answer


def test_a_name_that_does_not_resolve_in_time_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    def slow_resolver(*args: Any, **kwargs: Any) -> Any:
        time.sleep(30)

    monkeypatch.setattr(socket, "getaddrinfo", slow_resolver)
    started = time.monotonic()
    answer = transfer.ping("transfer.example:8433", 1.0, Deadline.after(20))
    assert not answer.alive and time.monotonic() - started < 1.0 + transfer.READ_TIMEOUT + 1


def test_a_name_that_does_not_resolve_is_not_alive() -> None:
    answer = transfer.ping("no-such-host.invalid:8433", 1.0, Deadline.after(10))
    assert not answer.alive and "resolve" in answer.reason


def test_addresses_are_asked_in_turn_until_one_answers(rpc: TransferRpc) -> None:
    dead = f"127.0.0.1:{free_port()}"
    answers = transfer.ping_any([dead, rpc.addr, "127.0.0.1:1"], 1.0, Deadline.after(10))
    assert [a.alive for a in answers] == [False, True]


# -- where transfer is -----------------------------------------------------------------------


def test_given_addresses_win(tmp_path: Path) -> None:
    source = transfer.learn(HostPaths(proc_root=str(tmp_path)), ["a:1", "a:1", "b:2"], "/nowhere")
    assert (source.addrs, source.where) == (("a:1", "b:2"), "--transfer-addr")


def test_the_given_file_is_read_under_the_host_root(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "agent.json").write_text(json.dumps({"transfer": {"enabled": True, "addrs": ["t:8433"]}}))
    (tmp_path / "etc" / "link.json").symlink_to("agent.json")  # named by the operator: followed
    for name in ("agent.json", "link.json"):
        source = transfer.learn(HostPaths(host_root=str(tmp_path)), (), f"/etc/{name}")
        assert source.addrs == ("t:8433",) and source.learned
    missing = transfer.learn(HostPaths(host_root=str(tmp_path)), (), "/etc/missing.json")
    assert not missing.learned and "cannot be read" in missing.reason


def test_a_fifo_in_place_of_the_file_does_not_block(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "agent.json")
    result: List[Source] = []
    reader = threading.Thread(target=lambda: result.append(
        transfer.learn(HostPaths(host_root="/"), (), str(tmp_path / "agent.json"))), daemon=True)
    reader.start()
    reader.join(5)
    assert result and not result[0].learned and "cannot be read" in result[0].reason


def test_no_agent_running_is_nothing_learned(tmp_path: Path) -> None:
    (tmp_path / "123").mkdir()
    (tmp_path / "123" / "comm").write_text("dockerd\n")
    source = transfer.learn(HostPaths(proc_root=str(tmp_path)))
    assert not source.learned and "no falcon-agent process" in source.reason


def fake_agent(cwd: Path, *flags: str) -> "subprocess.Popen[bytes]":
    """A real process of the host's whose comm is falcon-agent and whose command line is
    ``falcon-agent -c <code> FLAGS``: Go's flag package takes the last -c."""
    code = ("import time; open('/proc/self/comm', 'w').write('falcon-agent'); print('ready', flush=True);"
            " time.sleep(600)")
    proc = subprocess.Popen(["falcon-agent", "-c", code, *flags], executable=sys.executable, cwd=cwd,
                            stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    return proc


@pytest.fixture
def agents() -> Iterator[List["subprocess.Popen[bytes]"]]:
    started: List["subprocess.Popen[bytes]"] = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait()


@pytest.mark.skipif(os.geteuid() != 0, reason="the host's processes are root's")
def test_the_running_agents_file_is_found_from_its_flag_and_working_directory(
        tmp_path: Path, agents: List["subprocess.Popen[bytes]"]) -> None:
    (tmp_path / "cfg.json").write_text(json.dumps({"transfer": {"enabled": True, "addrs": ["t1:8433"]}}))
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "other.json").write_text(json.dumps({"transfer": {"enabled": True, "addrs": ["t2:8433"]}}))
    agents.append(fake_agent(tmp_path, "-c", "cfg.json"))
    source = transfer.learn(HostPaths())
    assert source.addrs == ("t1:8433",), source
    assert source.where == f"falcon-agent {agents[0].pid}: {tmp_path}/cfg.json"
    agents.pop().kill()
    agents.append(fake_agent(tmp_path, "-c", "conf/other.json"))
    assert transfer.learn(HostPaths()).addrs == ("t2:8433",)


@pytest.mark.skipif(os.geteuid() != 0, reason="the host's processes are root's")
@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_the_running_agents_file_is_not_followed_through_a_link_nor_waited_on(
        tmp_path: Path, agents: List["subprocess.Popen[bytes]"], kind: str) -> None:
    (tmp_path / "real.json").write_text(json.dumps({"transfer": {"enabled": True, "addrs": ["t1:8433"]}}))
    if kind == "symlink":
        (tmp_path / "cfg.json").symlink_to(tmp_path / "real.json")
    else:
        os.mkfifo(tmp_path / "cfg.json")
    agents.append(fake_agent(tmp_path, "-c", "cfg.json"))
    started = time.monotonic()
    source = transfer.learn(HostPaths())
    assert not source.learned and "cannot be read" in source.reason
    assert time.monotonic() - started < 5


def test_a_process_that_is_not_the_hosts_is_not_believed(tmp_path: Path) -> None:
    """A proc root where the agent's /proc entry is not root's: refused before its command
    line is read (the real container case: tests/integration/test_transfer_ping.py)."""
    proc = tmp_path / "proc"
    (proc / "4242").mkdir(parents=True)
    (proc / "4242" / "comm").write_text("falcon-agent\n")
    (proc / "4242" / "cmdline").write_bytes(b"falcon-agent\0-c\0/evil.json\0")
    if os.geteuid() == 0:
        os.chown(proc / "4242", 1000, 1000)
    (tmp_path / "evil.json").write_text(json.dumps({"transfer": {"addrs": ["evil:8433"]}}))
    source = transfer.learn(HostPaths(proc_root=str(proc), host_root=str(tmp_path)))
    assert not source.learned and "falcon-agent 4242" in source.reason
    assert "evil" not in repr(source.addrs)


def test_many_processes_named_falcon_agent_make_one_short_line(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    for pid in range(100, 150):
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "comm").write_text("falcon-agent\n")
        if os.geteuid() == 0:
            os.chown(proc / str(pid), 1000, 1000)
    source = transfer.learn(HostPaths(proc_root=str(proc)))
    assert not source.learned and source.reason.count("falcon-agent") == 3 and "and 47 more" in source.reason


# -- the check around a push -----------------------------------------------------------------


def test_nothing_learned_warns_and_lets_the_push_go(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "container_netstat")
    check = Check(Source(reason="no falcon-agent process under /proc"), 1.0, Deadline.after(5))
    assert check.before() is None
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "proves only that the JSON decoded" in lines[0] and "\n" not in lines[0]


def test_a_configuration_without_addresses_spools(rpc: TransferRpc) -> None:
    why = Check(Source((), "falcon-agent 1: /cfg.json"), 1.0, Deadline.after(5)).before()
    assert why is not None and "forwards pushed items nowhere" in why
    assert rpc.calls == []


def test_transfer_enabled_false_still_asks_the_addresses(rpc: TransferRpc, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "container_netstat")
    check = Check(Source((rpc.addr,), "--agent-config: /cfg.json", enabled=False), 1.0, Deadline.after(5))
    assert check.before() is None and rpc.calls == ["Transfer.Ping"]
    assert "forwards pushed items to" in caplog.text
    rpc.down()
    why = check.before()
    assert why is not None and "no transfer answers" in why and rpc.addr in why


def test_after_asks_again(rpc: TransferRpc) -> None:
    check = Check(Source((rpc.addr,), "--transfer-addr"), 1.0, Deadline.after(5))
    assert check.after() is None
    rpc.down()
    why = check.after()
    assert why is not None and "after the push" in why


def test_doctor_says_what_it_found_and_whether_it_answers() -> None:
    info = transfer.describe(HostPaths(proc_root="/nonexistent"))
    assert info["learned_from"] == "-" and "proves nothing" in info["not_learned"]
