"""Open-falcon items: the JSON array the falcon-agent, transfer and Nightingale accept.

Rules from the real agent and transfer (docs/facts.rst, "The open-falcon push"):
- ``timestamp`` and ``step`` must be JSON integers: one float or string makes the
  agent reject the whole batch with ``400 connot decode body``.
- tags are ``k=v,k2=v2``; transfer strips spaces, splits on ``,`` then on the first
  ``=``, so ``,`` ``=`` and spaces in a value corrupt the tags; graph drops series
  with ``\\r \\n ' " >`` or non-printable characters; the API splits a counter at its
  first ``/``. Values are therefore reduced to a safe character set.
- the index keeps ``endpoint`` and ``metric/tags`` in varchar(255): each is kept
  within 255 bytes; a long value is cut and given a hash, so two long names that
  share a beginning stay two series.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any, Dict, Iterable, Iterator, List

from container_netstat.records import Tags
from container_netstat.records import Sample

MAX_FIELD_BYTES = 255
MAX_TAG_VALUE = 64
_UNSAFE = re.compile(r"[^A-Za-z0-9_.:@+-]")

Item = Dict[str, Any]


def sanitize(value: str, limit: int = MAX_TAG_VALUE) -> str:
    """Reduce a tag value or endpoint to ``[A-Za-z0-9_.:@+-]``, non-empty, at most ``limit`` bytes."""
    safe = _UNSAFE.sub("_", value) or "_"
    if len(safe) <= limit:
        return safe
    import hashlib  # rare: only for values over the limit

    digest = hashlib.sha1(value.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{safe[: limit - 9]}-{digest}"


@lru_cache(maxsize=4096)  # the same few tags repeat for every metric of a namespace
def format_tags(tags: Tags) -> str:
    """``k=v,...`` sorted by key, every value sanitized."""
    return ",".join(f"{sanitize(k, 32)}={sanitize(v)}" for k, v in sorted(tags))


def to_item(sample: Sample, endpoint: str, timestamp: int, step: int) -> Item:
    """One open-falcon item; integers where the agent demands them."""
    return {
        "endpoint": endpoint,
        "metric": sample.metric,
        "timestamp": int(timestamp),
        "step": int(step),
        "value": int(sample.value),
        "counterType": sample.counter_type,
        "tags": format_tags(sample.tags),
    }


def build_items(samples: Iterable[Sample], endpoint: str, timestamp: int, step: int) -> List[Item]:
    """The payload for one run, with the endpoint sanitized once."""
    safe_endpoint = sanitize(endpoint, MAX_FIELD_BYTES)
    timestamp, step = int(timestamp), int(step)  # once, not once per item
    items = [to_item(s, safe_endpoint, timestamp, step) for s in samples]
    for item in items:
        # metric names are ours and short, tags are capped: this holds by construction.
        assert len(item["metric"]) + 1 + len(item["tags"]) <= MAX_FIELD_BYTES, item
    return items


def dumps(items: List[Item]) -> str:
    """The JSON text of a payload; NaN is not JSON, so it is refused."""
    return json.dumps(items, allow_nan=False, separators=(",", ":"))


def iter_dumps(items: List[Item], chunk: int = 1000) -> Iterator[str]:
    """The same JSON text as ``dumps``, in pieces, so a large payload is never one big string."""
    yield "["
    for start in range(0, len(items), chunk):
        part = dumps(items[start : start + chunk])[1:-1]
        yield ("," if start else "") + part
    yield "]\n"
