"""The figures docs/operating.rst quotes for the spool, computed from real runs.

Each figure is parsed out of the document and compared with what a real run gives on real
containers: the items per namespace (with a listener, without one, without the states
group), the gzipped size of a spooled batch of 1000 items from busy and from idle
containers, and the figures the document derives from those (a day of 1000 items a minute,
a host of 270 namespaces, how long the default --spool-max-bytes lasts). A changed catalogue
or batch format fails here until the document says what a run does.
"""

from __future__ import annotations

import gzip
import json
import re
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from conftest import IMAGE, TEST_LABEL, remove_all
from container_netstat import units
from container_netstat.spool import Bounds

pytestmark = pytest.mark.docker

OPERATING = Path(__file__).resolve().parent.parent.parent / "docs" / "operating.rst"
BUSY, IDLE = 26, 28  # enough namespaces for one full batch of 1000 items each (39 and 36 items apiece)
BATCH = 1000
SIZE_TOLERANCE = 0.10  # gzip sizes move with the values' digits from run to run

# A server that has served: busybox httpd on 8080 (a listener), 20 requests (TIME_WAIT,
# counters that moved), then it holds.
SERVED = ("httpd -p 8080 && i=0; while [ $i -lt 20 ]; do wget -q -O /dev/null http://127.0.0.1:8080/; "
          "i=$((i+1)); done; touch /tmp/ready; exec sleep 100000")


def quoted() -> Dict[str, float]:
    """The figures of "The spool" in docs/operating.rst, by name."""
    text = " ".join(OPERATING.read_text().split())
    patterns = {
        "busy_kib": r"1000 items take about ([\d.]+) KiB from busy containers",
        "idle_kib": r"and ([\d.]+) KiB from idle ones",
        "day_mib": r"a day of 1000 items a minute is about ([\d.]+) MiB",
        "listener": r"a namespace gives (\d+) items with a listener",
        "no_listener": r"(\d+) without one",
        "no_states": r"\((\d+) without the ``states`` group\)",
        "host_items": r"a host of 270 container namespaces, all with a listener, emits ([\d,]+) items a minute",
        "hours": r"the 64 MiB default holds about (\d+) hours of it",
    }
    found = {}
    for name, pattern in patterns.items():
        match = re.search(pattern, text)
        assert match, f"docs/operating.rst no longer says {pattern!r}"
        found[name] = float(match.group(1).replace(",", ""))
    return found


def collect(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "container_netstat", "collect", *args],
                          capture_output=True, text=True, timeout=timeout)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again once returned: connections are refused


@pytest.fixture(scope="module")
def fleet(docker_client: Any) -> Iterator[Dict[str, Any]]:
    run_id = uuid.uuid4().hex[:8]
    started: List[Any] = []
    try:
        for role, count, command in (("busy", BUSY, SERVED), ("idle", IDLE, "exec sleep 100000")):
            for i in range(count):
                started.append(docker_client.containers.run(
                    IMAGE, ["sh", "-c", command], name=f"cnt-{run_id}-{role}-{i}", detach=True,
                    network_mode="none", labels={TEST_LABEL: run_id, "figures-role": f"{role}-{run_id}"}))
        end = time.monotonic() + 120
        for container in started[:BUSY]:
            while container.exec_run(["test", "-f", "/tmp/ready"]).exit_code != 0:
                assert time.monotonic() < end, f"{container.name} never served its requests"
                time.sleep(0.2)
        yield {"run_id": run_id, "names": {c.name: c.labels["figures-role"].split("-")[0] for c in started}}
    finally:
        remove_all(started)


def items_per_namespace(fleet: Dict[str, Any], *args: str) -> Dict[str, Counter]:
    """role -> Counter of items per namespace, from a real --dry-run."""
    result = collect("--dry-run", "--include", f"{TEST_LABEL}={fleet['run_id']}", *args)
    assert result.returncode == 0, result.stderr
    per: Counter = Counter(item["tags"] for item in json.loads(result.stdout) if item["tags"])
    by_role: Dict[str, Counter] = {"busy": Counter(), "idle": Counter()}
    for tags, count in per.items():
        name = tags.split("container=", 1)[1].split(",", 1)[0]
        by_role[fleet["names"][name]][count] += 1
    return by_role


def spooled_kib_per_batch(fleet: Dict[str, Any], role: str, spool: Path) -> Tuple[float, int]:
    """KiB of a spooled batch of exactly BATCH items, from a real push that cannot be delivered."""
    result = collect("--falcon-url", f"http://127.0.0.1:{closed_port()}/v1/push", "--endpoint", "figures",
                     "--spool-dir", str(spool), "--batch-size", str(BATCH), "--deadline", "30",
                     "--include", f"figures-role={role}-{fleet['run_id']}")  # one --include: they add up
    assert result.returncode == 5, result.stderr  # not delivered, spooled
    sizes = {}
    for path in spool.glob("*.json.gz"):
        batch = json.loads(gzip.decompress(path.read_bytes()))
        sizes[len(batch)] = path.stat().st_size
        mine = [i for i in batch if i["tags"]]
        assert mine and all(f"container=cnt-{fleet['run_id']}-{role}-" in i["tags"] for i in mine)
    assert BATCH in sizes, sizes
    return sizes[BATCH] / 1024, sum(sizes)


def test_items_per_namespace_are_what_the_docs_say(fleet: Dict[str, Any]) -> None:
    doc = quoted()
    default = items_per_namespace(fleet)
    assert default["busy"] == Counter({int(doc["listener"]): BUSY})
    assert default["idle"] == Counter({int(doc["no_listener"]): IDLE})
    without = items_per_namespace(fleet, "--metrics", "basic,counters")
    assert without["busy"] + without["idle"] == Counter({int(doc["no_states"]): BUSY + IDLE})


def test_a_spooled_batch_of_1000_items_weighs_what_the_docs_say(fleet: Dict[str, Any], tmp_path: Path) -> None:
    doc = quoted()
    busy, _ = spooled_kib_per_batch(fleet, "busy", tmp_path / "busy")
    idle, _ = spooled_kib_per_batch(fleet, "idle", tmp_path / "idle")
    print(f"spooled per {BATCH} items: busy {busy:.2f} KiB, idle {idle:.2f} KiB")
    assert abs(doc["busy_kib"] - busy) <= SIZE_TOLERANCE * busy, (doc["busy_kib"], busy)
    assert abs(doc["idle_kib"] - idle) <= SIZE_TOLERANCE * idle, (doc["idle_kib"], idle)
    assert busy > idle  # bigger values, longer digits


def test_the_figures_derived_in_the_docs_follow_from_the_quoted_ones() -> None:
    doc = quoted()
    # 1440 batches of 1000 items a day.
    assert doc["day_mib"] == round(1440 * doc["busy_kib"] / 1024, 1)
    assert doc["host_items"] == 270 * doc["listener"]
    default_kib = Bounds().max_bytes / 1024
    assert units.format_quantity(Bounds().max_bytes, units.SIZE_UNITS) == "64M"
    minutes = default_kib / (doc["host_items"] / 1000 * doc["busy_kib"])
    assert doc["hours"] == round(minutes / 60)
