"""Wall and CPU time of reading a fleet's namespaces with 1, 2 and 4 worker threads.

    python benchmarks/workers.py [--rounds 10]     # on a running fleet (fleet.py up N --all-tcp)

In one process, ``namespaces.read_namespaces`` over the benchmark fleet's containers
(label ``container-netstat-bench``), groups basic and states, in alternating rounds; the
medians are printed. Discovery and start-up are left out: this is the part the workers
change. Every configuration must give the same TCP states for every namespace.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import docker  # noqa: E402

from container_netstat.namespaces import read_namespaces  # noqa: E402
from container_netstat.pids import PidResolver  # noqa: E402
from container_netstat.procfs import ProcFS  # noqa: E402
from container_netstat.records import Container  # noqa: E402
from container_netstat.tcp_reader import TcpReader  # noqa: E402

LABEL = "container-netstat-bench"


def fleet() -> List[Container]:
    client = docker.from_env()
    found = client.containers.list(filters={"label": LABEL})
    return [Container(c.id, c.name, c.attrs["HostConfig"]["NetworkMode"], c.labels, c.attrs["State"]["Pid"])
            for c in found]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--workers", default="1,2,4")
    args = parser.parse_args()
    containers = fleet()
    proc = ProcFS()
    counts = [int(w) for w in args.workers.split(",")]
    times: Dict[int, List[Tuple[float, float]]] = {w: [] for w in counts}
    seen: Dict[int, object] = {}
    for _ in range(args.rounds):
        for workers in counts:
            reader = TcpReader(proc)
            reader.probe()
            wall, cpu = time.perf_counter(), time.process_time()
            snapshot = read_namespaces(containers, PidResolver(proc), proc, {"basic", "states"}, reader,
                                       workers=workers)
            times[workers].append((time.perf_counter() - wall, time.process_time() - cpu))
            reader.close()
            seen[workers] = [(ns.owner.name, ns.readings.tcp.summary.states if ns.readings.tcp else None)
                             for ns in snapshot.namespaces]
    first = seen[counts[0]]
    dumped = sum(1 for _, states in first if states is not None)  # type: ignore[attr-defined]
    print(f"{len(containers)} containers, {len(first)} namespaces, {dumped} with states")  # type: ignore[arg-type]
    for workers in counts:
        assert seen[workers] == first, f"workers={workers} read other states"
        wall = statistics.median(w for w, _ in times[workers]) * 1000
        cpu = statistics.median(c for _, c in times[workers]) * 1000
        print(f"workers={workers}: wall {wall:.1f} ms, CPU {cpu:.1f} ms (medians of {args.rounds})")


if __name__ == "__main__":
    main()
