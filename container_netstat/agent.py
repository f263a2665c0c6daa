"""The name the falcon-agent reports its host under: ``GET /proc/kernel/hostname``.

falcon-plus ``modules/agent/http/kernel.go`` answers that path with ``g.Hostname()``
(``modules/agent/g/cfg.go``): the ``hostname`` of the agent's configuration, else the
``FALCON_ENDPOINT`` environment variable, else the OS host name. ``AutoRender``
(``modules/agent/http/http.go``) writes ``{"msg":"success","data":"<name>"}``, or
``{"msg":"<error>"}``, still with status 200, when the OS host name cannot be read. The agent
sends its own host metrics under that name, so items pushed through it belong there too.

The agent is asked only when the push URL is an agent's (path ``/v1/push``), once per run,
with the connect timeout and a read timeout of at most 2 s, the whole question bounded by their
sum and by the run's deadline (a name that does not resolve, an answer sent a byte at a time).
The request uses the standard library's http.client, not requests: a run that prints
(``--dry-run``) with ``--runtime proc`` never imports requests, and the question is one GET
with no redirect to follow and no proxy to honour.
"""

from __future__ import annotations

import base64
import json
import logging
import socket
from dataclasses import dataclass
from typing import Dict, Optional
from urllib.parse import unquote, urlsplit, urlunsplit

from container_netstat import falcon
from container_netstat.deadline import Deadline, StepTimeout, within
from container_netstat.push import MIN_BUDGET, _one_line
from container_netstat.spool import Spool, SpoolError

log = logging.getLogger(__name__)

PUSH_PATH = "/v1/push"
HOSTNAME_PATH = "/proc/kernel/hostname"
READ_TIMEOUT = 2.0
MAX_ANSWER = 64 * 1024  # a name is at most 255 bytes; read no more than this of any answer


@dataclass(frozen=True)
class Answer:
    """The agent's name for this host, or None and why not."""

    name: Optional[str]
    reason: str = ""
    refused: bool = False  # nothing listens there: no agent runs at that address


def hostname_url(push_url: str) -> Optional[str]:
    """Where the agent behind ``push_url`` says its name; None if that is not an agent's push URL."""
    try:
        parts = urlsplit(push_url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path != PUSH_PATH:
        return None
    return urlunsplit((parts.scheme, parts.netloc, HOSTNAME_PATH, "", ""))


def is_safe(name: str) -> bool:
    """A non-empty endpoint that the items' own rules (falcon.sanitize) leave as it is."""
    return bool(name) and falcon.sanitize(name, falcon.MAX_FIELD_BYTES) == name


def parse(status: int, body: str) -> Answer:
    """The name in one answer to ``GET /proc/kernel/hostname``, or why there is none."""
    text = _one_line(body)
    if status != 200:
        return Answer(None, f"HTTP {status}: {text}" if text else f"HTTP {status}")
    try:
        doc = json.loads(body)
    except ValueError:
        return Answer(None, f"not JSON: {text}")
    if not isinstance(doc, dict):
        return Answer(None, f"not a JSON object: {text}")
    if doc.get("msg") != "success":
        return Answer(None, f"it says {_one_line(str(doc.get('msg')), 120)!r}")
    name = doc.get("data")
    if not isinstance(name, str) or not name:
        return Answer(None, "no name in its answer")
    if not is_safe(name):
        return Answer(None, f"its name {_one_line(name, 80)!r} is not a safe endpoint "
                            f"([A-Za-z0-9_.:@+-], at most {falcon.MAX_FIELD_BYTES} bytes)")
    return Answer(name)


def ask(url: str, connect_timeout: float, read_timeout: float, deadline: Deadline) -> Answer:
    """One GET of ``url`` (from hostname_url), credentials in it sent as basic auth.

    The socket timeouts bound the connect and each ``recv``; the whole question (the name's
    resolution, the connect, the answer however slowly it comes) is bounded by their sum and
    by the deadline through ``deadline.within``."""
    budget = deadline.remaining()
    if budget < MIN_BUDGET:
        return Answer(None, "the run's deadline was reached")
    connect = max(0.1, min(connect_timeout, budget))
    read = max(0.1, min(read_timeout, READ_TIMEOUT, budget))
    total = min(connect + read, budget)
    try:
        return within(total, "the agent's name", lambda: _ask(url, connect, read))
    except StepTimeout:
        return Answer(None, f"no complete answer within {total:.1f} s")


def _ask(url: str, connect: float, read: float) -> Answer:
    import http.client

    parts = urlsplit(url)
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = kind(str(parts.hostname), parts.port, timeout=connect)
    phase = f"no connection within {connect:.1f} s"
    try:
        conn.connect()
        phase = f"no answer within {read:.1f} s"
        if conn.sock is not None:
            conn.sock.settimeout(read)
        conn.request("GET", parts.path, headers=_auth(parts.username, parts.password))
        response = conn.getresponse()
        status, body = response.status, response.read(MAX_ANSWER)
    except socket.timeout:
        return Answer(None, phase)
    except ConnectionRefusedError as err:
        return Answer(None, err.strerror or "Connection refused", refused=True)
    except (OSError, http.client.HTTPException) as err:
        why = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        return Answer(None, _one_line(f"{type(err).__name__}: {why}"))
    finally:
        conn.close()
    return parse(status, body.decode("utf-8", "replace"))


def _auth(username: Optional[str], password: Optional[str]) -> Dict[str, str]:
    """Basic auth from the URL's user information, percent-decoded, as requests sends it."""
    if username is None:
        return {}
    pair = f"{unquote(username)}:{unquote(password or '')}".encode("utf-8")
    return {"Authorization": "Basic " + base64.b64encode(pair).decode("ascii")}


def endpoint(push_url: str, connect_timeout: float, read_timeout: float, deadline: Deadline,
             spool: Optional[Spool]) -> Optional[str]:
    """This run's endpoint when ``push_url`` is a falcon-agent's: the name it gives now, else the
    one it gave last (kept in the spool, when there is one), else None: the caller then uses the
    host name. Not asking, or an answer without a usable name, is said in one line on stderr:
    a warning, or info when nothing listens there (no agent on this host)."""
    url = hostname_url(push_url)
    if url is None:
        return None
    answer = ask(url, connect_timeout, read_timeout, deadline)
    shown = _without_credentials(url)
    if answer.name is not None:
        log.debug("endpoint %r, from the falcon-agent at %s", answer.name, shown)
        if spool is not None:
            try:
                spool.remember_name(answer.name)
            except SpoolError as err:
                log.warning("spool: %s; the agent's name is not kept for a run that cannot ask it", err)
        return answer.name
    last = spool.remembered_name() if spool is not None else None
    if last is not None and not is_safe(last):
        last = None
    carried = f"the name it gave last, {last!r}" if last else f"this host's name, {socket.gethostname()!r}"
    log.log(logging.INFO if answer.refused else logging.WARNING,
            "no host name from the falcon-agent at %s (%s): items carry %s; --endpoint sets one",
            shown, answer.reason, carried)
    return last


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    host = f"[{parts.hostname}]" if parts.hostname and ":" in parts.hostname else parts.hostname
    netloc = f"{host}:{parts.port}" if parts.port else str(host)
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
