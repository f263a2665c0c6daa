"""The fixed start-up cost of one run, from ``python -X importtime``.

    python benchmarks/importtime.py                 # container-netstat collect --dry-run, 15 runs
    python benchmarks/importtime.py --depth 4 --min-ms 1 -- python benchmarks/naive.py

Runs the command (a Python program) under ``-X importtime`` several times and prints the
import tree with each module's median cumulative and self time, down to ``--depth``
levels, leaving out modules cheaper than ``--min-ms``. Also prints the interpreter's
own start-up (``-c pass``) and the whole run's wall time without ``-X importtime``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional, Tuple

Entry = Tuple[int, str, int, int]  # depth, module, self us, cumulative us


def parse(stderr: str) -> List[Entry]:
    entries: List[Entry] = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "imported package" in line:
            continue
        self_us, cumulative, name = line[len("import time:"):].split("|", 2)
        depth = (len(name) - len(name.lstrip(" ")) - 1) // 2
        entries.append((depth, name.strip(), int(self_us), int(cumulative)))
    return entries


def wall(command: List[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/")
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--depth", type=int, default=3, help="levels of the import tree to show (default 3)")
    parser.add_argument("--min-ms", type=float, default=2.0, help="hide modules cheaper than this (default 2)")
    parser.add_argument("command", nargs="*", help="a Python program and its arguments "
                        "(default: container-netstat collect --dry-run)")
    args = parser.parse_args(argv)
    command = args.command or [os.path.join(os.path.dirname(sys.executable), "container-netstat"),
                               "collect", "--dry-run"]
    if command[0] in ("python", "python3"):
        command = command[1:]
    runs: List[List[Entry]] = []
    for _ in range(args.runs):
        done = subprocess.run([sys.executable, "-X", "importtime", *command], capture_output=True, text=True, cwd="/")
        runs.append(parse(done.stderr))
    cumulative: Dict[str, List[int]] = {}
    selfs: Dict[str, List[int]] = {}
    for entries in runs:
        for _, name, self_us, cum_us in entries:
            cumulative.setdefault(name, []).append(cum_us)
            selfs.setdefault(name, []).append(self_us)
    total = statistics.median(sum(c for d, _, _, c in entries if d == 0) for entries in runs)
    print(f"command: {' '.join(command)}")
    print(f"interpreter start-up (python -c pass): {wall([sys.executable, '-c', 'pass'], args.runs) * 1000:.0f} ms wall")
    print(f"the whole run, without -X importtime:  {wall([sys.executable, *command], args.runs) * 1000:.0f} ms wall")
    print(f"all imports (sum of top-level cumulative, median of {args.runs}): {total / 1000:.1f} ms")
    print(f"{'cumulative':>10} {'self':>7}  module")
    for depth, name, _, _ in runs[0]:
        if depth > args.depth:
            continue
        cum = statistics.median(cumulative[name]) / 1000
        if cum < args.min_ms:
            continue
        print(f"{cum:8.1f}ms {statistics.median(selfs[name]) / 1000:5.1f}ms  {'  ' * depth}{name}")


if __name__ == "__main__":
    main()
