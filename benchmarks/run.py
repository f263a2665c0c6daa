"""Time container-netstat against the naive way and the floor, side by side, at several N.

    python benchmarks/run.py                          # N = 30 and 300, 20 rounds each
    python benchmarks/run.py --sizes 30,300,600 --json benchmarks/results/run.json
    python benchmarks/run.py --compare-states --sizes 300 --json benchmarks/results/states-300.json
    python benchmarks/run.py --paired --sizes 300 --json benchmarks/results/paired-300.json
    python benchmarks/run.py --paired --own-tables 1024 --sizes 300   # the fleet in tables of its own

For each N: bring up the fleet (``fleet.py``), check that the three collectors give the
same numbers for every benchmark namespace while the fleet's traffic is held still,
then run rounds in which each collector runs once, the order rotating every round.
Each run is a whole process under ``/usr/bin/time -v`` (peak RSS); its CPU (user + sys,
of the process and its children) comes from ``wait4``, its wall time from a monotonic
clock, and the Docker daemon's CPU from /proc/<dockerd>/stat (utime + stime, and the
same for the children it reaped) read just before and after it. Clock ticks are 10 ms,
so the daemon's figure is a mean over the rounds (the highest fifth dropped: other
clients of the daemon only ever add to it), less its background rate measured the same
way over a ``sleep`` run in every round. The fleet is removed at the end unless
``--keep``.

``--compare-states`` times the package against itself instead: the default run (TCP
states by sock_diag), ``--metrics basic,counters`` (no states), and the same two without
CAP_SYS_ADMIN (``setpriv``), where ``--tcp-states`` reads them from
``/proc/<pid>/net/tcp{,6}``. The states part of each path is its run with states less its
run without, round by round.

``--paired`` times the package's default run against the yardstick (``floor.py --states``:
the same per-namespace work, states included, serially, standard library only) in the same
rounds, and prints each figure as a ratio to the yardstick's, with the machine's CPU count,
kernel and host TCP table size. ``--own-tables N`` sets ``net.ipv4.tcp_child_ehash_entries``
to N while the fleet starts, so that its namespaces get TCP tables of their own (kernel 6.1
and later), and restores the previous value once the fleet is up.
"""

from __future__ import annotations

import argparse
import compileall
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import fleet

HERE = os.path.dirname(os.path.abspath(__file__))
TIME = "/usr/bin/time"
TICK_MS = 1000.0 / os.sysconf("SC_CLK_TCK")
MIB = 1024.0


def tool_command() -> List[str]:
    """The installed console script next to this interpreter (what cron runs), else ``-m``."""
    script = os.path.join(os.path.dirname(sys.executable), "container-netstat")
    head = [script] if os.path.exists(script) else [sys.executable, "-m", "container_netstat"]
    return head + ["collect", "--dry-run"]


def compile_package() -> None:
    """Byte-compile the package as an installed one is (pip writes its .pyc files), also when
    it runs from a checkout under PYTHONDONTWRITEBYTECODE: otherwise every run compiles its
    modules again, some 70 ms that no installed copy pays."""
    import importlib.util

    spec = importlib.util.find_spec("container_netstat")
    if spec is not None and spec.submodule_search_locations:
        for where in spec.submodule_search_locations:
            compileall.compile_dir(where, quiet=1, maxlevels=0)


def collectors(tool: Optional[str] = None) -> Dict[str, List[str]]:
    return {
        "container-netstat": tool.split() if tool else tool_command(),
        "naive": [sys.executable, os.path.join(HERE, "naive.py")],
        "floor": [sys.executable, os.path.join(HERE, "floor.py")],
    }


# Without CAP_SYS_ADMIN setns is refused (kernel/nsproxy.c), so the package reads TCP states
# from /proc/<pid>/net/tcp{,6}; dropped from the bounding and inheritable sets, root's exec
# does not get it back (capabilities(7), "Transformation of capabilities during execve()").
NO_SYS_ADMIN = ["setpriv", "--inh-caps=-sys_admin", "--bounding-set=-sys_admin", "--"]
DEFAULT, BASIC_COUNTERS, PROC_STATES, PROC_BASIC_COUNTERS = (
    "default", "basic,counters", "proc-states", "proc basic,counters")


