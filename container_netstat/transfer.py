"""Whether the falcon-agent's transfer answers: where transfer is, and ``Transfer.Ping``.

The agent's ``POST /v1/push`` answers ``success`` once the JSON decoded, whether transfer took
the items or not: falcon-plus ``modules/agent/http/push.go`` calls ``g.SendToTransfer`` and
writes ``success`` unconditionally (docs/facts.rst, "The open-falcon push"). So the agent's
answer cannot tell a delivered batch from a lost one, and this module asks transfer itself.

Where transfer is, in this order (the first that gives an answer wins):

1. ``--transfer-addr HOST:PORT`` (repeatable);
2. the agent's configuration file named by ``--agent-config``, read through the host root;
3. the running falcon-agent of the host: a process under the proc root whose ``comm`` is
   ``falcon-agent`` (falcon-plus ``Makefile`` builds ``bin/agent/falcon-agent``), believed only
   when ``runtime_dirs.HostProcesses`` says it is the host's (root, the host's mount and pid
   namespaces, no container's cgroup): a container can run a process of that name with any
   command line and configuration. Its ``-c`` flag (``modules/agent/main.go``: Go's ``flag``,
   default ``cfg.json``, relative to its working directory) names the file; the working
   directory is ``readlink /proc/<pid>/cwd``, read only for a process of the host's, and the
   file is read at that path under the host root, never through ``/proc/<pid>/root``.

Every file is read through hostfile.py (a regular file, at most 1 MiB, never blocking). A
file the agent names is not followed through a symbolic link (under ``--host-root`` an
absolute link would lead out of the host's tree); one named by ``--agent-config`` is.

The file is the agent's JSON (``modules/agent/g/cfg.go GlobalConfig``, ``TransferConfig``):
``"transfer": {"enabled": true, "addrs": ["127.0.0.1:8433"], "interval": 60, "timeout": 1000}``.
``enabled`` gates only the agent's own collectors (``modules/agent/cron/collector.go Collect``);
``/v1/push`` forwards to ``addrs`` whatever it says (``g.SendToTransfer`` →
``modules/agent/g/transfer.go SendMetrics``), so the addresses are asked either way, and an
empty list means pushed items go nowhere.

The question is ``Transfer.Ping`` (``modules/transfer/receiver/rpc/rpc_transfer.go``) over
transfer's RPC port: Go's net/rpc with the JSON codec (``rpc.go`` serves
``jsonrpc.NewServerCodec``). One request, ``{"method":"Transfer.Ping","params":[{}],"id":N}``;
the answer ``{"id":N,"result":{"code":0},"error":null}``, one JSON object followed by a newline
(Go's ``json.Encoder``). An answer with the same id and a null error is a transfer that
answers. Each address is asked within ``--connect-timeout`` for the name and the connection
and 2 s for the answer, in total (``deadline.within``) and within the run's deadline; the
addresses are asked in turn until one answers, as the agent tries them in turn.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from container_netstat.deadline import Deadline, StepTimeout, within
from container_netstat.errors import ContainerNetstatError
from container_netstat.hostfile import HostFiles
from container_netstat.settings import HostPaths

log = logging.getLogger(__name__)

AGENT_COMMS = frozenset({"falcon-agent"})
DEFAULT_CONFIG = "cfg.json"  # modules/agent/main.go: flag.String("c", "cfg.json", ...)
PING_METHOD = "Transfer.Ping"
READ_TIMEOUT = 2.0  # Ping does nothing (returns nil): an answer comes at once or not at all
MAX_REPLY = 64 * 1024  # {"id":1,"result":{"code":0},"error":null} is 40 bytes
MIN_BUDGET = 0.1
MAX_NAMED = 3  # processes named in one line


class TransferError(ContainerNetstatError):
    """An address or an agent configuration that cannot be used."""


@dataclass(frozen=True)
class AgentConfig:
    """The ``transfer`` part of the agent's configuration."""

    addrs: Tuple[str, ...]
    enabled: bool


@dataclass(frozen=True)
class Source:
    """Where transfer is, as learned: ``where`` says from what ("" if nothing was learned,
    and ``reason`` says why)."""

    addrs: Tuple[str, ...] = ()
    where: str = ""
    enabled: bool = True
    reason: str = ""

    @property
    def learned(self) -> bool:
        return bool(self.where)


