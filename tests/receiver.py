"""A real HTTP receiver on 127.0.0.1 that answers like falcon-agent, transfer and Nightingale.

Paths and rules (falcon-plus modules/agent/http/push.go, modules/transfer/http/api.go,
modules/transfer/receiver/rpc/rpc_transfer.go; Nightingale pushgw/router/router_openfalcon.go;
docs/facts.rst, "The open-falcon push" and "Nightingale and categraf"):

- ``POST /v1/push`` (agent): Go's encoding/json into ``[]*MetricValue``: a top-level object, a
  string endpoint/metric/counterType/tags of another type, or a step/timestamp that is not an
  integer literal (``60.0``, ``"60"``) fails the WHOLE batch with ``400 connot decode body``;
  an empty body gets ``400 body is blank``; more items than ``max_items`` get ``400 metrics
  exceed maxMetricValueSize``; anything else ``200 success``. The items then go through
  transfer's checks, whose verdicts are recorded (the real agent would lose them silently).
- ``POST /api/push`` (transfer): the same decoding (``400 decode error``), then per-item checks
  and ``{"msg":"success","data":{"Message":"ok","Total":n,"Invalid":k,"Latency":0}}``.
- ``POST /openfalcon/push`` (Nightingale v6): a single object or an array; ``timestamp`` must be
  an integer; metric names and tag keys are checked after ``.``/``-`` become ``_``;
  ``{"succ":n,"fail":k,"msg":"received"}``.
- ``GET /proc/kernel/hostname`` (agent, modules/agent/http/kernel.go): the name the agent
  reports its host under, ``{"msg":"success","data":"<name>"}`` with status 200, or, as
  AutoRender (modules/agent/http/http.go) writes an error, ``{"msg":"<error>"}``, still 200.
  The name is this host's, as for an agent without ``hostname`` in its configuration;
  ``hostname(name=..., error=..., status=..., delay=..., body=...)`` changes it. Any other GET
  is a 404.

Failure modes for tests: ``down()``/``up()`` (connection refused, same port), ``fail(status)``,
``redirect(status, location)``, ``slow(seconds)``, ``cut()`` (closes the connection half way
through the request body), ``limit(max_items=N)`` (the agent's ``exceed`` answer) or
``limit(max_bytes=N)`` (413, as a proxy's body size limit answers), ``drip(interval)`` (the
status line and headers at once, then the body one byte every ``interval`` seconds; with
``headers=True`` the status line and headers one byte at a time; for the push, the hostname
lookup or both): a peer that never lets a per-recv timeout expire.

Transfer's RPC port (``TransferRpc``): a real TCP server speaking Go's net/rpc JSON codec as
transfer's ``modules/transfer/receiver/rpc/rpc.go`` serves it: one JSON object per request,
``{"method","params":[arg],"id"}``, answered ``{"id","result","error"}`` and a newline on the
same connection. ``Transfer.Ping`` answers ``{"code":0}``; ``Transfer.Update`` runs transfer's
checks and answers ``TransferResponse`` (``{"Message":"ok","Total":n,"Invalid":k,"Latency":0}``)
and records the items; an unknown method gets Go's ``rpc: can't find method``. ``down()``/``up()``
(refused, same port), ``silent()`` (accepts, never answers), ``drip(interval)``, ``answer(line, close)``
(a fixed line instead, then hang up if ``close``), ``stop_after(pings)`` (answers that many
Pings, then stops: transfer dying between two questions). With ``Receiver(transfer=...)``, the agent stand-in forwards each
decoded push to it by a real ``Transfer.Update`` call before answering, and answers
``success`` whatever came of it, as ``modules/agent/http/push.go`` does.

Run it by hand: ``python3 tests/receiver.py --port 1988`` prints each push's verdict.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional, Set, Tuple

AGENT = "/v1/push"
HOSTNAME = "/proc/kernel/hostname"
TRANSFER = "/api/push"
NIGHTINGALE = "/openfalcon/push"

_INT64 = (-(2**63), 2**63 - 1)
_STRING_FIELDS = {"endpoint": "endpoint", "metric": "metric", "countertype": "counterType", "tags": "tags"}
_INT_FIELDS = {"step": "step", "timestamp": "timestamp"}
# strconv.ParseFloat's decimal syntax (hex floats left out: nobody sends them).
_GO_FLOAT = re.compile(r"^[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|inf|infinity|nan)$", re.IGNORECASE)
_PROM_METRIC = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_PROM_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_GRAPH_BAD = re.compile(r"[\r\n'\">]|[^\x20-\x7e]")


class DecodeError(Exception):
    """Where Go's encoding/json would have returned an error."""