def state_collectors(tool: Optional[str] = None) -> Dict[str, List[str]]:
    """--compare-states: the package with and without states, by each path."""
    base = tool.split() if tool else tool_command()
    return {
        DEFAULT: base,
        BASIC_COUNTERS: [*base, "--metrics", "basic,counters"],
        PROC_STATES: [*NO_SYS_ADMIN, *base, "--tcp-states"],
        PROC_BASIC_COUNTERS: [*NO_SYS_ADMIN, *base, "--metrics", "basic,counters"],
    }


YARDSTICK = "yardstick"


def paired_collectors(tool: Optional[str] = None) -> Dict[str, List[str]]:
    """--paired: the package's default run and the yardstick."""
    return {
        "container-netstat": tool.split() if tool else tool_command(),
        YARDSTICK: [sys.executable, os.path.join(HERE, "floor.py"), "--states"],
    }


CHILD_EHASH = "/proc/sys/net/ipv4/tcp_child_ehash_entries"
EHASH = "/proc/sys/net/ipv4/tcp_ehash_entries"


def _read_int(path: str) -> Optional[int]:
    try:
        with open(path) as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def machine() -> Dict[str, Any]:
    """What the ratios depend on: CPUs, kernel, the host's TCP table and its child setting."""
    return {
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "kernel": os.uname().release,
        "host_tcp_buckets": _read_int(EHASH),
        "tcp_child_ehash_entries": _read_int(CHILD_EHASH),
        "python": sys.version.split()[0],
    }


def fleet_table() -> Optional[int]:
    """tcp_ehash_entries inside one fleet namespace: negative while it shares the host's table."""
    api = fleet.client().api
    for c in fleet.bench_containers(api, stopped=False):
        if (c.get("HostConfig") or {}).get("NetworkMode") in ("host",):
            continue
        pid = api.inspect_container(c["Id"])["State"]["Pid"]
        done = subprocess.run(["nsenter", "-t", str(pid), "-n", "cat", EHASH], capture_output=True, text=True)
        if done.returncode == 0:
            return int(done.stdout)
    return None


class OwnTables:
    """net.ipv4.tcp_child_ehash_entries set to ``buckets`` while the fleet starts, then restored."""

    def __init__(self, buckets: Optional[int]) -> None:
        self.buckets, self.before = buckets, None

    def __enter__(self) -> "OwnTables":
        if self.buckets is not None:
            self.before = _read_int(CHILD_EHASH)
            if self.before is None:
                raise SystemExit("run.py: --own-tables needs net.ipv4.tcp_child_ehash_entries (kernel 6.1 and later)")
            with open(CHILD_EHASH, "w") as f:
                f.write(str(self.buckets))
        return self

    def __exit__(self, *exc: object) -> None:
        if self.before is not None:
            with open(CHILD_EHASH, "w") as f:
                f.write(str(self.before))


# Not collectors: the start-up that any Python tool pays, and what the agreed packages add to it.
# The floor plus the second, less the first, is the best a tool built on them can do.
STARTUP = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "import docker, click": [sys.executable, "-c", "import logging, docker, click"],
}
# A run that asks the daemon nothing: what dockerd does meanwhile on its own (or for others).
IDLE = {"idle (sleep 0.3)": ["sleep", "0.3"]}


