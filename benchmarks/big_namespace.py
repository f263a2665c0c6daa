"""One namespace holding 100,000 TCP sockets: the run's memory, its CPU against the yardstick's
decode of the same namespace, and its states against ``ss``.

    python benchmarks/big_namespace.py [--sockets 100000] [--rounds 7] [--json FILE]

A real container (``cnb-big-<id>``, ``--network none``, labelled
``container-netstat-bench-big=1``, removed at the end) holds no socket of its own. Each
phase runs, in alternating order, ``--rounds`` times each: ``container-netstat collect
--dry-run --include NAME`` and the yardstick ``floor.py --states --include NAME`` (one
legacy sock_diag dump, decoded serially, standard library only), each a whole process under
``/usr/bin/time -v``:

1. the namespace empty (the run does not dump it: sockstat shows no TCP socket);
2. the namespace holding ``--sockets`` TCP sockets: holder processes (the host's Python,
   entered into the container's network namespace with ``nsenter -n``) each listen on a
   loopback port of their own and connect to it, keeping both ends; the fd limit here is
   20,000 per process, so each holds at most ``--per-holder`` connections (two sockets each).

Then the states of the run are compared with ``nsenter -t PID -n ss -tanH`` read just before
and after it: ESTABLISHED exactly, the other states within what changed meanwhile. The
figures: each phase's medians, the growth of peak RSS, and the CPU of that namespace (full
less empty, each collector against itself), as a ratio to the yardstick's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from typing import Any, Dict, List

import docker

import run as bench

LABEL = "container-netstat-bench-big"
IMAGE = os.environ.get("CONTAINER_NETSTAT_BENCH_IMAGE", "container-netstat/busybox:latest")
HOLDER = r"""
import resource, socket, sys
port, count = int(sys.argv[1]), int(sys.argv[2])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 2 * count + 64), hard))
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen(4096)
held = []
for _ in range(count):
    held.append(socket.create_connection(("127.0.0.1", port)))
    held.append(srv.accept()[0])
