"""Command line: options, environment variables, logging and exit codes live here only."""

from __future__ import annotations

import gc
import logging
import os
import re
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple, TypeVar

import click

from container_netstat import __version__

from container_netstat import kernel_scopes

if TYPE_CHECKING:
    from container_netstat.runtime_dirs import Dirs
    from container_netstat.records import Sample
    from container_netstat.push import Outcome
    from container_netstat.spool import Spool

log = logging.getLogger("container_netstat")

# Exit codes, documented in README.rst.
EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_DOCKER = 3
EXIT_PARTIAL = 4
EXIT_SPOOLED = 5  # not all delivered: the rest waits in the spool for the next run
EXIT_REJECTED = 6  # the receiver refused a batch (a 4xx or 3xx) or dropped items as invalid
EXIT_LOCKED = 7  # another run holds the spool's lock: this one did nothing
EXIT_LOST = 8  # items neither delivered nor kept: spool unwritable, or over its bounds

ENV_PREFIX = "CONTAINER_NETSTAT"
OUTPUT_FORMATS = ("json", "prometheus", "table")
SORT_COLUMNS = ("name", "estab", "inuse", "time_wait", "udp", "close_wait", "listen_fill")  # table.SORT_KEYS
DEFAULT_FALCON_URL = "http://127.0.0.1:1988/v1/push"


DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_quantity(text: str, units: Dict[str, int]) -> int:
    """An integer with an optional unit: durations 90, 90s, 30m, 12h, 1d; sizes 500K, 64M, 1G."""
    value = text.strip().lower()
    digits = value.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = value[len(digits):]
    if not digits.isdigit() or unit not in units:
        raise ValueError(f"{text!r}: expected a number with an optional unit ({', '.join(u for u in units if u)})")
    return int(digits) * units[unit]


def _seconds(ctx: click.Context, param: click.Parameter, value: str) -> int:
    try:
        return parse_quantity(str(value), DURATION_UNITS)
    except ValueError as err:
        raise click.BadParameter(str(err)) from err


def _bytes(ctx: click.Context, param: click.Parameter, value: str) -> int:
    try:
        return parse_quantity(str(value), SIZE_UNITS)
    except ValueError as err:
        raise click.BadParameter(str(err)) from err


# The user-information part of any URL ("scheme://user:password@"), up to its last "@".
_USERINFO = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://)[^\s/]*@")


# Control characters (C0, DEL, C1) and the other line breaks str.splitlines() knows, escaped:
# a message quoting a label or a receiver's reply stays one line and cannot drive a terminal.
_ESCAPES = {c: f"\\x{c:02x}" for c in [*range(0x20), *range(0x7F, 0xA0)]}
_ESCAPES.update({ord("\r"): "\\r", ord("\n"): "\\n", ord("\t"): "\\t", 0x2028: "\\u2028", 0x2029: "\\u2029"})


class _OneLineFormatter(logging.Formatter):
    """``container-netstat: level: message`` on one line, whatever the message holds, with the
    credentials of any URL in it hidden: a library's error can quote DOCKER_HOST in full."""

    def format(self, record: logging.LogRecord) -> str:
        return _redact(super().format(record)).translate(_ESCAPES)


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLineFormatter("container-netstat: %(levelname)s: %(message)s"))
    root = logging.getLogger("container_netstat")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _parse_scopes(ctx: click.Context, param: click.Parameter, values: Tuple[str, ...]) -> Dict[str, str]:
    """--field-scope FIELD=SCOPE pairs, checked before any work is done."""
    from container_netstat.errors import ContainerNetstatError

    scopes: Dict[str, str] = {}
    for value in values:
        name, sep, scope = value.partition("=")
        if not sep:
            raise click.BadParameter(f"{value!r}: expected FIELD=netns or FIELD=host")
        scopes[name.strip()] = scope.strip()
    try:
        kernel_scopes.check_overrides(scopes)
    except ContainerNetstatError as err:
        raise click.BadParameter(str(err)) from err
    return scopes


GROUP_NAMES = ("basic", "counters", "states", "hostnet")
DEFAULT_METRICS = "basic,counters,states"