def dockerd_pid() -> int:
    for path in ("/var/run/docker.pid", "/run/docker.pid"):
        try:
            with open(path) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            continue
    out = subprocess.run(["pidof", "dockerd"], capture_output=True, text=True).stdout.split()
    if not out:
        raise SystemExit("run.py: no dockerd process found")
    return int(out[0])


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process and of the children it has reaped, in clock ticks.

    The children count: for ``GET /version`` dockerd runs ``runc --version`` and
    ``docker-init --version``, whose CPU shows only in its cutime and cstime.
    """
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15])  # utime stime cutime cstime: fields 14-17 of proc(5)


@dataclass
class Run:
    wall: float
    cpu: float
    rss_kib: int
    dockerd_ticks: int
    exit_code: int


@dataclass
class Summary:
    collector: str
    n: int
    runs: int
    wall_median: float
    wall_min: float
    cpu_median: float
    rss_median_mib: float
    dockerd_ms_per_run: float
    exit_codes: List[int] = field(default_factory=list)


def timed(command: Sequence[str], dockerd: int, stdout_path: str) -> Run:
    """One run under /usr/bin/time -v."""
    fd, report = tempfile.mkstemp(prefix="cnbench-time-")
    os.close(fd)
    try:
        with open(stdout_path, "wb") as out, open(stdout_path + ".err" if stdout_path != os.devnull else os.devnull, "wb") as err:
            before = cpu_ticks(dockerd)
            start = time.perf_counter()
            proc = subprocess.Popen([TIME, "-v", "-o", report, *command], stdout=out, stderr=err, cwd="/")
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - start
            after = cpu_ticks(dockerd)
        proc.returncode = os.waitstatus_to_exitcode(status)
        rss = 0
        with open(report) as f:
            for line in f:
                if "Maximum resident set size" in line:
                    rss = int(line.rsplit(":", 1)[1])
                elif "Exit status" in line:
                    proc.returncode = int(line.rsplit(":", 1)[1])
        return Run(wall, usage.ru_utime + usage.ru_stime, rss, after - before, proc.returncode)
    finally:
        os.unlink(report)


def summarize(name: str, n: int, runs: List[Run], idle_ticks_per_s: float) -> Summary:
    """Medians of the runs; the daemon's CPU as a trimmed mean (see ``dockerd_ms``)."""
    walls = [r.wall for r in runs]
    return Summary(
        collector=name,
        n=n,
        runs=len(runs),
        wall_median=statistics.median(walls),
        wall_min=min(walls),
        cpu_median=statistics.median(r.cpu for r in runs),
        rss_median_mib=statistics.median(r.rss_kib for r in runs) / MIB,
        dockerd_ms_per_run=dockerd_ms(runs, idle_ticks_per_s),
        exit_codes=sorted({r.exit_code for r in runs}),
    )


def dockerd_ms(runs: List[Run], idle_ticks_per_s: float, keep: float = 0.8) -> float:
    """The daemon's CPU per run: the mean of the lowest 80 % of the per-run deltas, less its idle rate.

    Other clients of the same daemon (tests running at the same time) only ever add
    ticks to a run, so the highest deltas are dropped rather than averaged in.
    """
    net = sorted(r.dockerd_ticks - idle_ticks_per_s * r.wall for r in runs)
    kept = net[: max(1, math.ceil(len(net) * keep))]
    return max(0.0, statistics.fmean(kept)) * TICK_MS


def idle_rate(runs: List[Run], keep: float = 0.8) -> float:
    """dockerd's background ticks per second, from the idle runs (a ``sleep`` in every round)."""
    ticks = sorted(r.dockerd_ticks for r in runs)[: max(1, math.ceil(len(runs) * keep))]
    return statistics.fmean(ticks) / statistics.median(r.wall for r in runs)


def bench_series(path: str) -> Dict[Tuple[str, str], int]:
    """(metric, tags) -> value for the fleet's own namespaces only (other containers may come and go)."""
    with open(path) as f:
        items = json.load(f)
    return {
        (i["metric"], i["tags"]): i["value"]
        for i in items
        if i["tags"].startswith((f"container={fleet.PREFIX}", f"namespace={fleet.POD_NAMESPACE},"))
    }


# "sockets: used" counts every socket of the namespace (net/core/sock.c ``sock_inuse_add``),
# the NETLINK_SOCK_DIAG socket of any reader inside it at that moment included: another
# collector's run on a shared host adds one now and then. Listed apart, never a failure.
PERTURBED = ("container.net.sockets.used",)