def _no_constants(name: str) -> Any:
    raise DecodeError(f"invalid character in {name}: NaN and Infinity are not JSON")


def _json(body: bytes) -> Any:
    # Go replaces invalid UTF-8 with U+FFFD instead of failing.
    try:
        return json.loads(body.decode("utf-8", "replace"), parse_constant=_no_constants)
    except ValueError as err:
        raise DecodeError(str(err)) from err


def go_decode(body: bytes) -> List[Optional[Dict[str, Any]]]:
    """Decode as the agent and transfer do, into []*MetricValue with Go's zero values."""
    doc = _json(body)
    if doc is None:
        return []
    if not isinstance(doc, list):
        raise DecodeError(f"cannot unmarshal {type(doc).__name__} into []*model.MetricValue")
    return [None if raw is None else _go_item(raw) for raw in doc]


def _go_item(raw: Any) -> Dict[str, Any]:
    if not isinstance(raw, dict):
        raise DecodeError(f"cannot unmarshal {type(raw).__name__} into model.MetricValue")
    item: Dict[str, Any] = {"endpoint": "", "metric": "", "counterType": "", "tags": "", "step": 0,
                            "timestamp": 0, "value": None}
    for key, value in raw.items():
        name = key.lower()  # Go matches JSON keys to fields case-insensitively
        if name in _STRING_FIELDS:
            if value is not None and not isinstance(value, str):
                raise DecodeError(f"cannot unmarshal {type(value).__name__} into field {key} of type string")
            if value is not None:
                item[_STRING_FIELDS[name]] = value
        elif name in _INT_FIELDS:
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not _INT64[0] <= value <= _INT64[1]:
                raise DecodeError(f"cannot unmarshal {value!r} into field {key} of type int64")
            item[_INT_FIELDS[name]] = value
        elif name == "value":
            item["value"] = value
    return item


def transfer_verdict(item: Optional[Dict[str, Any]]) -> Optional[str]:
    """None if transfer keeps the item, else why it counts it Invalid (RecvMetricValues)."""
    if item is None:
        return "null item"
    if item["metric"] == "kernel.hostname":
        return "metric kernel.hostname"
    if not item["metric"] or not item["endpoint"]:
        return "empty metric or endpoint"
    if item["counterType"] not in ("GAUGE", "COUNTER", "DERIVE"):
        return f"counterType {item['counterType']!r}"
    value = item["value"]
    if value == "":
        return "empty value"
    if item["step"] <= 0:
        return f"step {item['step']}"
    if len(item["metric"].encode()) + len(item["tags"].encode()) > 510:
        return "metric+tags longer than 510 bytes"
    if isinstance(value, str):
        return None if _GO_FLOAT.match(value) else f"value {value!r} is not a float"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"value {value!r} is not a number"
    return None


def dicted_tags(tags: str) -> Dict[str, str]:
    """Transfer's DictedTagstring: drop spaces, split on ',', then on the first '='."""
    result: Dict[str, str] = {}
    for piece in tags.replace(" ", "").split(",") if tags else []:
        key, sep, value = piece.partition("=")
        if sep:
            result[key] = value
    return result


def sorted_tags(tags: Dict[str, str]) -> str:
    return ",".join(f"{k}={tags[k]}" for k in sorted(tags))


def graph_problems(item: Dict[str, Any]) -> List[str]:
    """Why graph or the index would lose or mangle a series that transfer accepted (docs/facts.rst, "The open-falcon push")."""
    problems = []
    tags = dicted_tags(item["tags"])
    counter = item["metric"] + ("/" + sorted_tags(tags) if tags else "")
    if sorted_tags(tags) != item["tags"]:
        problems.append(f"tags {item['tags']!r} become {sorted_tags(tags)!r}")
    for name, text in (("endpoint", item["endpoint"]), ("metric", item["metric"]), ("tags", item["tags"])):
        if _GRAPH_BAD.search(text):
            problems.append(f"{name} {text!r} has a character graph refuses")
    if "/" in item["metric"]:
        problems.append(f"metric {item['metric']!r} has '/', where the API splits a counter")
    if len(item["endpoint"].encode()) > 255:
        problems.append("endpoint longer than 255 bytes")
    if len(counter.encode()) > 255:
        problems.append(f"counter {counter[:40]}... longer than 255 bytes")
    return problems


