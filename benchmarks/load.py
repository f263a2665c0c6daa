"""Load: one run over N containers (default 1000), its memory and deadline, and a complete output.

    python benchmarks/load.py [N] [--keep] [--tool PATH]

Brings up the benchmark fleet (fleet.py; --reuse keeps one of the right size), then:
1. ``collect --dry-run`` under ``/usr/bin/time -v``: wall, peak RSS, items, namespaces,
   and no container failed;
2. the same against the naive collector (naive.py), for scale;
3. a push to a receiver that answers like transfer (tests/receiver.py, on 127.0.0.1):
   every item accepted, none invalid;
4. a push to a receiver that never answers, with ``--deadline 10``: the run ends by
   its deadline (exit 5) with every item spooled.
Removes the fleet at the end unless --keep. Needs root and the test image.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import fleet  # noqa: E402
from receiver import AGENT, TRANSFER, Receiver  # noqa: E402


def timed(cmd: List[str]) -> Dict[str, Any]:
    """Run cmd under /usr/bin/time -v; wall (s), peak RSS (MiB), exit code and stdout."""
    with tempfile.NamedTemporaryFile("r") as report:
        start = time.monotonic()
        proc = subprocess.run(["/usr/bin/time", "-v", "-o", report.name, *cmd], capture_output=True, text=True)
        wall = time.monotonic() - start
        rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", report.read()).group(1))  # type: ignore[union-attr]
    return {"wall": wall, "rss_mib": rss / 1024, "exit": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}


def collector_values(stdout: str) -> Dict[str, int]:
    return {i["metric"]: i["value"] for i in json.loads(stdout) if not i["tags"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("n", type=int, nargs="?", default=1000)
    parser.add_argument("--keep", action="store_true", help="leave the fleet running")
    parser.add_argument("--reuse", action="store_true", help="keep a running fleet of the right size")
    parser.add_argument("--tool", default=str(Path(sys.executable).parent / "container-netstat"))
    args = parser.parse_args()
    tool = [args.tool, "collect"]

    fleet.up(args.n, reuse=args.reuse)
    try:
        ours = [timed([*tool, "--dry-run"]) for _ in range(3)]
        naive = [timed([sys.executable, str(HERE / "naive.py")]) for _ in range(2)]
        best = min(ours, key=lambda r: r["wall"])
        values = collector_values(best["stdout"])
        items = len(json.loads(best["stdout"]))
        print(f"N={args.n}: dry-run {best['wall']:.2f} s, peak RSS {best['rss_mib']:.1f} MiB, exit {best['exit']}, "
              f"{items} items, {values['container.net.collector.namespaces']} namespaces of "
              f"{values['container.net.collector.containers']} containers, "
              f"{values['container.net.collector.failed']} failed")
        nb = min(naive, key=lambda r: r["wall"])
        print(f"N={args.n}: naive {nb['wall']:.2f} s, peak RSS {nb['rss_mib']:.1f} MiB")
        assert all(r["exit"] == 0 for r in ours), [r["stderr"] for r in ours]
        assert values["container.net.collector.failed"] == 0

        receiver = Receiver().start()
        try:
            with tempfile.TemporaryDirectory() as spool:
                run = timed([*tool, "--falcon-url", receiver.url(TRANSFER), "--spool-dir", spool])
                got = len(receiver.items())
                print(f"N={args.n}: push to transfer {run['wall']:.2f} s, exit {run['exit']}, "
                      f"{got} items received, problems {len(receiver.problems())}")
                assert run["exit"] == 0 and got >= items - 50 and not receiver.problems()

                receiver.slow(120)
                run = timed([*tool, "--falcon-url", receiver.url(AGENT), "--spool-dir", spool, "--deadline", "10"])
                spooled = len([f for f in os.listdir(spool) if f.endswith(".json.gz")])
                print(f"N={args.n}: silent receiver, --deadline 10: ended after {run['wall']:.2f} s, "
                      f"exit {run['exit']}, {spooled} batches spooled")
                assert run["exit"] == 5 and run["wall"] < 10 + 5 and spooled > 0
        finally:
            receiver.stop()
    finally:
        if not args.keep:
            fleet.down()


if __name__ == "__main__":
    main()