def check(commands: Dict[str, List[str]], dockerd: int, workdir: str, log) -> Dict[str, object]:
    """Hold the fleet's traffic still, then compare every collector's numbers exactly."""
    log("check: holding traffic for 62 s so that TIME_WAIT drains")
    fleet.write_mode("hold")
    time.sleep(62)
    fleet.write_mode("burst")
    time.sleep(4)  # clients poll the mode every second, then make one round of requests
    outputs: Dict[str, Dict[Tuple[str, str], int]] = {}
    first = next(iter(commands))
    order = [first, *[c for c in commands if c != first], first]
    for i, name in enumerate(order):
        path = os.path.join(workdir, f"check-{i}-{name}.json")
        timed(commands[name], dockerd, path)
        outputs[f"{name}#{i}"] = bench_series(path)
    fleet.write_mode("run")
    diagnostics: List[str] = []
    for i, name in enumerate(order):
        with open(os.path.join(workdir, f"check-{i}-{name}.json.err"), errors="replace") as f:
            diagnostics += [f"{name}#{i}: {line.rstrip()}" for line in f if line.strip()][:10]
    # Compare each output with the first on the metrics both emit; a metric only some emit is
    # listed (the comparison collectors read fewer groups; /proc has no backlog or port range).
    names = {label: {metric for metric, _ in series} for label, series in outputs.items()}
    reference_label = f"{first}#0"
    full = outputs[reference_label]
    common = set.intersection(*names.values())
    one_sided = sorted(set.union(*names.values()) - common)
    mismatches: List[str] = []
    perturbed: List[str] = []
    compared = 0
    for label, series in outputs.items():
        both = names[label] & names[reference_label]
        theirs = {k: v for k, v in series.items() if k[0] in both}
        ours = {k: v for k, v in full.items() if k[0] in both}
        compared = max(compared, len(ours))
        for key in sorted(set(ours) | set(theirs)):
            if ours.get(key) != theirs.get(key):
                line = f"{label}: {key[0]} {key[1]}: {theirs.get(key)} != {ours.get(key)}"
                (perturbed if key[0] in PERTURBED else mismatches).append(line)
    namespaces = {tags for _, tags in full}
    nonzero_tw = sum(1 for (metric, _), v in full.items() if metric.endswith("tcp.timewait") and v)
    result = {
        "namespaces": len(namespaces),
        "series": compared,
        "metrics": len(common),
        "namespaces_with_timewait": nonzero_tw,
        "not_compared": one_sided,
        "mismatches": mismatches,
        "perturbed": perturbed,
        "stderr": diagnostics,
        "equal": not mismatches and compared > 0,
    }
    log(f"check: {len(namespaces)} namespaces, {len(common)} metrics in every output, {compared} series, "
        f"{nonzero_tw} with TIME_WAIT; {'all equal' if result['equal'] else f'{len(mismatches)} MISMATCHES'}")
    if one_sided:
        log(f"check: emitted by only some collectors, compared where two emit them: {', '.join(one_sided)}")
    if perturbed:
        log(f"check: {len(perturbed)} differences in {', '.join(PERTURBED)} (another process's socket "
            "inside the namespace at that moment), not counted")
    for line in mismatches[:10] + (diagnostics if mismatches else []):
        log("  " + line)
    return result