def _parse_groups(value: str) -> "set[str]":
    groups = {g.strip() for g in value.split(",") if g.strip()}
    unknown = groups - set(GROUP_NAMES)
    if unknown or not groups:
        raise click.BadParameter(
            f"{value!r}: choose from {', '.join(GROUP_NAMES)}", param_hint="--metrics"
        )
    return groups


def _fail(code: int, message: str) -> "click.exceptions.Exit":
    log.error("%s", message)
    return click.exceptions.Exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": ENV_PREFIX})
@click.version_option(__version__, prog_name="container-netstat")
def main() -> None:
    """Per-container network connection health, as open-falcon JSON.

    Every option can also be set by an environment variable named
    CONTAINER_NETSTAT_<COMMAND>_<OPTION>, e.g. CONTAINER_NETSTAT_COLLECT_PROC_ROOT.
    """


F = TypeVar("F", bound=Callable[..., Any])


def _runtime_dirs(ctx: click.Context, param: click.Parameter, value: Tuple[str, ...]) -> "Optional[Dirs]":
    """--runtime-dir values -> runtime_dirs.Dirs, or a usage error (exit 2)."""
    if not value:
        return None
    from container_netstat import runtime_dirs

    try:
        return runtime_dirs.parse_given(value)
    except ValueError as err:
        raise click.BadParameter(str(err)) from err


