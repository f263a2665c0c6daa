"""Compare `container-netstat collect --dry-run` with `nsenter -t PID -n ss` on mixed containers.

    python benchmarks/compare_ss.py [--tool PATH]

Starts 10 containers on --network none (container i holds i connections to an IPv6
listener, leaks i%3 CLOSE_WAIT, leaves 2i TIME_WAIT and has i%4 UDP sockets, all on
127.0.0.1 inside its own namespace), one joined to the first (--network container:)
and one on the host network; prints the tool's numbers beside ss's for each namespace,
then removes them. ss's FIN-WAIT-2 column explains tw: the kernel counts a FIN_WAIT2
socket whose process closed it as a timewait socket.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

IMAGE = "container-netstat/busybox:latest"
LABEL = "container-netstat-compare=1"
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from integration.workloads import hold  # noqa: E402

LEAK_AND_TIME_WAIT = r"""
import socket, time
srv = socket.socket(); srv.bind(("127.0.0.1", 9000)); srv.listen(64)
kept = []
for _ in range({leak}):                 # peer closes, the server never does: CLOSE_WAIT
    c = socket.create_connection(("127.0.0.1", 9000)); a, _ = srv.accept(); c.close(); kept.append(a)
for _ in range({tw}):                   # client closes first: TIME_WAIT
    c = socket.create_connection(("127.0.0.1", 9000)); a, _ = srv.accept(); c.close(); a.recv(1); a.close()
print("ready", flush=True)
time.sleep(600)
"""


def sh(*args: str) -> str:
    return subprocess.run(args, capture_output=True, text=True, check=True).stdout.strip()


def ss(pid: str, *args: str) -> int:
    out = sh("nsenter", "-t", pid, "-n", "ss", "-H", *args)
    return len(out.splitlines()) if out else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tool", default=str(Path(sys.executable).parent / "container-netstat"))
    args = parser.parse_args()
    names = [f"cmp-{i}" for i in range(10)]
    holders: List[subprocess.Popen] = []
    try:
        for name in names:
            sh("docker", "run", "-d", "--name", name, "--network", "none", "--label", LABEL, IMAGE, "sleep", "100000")
        sh("docker", "run", "-d", "--name", "cmp-join", "--network", "container:cmp-0", "--label", LABEL, IMAGE,
           "sleep", "100000")
        sh("docker", "run", "-d", "--name", "cmp-host", "--network", "host", "--label", LABEL, IMAGE, "sleep", "100000")
        for i, name in enumerate(names):
            pid = sh("docker", "inspect", "-f", "{{.State.Pid}}", name)
            for code in (hold(i, udp=i % 4), LEAK_AND_TIME_WAIT.format(leak=i % 3, tw=2 * i)):
                p = subprocess.Popen(["nsenter", "-t", pid, "-n", sys.executable, "-c", code],
                                     stdout=subprocess.PIPE, text=True)
                assert p.stdout is not None and p.stdout.readline().strip() == "ready"
                holders.append(p)
        items = json.loads(sh(args.tool, "collect", "--dry-run", "--include", LABEL.replace("=1", "=*")))
        values: Dict[str, Dict[str, int]] = {}
        for item in items:
            values.setdefault(item["tags"], {})[item["metric"].replace("container.net.", "")] = item["value"]
        print(f"{'namespace':<15}{'estab':>6}{'ss E+CW':>8}{'tw':>4}{'ss TW':>6}{'ss FW2':>7}"
              f"{'inuse':>6}{'ss !TW':>7}{'udp':>4}{'ss -u':>6}")
        for name in names:
            pid = sh("docker", "inspect", "-f", "{{.State.Pid}}", name)
            v = values[f"container={name}"]
            tw = ss(pid, "-tan", "state", "time-wait")
            print(f"{name + (' +join' if name == 'cmp-0' else ''):<15}{v['tcp.established']:>6}"
                  f"{ss(pid, '-tan', 'state', 'established') + ss(pid, '-tan', 'state', 'close-wait'):>8}"
                  f"{v['tcp.timewait']:>4}{tw:>6}{ss(pid, '-tan', 'state', 'fin-wait-2'):>7}"
                  f"{v['tcp.inuse']:>6}{ss(pid, '-tan') - tw:>7}{v['udp.inuse']:>4}{ss(pid, '-uan'):>6}")
        print("namespaces reported:", ", ".join(sorted(t for t in values if t)))
    finally:
        for p in holders:
            p.kill()
        ids = sh("docker", "ps", "-aq", "--filter", f"label={LABEL}").split()
        if ids:
            sh("docker", "rm", "-f", *ids)


if __name__ == "__main__":
    main()