@dataclass(frozen=True)
class Ping:
    """One address's answer to Transfer.Ping."""

    addr: str
    alive: bool
    reason: str = ""


# --- pure parsers -------------------------------------------------------------------------


def split_addr(addr: str) -> Tuple[str, int]:
    """(host, port) of ``host:port`` or ``[v6]:port``, as Go's net.SplitHostPort takes them;
    TransferError otherwise. An empty host is the local system, as Go's Dial takes it."""
    text = addr.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1:end + 2] != ":":
            raise TransferError(f"{addr!r}: expected HOST:PORT or [IPv6]:PORT")
        host, port = text[1:end], text[end + 2:]
    else:
        host, sep, port = text.rpartition(":")
        if not sep or ":" in host:
            raise TransferError(f"{addr!r}: expected HOST:PORT or [IPv6]:PORT")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise TransferError(f"{addr!r}: the port must be a number from 1 to 65535")
    if any(c.isspace() or c in "/@" for c in host):
        raise TransferError(f"{addr!r}: not a host name or address")
    return host or "127.0.0.1", int(port)


def parse_config(text: str) -> AgentConfig:
    """The ``transfer`` object of the agent's JSON configuration; TransferError if the file is
    not one the agent would start with (``g.ParseConfig`` exits on a JSON error) or its
    ``transfer`` part has the wrong types."""
    try:
        doc = json.loads(text)
    except ValueError as err:
        raise TransferError(f"not JSON ({err})") from err
    if not isinstance(doc, dict):
        raise TransferError("not a JSON object")
    part = doc.get("transfer")
    if part is None:
        return AgentConfig((), False)
    if not isinstance(part, dict):
        raise TransferError("its \"transfer\" is not an object")
    addrs = part.get("addrs")
    if addrs is None:
        addrs = []
    if not isinstance(addrs, list) or not all(isinstance(a, str) for a in addrs):
        raise TransferError("its \"transfer\".\"addrs\" is not a list of strings")
    for addr in addrs:
        split_addr(addr)
    enabled = part.get("enabled", False)
    if not isinstance(enabled, bool):
        raise TransferError("its \"transfer\".\"enabled\" is not true or false")
    # Duplicates (cfg.example.json lists 127.0.0.1:8433 twice) are asked once.
    return AgentConfig(tuple(dict.fromkeys(addrs)), enabled)


def config_flag(argv: Sequence[str]) -> str:
    """The value of ``-c`` on a falcon-agent command line, as Go's ``flag`` package parses it:
    ``-c x``, ``-c=x``, ``--c x``, ``--c=x``, the last one winning; parsing stops at the first
    argument that is not a flag, or after ``--``. The agent's other flags (``-v``,
    ``-check``) are booleans and take no value."""
    value = DEFAULT_CONFIG
    args = list(argv[1:])
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--" or not arg.startswith("-") or arg == "-":
            break
        name = arg[2:] if arg.startswith("--") else arg[1:]
        name, sep, given = name.partition("=")
        if name == "c":
            if sep:
                value = given
            elif i + 1 < len(args):
                value = args[i + 1]
                i += 1
        i += 1
    return value


def ping_request(seq: int) -> bytes:
    """One Transfer.Ping call in net/rpc/jsonrpc's request form; NullRpcRequest is ``{}``."""
    return json.dumps({"method": PING_METHOD, "params": [{}], "id": seq}, separators=(",", ":")).encode() + b"\n"


def parse_reply(line: bytes, seq: int) -> Optional[str]:
    """None if ``line`` is jsonrpc's answer to call ``seq`` without an error, else why not."""
    text = line.decode("utf-8", "replace").strip()
    try:
        doc = json.loads(text)
    except ValueError:
        return f"not a JSON-RPC answer: {_short(text)!r}"
    if not isinstance(doc, dict) or "id" not in doc:
        return f"not a JSON-RPC answer: {_short(text)!r}"
    if doc.get("id") != seq or isinstance(doc.get("id"), bool):
        return f"an answer to another call (id {_short(str(doc.get('id')))!r}, not {seq})"
    if doc.get("error") is not None:
        return f"it says {_short(str(doc.get('error')))!r}"
    return None


def _short(text: str, limit: int = 80) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


# --- where transfer is --------------------------------------------------------------------


def _under_root(root: str, path: str) -> str:
    """A path on the host, as seen from here under the host root."""
    return os.path.join(root, os.path.normpath("/" + path).lstrip("/"))