print("ready", flush=True)
sys.stdin.read()
"""
SS_STATES = {"ESTAB": "established", "SYN-SENT": "syn_sent", "SYN-RECV": "syn_recv", "FIN-WAIT-1": "fin_wait1",
             "FIN-WAIT-2": "fin_wait2", "TIME-WAIT": "time_wait", "UNCONN": "close", "CLOSE-WAIT": "close_wait",
             "LAST-ACK": "last_ack", "LISTEN": "listen", "CLOSING": "closing"}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def ss_states(pid: int) -> Dict[str, int]:
    out = subprocess.run(["nsenter", "-t", str(pid), "-n", "ss", "-tanH"], capture_output=True, text=True,
                         check=True).stdout
    return dict(Counter(SS_STATES[line.split()[0]] for line in out.splitlines() if line.strip()))


def start_holders(pid: int, sockets: int, per_holder: int) -> List[subprocess.Popen]:
    connections = sockets // 2
    holders: List[subprocess.Popen] = []
    port = 20000
    while connections > 0:
        count = min(per_holder, connections)
        holders.append(subprocess.Popen(["nsenter", "-t", str(pid), "-n", sys.executable, "-c", HOLDER, str(port),
                                         str(count)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        connections -= count
        port += 1
    for h in holders:
        assert h.stdout is not None and h.stdout.readline().strip() == "ready", "a holder did not start"
    return holders


def phase(name: str, commands: Dict[str, List[str]], rounds: int, dockerd: int, workdir: str) -> Dict[str, List[Any]]:
    runs: Dict[str, List[Any]] = {c: [] for c in commands}
    names = list(commands)
    for command in commands.values():  # warm the page cache and .pyc files
        bench.timed(command, dockerd, os.devnull)
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for c in order:
            runs[c].append(bench.timed(commands[c], dockerd, os.path.join(workdir, f"{name}-{c}.json")))
    return runs


def medians(runs: Dict[str, List[Any]]) -> Dict[str, Dict[str, float]]:
    return {c: {"wall_ms": statistics.median(r.wall for r in rs) * 1000,
                "cpu_ms": statistics.median(r.cpu for r in rs) * 1000,
                "rss_mib": statistics.median(r.rss_kib for r in rs) / 1024,
                "exit_codes": sorted({r.exit_code for r in rs})} for c, rs in runs.items()}


def states_of(path: str) -> Dict[str, int]:
    with open(path) as f:
        items = json.load(f)
    prefix = "container.net.tcp.state."
    return {i["metric"][len(prefix):]: i["value"] for i in items if i["metric"].startswith(prefix) and i["tags"]}


def main(argv: List[str] = sys.argv[1:]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, default=100_000)
    parser.add_argument("--per-holder", type=int, default=9_000, help="connections per holder (2 fds each)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    bench.compile_package()
    cli = docker.from_env()
    name = f"cnb-big-{uuid.uuid4().hex[:8]}"
    container = cli.containers.run(IMAGE, ["sleep", "2147483647"], name=name, detach=True, network_mode="none",
                                   labels={LABEL: "1"})
    container.reload()
    pid = int(container.attrs["State"]["Pid"])
    commands = {"container-netstat": [*bench.tool_command(), "--include", name],
                "yardstick": [sys.executable, os.path.join(bench.HERE, "floor.py"), "--states", "--include", name]}
    dockerd = bench.dockerd_pid()
    workdir = tempfile.mkdtemp(prefix="cnbig-")
    holders: List[subprocess.Popen] = []
    result: Dict[str, Any] = {"machine": bench.machine(), "sockets": args.sockets, "rounds": args.rounds,
                              "container": name, "commands": commands}
    try:
        log(f"{name}: phase 1, the namespace empty")
        empty = phase("empty", commands, args.rounds, dockerd, workdir)
        log(f"{name}: starting holders of {args.sockets} sockets")
        start = time.monotonic()
        holders = start_holders(pid, args.sockets, args.per_holder)
        log(f"{len(holders)} holders ready in {time.monotonic() - start:.0f} s; ss: {ss_states(pid)}")
        log(f"{name}: phase 2, the namespace full")
        full = phase("full", commands, args.rounds, dockerd, workdir)
        before = ss_states(pid)
        path = os.path.join(workdir, "check.json")
        bench.timed(commands["container-netstat"], dockerd, path)
        after = ss_states(pid)
        ours = states_of(path)
        result["ss_before"], result["ss_after"], result["states"] = before, after, ours
        result["established_equal"] = before.get("established") == ours.get("established") == after.get("established")
        result["others_within_churn"] = all(
            min(before.get(s, 0), after.get(s, 0)) <= v <= max(before.get(s, 0), after.get(s, 0))
            for s, v in ours.items())
        result["empty"], result["full"] = medians(empty), medians(full)
        result["runs"] = {"empty": {c: [vars(r) for r in rs] for c, rs in empty.items()},
                          "full": {c: [vars(r) for r in rs] for c, rs in full.items()}}
    finally:
        for h in holders:
            h.kill()
            h.wait()
        container.remove(force=True)
    e, f = result["empty"], result["full"]
    ns_cpu = {c: f[c]["cpu_ms"] - e[c]["cpu_ms"] for c in f}
    result["namespace_cpu_ms"] = ns_cpu
    result["cpu_ratio"] = ns_cpu["container-netstat"] / ns_cpu["yardstick"] if ns_cpu["yardstick"] > 0 else None
    result["rss_growth_mib"] = {c: f[c]["rss_mib"] - e[c]["rss_mib"] for c in f}
    for phase_name, figures in (("empty", e), ("full", f)):
        for c, m in figures.items():
            print(f"{phase_name:5s} {c:17s} wall {m['wall_ms']:7.1f} ms  cpu {m['cpu_ms']:7.1f} ms  "
                  f"rss {m['rss_mib']:5.1f} MiB  exit {m['exit_codes']}")
    print(f"the namespace's CPU (full - empty): container-netstat {ns_cpu['container-netstat']:.1f} ms, "
          f"yardstick {ns_cpu['yardstick']:.1f} ms: {result['cpu_ratio']:.2f}x (goal <= 1.3x)")
    growth = result["rss_growth_mib"]["container-netstat"]
    print(f"peak RSS growth: container-netstat {growth:.1f} MiB (goal <= 8), yardstick "
          f"{result['rss_growth_mib']['yardstick']:.1f} MiB")
    print(f"states: {result['states']}; ss before {result['ss_before']}, after {result['ss_after']}; "
          f"established equal: {result['established_equal']}; others within churn: {result['others_within_churn']}")
    print(f"machine: {result['machine']}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=1)
    if not result["established_equal"]:
        raise SystemExit("big_namespace.py: ESTABLISHED differs from ss")


if __name__ == "__main__":
    main()
