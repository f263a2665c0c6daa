"""Delivery of open-falcon items over HTTP to the falcon-agent, transfer or Nightingale.

What the receivers answer (falcon-plus and Nightingale source; docs/facts.rst, "The open-falcon
push" and "Nightingale and categraf"):

- falcon-agent ``POST /v1/push``: ``200 success`` once the JSON decoded, even if every item is
  invalid or transfer is down; ``400 connot decode body`` for the whole batch if one field has
  the wrong JSON type; ``400 metrics exceed maxMetricValueSize`` above its optional per-request
  item limit. It forwards to transfer synchronously, retrying for up to ~14 s, so the read
  timeout must be longer than that.
- transfer ``POST /api/push``: ``{"msg": "success", "data": {"Total": n, "Invalid": k, ...}}``
  after checking each item on its own: the only reply that says items were dropped.
- Nightingale ``POST /openfalcon/push``: ``{"succ": n, "fail": k, "msg": ...}``, and ``499`` (its
  default ``OverLimitStatusCode``) while its write queue is full.

A 2xx is delivered. A timeout, a refused or broken connection, a 5xx, or a "try later" 4xx (408,
425, 429, 499) is transient: the batch is spooled and a later run replays it. A redirect (never
followed), 401, 403, 404 or 405 says the URL or its credentials are wrong, not the payload: the
batch is kept in the spool as for an outage, and the run exits 6 until the URL is fixed. A 413,
like the agent's "exceed" answer, splits the batch. Any other 4xx (the agent's ``400 connot
decode body``) says the payload is wrong: retrying cannot help, so it is reported and not kept.

Order matters: graph drops a point not newer than the last it holds for a series, so spooled
batches go first, oldest first, and once one cannot be delivered nothing newer is sent.

Since the agent's ``success`` says nothing about transfer, a push to it can be confirmed
(transfer.py asks transfer itself): ``deliver(confirm=...)`` asks once everything went, and
if no transfer answers, what was just sent is kept for the next run, spooled batches included.
A batch delivered twice is stored once: graph keeps one point per series and step and drops
one that is not newer than the last it holds (``modules/graph/api/graph.go handleItems``).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence, Tuple

from container_netstat.falcon import Item
from container_netstat import falcon
from container_netstat.deadline import Deadline, StepTimeout, within
from container_netstat.diagnostics import redact
from container_netstat.errors import PushError
from container_netstat.spool import CorruptBatch, Entry, Spool, SpoolError

log = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:1988/v1/push"
# Statuses that mean "not now" rather than "never": request timeout, too early, too many
# requests, and Nightingale's queue-full answer (pushgw WriterOpt.OverLimitStatusCode = 499).
TRANSIENT_4XX = frozenset({408, 425, 429, 499})
# Statuses (besides every 3xx) that say the request went to the wrong place or without the
# right credentials, whatever it carried: a path the server does not know (404, as Go's
# net/http ServeMux answers for one the agent and transfer never registered), one that takes
# no POST (405), or a proxy in front of the receiver that wants or refuses credentials (401, 403).
WRONG_ADDRESS_4XX = frozenset({401, 403, 404, 405})
# Below this many seconds left in the run, no new request starts.
MIN_BUDGET = 0.5
# A receiver's answer is a word or a small JSON object; read no more than this of it.
MAX_REPLY = 64 * 1024


class Unreachable(PushError):
    """No usable answer (refused, timed out, cut, 5xx, "try later"): spool and retry later."""


class DeadlineReached(Unreachable):
    """The run's deadline left no time for another request."""


class WrongAddress(Unreachable):
    """A redirect, 401, 403, 404 or 405: the URL or its credentials are wrong, not the batch.
    It is kept and replayed like an outage's, once the URL is fixed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class Rejected(PushError):
    """The receiver refused the batch as wrong (a 4xx): retrying it cannot help."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class TooLarge(Rejected):
    """The agent's per-request item limit (maxMetricBodyLenPerRequest), or a 413: send smaller
    batches."""


@dataclass(frozen=True)
class Target:
    """Where and how patiently to push."""

    url: str = DEFAULT_URL
    connect_timeout: float = 3.0
    # The agent pushes to transfer before it answers and retries for up to ~14 s
    # (docs/facts.rst, "The open-falcon push").
    read_timeout: float = 20.0


