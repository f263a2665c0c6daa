"""What the hostnet group costs: the fleet plus K host-network containers holding S sockets each.

    python benchmarks/fleet.py up 300          # once, if no fleet runs yet
    python benchmarks/hostnet.py               # K = 20, S = 1000, 7 rounds
    python benchmarks/hostnet.py --holders 20 --sockets 1000 --rounds 7 --json hostnet.json

Uses the benchmark fleet that is running (it never starts, changes or removes it) and adds
K containers of its own on ``--network host`` (named ``cnt-hn-bench-<i>``, labelled
``container-netstat-bench-hostnet=1``, removed at the end). Each holder's own process (the
host's Python, run inside the container as in tests/integration/test_hostnet_docker.py)
holds S sockets: a listener on its own loopback address, (S - 2) / 2 connections to it
with both ends held, and one UDP socket; so the host namespace gains K * S sockets.

Two commands are timed, in alternating order, ``--rounds`` times each, before the holders
start (only the fleet's two idle host-network containers) and with them:

- ``states``: ``collect --dry-run --metrics basic,counters,states`` (the default groups);
- ``states+hostnet``: the same with ``hostnet`` added.

Each run is a whole process under ``/usr/bin/time -v`` (``run.timed``): wall time, CPU of
the process and its children, peak RSS; the figures are medians. The group's cost is the
difference of the two; its slope per host-network container is the change of that
difference between the two phases, divided by K. The with-holders output is checked: each
holder reports ``hostnet.tcp.inuse`` S - 1 and ``hostnet.udp.inuse`` 1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Dict, List

import docker

from run import Run, dockerd_pid, timed, tool_command

IMAGE = os.environ.get("CONTAINER_NETSTAT_BENCH_IMAGE", "container-netstat/busybox:latest")
LABEL = "container-netstat-bench-hostnet"
PREFIX = "cnt-hn-bench-"
PORT = 47300
CHROOT = 'ln -s usr/lib /host/lib && ln -s usr/lib64 /host/lib64 && exec chroot /host /usr/bin/python3 -c "$CODE"'
HOLDER = r"""
import socket, time
addr = ("{address}", {port})
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); srv.bind(addr); srv.listen(1024)
held = []
for _ in range({pairs}):
    held.append(socket.create_connection(addr))
    held.append(srv.accept()[0])
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("{address}", 0))
print("ready", flush=True)
time.sleep(2147483647)
"""
COMMANDS = {
    "states": ["--metrics", "basic,counters,states"],
    "states+hostnet": ["--metrics", "basic,counters,states,hostnet"],
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def remove_holders(cli: docker.DockerClient) -> int:
    found = cli.containers.list(all=True, filters={"label": f"{LABEL}=1"})
    for c in found:
        c.remove(force=True)
    return len(found)


def start_holders(cli: docker.DockerClient, k: int, sockets: int) -> List[Any]:
    pairs = (sockets - 2) // 2
    started = []
    for i in range(k):
        code = HOLDER.format(address=f"127.0.{i + 1}.1", port=PORT, pairs=pairs)
        started.append(cli.containers.run(
            IMAGE, ["sh", "-c", CHROOT], name=f"{PREFIX}{i}", detach=True, network_mode="host",
            volumes={"/usr": {"bind": "/host/usr", "mode": "ro"}}, environment={"CODE": code},
            labels={LABEL: "1"}))
    deadline = time.monotonic() + 120
    for c in started:
        while b"ready" not in c.logs():
            c.reload()
            if c.status != "running" or time.monotonic() > deadline:
                raise SystemExit(f"hostnet.py: holder {c.name} did not start: {c.logs().decode()[-500:]}")
            time.sleep(0.1)
    return started


def rounds(n: int, workdir: str, dockerd: int, phase: str) -> Dict[str, List[Run]]:
    base = tool_command()
    runs: Dict[str, List[Run]] = {name: [] for name in COMMANDS}
    for extra in COMMANDS.values():  # warm the page cache and .pyc files
        timed(base + extra, dockerd, os.devnull)
    for r in range(n):
        order = list(COMMANDS) if r % 2 == 0 else list(reversed(COMMANDS))
        for name in order:
            runs[name].append(timed(base + COMMANDS[name], dockerd, os.path.join(workdir, f"{phase}-{name}.json")))
    return runs


def medians(runs: Dict[str, List[Run]]) -> Dict[str, Dict[str, float]]:
    return {name: {"wall_ms": statistics.median(r.wall for r in rs) * 1000,
                   "cpu_ms": statistics.median(r.cpu for r in rs) * 1000,
                   "rss_mib": statistics.median(r.rss_kib for r in rs) / 1024.0,
                   "exit_codes": sorted({r.exit_code for r in rs})}
            for name, rs in runs.items()}


def check(path: str, holders: List[Any], sockets: int) -> None:
    with open(path) as f:
        items = json.load(f)
    got = {(i["tags"], i["metric"]): i["value"] for i in items}
    for c in holders:
        tags = f"container={c.name}"
        inuse = got.get((tags, "container.net.hostnet.tcp.inuse"))
        udp = got.get((tags, "container.net.hostnet.udp.inuse"))
        if (inuse, udp) != (sockets - 1, 1):
            raise SystemExit(f"hostnet.py: {c.name} reported tcp.inuse {inuse}, udp.inuse {udp}; "
                             f"expected {sockets - 1} and 1")


def main(argv: List[str] = sys.argv[1:]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--holders", type=int, default=20, help="host-network containers to add (default 20)")
    parser.add_argument("--sockets", type=int, default=1000, help="sockets each holds (default 1000)")
    parser.add_argument("--rounds", type=int, default=7, help="runs of each command per phase (default 7)")
    parser.add_argument("--json", metavar="FILE", help="write the figures to FILE")
    args = parser.parse_args(argv)
    cli = docker.from_env(timeout=120)
    fleet = len(cli.containers.list(filters={"label": "container-netstat-bench=1"}))
    if not fleet:
        log("no benchmark fleet is running (python benchmarks/fleet.py up 300): timing this host as it is")
    dockerd = dockerd_pid()
    workdir = tempfile.mkdtemp(prefix="cnbench-hostnet-")
    remove_holders(cli)
    result: Dict[str, Any] = {"fleet": fleet, "holders": args.holders, "sockets": args.sockets,
                              "rounds": args.rounds, "kernel": os.uname().release}
    try:
        log(f"fleet of {fleet}; phase 1: no holders")
        result["without_holders"] = medians(rounds(args.rounds, workdir, dockerd, "before"))
        log(f"starting {args.holders} holders of {args.sockets} sockets")
        holders = start_holders(cli, args.holders, args.sockets)
        log("phase 2: with the holders")
        result["with_holders"] = medians(rounds(args.rounds, workdir, dockerd, "with"))
        check(os.path.join(workdir, "with-states+hostnet.json"), holders, args.sockets)
        result["fleet_after"] = len(cli.containers.list(filters={"label": "container-netstat-bench=1"}))
    finally:
        log(f"removed {remove_holders(cli)} holders")
    before, with_ = result["without_holders"], result["with_holders"]
    for phase, figures in (("without holders", before), ("with holders", with_)):
        base, group = figures["states"], figures["states+hostnet"]
        print(f"{phase:16s} states {base['wall_ms']:6.0f} ms wall {base['cpu_ms']:6.0f} ms CPU "
              f"{base['rss_mib']:5.1f} MiB | +hostnet {group['wall_ms']:6.0f} ms wall {group['cpu_ms']:6.0f} ms CPU "
              f"{group['rss_mib']:5.1f} MiB | +{(group['wall_ms'] / base['wall_ms'] - 1) * 100:5.1f} % wall, "
              f"+{(group['cpu_ms'] / base['cpu_ms'] - 1) * 100:5.1f} % CPU")
    for key in ("wall_ms", "cpu_ms"):
        slope = ((with_["states+hostnet"][key] - with_["states"][key])
                 - (before["states+hostnet"][key] - before["states"][key])) / args.holders
        result[f"slope_{key}"] = slope
        print(f"slope per host-network container ({args.sockets} sockets), {key[:-3]}: {slope:.2f} ms")
    print(f"fleet: {fleet} benchmark containers before, {result.get('fleet_after')} after")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
