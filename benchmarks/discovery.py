"""What finding the runtimes' directories adds to ``--runtime proc``, in-process.

Times, alternately, the /proc scan alone (``discovery.scan``), the same scan noting the
runtime daemons (``discovery.scan_node`` with ``runtime_dirs.DAEMONS``), and that plus
reading the daemons' command lines and configuration files (``runtime_dirs.find``).
``--extra N`` first starts N idle processes outside any container (``sleep``), to show
the cost per host process; they are killed at the end.

    python benchmarks/discovery.py                  # this host as it is, 200 rounds
    python benchmarks/discovery.py --extra 2000     # with 2000 more host processes
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time
from typing import Callable, Dict, List

from container_netstat import runtime_dirs
from container_netstat.procfs import ProcFS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--extra", type=int, default=0, help="idle host processes to start first")
    args = parser.parse_args()
    sleepers = [subprocess.Popen(["sleep", "3600"]) for _ in range(args.extra)]
    try:
        proc = ProcFS("/proc")
        view = runtime_dirs.HostView()

        def discovery() -> None:
            node = discovery.scan_node(proc, runtime_dirs.DAEMONS)
            runtime_dirs.find("/proc", node.daemons, view)

        cases: Dict[str, Callable[[], object]] = {
            "scan": lambda: discovery.scan(proc),
            "scan + daemons": lambda: discovery.scan_node(proc, runtime_dirs.DAEMONS),
            "scan + daemons + find": discovery,
        }
        times: Dict[str, List[float]] = {name: [] for name in cases}
        for _ in range(args.rounds):
            for name, case in cases.items():
                start = time.perf_counter()
                case()
                times[name].append(time.perf_counter() - start)
        node = discovery.scan_node(proc, runtime_dirs.DAEMONS)
        processes = len([p for p in os.listdir("/proc") if p.isdigit()])
        in_containers = sum(len(m) for m in node.containers.values())
        print(f"{processes} processes, {in_containers} in {len(node.containers)} containers, "
              f"daemons {sorted(node.daemons.values())}; medians of {args.rounds} rounds:")
        base = statistics.median(times["scan"])
        for name, values in times.items():
            median = statistics.median(values)
            print(f"  {name:24} {median * 1000:7.2f} ms  (+{(median - base) * 1000:.2f} ms)")
    finally:
        for sleeper in sleepers:
            sleeper.kill()
            sleeper.wait()


if __name__ == "__main__":
    main()