def bench(n: int, runs: int, commands: Dict[str, List[str]], dockerd: int, workdir: str,
          do_check: bool, settle: float, log, reuse: bool = False, startup: bool = True,
          all_tcp: bool = False, own_tables: Optional[int] = None) -> Dict[str, object]:
    log(f"N={n}: bringing up the fleet{' (--all-tcp)' if all_tcp else ''}"
        f"{f' in TCP tables of {own_tables} buckets' if own_tables else ''}")
    with OwnTables(own_tables):
        took = fleet.up(n, quiet=True, reuse=reuse, all_tcp=all_tcp)
    table_inside = fleet_table()
    log(f"N={n}: fleet up in {took:.0f} s; tcp_ehash_entries inside a fleet namespace: {table_inside}")
    checked = check(commands, dockerd, workdir, log) if do_check else None
    commands = {**commands, **(STARTUP if startup else {}), **IDLE}
    log(f"N={n}: letting traffic run for {settle:.0f} s")
    time.sleep(settle)
    for command in commands.values():  # warm the page cache and .pyc files
        timed(command, dockerd, os.devnull)
    load_before, table_before = _loadavg(), tcp_table()
    names = list(commands)
    results: Dict[str, List[Run]] = {name: [] for name in names}
    tables: List[Dict[str, int]] = []  # the host's TCP table before each round (other work changes it)
    for r in range(runs):
        tables.append(tcp_table())
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            results[name].append(timed(commands[name], dockerd, os.path.join(workdir, f"{name}.json")))
    idle = idle_rate(results[next(iter(IDLE))])
    summaries = [summarize(name, n, results[name], idle) for name in names]
    load = (load_before + _loadavg()) / 2
    table_after = tcp_table()
    log(f"N={n}: load average {load:.2f} while timing (2 cores; the fleet and anything else running count)")
    log(f"N={n}: the host's TCP table ({table_after['buckets']} buckets) held "
        f"{table_before['inuse']} + {table_before['timewait']} TIME_WAIT sockets before timing, "
        f"{table_after['inuse']} + {table_after['timewait']} after, over {table_after['namespaces']} namespaces")
    first = os.path.join(workdir, f"{names[0]}.json")
    listed = _listed(first)
    for s in summaries:
        log(f"N={n} {s.collector:20s} wall {s.wall_median * 1000:7.0f} ms  cpu {s.cpu_median * 1000:7.0f} ms  "
            f"rss {s.rss_median_mib:5.1f} MiB  dockerd {s.dockerd_ms_per_run:6.1f} ms/run  exit {s.exit_codes}")
    tcp = tcp_namespaces(first)
    if tcp["namespaces"]:
        log(f"N={n}: {tcp['namespaces']} benchmark namespaces, {tcp['dumped']} with TCP sockets (dumped), "
            f"{tcp['empty']} without (not dumped)")
    return {
        "n": n,
        "all_tcp": all_tcp,
        "own_tables": own_tables,
        "fleet_tcp_ehash_entries": table_inside,
        "machine": machine(),
        "listed": listed,
        "tcp_namespaces": tcp,
        "fleet_up_s": round(took, 1),
        "dockerd_idle_ticks_per_s": idle,
        "loadavg_1min": round(load, 2),
        "tcp_table": {"before": table_before, "after": table_after, "rounds": tables},
        "check": checked,
        "summaries": [asdict(s) for s in summaries],
        "runs": {name: [asdict(r) for r in rs] for name, rs in results.items()},
    }


def tcp_table() -> Dict[str, int]:
    """TCP sockets of every network namespace on the host, by sockstat: what a dump walks.

    Every namespace that has no table of its own (``net.ipv4.tcp_child_ehash_entries``,
    kernel 6.1 and later) shares the host's, and a sock_diag dump or a read of
    /proc/<pid>/net/tcp walks all of it, every namespace's sockets included
    (net/ipv4/tcp_diag.c ``tcp_diag_dump``, net/ipv4/tcp_ipv4.c ``established_get_first``).
    """
    seen = set()
    inuse = timewait = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ino = os.stat(f"/proc/{entry}/ns/net").st_ino
            if ino in seen:
                continue
            seen.add(ino)
            for name, proto in (("sockstat", "TCP:"), ("sockstat6", "TCP6:")):
                try:
                    with open(f"/proc/{entry}/net/{name}") as f:
                        for line in f:
                            if line.startswith(proto):
                                fields = line.split()
                                values = dict(zip(fields[1::2], map(int, fields[2::2])))
                                inuse += values.get("inuse", 0)
                                timewait += values.get("tw", 0)
                except FileNotFoundError:
                    pass
        except (OSError, ValueError):
            continue
    with open("/proc/sys/net/ipv4/tcp_ehash_entries") as f:
        buckets = int(f.read())
    return {"namespaces": len(seen), "inuse": inuse, "timewait": timewait, "buckets": buckets}


def _loadavg() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def tcp_namespaces(path: str) -> Dict[str, int]:
    """The fleet's namespaces in one output, and how many hold a TCP socket by sockstat.

    The states group dumps only those (tcp.inuse, which counts TCP and TCP6, plus tcp.timewait > 0; collect.py),
    so the others cost it nothing. Needs the basic group in the output.
    """
    try:
        series = bench_series(path)
    except (OSError, ValueError):
        return {"namespaces": 0, "dumped": 0, "empty": 0}
    sockets: Dict[str, int] = {}
    for (metric, tags), value in series.items():
        if metric.endswith((".tcp.inuse", ".tcp.timewait")):
            sockets[tags] = sockets.get(tags, 0) + value
    dumped = sum(1 for v in sockets.values() if v)
    return {"namespaces": len(sockets), "dumped": dumped, "empty": len(sockets) - dumped}


def _listed(path: str) -> Optional[int]:
    try:
        with open(path) as f:
            for item in json.load(f):
                if item["metric"].endswith("collector.containers"):
                    return int(item["value"])
    except (OSError, ValueError):
        pass
    return None