def nightingale_verdict(raw: Any) -> Optional[str]:
    """None if Nightingale v6 keeps the item (FalconMetric.Clean and ToProm), else why not."""
    metric = raw.get("metric") or ""
    if not isinstance(metric, str) or not metric:
        return "metric is blank"
    value = raw.get("value")
    if isinstance(value, str):
        if not _GO_FLOAT.match(value):
            return f"unparseable value {value!r}"
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"unparseable value {value!r}"
    if not _PROM_METRIC.match(metric.replace(".", "_").replace("-", "_")):
        return f"invalid metric name {metric!r}"
    tags = raw.get("tags") or ""
    for piece in tags.split(",") if isinstance(tags, str) else []:
        key, sep, _ = piece.partition("=")
        if sep and not _PROM_LABEL.match(key.replace(".", "_").replace("-", "_")):
            return f"invalid tag name {key!r}"
    return None


def nightingale_decode(body: bytes) -> List[Dict[str, Any]]:
    """easyjson into FalconMetric(Arr): one object or an array; integer timestamp; strings."""
    doc = _json(body)
    arr = doc if isinstance(doc, list) else [doc]
    for raw in arr:
        if not isinstance(raw, dict):
            raise DecodeError(f"cannot decode {type(raw).__name__} as FalconMetric")
        stamp = raw.get("timestamp")
        if stamp is not None and (isinstance(stamp, bool) or not isinstance(stamp, int)):
            raise DecodeError(f"timestamp {stamp!r} is not an integer")
        for key in ("metric", "endpoint", "tags"):
            if raw.get(key) is not None and not isinstance(raw[key], str):
                raise DecodeError(f"{key} {raw[key]!r} is not a string")
    return arr


@dataclass(frozen=True)
class Push:
    """One request as the receiver saw it."""

    path: str
    status: int
    reply: str
    items: List[Dict[str, Any]]
    invalid: List[Tuple[int, str]]
    problems: List[str]
    at: float


@dataclass
class _Behaviour:
    status: int = 0  # 0: answer normally
    body: str = ""
    delay: float = 0.0
    cut: bool = False
    max_items: int = 0
    max_bytes: int = 0  # above: 413, as a proxy's body limit answers (nginx client_max_body_size)
    location: str = ""
    drip: float = 0.0  # > 0: answer one byte every this many seconds (see Receiver.drip)
    drip_headers: bool = False


@dataclass(frozen=True)
class _Hostname:
    """How GET /proc/kernel/hostname answers."""

    name: Any = None  # None: this host's name; anything else is sent as "data" as it is
    error: str = ""  # non-empty: {"msg": error}, as AutoRender answers a failed g.Hostname()
    status: int = 200
    delay: float = 0.0
    body: Optional[str] = None  # sent as it is, instead of any of the above
    drip: float = 0.0
    drip_headers: bool = False


def _shut(connections: "List[socket.socket]", close: bool = False) -> None:
    """Shut down (and close) open connections: their peers see a reset or end of stream."""
    for conn in connections:
        try:
            conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        if close:
            conn.close()