def _source_options(f: F) -> F:
    """The options of every command that reads containers: where from, and how to read them."""
    options = [
        click.option("--runtime", type=click.Choice(["auto", "docker", "podman", "proc"]), default="auto",
                     show_default=True,
                     help="Where the container list comes from: docker (Engine API); podman (its Docker-"
                     "compatible socket: --docker-host, else CONTAINER_HOST, else /run/podman/podman.sock); "
                     "proc (no API: /proc/*/cgroup, named from the runtimes' files under --run-root and "
                     "--var-root); auto: docker if configured or its socket exists, else podman's socket, "
                     "else proc."),
        click.option("--docker-host", metavar="URL",
                     help="Docker (or Podman) daemon address (unix:///var/run/docker.sock, tcp://host:2376). "
                     "Default: DOCKER_HOST, then the local socket. DOCKER_TLS_VERIFY and DOCKER_CERT_PATH apply."),
        click.option("--docker-timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
                     help="Seconds to wait for each Docker API call."),
        click.option("--proc-root", default="/proc", show_default=True, type=click.Path(file_okay=False),
                     help="Where the host's /proc is mounted (e.g. /host/proc when run in a container)."),
        click.option("--cgroup-root", default="/sys/fs/cgroup", show_default=True, type=click.Path(file_okay=False),
                     help="Where the host's cgroup hierarchies are mounted; used to find container pids."),
        click.option("--run-root", default="/run", show_default=True, type=click.Path(file_okay=False),
                     help="The host's /run, where the container runtime keeps its pid files."),
        click.option("--var-root", default="/var", show_default=True, type=click.Path(file_okay=False),
                     help="The host's /var: --runtime proc names containers from lib/docker/containers, "
                     "lib/containers/storage and the kubelet's log/pods and log/containers there."),
        click.option("--host-root", default="/", show_default=True, type=click.Path(file_okay=False),
                     help="The host's / (e.g. /host): --runtime proc reads the runtimes' configuration files "
                     "and their directories outside /run and /var under it (those under --run-root, --var-root)."),
        click.option("--runtime-dir", multiple=True, metavar="KIND=PATH", callback=_runtime_dirs,
                     help="A runtime's directory on the host, instead of the ones --runtime proc finds from the "
                     "running daemons: docker=DATA-ROOT, containerd=STATE, graphroot=PATH or runroot=PATH "
                     "(containers/storage: CRI-O, Podman). Repeatable."),
        click.option("--field-scope", "field_scopes", multiple=True, metavar="FIELD=netns|host", callback=_parse_scopes,
                     help="Override whether a kernel-dependent sockstat field (tw, sockets_used) is per "
                     "network namespace on this kernel (for backports). Repeatable."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


@dataclass(frozen=True)
class _Source:
    """Where a command reads containers from, as its options gave it."""

    runtime: str
    docker_host: Optional[str]
    docker_timeout: float
    proc_root: str
    cgroup_root: str
    run_root: str
    var_root: str
    host_root: str = "/"
    runtime_dirs: Optional["Dirs"] = None  # from --runtime-dir


def _tcp_reader(proc: Any, groups: "set[str]", states_asked: bool) -> Any:
    """The TCP states reader, probed once: sock_diag where setns works, else /proc/<pid>/net/tcp.

    States are on by default only where sock_diag works; the /proc path costs about four
    times a run without states, so there it is used only when asked for. Whether a
    container's ns file opens is confirmed by collect, on the first namespace.
    """
    from container_netstat.metrics import STATES
    from container_netstat.tcp_reader import TcpReader

    if STATES not in groups:
        return None
    reader = TcpReader(proc, optional=not states_asked)
    reader.probe()
    return reader


def _take_snapshot(source: _Source, overrides: Dict[str, str], groups: "set[str]",
                   include: Tuple[str, ...] = (), exclude: Tuple[str, ...] = (),
                   states_asked: bool = True, fd_cap: int = 65536) -> "Tuple[Any, Any, Dict[str, str]]":
    """Discover, resolve and read: (backend, snapshot, field scopes), or exit 3/4 with one line.

    ``snapshot.groups`` lacks ``states`` when they were not asked for and only /proc could
    give them.
    """
    from container_netstat import namespaces as collecting
    from container_netstat import filters, discovery
    from container_netstat.errors import ContainerNetstatError, DockerUnavailable
    from container_netstat.pids import PidResolver
    from container_netstat.procfs import ProcFS

    proc = ProcFS(source.proc_root)
    tcp = _tcp_reader(proc, groups, states_asked)
    paths = discovery.Paths(source.proc_root, source.run_root, source.var_root, source.host_root,
                           source.runtime_dirs)
    backend = discovery.choose(source.runtime, os.environ, source.docker_timeout, paths, source.docker_host)
    try:
        containers = filters.select(backend.containers(), include, exclude)
        resolver = PidResolver(proc, source.cgroup_root, source.run_root, inspect=backend.inspector())
        snapshot = collecting.collect(containers, resolver, proc, groups, tcp, backend.members, fd_cap)
        scopes = kernel_scopes.field_scopes(snapshot.host.kernel_release, overrides)
    except DockerUnavailable as err:
        raise _fail(EXIT_DOCKER, f"cannot reach {backend.name.capitalize()} at {_redact(backend.where)}: {err}")
    except ContainerNetstatError as err:
        raise _fail(EXIT_PARTIAL, f"cannot read the host's /proc: {err}")
    return backend, snapshot, scopes


@main.command()
@click.option("--dry-run", is_flag=True, help="Print the JSON array on stdout instead of pushing it.")
@click.option("--format", "output_format", type=click.Choice(OUTPUT_FORMATS), default=None,
              help="Print the snapshot on stdout instead of pushing it: json (the open-falcon array, as "
              "--dry-run), prometheus (text exposition format) or table (one line per namespace).")
@click.option("--textfile", type=click.Path(dir_okay=False), default=None, metavar="PATH",
              help="Write the snapshot in the Prometheus text format to PATH instead of pushing it, "
              "atomically (temp file, rename), for node_exporter's textfile collector: name it *.prom.")
@click.option("--sort", "sort_by", type=click.Choice(SORT_COLUMNS), default="inuse", show_default=True,
              help="Row order of --format table: name, or a column, largest first (close_wait and "
              "listen_fill need the states group).")
@_source_options
@click.option("--endpoint", default=None, metavar="NAME",
              help="Endpoint of every item. Default: when --falcon-url is a falcon-agent's /v1/push, the "
              "name that agent reports its host under (GET /proc/kernel/hostname), else this host's name.")
@click.option("--step", type=click.IntRange(min=1), default=60, show_default=True,
              help="Seconds between runs, sent as each item's step.")
@click.option("--metrics", "metric_groups", default=None, show_default=DEFAULT_METRICS, metavar="GROUPS",
              help="Comma-separated metric groups: basic (sockstat/snmp gauges), counters (snmp/netstat "
              "COUNTERs), states (per-state TCP counts, orphans, listener queues, port pressure: one "
              "sock_diag dump inside each namespace), hostnet (host-network containers and pods: the "
              "TCP and UDP sockets their own processes hold, from /proc/<pid>/fd; not in the default). "
              "By default states are left out where sock_diag cannot be used (no CAP_SYS_ADMIN): "
              "/proc/<pid>/net/tcp{,6} would cost about 4x.")
@click.option("--hostnet-fd-cap", type=click.IntRange(min=1), default=65536, show_default=True, metavar="N",
              help="hostnet group: a host-network container or pod with a process holding more open fds "
              "than this is left out of the run, with a warning naming the process.")
@click.option("--tcp-states", is_flag=True,
              help="Add the states group even where only /proc/<pid>/net/tcp{,6} can give it.")
@click.option("--include", multiple=True, metavar="PATTERN",
              help="Report only containers whose name matches this glob, or with label KEY=VALUE (glob). Repeatable.")
@click.option("--exclude", multiple=True, metavar="PATTERN",
              help="Skip containers whose name matches this glob, or with label KEY=VALUE (glob). Repeatable.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
              default="warning", show_default=True, help="Diagnostics on stderr at this level and above.")
@click.option("--falcon-url", default=DEFAULT_FALCON_URL, show_default=True, metavar="URL",
              help="Where to POST the items: the falcon-agent's /v1/push, transfer's /api/push (which "
              "reports invalid items) or Nightingale's /openfalcon/push.")
@click.option("--connect-timeout", type=click.FloatRange(min=0.1), default=3.0, show_default=True,
              help="Seconds to wait for the receiver to accept a connection.")
@click.option("--read-timeout", type=click.FloatRange(min=0.1), default=20.0, show_default=True,
              help="Seconds to wait for each answer; the agent forwards before answering and retries "
              "for up to ~14 s.")
@click.option("--deadline", type=click.FloatRange(min=1), default=40.0, show_default=True,
              help="Seconds from the start of the run by which it must be done; what is not sent by "
              "then is spooled for the next run.")
@click.option("--batch-size", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Items per request.")
@click.option("--spool-dir", type=click.Path(file_okay=False), default=None,
              help="Where undelivered batches wait (mode 0700); also holds the lock that keeps two runs "
              "apart. Default: /var/spool/container-netstat for root, else "
              "$XDG_STATE_HOME/container-netstat (~/.local/state/container-netstat).")
@click.option("--spool-max-age", default="1d", show_default=True, metavar="DURATION", callback=_seconds,
              help="Drop spooled batches collected longer ago than this (90s, 30m, 12h, 1d).")
@click.option("--spool-max-bytes", default="64M", show_default=True, metavar="SIZE", callback=_bytes,
              help="Drop the oldest spooled batches beyond this size (500K, 64M, 1G).")
def collect(
    dry_run: bool,
    output_format: Optional[str],
    textfile: Optional[str],
    sort_by: str,
    runtime: str,
    docker_host: Optional[str],
    docker_timeout: float,
    proc_root: str,
    cgroup_root: str,
    run_root: str,
    var_root: str,
    host_root: str,
    runtime_dir: "Optional[Dirs]",
    field_scopes: Dict[str, str],
    endpoint: Optional[str],
    step: int,
    metric_groups: str,
    hostnet_fd_cap: int,
    tcp_states: bool,
    include: Tuple[str, ...],
    exclude: Tuple[str, ...],
    log_level: str,
    falcon_url: str,
    connect_timeout: float,
    read_timeout: float,
    deadline: float,
    batch_size: int,
    spool_dir: Optional[str],
    spool_max_age: int,
    spool_max_bytes: int,
) -> None:
    """Take one snapshot of every running container's network namespace.

    Reads /proc/<pid>/net/{sockstat,sockstat6,snmp} once per network namespace and
    prints (--dry-run) or pushes an open-falcon JSON array; --format prints it as
    json, prometheus or table instead, --textfile writes it for node_exporter. Exit
    codes: 0 ok, 2 usage, 3 Docker unreachable (the spool is still replayed), 4 some
    containers could not be read, 5 not all delivered (the rest is spooled), 6 refused
    by the receiver (a wrong URL's batches are kept), 7 another run in progress, 8 items
    lost (or --textfile not written), 1 internal error.
    """
    finish_by = time.monotonic() + deadline
    gc.disable()  # one short run that makes no reference cycles worth collecting: ~11 ms at 300 containers
    _setup_logging(log_level)
    overrides = field_scopes
    groups = _parse_groups(metric_groups or DEFAULT_METRICS) | ({"states"} if tcp_states else set())
    printed = output_format or ("json" if dry_run else None)
    sort_states = printed == "table" and sort_by in ("close_wait", "listen_fill")
    if sort_states and "states" not in groups:
        raise click.BadParameter(f"{sort_by} is measured only with the states group (--tcp-states)",
                                 param_hint="--sort")
    states_asked = tcp_states or sort_states or (metric_groups is not None and "states" in groups)
    if textfile is not None and not Path(textfile).parent.is_dir():
        raise click.BadParameter(f"{textfile}: no such directory", param_hint="--textfile")
    pushing = printed is None and textfile is None
    if pushing:
        _check_url(falcon_url)
    spool = _locked_spool(spool_dir, spool_max_age, spool_max_bytes) if pushing else None

    source = _Source(runtime, docker_host, docker_timeout, proc_root, cgroup_root, run_root, var_root, host_root,
                     runtime_dir)
    try:
        _backend, snapshot, scopes = _take_snapshot(source, overrides, groups, include, exclude, states_asked,
                                                    hostnet_fd_cap)
    except click.exceptions.Exit as stop:
        if spool is None or stop.exit_code != EXIT_DOCKER:
            raise
        snapshot = None
    if snapshot is None and spool is not None:
        # No items from this run, but the receiver may be fine: replay the spool within the
        # deadline, or a long Docker outage ages it out. (Outside the except block, so that no
        # push error names the Docker error as its context.)
        outcome = _deliver([], int(time.time()), spool, falcon_url, connect_timeout, read_timeout, batch_size,
                           finish_by)
        raise click.exceptions.Exit(_push_exit_code(outcome, False, docker_down=True))

    from container_netstat import falcon, metrics  # here, so that --help stays fast

    samples, failed = metrics.snapshot_samples(snapshot, scopes, snapshot.groups)
    collected_at = int(time.time())
    if endpoint is None and (pushing or printed == "json"):  # the outputs that carry it
        from container_netstat import agent, push

        endpoint = agent.endpoint(falcon_url, connect_timeout, read_timeout, push.Deadline(finish_by), spool)
    items = falcon.build_items(samples, endpoint or socket.gethostname(), collected_at, step)
    log.info(
        "%d containers, %d namespaces, %d items; %d exited during the run, %d failed",
        snapshot.containers, len(snapshot.namespaces), len(items), len(snapshot.gone), len(failed),
    )
    if spool is not None:
        outcome = _deliver(items, collected_at, spool, falcon_url, connect_timeout, read_timeout, batch_size,
                           finish_by)
        raise click.exceptions.Exit(_push_exit_code(outcome, bool(failed)))
    if textfile is not None:
        _write_textfile(Path(textfile), samples, collected_at)
    if printed == "json":
        sys.stdout.writelines(falcon.iter_dumps(items))
    elif printed == "prometheus":
        from container_netstat import prometheus

        # As bytes: click.echo strips ANSI sequences from a str sent to a pipe, and a label
        # value may hold one; the text must be what --textfile writes.
        click.echo(prometheus.render(samples, collected_at), nl=False)
    elif printed == "table":
        from container_netstat import table

        tty = sys.stdout.isatty()
        width = shutil.get_terminal_size().columns if tty else table.WIDTH
        click.echo(table.render(samples, sort_by, width, color=tty and not os.environ.get("NO_COLOR")))
    if failed:
        raise click.exceptions.Exit(EXIT_PARTIAL)


def _write_textfile(path: Path, samples: "List[Sample]", collected_at: int) -> None:
    """The node_exporter textfile; a failure loses this run's values, as an unwritable spool does."""
    from container_netstat import prometheus

    if not path.name.endswith(".prom"):
        log.warning("%s: node_exporter's textfile collector reads only *.prom files", path)
    try:
        prometheus.write_textfile(path, prometheus.render(samples, collected_at))
    except prometheus.TextfileError as err:
        raise _fail(EXIT_LOST, f"{err} (see --textfile)")


def _locked_spool(directory: Optional[str], max_age: int, max_bytes: int) -> "Spool":
    """Open the spool and take its lock before collecting, so two runs never collect at once."""
    from container_netstat.spool import Bounds, Spool, SpoolBusy, SpoolError, default_dir

    path = Path(directory) if directory else default_dir(os.getuid(), os.environ)
    spool = Spool(path, Bounds(max_age=max_age, max_bytes=max_bytes))
    try:
        spool.open()
        spool.lock()
    except SpoolBusy as err:
        raise _fail(EXIT_LOCKED, f"{err}: another run is in progress, this one did nothing")
    except SpoolError as err:
        raise _fail(EXIT_USAGE, f"{err} (see --spool-dir)")
    return spool


def _deliver(items: "List[Dict[str, Any]]", collected_at: int, spool: "Spool", url: str, connect_timeout: float,
             read_timeout: float, batch_size: int, finish_by: float) -> "Outcome":
    """Replay the spool, then push ``items``, by the run's deadline."""
    from container_netstat import push

    sender = push.HttpSender(push.Target(url, connect_timeout, read_timeout))
    try:
        return push.deliver(items, collected_at, sender, spool, batch_size, push.Deadline(finish_by),
                            where=_redact(url))
    finally:
        sender.close()


def _push_exit_code(outcome: "Outcome", partial: bool, docker_down: bool = False) -> int:
    """The most serious thing that happened: lost > refused > Docker unreachable > spooled >
    unreadable containers."""
    if outcome.lost_items or outcome.dropped_batches:
        return EXIT_LOST
    if outcome.rejected_items or outcome.invalid_items or outcome.wrong_address:
        return EXIT_REJECTED
    if docker_down:
        return EXIT_DOCKER
    if outcome.spooled_batches:
        return EXIT_SPOOLED
    return EXIT_PARTIAL if partial else EXIT_OK


def _check_url(url: str) -> None:
    """A usage error, before anything is collected, for a --falcon-url that no request can use:
    every run would otherwise spool its items for a later run that cannot send them either."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        usable = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:
        usable = False
    if not usable:
        shown = _redact(url) if "://" in url else (f"***@{url.rsplit('@', 1)[1]}" if "@" in url else url)
        raise click.BadParameter(f"{shown!r}: expected http://HOST[:PORT]/PATH or https://...",
                                 param_hint="--falcon-url")


def _redact(text: str) -> str:
    """Hide the credentials of every URL in ``text`` (user:password@host) before it is logged."""
    return _USERINFO.sub(r"\1***@", text)


@main.command()
@_source_options
@click.option("--format", "output_format", type=click.Choice(["json", "text"]), default="json", show_default=True,
              help="json for tools, text for a terminal.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
              default="warning", show_default=True, help="Diagnostics on stderr at this level and above.")
def doctor(
    runtime: str,
    docker_host: Optional[str],
    docker_timeout: float,
    proc_root: str,
    cgroup_root: str,
    run_root: str,
    var_root: str,
    host_root: str,
    runtime_dir: "Optional[Dirs]",
    field_scopes: Dict[str, str],
    output_format: str,
    log_level: str,
) -> None:
    """Explain this host: each metric's scope on this kernel, the Docker API version,
    which containers share a namespace, and any container that could not be read and why.

    The first command to run when numbers look odd. Exit codes as for collect.
    """
    import json

    from container_netstat import doctor as doctoring
    from container_netstat.errors import DockerUnavailable

    _setup_logging(log_level)
    source = _Source(runtime, docker_host, docker_timeout, proc_root, cgroup_root, run_root, var_root, host_root,
                     runtime_dir)
    backend, snapshot, scopes = _take_snapshot(source, field_scopes, {"basic", "states", "hostnet"},
                                               states_asked=False)
    unavailable = snapshot.tcp_path.reason or None if snapshot.tcp_path else None
    where = _redact(backend.where)
    try:
        version = backend.version()
    except DockerUnavailable as err:
        raise _fail(EXIT_DOCKER, f"cannot reach {backend.name.capitalize()} at {where}: {err}")
    data = doctoring.report(snapshot, scopes, {"runtime": backend.name, "host": where, **version}, unavailable)
    if output_format == "json":
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(doctoring.format_text(data))
    if snapshot.failed:
        raise click.exceptions.Exit(EXIT_PARTIAL)