def table(results: List[Dict[str, object]]) -> str:
    """An RST grid table of the medians, and the per-container slope between the smallest and largest N."""
    rows = [("N", "collector", "wall (median)", "CPU (median)", "peak RSS", "dockerd CPU / run")]
    for res in results:
        for s in res["summaries"]:  # type: ignore[union-attr]
            rows.append((str(res["listed"] or res["n"]), s["collector"], f"{s['wall_median'] * 1000:.0f} ms",
                         f"{s['cpu_median'] * 1000:.0f} ms", f"{s['rss_median_mib']:.1f} MiB",
                         f"{s['dockerd_ms_per_run']:.1f} ms"))
    text = _grid(rows)
    lo = results[0]
    for hi in results[1:]:
        span = (hi["listed"] or hi["n"]) - (lo["listed"] or lo["n"])  # type: ignore[operator]
        slope = [("collector", f"wall per container, N {lo['n']} -> {hi['n']}", "CPU per container")]
        for a, b in zip(lo["summaries"], hi["summaries"]):  # type: ignore[arg-type]
            if a["collector"] in STARTUP or a["collector"] in IDLE:
                continue
            slope.append((a["collector"], f"{(b['wall_median'] - a['wall_median']) / span * 1000:.3f} ms",
                          f"{(b['cpu_median'] - a['cpu_median']) / span * 1000:.3f} ms"))
        text += "\n" + _grid(slope)
    return text


def targets(results: List[Dict[str, object]], at: int = 300, base: int = 30) -> str:
    """The issue's targets at N=``at`` (slope from N=``base``), each with its figure and a verdict."""
    by_n = {r["n"]: {s["collector"]: s for s in r["summaries"]} for r in results}  # type: ignore[union-attr]
    if at not in by_n:
        return ""
    ours, naive, floor = (by_n[at][c] for c in ("container-netstat", "naive", "floor"))
    rows = [("target", "figure", "met")]

    def row(name: str, figure: str, ok: bool) -> None:
        rows.append((name, figure, "yes" if ok else "NO"))

    wall = naive["wall_median"] / ours["wall_median"]
    cpu = naive["cpu_median"] / ours["cpu_median"]
    row(f"N={at}: wall >= 2.5x less than naive", f"{wall:.2f}x", wall >= 2.5)
    row(f"N={at}: CPU >= 2x less than naive", f"{cpu:.2f}x", cpu >= 2)
    if all(k in by_n[at] for k in STARTUP):
        start, imports = (by_n[at][k] for k in STARTUP)
        for what, key in (("wall", "wall_median"), ("CPU", "cpu_median")):
            best = floor[key] + imports[key] - start[key]
            rows.append((f"  bound: naive / (floor + SDK and click imports), {what}",
                         f"{naive[key] / best:.2f}x", "-"))
    if base in by_n:
        listed = {r["n"]: (r["listed"] or r["n"]) for r in results}
        span = listed[at] - listed[base]  # type: ignore[operator]

        def slope(c: str) -> float:
            return (by_n[at][c]["wall_median"] - by_n[base][c]["wall_median"]) / span * 1000

        row(f"slope N={base}->{at} <= 0.5 ms per container", f"{slope('container-netstat'):.3f} ms",
            slope("container-netstat") <= 0.5)
        ratio = slope("naive") / max(slope("container-netstat"), 1e-9)
        row("slope >= 10x smaller than naive's", f"{ratio:.1f}x", ratio >= 10)
        rows.append(("  bound: naive's slope / the floor's", f"{slope('naive') / max(slope('floor'), 1e-9):.1f}x", "-"))
    daemon = ours["dockerd_ms_per_run"] / max(floor["dockerd_ms_per_run"], 1e-9)
    row(f"N={at}: dockerd CPU <= 2x the floor's", f"{daemon:.2f}x", daemon <= 2)
    row(f"N={at}: peak RSS <= 36 MiB", f"{ours['rss_median_mib']:.1f} MiB", ours["rss_median_mib"] <= 36)
    return _grid(rows)


