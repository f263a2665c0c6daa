"""Compare `container-netstat collect --dry-run` with `nsenter -t PID -n ss` on mixed containers.

    python benchmarks/compare_ss.py [--tool PATH]

Starts 10 containers on --network none (container i holds i connections to an IPv6
listener, leaks i%3 CLOSE_WAIT, leaves 2i TIME_WAIT and has i%4 UDP sockets, all on
127.0.0.1 inside its own namespace), one joined to the first (--network container:)
and one on the host network (odd containers also hold a listener with backlog 2 that never
accepts, with i clients); prints the tool's numbers beside ss's for each namespace, then
removes them. ss's FIN-WAIT-2 column explains tw: the kernel counts a FIN_WAIT2 socket whose
process closed it as a timewait socket.

The second table compares the states group: every per-state count with ``ss -tan``, the
listener figures with ``ss -ltn`` (Recv-Q, Send-Q), the port-pressure count with ``ss -tan``
grouped by peer, and the sock_diag path's values with the /proc path's (the same run
without CAP_SYS_ADMIN, ``--tcp-states``) for every item both emit.
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


STUCK = r"""
import socket, time
srv = socket.socket(); srv.bind(("127.0.0.1", 9100)); srv.listen(2)    # never accepts
cs = []
for _ in range({k}):
    c = socket.socket(); c.setblocking(False); c.connect_ex(("127.0.0.1", 9100)); cs.append(c)
time.sleep(1.5)
print("ready", flush=True)
time.sleep(600)
"""
SS_STATES = {"ESTAB": "established", "SYN-SENT": "syn_sent", "SYN-RECV": "syn_recv", "FIN-WAIT-1": "fin_wait1",
             "FIN-WAIT-2": "fin_wait2", "TIME-WAIT": "time_wait", "UNCONN": "close", "CLOSE-WAIT": "close_wait",
             "LAST-ACK": "last_ack", "LISTEN": "listen", "CLOSING": "closing"}


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
            codes = [hold(i, udp=i % 4), LEAK_AND_TIME_WAIT.format(leak=i % 3, tw=2 * i)]
            if i % 2:
                codes.append(STUCK.format(k=i))
            for code in codes:
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
        states_table(args.tool, names, values)
    finally:
        for p in holders:
            p.kill()
        ids = sh("docker", "ps", "-aq", "--filter", f"label={LABEL}").split()
        if ids:
            sh("docker", "rm", "-f", *ids)


def ss_rows(pid: str, *args: str) -> List[List[str]]:
    out = sh("nsenter", "-t", pid, "-n", "ss", "-Hn", *args)
    return [line.split() for line in out.splitlines() if line.strip()]


def states_table(tool: str, names: List[str], values: Dict[str, Dict[str, int]]) -> None:
    """The states group beside ss, and the sock_diag path beside the /proc path."""
    proc_items = json.loads(sh("setpriv", "--bounding-set=-sys_admin", "--inh-caps=-sys_admin", tool, "collect",
                               "--dry-run", "--tcp-states", "--include", LABEL.replace("=1", "=*")))
    by_proc: Dict[str, Dict[str, int]] = {}
    for item in proc_items:
        if item["counterType"] == "GAUGE":
            by_proc.setdefault(item["tags"], {})[item["metric"].replace("container.net.", "")] = item["value"]
    print()
    print(f"{'namespace':<10}{'CW':>4}{'ss':>4}{'listen':>7}{'ss':>4}{'queue':>6}{'ss':>4}{'fill%':>6}{'ss':>5}"
          f"{'peer':>5}{'ss':>4}{'11 states = ss':>16}{'proc = diag':>13}")
    for name in names:
        pid = sh("docker", "inspect", "-f", "{{.State.Pid}}", name)
        v = values[f"container={name}"]
        tcp = ss_rows(pid, "-ta")
        counts = {state: 0 for state in SS_STATES.values()}
        for row in tcp:
            counts[SS_STATES[row[0]]] += 1
        listeners = [(int(r[1]), int(r[2])) for r in ss_rows(pid, "-tl")]
        fills = [q * 100 // max(b, 1) for q, b in listeners]
        peers: Dict[str, int] = {}
        for row in tcp:
            if row[0] != "LISTEN" and not row[4].endswith(":*"):
                peer = row[4].replace("[::ffff:", "").replace("]", "")
                peers[peer] = peers.get(peer, 0) + 1
        states_equal = all(v[f"tcp.state.{s}"] == n for s, n in counts.items())
        proc = by_proc[f"container={name}"]
        shared = [k for k in proc if k in v]
        paths_equal = all(proc[k] == v[k] for k in shared)
        print(f"{name:<10}{v['tcp.state.close_wait']:>4}{counts['close_wait']:>4}{v['tcp.state.listen']:>7}"
              f"{len(listeners):>4}{v.get('tcp.listen.queue_max', '-'):>6}{max((q for q, _ in listeners), default='-'):>4}"
              f"{v.get('tcp.listen.fill_max_pct', '-'):>6}{max(fills, default='-'):>5}"
              f"{v['tcp.ports.peer_max']:>5}{max(peers.values(), default=0):>4}"
              f"{'yes' if states_equal else 'NO':>16}{('yes' if paths_equal else 'NO') + f' ({len(shared)})':>13}")


if __name__ == "__main__":
    main()