def _read_config(files: HostFiles, root: str, path: str, follow: bool, who: str) -> Source:
    local = _under_root(root, path)
    text = files.text(local, follow=follow)
    if text is None:
        return Source(reason=f"{who}: {path} cannot be read at {local}")
    try:
        config = parse_config(text)
    except TransferError as err:
        return Source(reason=f"{who}: {path}: {err}")
    return Source(config.addrs, f"{who}: {path}", config.enabled)


def agent_pids(proc_root: str) -> List[int]:
    """The pids under the proc root whose comm is a falcon-agent's, lowest first."""
    try:
        names = os.listdir(proc_root)
    except OSError:
        return []
    found = []
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(os.path.join(proc_root, name, "comm"), "rb") as f:
                comm = f.read(64).rstrip(b"\n").decode("utf-8", "replace")
        except OSError:
            continue
        if comm in AGENT_COMMS:
            found.append(int(name))
    return sorted(found)


def _from_running_agent(paths: HostPaths, files: HostFiles) -> Source:
    from container_netstat.runtime_dirs import HostProcesses, parse_cmdline

    hosts = HostProcesses(paths.proc_root, files)
    refused: List[str] = []
    for pid in agent_pids(paths.proc_root):
        who = f"falcon-agent {pid}"
        why = hosts.refusal(pid, who)
        if why is not None:
            # A container's process of that name is not the host's agent: its command line
            # and its files are not read.
            log.debug("%s: %s: its configuration is not read", who, why)
            refused.append(f"{who}: {why}")
            continue
        raw = files.read(os.path.join(paths.proc_root, str(pid), "cmdline"))
        try:
            cwd = os.readlink(os.path.join(paths.proc_root, str(pid), "cwd"))
        except OSError as err:
            refused.append(f"{who}: its working directory cannot be read ({err.strerror or err})")
            continue
        if raw is None:
            refused.append(f"{who}: gone")
            continue
        config = os.path.join(cwd, config_flag(parse_cmdline(raw)))
        found = _read_config(files, paths.host_root, config, follow=False, who=who)
        if found.learned:
            return found
        refused.append(found.reason)
    if refused:
        # A tenant can name any number of its processes falcon-agent: the line names three.
        more = f"; and {len(refused) - MAX_NAMED} more" if len(refused) > MAX_NAMED else ""
        return Source(reason="; ".join(refused[:MAX_NAMED]) + more)
    return Source(reason=f"no falcon-agent process under {paths.proc_root}")


def learn(paths: HostPaths, addrs: Sequence[str] = (), agent_config: Optional[str] = None,
          files: Optional[HostFiles] = None) -> Source:
    """Where transfer is: ``addrs`` (--transfer-addr), else the file ``agent_config``
    (--agent-config), else the running falcon-agent's configuration; or why nothing is known."""
    if addrs:
        return Source(tuple(dict.fromkeys(addrs)), "--transfer-addr")
    files = files or HostFiles()
    if agent_config:
        return _read_config(files, paths.host_root, agent_config, follow=True, who="--agent-config")
    return _from_running_agent(paths, files)


# --- asking transfer ----------------------------------------------------------------------


def ping(addr: str, connect_timeout: float, deadline: Deadline, seq: int = 1) -> Ping:
    """Transfer.Ping at ``addr``: the name's resolution and the connection within
    ``connect_timeout``, the answer within READ_TIMEOUT, all in total and within the deadline."""
    budget = deadline.remaining()
    if budget < MIN_BUDGET:
        return Ping(addr, False, "the run's deadline was reached")
    try:
        host, port = split_addr(addr)
    except TransferError as err:
        return Ping(addr, False, str(err))
    connect = max(MIN_BUDGET, min(connect_timeout, budget))
    total = min(connect + READ_TIMEOUT, budget)
    try:
        why = within(total, PING_METHOD, lambda: _ask(host, port, connect, READ_TIMEOUT, seq))
    except StepTimeout:
        why = f"no complete answer within {total:.1f} s"
    return Ping(addr, why is None, why or "")