def paired(result: Dict[str, Any], with_: str, without: str, key: str) -> float:
    """The median, over the rounds, of one collector's figure less another's in the same round."""
    runs = result["runs"]
    return float(statistics.median(a[key] - b[key] for a, b in zip(runs[with_], runs[without])))


def state_targets(results: List[Dict[str, Any]]) -> str:
    """--compare-states: the default run against basic,counters, and the states part by each path."""
    rows: List[Tuple[str, ...]] = [("target", "figure", "met")]

    def row(name: str, figure: str, ok: Optional[bool]) -> None:
        rows.append((name, figure, "-" if ok is None else "yes" if ok else "NO"))

    for res in results:
        n = res["listed"] or res["n"]
        at = f"N={n}{' all-tcp' if res.get('all_tcp') else ''}"
        by = {s["collector"]: s for s in res["summaries"]}
        ours, base = by[DEFAULT], by[BASIC_COUNTERS]
        for what, key in (("wall", "wall_median"), ("CPU", "cpu_median")):
            ratio = ours[key] / base[key]
            row(f"{at}: default {what} <= 1.5x basic,counters", f"{ratio:.2f}x", ratio <= 1.5)
        tcp = res.get("tcp_namespaces") or {}
        dumped = tcp.get("dumped") or 0
        for what, key in (("wall", "wall"), ("CPU", "cpu")):
            diag = paired(res, DEFAULT, BASIC_COUNTERS, key)
            proc = paired(res, PROC_STATES, PROC_BASIC_COUNTERS, key)
            ratio = proc / diag if diag > 0 else math.inf
            row(f"{at}: states part, {what}: /proc {proc * 1000:.0f} ms / sock_diag {diag * 1000:.0f} ms >= 4x",
                f"{ratio:.1f}x", ratio >= 4)
            if dumped:
                row(f"  per dumped namespace ({dumped}), {what}: sock_diag / /proc",
                    f"{diag / dumped * 1000:.2f} / {proc / dumped * 1000:.2f} ms", None)
        row(f"{at}: peak RSS, default / basic,counters / proc-states",
            f"{ours['rss_median_mib']:.1f} / {base['rss_median_mib']:.1f} / {by[PROC_STATES]['rss_median_mib']:.1f} MiB",
            None)
    return _grid(rows)


GOALS = {"wall": 1.0, "cpu": 1.25}
RSS_GOAL_MIB = 40.0


def paired_targets(results: List[Dict[str, Any]]) -> str:
    """--paired: the package against the yardstick, as ratios of the medians and, round by
    round, the median of the per-round ratios; the machine they were measured on."""
    rows: List[Tuple[str, ...]] = [("figure", "container-netstat", "yardstick", "ratio (of medians / per round)",
                                    "goal", "met")]
    for res in results:
        m = res["machine"]
        n = res["listed"] or res["n"]
        tables = f"own tables of {res['own_tables']}" if res.get("own_tables") else "the host's shared table"
        rows.append((f"N={n}{' all-tcp' if res.get('all_tcp') else ''}, {tables}; {m['cpus']} CPUs, kernel "
                     f"{m['kernel']}, host table {m['host_tcp_buckets']} buckets, inside "
                     f"{res.get('fleet_tcp_ehash_entries')}", "", "", "", "", ""))
        by = {s["collector"]: s for s in res["summaries"]}
        ours, yard = by["container-netstat"], by[YARDSTICK]
        runs = res["runs"]
        for what, key, run_key in (("wall", "wall_median", "wall"), ("cpu", "cpu_median", "cpu")):
            ratio = ours[key] / yard[key]
            per_round = statistics.median(a[run_key] / b[run_key] for a, b in
                                          zip(runs["container-netstat"], runs[YARDSTICK]))
            rows.append((f"  {what}", f"{ours[key] * 1000:.0f} ms", f"{yard[key] * 1000:.0f} ms",
                         f"{ratio:.2f}x / {per_round:.2f}x", f"<= {GOALS[what]}x",
                         "yes" if ratio <= GOALS[what] else "NO"))
        rows.append(("  peak RSS", f"{ours['rss_median_mib']:.1f} MiB", f"{yard['rss_median_mib']:.1f} MiB",
                     f"{ours['rss_median_mib'] / yard['rss_median_mib']:.2f}x", f"<= {RSS_GOAL_MIB:.0f} MiB",
                     "yes" if ours["rss_median_mib"] <= RSS_GOAL_MIB else "NO"))
        rows.append(("  dockerd CPU / run", f"{ours['dockerd_ms_per_run']:.1f} ms",
                     f"{yard['dockerd_ms_per_run']:.1f} ms", "", "", ""))
    return _grid(rows)