class UnusableUrl(PushError):
    """A URL no request can use (not http or https, no host, a port out of range)."""


def check_url(url: str) -> None:
    """UnusableUrl, with the URL's credentials hidden, for a target no request can use: every
    run would otherwise spool its items for a later run that cannot send them either."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        usable = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:
        usable = False
    if not usable:
        shown = redact(url) if "://" in url else (f"***@{url.rsplit('@', 1)[1]}" if "@" in url else url)
        raise UnusableUrl(f"{shown!r}: expected http://HOST[:PORT]/PATH or https://...")


@dataclass(frozen=True)
class Reply:
    """What the receiver said about one accepted batch."""

    kind: str  # "agent", "transfer", "nightingale" or "other"
    total: int
    invalid: int
    message: str


class Sender(Protocol):
    """Sends one JSON body of ``count`` items within ``budget`` seconds; HttpSender or a fake."""

    def send(self, body: bytes, count: int, budget: float) -> Reply: ...


@dataclass(frozen=True)
class Outcome:
    """What one run's delivery did; the CLI turns it into an exit code."""

    sent_items: int = 0
    sent_batches: int = 0
    replayed_items: int = 0
    replayed_batches: int = 0
    spooled_items: int = 0
    spooled_batches: int = 0
    waiting_batches: int = 0
    rejected_items: int = 0
    invalid_items: int = 0
    set_aside: int = 0
    wrong_address: int = 0  # requests answered with a redirect, 401, 403, 404 or 405
    dropped_batches: int = 0
    lost_items: int = 0
    kept_batches: int = 0  # sent, but kept for the next run: the push was not confirmed
    kept_items: int = 0
    failure: str = ""