class TransferRpc:
    """Transfer's RPC port on 127.0.0.1 (the module docstring); ``updates`` records each
    Transfer.Update's items, ``calls`` every method called."""

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self.calls: List[str] = []
        self.updates: List[List[Dict[str, Any]]] = []
        self.mode = "ok"  # ok, silent, drip, answer
        self.drip_interval = 1.0
        self.line = b""
        self.close_after = False
        self.pings_left: Optional[int] = None
        self._lock = threading.Lock()
        self._listener: Optional[socket.socket] = None
        self._connections: Set[socket.socket] = set()
        self._stopping = threading.Event()

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "TransferRpc":
        self._stopping.clear()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def stop(self) -> None:
        """Close the listening socket and every connection: callers get refused or reset."""
        self._stopping.set()
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        with self._lock:
            connections, self._connections = list(self._connections), set()
        _shut(connections, close=True)

    down = stop

    def up(self) -> None:
        self.start()

    def ok(self) -> None:
        self.mode = "ok"

    def stop_after(self, pings: int) -> None:
        self.pings_left = pings

    def silent(self) -> None:
        self.mode = "silent"

    def drip(self, interval: float = 1.0) -> None:
        self.mode, self.drip_interval = "drip", interval

    def answer(self, line: bytes, close: bool = False) -> None:
        """Send ``line`` to every call instead of an answer; with ``close``, then hang up."""
        self.mode, self.line, self.close_after = "answer", line, close

    def items(self) -> List[Dict[str, Any]]:
        with self._lock:
            return [item for batch in self.updates for item in batch]

    def __enter__(self) -> "TransferRpc":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _accept(self, listener: socket.socket) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                self._connections.add(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        decoder = json.JSONDecoder()
        buffer = ""
        try:
            while not self._stopping.is_set():
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buffer += chunk.decode("utf-8", "replace")
                while True:
                    text = buffer.lstrip()
                    try:
                        request, end = decoder.raw_decode(text)
                    except ValueError:
                        break  # an incomplete object: read on
                    buffer = text[end:]
                    if not self._reply(conn, request):
                        return
        except OSError:
            return
        finally:
            with self._lock:
                self._connections.discard(conn)
            conn.close()

    def _reply(self, conn: socket.socket, request: Any) -> bool:
        method = request.get("method") if isinstance(request, dict) else None
        seq = request.get("id") if isinstance(request, dict) else None
        with self._lock:
            self.calls.append(str(method))
        if self.mode == "silent":
            self._stopping.wait(3600)
            return False
        if self.mode == "answer":
            conn.sendall(self.line)
            return not self.close_after
        params = request.get("params") if isinstance(request, dict) else None
        result: Any = None
        error: Optional[str] = None
        if method == "Transfer.Ping":
            result = {"code": 0}
            if self.pings_left is not None:
                self.pings_left -= 1
                if self.pings_left <= 0:
                    self.pings_left = None
                    conn.sendall(_rpc_answer(seq, result, None))
                    self.stop()  # before the caller can ask anything else
                    return False
        elif method == "Transfer.Update" and isinstance(params, list) and len(params) == 1:
            try:
                items = go_decode(json.dumps(params[0]).encode())
            except DecodeError as err:
                error = f"json: {err}"
            else:
                invalid = sum(1 for item in items if transfer_verdict(item))
                with self._lock:
                    self.updates.append([i for i in items if i is not None and not transfer_verdict(i)])
                result = {"Message": "ok", "Total": len(items), "Invalid": invalid, "Latency": 0}
        else:
            error = f"rpc: can't find method {method}"
        line = _rpc_answer(seq, result, error)
        if self.mode == "drip":
            for byte in line:
                if self._stopping.wait(self.drip_interval):
                    return False
                conn.sendall(bytes([byte]))
            return True
        conn.sendall(line)
        return True


def _rpc_answer(seq: Any, result: Any, error: Optional[str]) -> bytes:
    """One answer as Go's jsonrpc server codec writes it: compact JSON, then a newline."""
    return (json.dumps({"id": seq, "result": result, "error": error}, separators=(",", ":")) + "\n").encode()


def forward(addr: str, items: List[Dict[str, Any]], timeout: float = 1.0) -> Optional[str]:
    """One Transfer.Update call, as the agent's ``g.SendMetrics`` makes it: None if transfer
    took the batch, else why not (the agent only logs it)."""
    host, _, port = addr.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as conn:
            conn.settimeout(timeout)
            conn.sendall((json.dumps({"method": "Transfer.Update", "params": [items], "id": 0}) + "\n").encode())
            data = b""
            while b"\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return "connection closed"
                data += chunk
    except OSError as err:
        return str(err)
    answer = json.loads(data.split(b"\n", 1)[0])
    return None if answer.get("error") is None else str(answer["error"])


class Receiver:
    """The server, started in a thread on 127.0.0.1; ``pushes`` records every request."""

    def __init__(self, port: int = 0, transfer: Optional[TransferRpc] = None) -> None:
        self.port = port
        self.transfer = transfer  # the agent stand-in forwards each push there (Transfer.Update)
        self.forwarded: List[Optional[str]] = []  # per agent push forwarded: None, or why it failed
        self.pushes: List[Push] = []
        self.behaviour = _Behaviour()
        self.name_behaviour = _Hostname()
        self.lookups: List[str] = []  # the path of every GET, in order
        self.lookup_auth: List[str] = []  # the Authorization header of every GET ("" if none)
        self._lock = threading.Lock()
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        self._connections: Set[socket.socket] = set()
        self._stopping = threading.Event()

    # -- control ----------------------------------------------------------------------

    def url(self, path: str = AGENT) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> "Receiver":
        self._stopping.clear()
        server = _Server(("127.0.0.1", self.port), _Handler)
        server.receiver = self
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the listening socket and every open connection: clients get refused/reset."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            connections, self._connections = list(self._connections), set()
        _shut(connections)
        if self._thread is not None:
            self._thread.join(5)

    down = stop

    def up(self) -> None:
        self.start()

    def ok(self) -> None:
        self.behaviour = _Behaviour(max_items=self.behaviour.max_items, max_bytes=self.behaviour.max_bytes)

    def fail(self, status: int, body: str = "internal error") -> None:
        self.behaviour = _Behaviour(status=status, body=body)

    def slow(self, seconds: float) -> None:
        self.behaviour = _Behaviour(delay=seconds)

    def redirect(self, status: int, location: str) -> None:
        self.behaviour = _Behaviour(status=status, body="", location=location)

    def hostname(self, name: Any = None, error: str = "", status: int = 200, delay: float = 0.0,
                 body: Optional[str] = None) -> None:
        self.name_behaviour = _Hostname(name, error, status, delay, body)

    def drip(self, interval: float = 1.0, headers: bool = False, push: bool = True, lookup: bool = True) -> None:
        """Answer a byte every ``interval`` seconds: the body (or, with ``headers``, the status
        line and headers too), on POSTs (``push``) and GET /proc/kernel/hostname (``lookup``)."""
        if push:
            self.behaviour = _Behaviour(drip=interval, drip_headers=headers)
        if lookup:
            self.name_behaviour = _Hostname(drip=interval, drip_headers=headers)

    def cut(self) -> None:
        self.behaviour = _Behaviour(cut=True)

    def limit(self, max_items: int = 0, max_bytes: int = 0) -> None:
        self.behaviour = _Behaviour(max_items=max_items, max_bytes=max_bytes)

    # -- results ----------------------------------------------------------------------

    def accepted(self, path: Optional[str] = None) -> List[Push]:
        with self._lock:
            return [p for p in self.pushes if p.status == 200 and (path is None or p.path == path)]

    def items(self, path: Optional[str] = None) -> List[Dict[str, Any]]:
        return [item for push in self.accepted(path) for item in push.items]

    def invalid(self) -> List[Tuple[int, str]]:
        return [bad for push in self.accepted() for bad in push.invalid]

    def problems(self) -> List[str]:
        return [p for push in self.accepted() for p in push.problems]

    def _record(self, push: Push) -> None:
        with self._lock:
            self.pushes.append(push)

    def __enter__(self) -> "Receiver":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class _Server(ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True
    receiver: Receiver

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.receiver._lock:
            self.receiver._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.receiver._lock:
            self.receiver._connections.discard(request)
        super().shutdown_request(request)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as Go's net/http
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        receiver = self.server.receiver
        path = self.path.split("?", 1)[0]
        with receiver._lock:
            receiver.lookups.append(path)
            receiver.lookup_auth.append(self.headers.get("Authorization", ""))
        if path != HOSTNAME:
            self._answer(404, "404 page not found\n")
            return
        how = receiver.name_behaviour
        if how.drip:
            self._drip(how.drip, how.drip_headers)
            return
        if how.delay:
            receiver._stopping.wait(how.delay)
        if how.body is not None:
            text = how.body
        elif how.error:
            text = json.dumps({"msg": how.error})
        else:
            text = json.dumps({"msg": "success", "data": socket.gethostname() if how.name is None else how.name})
        self._answer(how.status, text, "application/json; charset=UTF-8")

    def do_POST(self) -> None:  # noqa: N802 - the base class's name
        receiver = self.server.receiver
        behaviour = receiver.behaviour
        path = self.path.split("?", 1)[0]
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            self._answer(411, "length required\n")
            return
        length = int(self.headers.get("Content-Length") or 0)
        if behaviour.cut:
            self.rfile.read(length // 2)
            receiver._record(Push(path, 0, "cut", [], [], [], time.time()))
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        body = self.rfile.read(length)
        if behaviour.drip:
            receiver._record(Push(path, 0, "drip", [], [], [], time.time()))
            self._drip(behaviour.drip, behaviour.drip_headers)
            return
        if behaviour.max_bytes and length > behaviour.max_bytes:
            receiver._record(Push(path, 413, "too large", [], [], [], time.time()))
            self._answer(413, "Request Entity Too Large\n")
            return
        if behaviour.delay:
            receiver._stopping.wait(behaviour.delay)
        # Recorded before answering, so a client that has its answer finds the record.
        if behaviour.status:
            receiver._record(Push(path, behaviour.status, behaviour.body, [], [], [], time.time()))
            self._answer(behaviour.status, behaviour.body + "\n", location=behaviour.location)
            return
        status, reply, push = self._judge(path, body, behaviour.max_items)
        receiver._record(push)
        self._answer(status, reply, "application/json; charset=UTF-8" if reply.startswith("{") else None)

    def _judge(self, path: str, body: bytes, max_items: int) -> Tuple[int, str, Push]:
        now = time.time()
        if path == NIGHTINGALE:
            try:
                raws = nightingale_decode(body)
            except DecodeError as err:
                return 400, str(err), Push(path, 400, str(err), [], [], [], now)
            invalid = [(i, why) for i, raw in enumerate(raws) if (why := nightingale_verdict(raw))]
            reply = json.dumps({"succ": len(raws) - len(invalid), "fail": len(invalid), "msg": "received"})
            return 200, reply, Push(path, 200, reply, raws, invalid, [], now)
        if path not in (AGENT, TRANSFER):
            return 404, "404 page not found\n", Push(path, 404, "not found", [], [], [], now)
        if not body:
            text = "body is blank" if path == AGENT else "blank body"
            return 400, text + "\n", Push(path, 400, text, [], [], [], now)
        try:
            items = go_decode(body)
        except DecodeError as err:
            text = "connot decode body" if path == AGENT else "decode error"  # sic: the agent's spelling
            return 400, text + "\n", Push(path, 400, f"{text}: {err}", [], [], [], now)
        if path == AGENT and max_items and len(items) > max_items:
            text = "metrics exceed maxMetricValueSize"
            return 400, text + "\n", Push(path, 400, text, [], [], [], now)
        invalid = [(i, why) for i, item in enumerate(items) if (why := transfer_verdict(item))]
        bad = {i for i, _ in invalid}
        kept = [item for i, item in enumerate(items) if i not in bad and item is not None]
        problems = [p for item in kept for p in graph_problems(item)]
        if path == AGENT:
            transfer = self.server.receiver.transfer
            if transfer is not None:
                # modules/agent/http/push.go: g.SendToTransfer, then "success" whatever it did.
                outcome = forward(transfer.addr, [i for i in items if i is not None])
                with self.server.receiver._lock:
                    self.server.receiver.forwarded.append(outcome)
            reply = "success"
        else:
            reply = json.dumps({"msg": "success", "data": {"Message": "ok", "Total": len(items),
                                                           "Invalid": len(invalid), "Latency": 0}})
        return 200, reply, Push(path, 200, reply, [i for i in items if i is not None], invalid, problems, now)

    def _drip(self, interval: float, headers: bool) -> None:
        """A 200 whose body (and, with ``headers``, whose head) comes one byte per ``interval``."""
        size = 100_000
        head = f"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {size}\r\n\r\n".encode()
        self.close_connection = True
        try:
            if not headers:
                self.wfile.write(head)
            for byte in head if headers else b"s" * size:
                if self.server.receiver._stopping.wait(interval):
                    return
                self.wfile.write(bytes([byte]))
        except OSError:
            return

    def _answer(self, status: int, text: str, content_type: Optional[str] = None, location: str = "") -> None:
        data = text.encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type or "text/plain; charset=utf-8")
            if location:
                self.send_header("Location", location)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            self.close_connection = True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, default=1988)
    args = parser.parse_args()
    receiver = Receiver(args.port).start()
    print(f"listening on {receiver.url('')}: {AGENT} {TRANSFER} {NIGHTINGALE}, GET {HOSTNAME}", flush=True)
    seen = 0
    try:
        while True:
            time.sleep(0.2)
            for push in receiver.pushes[seen:]:
                print(f"{push.path} {push.status} items={len(push.items)} invalid={len(push.invalid)} "
                      f"problems={len(push.problems)} {push.invalid[:3]} {push.problems[:3]}", flush=True)
            seen = len(receiver.pushes)
    except KeyboardInterrupt:
        receiver.stop()


if __name__ == "__main__":
    main()