def _grid(rows: List[Tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    head = line.replace("-", "=")
    out = [line]
    for i, row in enumerate(rows):
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
        out.append(head if i == 0 else line)
    return "\n".join(out) + "\n"


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="30,300", help="comma-separated N (default 30,300)")
    parser.add_argument("--runs", type=int, default=20, help="rounds per N (default 20)")
    parser.add_argument("--settle", type=float, default=15, help="seconds of traffic before timing (default 15)")
    parser.add_argument("--no-check", dest="check", action="store_false", help="skip the equality check")
    parser.add_argument("--keep", action="store_true", help="leave the last fleet running")
    parser.add_argument("--reuse", action="store_true", help="keep a running fleet of the right size")
    parser.add_argument("--json", metavar="FILE", help="write every run's figures to FILE")
    parser.add_argument("--compare-states", action="store_true",
                        help="time the default run against --metrics basic,counters, and both without "
                        "CAP_SYS_ADMIN (TCP states from /proc), instead of naive and floor")
    parser.add_argument("--paired", action="store_true",
                        help="time the default run against the yardstick (floor.py --states) only, as ratios")
    parser.add_argument("--own-tables", type=int, metavar="BUCKETS",
                        help="start the fleet with net.ipv4.tcp_child_ehash_entries=BUCKETS (restored after): "
                        "its namespaces get TCP tables of their own")
    parser.add_argument("--all-tcp", action="store_true",
                        help="a fleet without idle containers: every namespace holds TCP sockets")
    parser.add_argument("--tool", metavar="CMD",
                        help="the command to time (default: container-netstat collect --dry-run, "
                        "installed beside this interpreter)")
    args = parser.parse_args(argv)
    if not os.path.exists(TIME):
        raise SystemExit(f"run.py: {TIME} is missing (Debian package 'time')")
    if args.compare_states and not shutil.which(NO_SYS_ADMIN[0]):
        raise SystemExit(f"run.py: {NO_SYS_ADMIN[0]} is missing (Debian package 'util-linux')")
    if os.geteuid() != 0:
        print("run.py: not root: the floor cannot read the runtime's pid files", file=sys.stderr)

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    # The collectors import reference.py: compile it now, as an installed package would be,
    # even when PYTHONDONTWRITEBYTECODE is set.
    compileall.compile_dir(HERE, quiet=1, maxlevels=0)
    compile_package()
    sizes = [int(s) for s in args.sizes.split(",")]
    commands = (state_collectors(args.tool) if args.compare_states else paired_collectors(args.tool)
                if args.paired else collectors(args.tool))
    dockerd = dockerd_pid()
    workdir = tempfile.mkdtemp(prefix="cnbench-")
    results: List[Dict[str, object]] = []
    try:
        for n in sizes:
            results.append(bench(n, args.runs, commands, dockerd, workdir, args.check, args.settle, log, args.reuse,
                                 startup=not (args.compare_states or args.paired), all_tcp=args.all_tcp,
                                 own_tables=args.own_tables))
            if args.json:
                _save(args.json, results, commands)
    finally:
        if not args.keep:
            log(f"removed {fleet.down()} benchmark containers")
        shutil.rmtree(workdir, ignore_errors=True)
    print(table(results))
    print(state_targets(results) if args.compare_states else paired_targets(results) if args.paired
          else targets(results))
    checks = [r["check"] for r in results if r["check"] is not None]
    if checks and not all(c["equal"] for c in checks):  # type: ignore[index]
        raise SystemExit("run.py: the collectors disagree (see above)")


def _save(path: str, results: List[Dict[str, object]], commands: Dict[str, List[str]]) -> None:
    from importlib import metadata

    versions = {}
    for package in ("container-netstat", "docker", "click", "requests", "urllib3"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    meta = {
        "versions": versions,
        "kernel": os.uname().release,
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "commands": commands,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }
    with open(path, "w") as f:
        json.dump({"machine": meta, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