def _one_line(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _count(value: Any, default: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return default
    return int(value)


def interpret(status: int, body: str, sent: int, location: str = "") -> Reply:
    """Classify one HTTP answer: a Reply if delivered, else raise Unreachable (WrongAddress
    included) or Rejected (TooLarge included). ``location`` is a redirect's Location header."""
    text = _one_line(body)
    if 200 <= status < 300:
        return _delivered(body, sent)
    if 300 <= status < 400:
        raise WrongAddress(status, f"redirected to {_one_line(location) or '?'}, not followed")
    if status >= 500 or status in TRANSIENT_4XX:
        raise Unreachable(f"HTTP {status}: {text}")
    if status == 413 or (status == 400 and "exceed" in text):
        raise TooLarge(status, text)
    if status in WRONG_ADDRESS_4XX:
        raise WrongAddress(status, text)
    raise Rejected(status, text)


def _delivered(body: str, sent: int) -> Reply:
    text = body.strip()
    if text == "success":
        return Reply("agent", sent, 0, text)
    try:
        doc = json.loads(text)
    except ValueError:
        return Reply("other", sent, 0, _one_line(text))
    if isinstance(doc, dict):
        data = doc.get("data")
        if isinstance(data, dict) and "Invalid" in data:
            return Reply(
                "transfer",
                _count(data.get("Total"), sent),
                _count(data.get("Invalid"), 0),
                _one_line(str(data.get("Message", doc.get("msg", "")))),
            )
        if "succ" in doc and "fail" in doc:
            succ, fail = _count(doc.get("succ"), 0), _count(doc.get("fail"), 0)
            return Reply("nightingale", succ + fail, fail, _one_line(str(doc.get("msg", ""))))
    return Reply("other", sent, 0, _one_line(text))


class HttpSender:
    """POSTs JSON bodies with requests, each request bounded in total by the budget.

    requests' timeouts bound the connect and each ``recv``, not an answer: a receiver that
    sends one byte a second never trips them. So the host name is resolved once, within the
    connect timeout (``getaddrinfo`` takes none), and each request runs through
    ``deadline.within``, for at most the connect plus the read timeout and never past the
    budget; the answer is read as a stream, at most MAX_REPLY bytes of it.
    """

    def __init__(self, target: Target, resolve: Optional[Callable[..., Any]] = None) -> None:
        import socket

        import requests  # here, not at the top: `collect --dry-run` and `--help` never pay for it

        self.target = target
        self._requests = requests
        self._resolve = resolve or socket.getaddrinfo
        self._resolved = False
        self._abandoned = ""
        self._session = requests.Session()
        # Proxies and .netrc come from the environment, which only the CLI reads; the usual
        # receiver is the agent on 127.0.0.1, which must never go through a proxy.
        self._session.trust_env = False

    def send(self, body: bytes, count: int, budget: float) -> Reply:
        if self._abandoned:
            # The session may still be in use by the request left running.
            raise Unreachable(self._abandoned)
        started = time.monotonic()
        connect = max(0.1, min(self.target.connect_timeout, budget))
        if not self._resolved:
            self._check_name(connect)
        budget -= time.monotonic() - started
        if budget < 0.1:
            raise DeadlineReached("the run's deadline was reached")
        connect = min(connect, budget)
        read = max(0.1, min(self.target.read_timeout, budget))
        total = min(self.target.connect_timeout + self.target.read_timeout, budget)
        try:
            status, text, location = within(total, "the push", lambda: self._post(body, connect, read))
        except StepTimeout as err:
            self._abandoned = f"no answer within {total:.1f} s (an answer still coming: cut off)"
            raise Unreachable(self._abandoned) from err
        except self._requests.Timeout as err:
            raise Unreachable(f"no answer within {read:.1f} s ({type(err).__name__})") from err
        except self._requests.RequestException as err:
            raise Unreachable(_describe(err)) from err
        return interpret(status, text, count, location)

    def _check_name(self, seconds: float) -> None:
        """Resolve the URL's host within ``seconds``: Unreachable, as for an outage, if it cannot be."""
        from urllib.parse import urlsplit

        parts = urlsplit(self.target.url)
        host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
        try:
            within(seconds, "resolving the host name", lambda: self._resolve(host, port))
        except StepTimeout as err:
            raise Unreachable(f"cannot resolve {host!r} within {seconds:.1f} s") from err
        except OSError as err:  # socket.gaierror
            raise Unreachable(f"cannot resolve {host!r}: {err.strerror or err}") from err
        self._resolved = True

    def _post(self, body: bytes, connect: float, read: float) -> "Tuple[int, str, str]":
        response = self._session.post(
            self.target.url,
            data=body,
            # identity: the cap on the reply counts the bytes read, with no decompression after it.
            headers={"Content-Type": "application/json", "Accept-Encoding": "identity"},
            timeout=(connect, read),
            allow_redirects=False,
            stream=True,
        )
        try:
            data = b""
            for chunk in response.iter_content(chunk_size=4096):
                data += chunk
                if len(data) > MAX_REPLY:
                    data = data[:MAX_REPLY]
                    break
            text = data.decode(response.encoding or "utf-8", "replace")
            return response.status_code, text, response.headers.get("Location", "")
        finally:
            response.close()

    def close(self) -> None:
        if not self._abandoned:
            self._session.close()


class Refusing:
    """A sender that sends nothing: every batch is Unreachable for ``reason`` (no transfer
    answers behind the agent), so deliver spools them all, oldest kept first."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def send(self, body: bytes, count: int, budget: float) -> Reply:
        raise Unreachable(self.reason)


def _describe(err: BaseException) -> str:
    """The innermost reason of a requests/urllib3 error, e.g. 'Connection refused'."""
    reason: BaseException = err
    seen = set()
    while id(reason) not in seen:
        seen.add(id(reason))
        inner = getattr(reason, "reason", None) or reason.__cause__ or reason.__context__
        if not isinstance(inner, BaseException):
            break
        reason = inner
    text = str(reason)
    if "] " in text and text.startswith("[Errno"):
        text = text.split("] ", 1)[1]
    return _one_line(f"{type(err).__name__}: {text}")


def batches(items: Sequence[Item], size: int) -> List[List[Item]]:
    """Consecutive slices of at most ``size`` items."""
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


class _Run:
    """The mutable tally of one delivery; frozen into an Outcome at the end."""

    def __init__(self, sender: Sender, spool: Spool, deadline: Deadline) -> None:
        self.sender = sender
        self.spool = spool
        self.deadline = deadline
        self.tally: Dict[str, int] = {}
        self.failure = ""
        self.split_warned = False
        # The spool's files as its one listing found them (Spool.tidy), kept up to date with
        # what this run removes, sets aside and writes.
        self.kept: List[Entry] = []
        # With a confirmation to wait for: the spooled batches delivered, removed only once
        # confirmed, and this run's batches sent, spooled if not.
        self.confirming = False
        self.unconfirmed: List[Tuple[Entry, int]] = []
        self.sent: List[Tuple[int, List[Item]]] = []

    def add(self, key: str, amount: int = 1) -> None:
        self.tally[key] = self.tally.get(key, 0) + amount

    def send(self, items: List[Item]) -> Reply:
        """Deliver one unit, halving it while the agent says it holds too many items."""
        queue = [items]
        total = invalid = 0
        kinds = set()
        while queue:
            part = queue.pop(0)
            budget = self.deadline.remaining()
            if budget < MIN_BUDGET:
                raise DeadlineReached("the run's deadline was reached")
            try:
                reply = self.sender.send(falcon.dumps(part).encode("utf-8"), len(part), budget)
            except TooLarge as err:
                if len(part) < 2:
                    raise
                if not self.split_warned:
                    log.warning("receiver refused %d items in one request (%s): splitting; lower --batch-size",
                                len(part), err.message)
                    self.split_warned = True
                half = len(part) // 2
                queue[:0] = [part[:half], part[half:]]
                continue
            total += reply.total
            invalid += reply.invalid
            kinds.add(reply.kind)
        return Reply("/".join(sorted(kinds)), total, invalid, "")

    def blocked_by(self, err: Unreachable) -> None:
        """Nothing more is sent in this run."""
        self.failure = str(err)
        if isinstance(err, WrongAddress):
            self.add("wrong_address")

    def note_invalid(self, reply: Reply, what: str) -> None:
        if reply.invalid:
            self.add("invalid_items", reply.invalid)
            log.error("receiver (%s) dropped %d of %d items of %s as invalid", reply.kind, reply.invalid,
                      reply.total, what)


def deliver(
    items: Sequence[Item],
    timestamp: int,
    sender: Sender,
    spool: Spool,
    batch_size: int,
    deadline: Deadline,
    where: str = "",
    confirm: Optional[Callable[[], Optional[str]]] = None,
) -> Outcome:
    """Replay the spool oldest first, then send this run's items; spool what could not go.

    ``confirm``, when given, is asked once anything was delivered: None confirms it, a reason
    keeps what was delivered (the spooled batches stay, this run's are spooled) and is the
    run's failure."""
    run = _Run(sender, spool, deadline)
    run.confirming = confirm is not None
    started = time.monotonic()
    blocked = False
    if _tidy(run):
        _enforce(run)
        blocked = _replay(run)
    pending = batches(items, batch_size)
    for index, batch in enumerate(pending):
        if not blocked:
            try:
                reply = run.send(batch)
            except Unreachable as err:
                blocked = True
                run.blocked_by(err)
            except Rejected as err:
                run.add("rejected_items", len(batch))
                log.error("receiver refused a batch of %d items (%s); it is not retried", len(batch), err)
                continue
            else:
                run.add("sent_items", len(batch))
                run.add("sent_batches")
                run.note_invalid(reply, "a batch of this run")
                if run.confirming:
                    run.sent.append((index, batch))
                continue
        _store(run, batch, timestamp, index)
    if confirm is not None and (run.unconfirmed or run.sent):
        _confirm(run, confirm, timestamp)
    if run.tally.get("spooled_batches"):
        _enforce(run)
    waiting = spool.size(run.kept)[0]
    outcome = Outcome(failure=run.failure, waiting_batches=waiting, **run.tally)
    _summarise(outcome, where, spool, time.monotonic() - started)
    return outcome


def _tidy(run: _Run) -> bool:
    """List the spool once for the whole run; False if it cannot be read."""
    try:
        run.kept = run.spool.tidy()
    except SpoolError as err:
        log.error("spool: %s; sending this run's items only", err)
        return False
    return True


def _enforce(run: _Run) -> None:
    try:
        dropped = run.spool.enforce(run.kept)
    except SpoolError as err:
        log.error("spool: %s", err)
        try:
            run.kept = run.spool.entries()  # part of it may be gone
        except SpoolError:
            run.kept = []
        return
    run.kept = list(dropped.kept)
    if dropped.batches:
        run.add("dropped_batches", dropped.batches)
        ahead = f", {dropped.ahead} stamped later than now: the clock went back" if dropped.ahead else ""
        log.error(
            "spool %s over its bounds: dropped %d undelivered batches (%d older than %d s, %d beyond %d bytes%s)"
            " collected between %s and %s",
            run.spool.directory, dropped.batches, dropped.by_age, run.spool.bounds.max_age, dropped.by_size,
            run.spool.bounds.max_bytes, ahead, _when(dropped.oldest), _when(dropped.newest),
        )


def _replay(run: _Run) -> bool:
    """Send spooled batches oldest first; True if one could not be delivered (stop there)."""
    for entry in [e for e in run.kept if e.pending]:
        try:
            items = run.spool.load(entry)
        except CorruptBatch as err:
            log.warning("spool: corrupt batch moved aside: %s", err)
            _set_aside(run, entry, "corrupt")
            continue
        try:
            reply = run.send(items)
        except Unreachable as err:  # a WrongAddress too: the batch is kept (spool.py)
            run.blocked_by(err)
            return True
        except Rejected as err:
            log.error("receiver refused spooled batch %s (%d items, %s); moved aside, not retried",
                      entry.path.name, len(items), err)
            _set_aside(run, entry, "rejected")
            run.add("rejected_items", len(items))
            continue
        if run.confirming:
            run.unconfirmed.append((entry, len(items)))
        else:
            _forget(run, entry)
        run.add("replayed_items", len(items))
        run.add("replayed_batches")
        run.note_invalid(reply, f"spooled batch {entry.path.name}")
    return False


def _forget(run: _Run, entry: Entry) -> None:
    """Remove a delivered batch from the spool."""
    try:
        run.spool.remove(entry)
    except SpoolError as err:
        # Sent twice at worst: graph keeps the first point of a minute and ignores a repeat.
        log.error("spool: %s; it was delivered and will be sent again", err)
    else:
        run.kept.remove(entry)


def _confirm(run: _Run, confirm: Callable[[], Optional[str]], timestamp: int) -> None:
    """Remove the replayed batches once ``confirm`` says they went on; else keep them, and
    spool this run's sent batches after them, for the next run to send again."""
    why = confirm()
    if why is None:
        for entry, _ in run.unconfirmed:
            _forget(run, entry)
        return
    run.failure = why
    for _, count in run.unconfirmed:
        run.add("kept_batches")
        run.add("kept_items", count)
    for index, batch in run.sent:
        _store(run, batch, timestamp, index)
        run.add("kept_batches")
        run.add("kept_items", len(batch))


def _set_aside(run: _Run, entry: Entry, reason: str) -> None:
    try:
        moved = run.spool.set_aside(entry, reason)
    except SpoolError as err:
        log.error("spool: %s", err)
    else:
        where = run.kept.index(entry)
        run.kept[where:where + 1] = [moved] if moved is not None else []
    run.add("set_aside")


def _store(run: _Run, batch: List[Item], timestamp: int, index: int) -> None:
    try:
        run.kept.append(run.spool.write(batch, timestamp, index))
    except SpoolError as err:
        run.add("lost_items", len(batch))
        log.error("lost %d items: not delivered and %s", len(batch), err)
        return
    run.add("spooled_items", len(batch))
    run.add("spooled_batches")


def _when(stamp: Optional[int]) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp)) if stamp is not None else "?"


def _summarise(outcome: Outcome, where: str, spool: Spool, elapsed: float) -> None:
    if outcome.wrong_address:
        log.error(
            "%s refused the request as sent to the wrong address (%s): fix --falcon-url or its credentials;"
            " %s: %d items of this run spooled, %d batches wait in %s",
            where or "the receiver", outcome.failure, "some data is lost" if outcome.lost_items else "the data is kept",
            outcome.spooled_items, outcome.waiting_batches, spool.directory,
        )
    elif outcome.failure and (outcome.spooled_batches or outcome.waiting_batches):
        log.warning(
            "could not deliver to %s (%s): %d items of this run spooled; %d batches wait in %s",
            where or "the receiver", outcome.failure, outcome.spooled_items, outcome.waiting_batches,
            spool.directory,
        )
    log.info(
        "delivered %d items in %d batches and %d spooled batches (%d items) in %.2f s; %d batches wait",
        outcome.sent_items, outcome.sent_batches, outcome.replayed_batches, outcome.replayed_items, elapsed,
        outcome.waiting_batches,
    )