def _ask(host: str, port: int, connect: float, read: float, seq: int) -> Optional[str]:
    try:
        sock = socket.create_connection((host, port), timeout=connect)
    except socket.timeout:
        return f"no connection within {connect:.1f} s"
    except socket.gaierror as err:
        return f"cannot resolve {host!r}: {err.strerror or err}"
    except OSError as err:
        return err.strerror or str(err)
    try:
        sock.settimeout(read)
        sock.sendall(ping_request(seq))
        data = b""
        while b"\n" not in data and len(data) <= MAX_REPLY:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except socket.timeout:
        return f"no answer within {read:.1f} s"
    except OSError as err:
        return err.strerror or str(err)
    finally:
        sock.close()
    if not data:
        return "the connection was closed without an answer"
    if b"\n" not in data and len(data) > MAX_REPLY:
        return f"an answer longer than {MAX_REPLY} bytes"
    return parse_reply(data.split(b"\n", 1)[0], seq)


def ping_any(addrs: Sequence[str], connect_timeout: float, deadline: Deadline) -> Tuple[Ping, ...]:
    """Ask each address in turn until one answers; the answers, in order."""
    answers: List[Ping] = []
    for seq, addr in enumerate(addrs, 1):
        answer = ping(addr, connect_timeout, deadline, seq)
        answers.append(answer)
        if answer.alive:
            break
    return tuple(answers)


def summary(answers: Sequence[Ping]) -> str:
    """``addr: reason`` of each address that did not answer, for one log line."""
    return "; ".join(f"{a.addr}: {a.reason}" for a in answers if not a.alive) or "no address"


# --- the check around one push ------------------------------------------------------------


class Check:
    """The question asked before and after a push to the falcon-agent (outputs.PushOutput).

    ``before`` returns None when the push may go (a transfer answers, or nothing is known:
    then one warning says the agent's answer proves nothing), else why the batches are spooled
    instead; ``after`` returns None when a transfer still answers, else why what was just sent
    is kept for the next run (push.deliver's ``confirm``)."""

    def __init__(self, source: Source, connect_timeout: float, deadline: Deadline) -> None:
        self.source = source
        self.connect_timeout = connect_timeout
        self.deadline = deadline

    @classmethod
    def learn(cls, paths: HostPaths, addrs: Sequence[str], agent_config: Optional[str],
              connect_timeout: float, deadline: Deadline) -> "Check":
        return cls(learn(paths, addrs, agent_config), connect_timeout, deadline)

    @property
    def learned(self) -> bool:
        return self.source.learned

    def before(self) -> Optional[str]:
        source = self.source
        if not source.learned:
            log.warning("no transfer address learned (%s): the falcon-agent's answer proves only that the "
                        "JSON decoded, not that transfer took the items (--transfer-addr, --agent-config)",
                        source.reason)
            return None
        if not source.addrs:
            return f"{source.where} lists no transfer address: the falcon-agent forwards pushed items nowhere"
        if not source.enabled:
            log.info("%s: transfer.enabled is false: the agent sends none of its own metrics, but forwards "
                     "pushed items to %s", source.where, ", ".join(source.addrs))
        answers = ping_any(source.addrs, self.connect_timeout, self.deadline)
        if any(a.alive for a in answers):
            log.debug("transfer answers %s at %s (%s)", PING_METHOD,
                      next(a.addr for a in answers if a.alive), source.where)
            return None
        return (f"no transfer answers {PING_METHOD} ({summary(answers)}; from {source.where}): "
                "the falcon-agent would answer success and drop the items")

    def after(self) -> Optional[str]:
        answers = ping_any(self.source.addrs, self.connect_timeout, self.deadline)
        if any(a.alive for a in answers):
            return None
        return (f"no transfer answered {PING_METHOD} after the push ({summary(answers)}): "
                "what was sent is kept for the next run")


def describe(paths: Optional[HostPaths] = None, connect_timeout: float = 1.0, seconds: float = 5.0) -> Dict[str, Any]:
    """What ``doctor`` shows: where transfer was learned from, and whether it answers."""
    source = learn(paths or HostPaths())
    info: Dict[str, Any] = {"learned_from": source.where or "-", "addrs": list(source.addrs)}
    if not source.learned:
        info["not_learned"] = (f"{source.reason}: a push to the falcon-agent goes ahead, and its answer proves "
                               "nothing (--transfer-addr, --agent-config)")
        return info
    info["enabled"] = source.enabled
    answers = ping_any(source.addrs, connect_timeout, Deadline.after(seconds))
    info["ping"] = [{"addr": a.addr, "answers": a.alive, "reason": a.reason} for a in answers]
    return info
