"""Command line: options, environment variables, logging set-up and exit codes live here only.

Each command turns its options into settings (settings.py), runs below (run.py, outputs.py)
and turns what happened into one of the exit codes below.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple, TypeVar

import click

from container_netstat import __version__, discovery, kernel_scopes, metrics, push, table, units
from container_netstat.deadline import DEFAULT_SECONDS, DELIVERY_SHARE, Deadline, OutOfTime
from container_netstat.diagnostics import FORMAT, OneLineFormatter, redact
from container_netstat.settings import DEFAULT_WORKERS, Delivery, HostPaths, Settings
from container_netstat.spool import Bounds

if TYPE_CHECKING:  # pragma: no cover
    from container_netstat.outputs import Output, PushOutput
    from container_netstat.push import Outcome
    from container_netstat.doctor import TableProbe
    from container_netstat.records import Snapshot
    from container_netstat.runtime_dirs import Dirs
    from container_netstat.spool import Spool

log = logging.getLogger("container_netstat")

# Exit codes, documented in README.rst.
EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_DOCKER = 3
EXIT_PARTIAL = 4  # some containers could not be read, or were not read by the deadline
EXIT_SPOOLED = 5  # not all delivered: the rest waits in the spool for the next run
EXIT_REJECTED = 6  # the receiver refused a batch (a 4xx or 3xx) or dropped items as invalid
EXIT_LOCKED = 7  # another run holds the spool's lock: this one did nothing
EXIT_LOST = 8  # items neither delivered nor kept: spool unwritable, or over its bounds

ENV_PREFIX = "CONTAINER_NETSTAT"
OUTPUT_FORMATS = ("json", "prometheus", "table")
SORT_COLUMNS = table.SORT_KEYS
DEFAULT_METRICS = ",".join(g for g in metrics.GROUPS if g in metrics.DEFAULT_GROUPS)
STATE_SORTS = ("close_wait", "listen_fill")  # table columns of the states group


def _transfer_addrs(ctx: click.Context, param: click.Parameter, values: Tuple[str, ...]) -> Tuple[str, ...]:
    """--transfer-addr HOST:PORT values, checked before any work is done."""
    if not values:  # click calls this for the default too: no transfer module to import then
        return ()
    from container_netstat.transfer import TransferError, split_addr

    for value in values:
        try:
            split_addr(value)
        except TransferError as err:
            raise click.BadParameter(str(err)) from err
    return tuple(v.strip() for v in values)


def _seconds(ctx: click.Context, param: click.Parameter, value: str) -> int:
    try:
        return units.parse_quantity(str(value), units.DURATION_UNITS)
    except ValueError as err:
        raise click.BadParameter(str(err)) from err


def _bytes(ctx: click.Context, param: click.Parameter, value: str) -> int:
    try:
        return units.parse_quantity(str(value), units.SIZE_UNITS)
    except ValueError as err:
        raise click.BadParameter(str(err)) from err


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter(FORMAT))
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


def _parse_groups(value: str) -> "set[str]":
    groups = {g.strip() for g in value.split(",") if g.strip()}
    unknown = groups - set(metrics.GROUPS)
    if unknown or not groups:
        raise click.BadParameter(f"{value!r}: choose from {', '.join(metrics.GROUPS)}", param_hint="--metrics")
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
        click.option("--runtime", type=click.Choice(discovery.RUNTIMES), default="auto",
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
        click.option("--workers", type=click.IntRange(min=1), default=DEFAULT_WORKERS, show_default=True,
                     metavar="N",
                     help="Network namespaces read at once (default: the CPUs, at most 4); 1 reads them "
                     "one after another."),
        click.option("--field-scope", "field_scopes", multiple=True, metavar="FIELD=netns|host", callback=_parse_scopes,
                     help="Override whether a kernel-dependent sockstat field (tw, sockets_used) is per "
                     "network namespace on this kernel (for backports). Repeatable."),
    ]

    @functools.wraps(f)
    def with_source(**kwargs: Any) -> Any:
        paths = HostPaths(kwargs.pop("proc_root"), kwargs.pop("cgroup_root"), kwargs.pop("run_root"),
                          kwargs.pop("var_root"), kwargs.pop("host_root"), kwargs.pop("runtime_dir"))
        given = Settings(runtime=kwargs.pop("runtime"), docker_host=kwargs.pop("docker_host"),
                          docker_timeout=kwargs.pop("docker_timeout"), paths=paths,
                          scope_overrides=kwargs.pop("field_scopes"), workers=kwargs.pop("workers"))
        return f(given=given, **kwargs)

    wrapped: Any = with_source
    for option in reversed(options):
        wrapped = option(wrapped)
    return wrapped  # type: ignore[no-any-return]


def _snapshot(settings: Settings, deadline: Deadline) -> "Tuple[discovery.Backend, Snapshot, Dict[str, str]]":
    """run.take_snapshot by ``deadline``, or exit 3 (the runtime cannot be reached) or 4 (nor
    /proc, or the deadline passed before the list) with one line."""
    from container_netstat import run
    from container_netstat.errors import ContainerNetstatError, DockerUnavailable

    try:
        backend = run.choose_backend(settings, os.environ, deadline)
        snapshot, scopes = run.take_snapshot(settings, backend, deadline)
    except OutOfTime as err:
        raise _fail(EXIT_PARTIAL, f"{err}: no container was read") from err
    except DockerUnavailable as err:
        raise _fail(EXIT_DOCKER, f"cannot reach {backend.name.capitalize()} at {redact(backend.where)}: {err}") from err
    except ContainerNetstatError as err:
        raise _fail(EXIT_PARTIAL, f"cannot read the host's /proc: {err}") from err
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
              "/proc/<pid>/net/tcp{,6} would cost 4-12x a run without them.")
@click.option("--hostnet-fd-cap", type=click.IntRange(min=1), default=65536, show_default=True, metavar="N",
              help="hostnet group: open file descriptors read in one run, over all host-network "
              "containers and their processes. When the budget runs out, the container being read and "
              "those not read yet are left out of the run (never counted in part), with one warning naming them.")
@click.option("--tcp-states", is_flag=True,
              help="Add the states group even where only /proc/<pid>/net/tcp{,6} can give it.")
@click.option("--include", multiple=True, metavar="PATTERN",
              help="Report only containers whose name matches this glob, or with label KEY=VALUE (glob). Repeatable.")
@click.option("--exclude", multiple=True, metavar="PATTERN",
              help="Skip containers whose name matches this glob, or with label KEY=VALUE (glob). Repeatable.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
              default="warning", show_default=True, help="Diagnostics on stderr at this level and above.")
@click.option("--falcon-url", default=push.DEFAULT_URL, show_default=True, metavar="URL",
              help="Where to POST the items: the falcon-agent's /v1/push, transfer's /api/push (which "
              "reports invalid items) or Nightingale's /openfalcon/push.")
@click.option("--connect-timeout", type=click.FloatRange(min=0.1), default=push.Target.connect_timeout,
              show_default=True,
              help="Seconds to wait for the receiver to accept a connection.")
@click.option("--read-timeout", type=click.FloatRange(min=0.1), default=push.Target.read_timeout,
              show_default=True,
              help="Seconds to wait for each answer; the agent forwards before answering and retries "
              "for up to ~14 s.")
@click.option("--deadline", type=click.FloatRange(min=1), default=DEFAULT_SECONDS, show_default=True,
              help="Seconds from the start of the run by which it must be done: every step (the "
              "container list, each namespace, the agent's name, each push, the spool's replay) takes its "
              "time from it. A run that pushes stops starting namespaces after three quarters of it, to "
              "leave time to send; containers not read by then are named in one line (exit 4), and what "
              "is not sent by the deadline is spooled for the next run (exit 5).")
@click.option("--batch-size", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Items per request.")
@click.option("--transfer-addr", multiple=True, metavar="HOST:PORT", callback=_transfer_addrs,
              help="Where the falcon-agent forwards to: transfer's RPC address, asked (Transfer.Ping) before "
              "and after a push to the agent, whose answer does not say whether transfer took the items. "
              "Repeatable. Default: the transfer.addrs of --agent-config, else of the running falcon-agent's "
              "configuration.")
@click.option("--agent-config", metavar="PATH", default=None,
              help="The falcon-agent's configuration file on the host (read under --host-root), for its "
              "transfer.addrs. Default: the file the running falcon-agent was started with (-c).")
@click.option("--spool-dir", type=click.Path(file_okay=False), default=None,
              help="Where undelivered batches wait (mode 0700); also holds the lock that keeps two runs "
              "apart. Default: /var/spool/container-netstat for root, else "
              "$XDG_STATE_HOME/container-netstat (~/.local/state/container-netstat).")
@click.option("--spool-max-age", default=units.format_quantity(Bounds.max_age, units.DURATION_UNITS),
              show_default=True, metavar="DURATION", callback=_seconds,
              help="Drop spooled batches collected longer ago than this (90s, 30m, 12h, 1d).")
@click.option("--spool-max-bytes", default=units.format_quantity(Bounds.max_bytes, units.SIZE_UNITS),
              show_default=True, metavar="SIZE", callback=_bytes,
              help="Drop the oldest spooled batches beyond this size (500K, 64M, 1G).")
def collect(
    dry_run: bool,
    output_format: Optional[str],
    textfile: Optional[str],
    sort_by: str,
    given: Settings,
    endpoint: Optional[str],
    step: int,
    metric_groups: Optional[str],
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
    transfer_addr: Tuple[str, ...],
    agent_config: Optional[str],
    spool_dir: Optional[str],
    spool_max_age: int,
    spool_max_bytes: int,
) -> None:
    """Take one snapshot of every running container's network namespace.

    Reads each network namespace once (/proc/<pid>/net/{sockstat,sockstat6,snmp,netstat},
    and its TCP states by one sock_diag dump inside it) and prints (--dry-run) or pushes
    an open-falcon JSON array; --format prints it as
    json, prometheus or table instead, --textfile writes it for node_exporter. The whole
    run ends by --deadline. Exit codes: 0 ok, 2 usage, 3 Docker unreachable (the spool is
    still replayed), 4 some containers could not be read, or were not read by the deadline,
    5 not all delivered (the rest is spooled, also when the deadline cut the push short, or
    when no transfer answers behind the falcon-agent),
    6 refused by the receiver (a wrong URL's batches are kept), 7 another run in progress,
    8 items lost (or --textfile not written), 1 internal error.
    """
    run_deadline = Deadline.after(deadline)  # the one deadline of this run: every step takes its time from it
    gc.disable()  # one short run that makes no reference cycles worth collecting: ~11 ms at 300 containers
    started = time.monotonic()  # the run's duration gauge (outputs.with_health)
    _setup_logging(log_level)
    printed = output_format or ("json" if dry_run else None)
    groups, states_asked = _groups(metric_groups, tcp_states, sort_by if printed == "table" else None)
    settings = dataclasses.replace(given, groups=frozenset(groups), states_asked=states_asked,
                                   include=include, exclude=exclude, fd_cap=hostnet_fd_cap)
    delivery = Delivery(falcon_url, endpoint, step, connect_timeout, read_timeout, batch_size,
                        transfer_addrs=transfer_addr, agent_config=agent_config)
    if textfile is not None and not Path(textfile).parent.is_dir():
        raise click.BadParameter(f"{textfile}: no such directory", param_hint="--textfile")
    chosen = _outputs(printed, textfile, sort_by, delivery, run_deadline, spool_dir, spool_max_age, spool_max_bytes,
                      settings.paths)
    pushing = _pushing(chosen)
    # A run that pushes keeps a share of its time for the agent's name and the delivery.
    collect_by = run_deadline.earlier(deadline * DELIVERY_SHARE) if pushing is not None else run_deadline

    try:
        _backend, snapshot, scopes = _snapshot(settings, collect_by)
    except click.exceptions.Exit as stop:
        if pushing is None or stop.exit_code != EXIT_DOCKER:
            raise
        snapshot = None
    if snapshot is None and pushing is not None:
        # No items from this run, but the receiver may be fine: replay the spool within the
        # deadline, or a long Docker outage ages it out. (Outside the except block, so that no
        # push error names the Docker error as its context.)
        pushing.emit([], [], int(time.time()))
        assert pushing.outcome is not None
        raise click.exceptions.Exit(_push_exit_code(pushing.outcome, False, docker_down=True))
    assert snapshot is not None

    from container_netstat import falcon

    samples, failed = metrics.snapshot_samples(snapshot, scopes, snapshot.groups)
    from container_netstat.outputs import with_health
    with_health(chosen, snapshot, started)
    collected_at = int(time.time())
    items: List[falcon.Item] = []
    if any(o.carries_items for o in chosen):
        name = delivery.endpoint or _agent_endpoint(delivery, run_deadline, pushing) or socket.gethostname()
        items = falcon.build_items(samples, name, collected_at, step)
    log.info(
        "%d containers, %d namespaces, %d items; %d exited during the run, %d failed",
        snapshot.containers, len(snapshot.namespaces), len(items), len(snapshot.gone), len(failed),
    )
    _emit(chosen, samples, items, collected_at)
    partial = bool(failed) or bool(snapshot.late)
    outcome = pushing.outcome if pushing is not None else None
    _say_skipped(deadline, snapshot.late, outcome, run_deadline)
    if outcome is not None:
        raise click.exceptions.Exit(_push_exit_code(outcome, partial))
    if partial:
        raise click.exceptions.Exit(EXIT_PARTIAL)


def _say_skipped(seconds: float, late: Tuple[str, ...], outcome: "Optional[Outcome]", run_deadline: Deadline) -> None:
    """One line for what the deadline made the run skip: the containers not read, and the
    batches spooled when the deadline cut the push short (push.py says why a push failed)."""
    cut = outcome is not None and outcome.spooled_batches > 0 and run_deadline.remaining() < push.MIN_BUDGET
    if not late and not cut:
        return
    parts = []
    if late:
        shown = ", ".join(late[:10]) + (f" and {len(late) - 10} more" if len(late) > 10 else "")
        parts.append(f"{len(late)} containers not read ({shown})")
    if cut and outcome is not None:
        parts.append(f"{outcome.spooled_batches} batches of this run ({outcome.spooled_items} items) spooled "
                     "for the next run")
    log.warning("the run's deadline (%g s) was reached: %s", seconds, "; ".join(parts))


def _groups(metric_groups: Optional[str], tcp_states: bool, table_sort: Optional[str]) -> "Tuple[set[str], bool]":
    """The metric groups, and whether TCP states were asked for (so that they are read from /proc
    where sock_diag cannot be used): the one check that spans --metrics, --tcp-states and --sort."""
    groups = _parse_groups(metric_groups or DEFAULT_METRICS) | ({metrics.STATES} if tcp_states else set())
    sort_states = table_sort in STATE_SORTS
    if sort_states and metrics.STATES not in groups:
        raise click.BadParameter(f"{table_sort} is measured only with the states group (--tcp-states)",
                                 param_hint="--sort")
    asked = tcp_states or sort_states or (metric_groups is not None and metrics.STATES in groups)
    return groups, asked


def _outputs(printed: Optional[str], textfile: Optional[str], sort_by: str, delivery: Delivery, run_deadline: Deadline,
             spool_dir: Optional[str], max_age: int, max_bytes: int, paths: Optional[HostPaths] = None) -> "List[Output]":
    """The outputs the options ask for: the textfile, then a printed format; else the push,
    which checks its URL and takes the spool's lock first."""
    from container_netstat import outputs

    chosen: "List[Output]" = []
    if textfile is not None:
        chosen.append(outputs.TextfileOutput(Path(textfile)))
    if printed == "json":
        chosen.append(outputs.JsonOutput(sys.stdout))
    elif printed == "prometheus":
        chosen.append(outputs.PrometheusOutput(sys.stdout.buffer))
    elif printed == "table":
        tty = sys.stdout.isatty()
        import shutil  # here: only the table asks for the terminal's width

        width = shutil.get_terminal_size().columns if tty else None
        chosen.append(outputs.TableOutput(sys.stdout, sort_by, width, color=tty and not os.environ.get("NO_COLOR")))
    if chosen:
        return chosen
    try:
        push.check_url(delivery.falcon_url)
    except push.UnusableUrl as err:
        raise click.BadParameter(str(err), param_hint="--falcon-url") from err
    spool = _locked_spool(spool_dir, max_age, max_bytes)
    return [outputs.PushOutput(delivery, spool, run_deadline, redact(delivery.falcon_url), paths)]


def _pushing(chosen: "List[Output]") -> "Optional[PushOutput]":
    from container_netstat.outputs import PushOutput

    return next((o for o in chosen if isinstance(o, PushOutput)), None)


def _agent_endpoint(delivery: Delivery, run_deadline: Deadline, pushing: "Optional[PushOutput]") -> Optional[str]:
    """The falcon-agent's own name for its host, asked once (agent.py); None where not asked."""
    from container_netstat import agent

    spool = pushing.spool if pushing is not None else None
    return agent.endpoint(delivery.falcon_url, delivery.connect_timeout, delivery.read_timeout,
                          run_deadline, spool)


def _emit(chosen: "List[Output]", samples: "List[Any]", items: "List[Any]", collected_at: int) -> None:
    """Write the run's data; an unwritable textfile loses this run's values, as an unwritable spool does."""
    from container_netstat.errors import ContainerNetstatError

    try:
        for output in chosen:
            output.emit(samples, items, collected_at)
    except ContainerNetstatError as err:
        # Imported here: a run without the Prometheus outputs never loads that module.
        from container_netstat.prometheus import TextfileError

        if isinstance(err, TextfileError):
            raise _fail(EXIT_LOST, f"{err} (see --textfile)") from err
        raise


def _locked_spool(directory: Optional[str], max_age: int, max_bytes: int) -> "Spool":
    """Open the spool and take its lock before collecting, so two runs never collect at once."""
    from container_netstat.spool import Bounds, Spool, SpoolBusy, SpoolError, default_dir

    path = Path(directory) if directory else default_dir(os.getuid(), os.environ)
    spool = Spool(path, Bounds(max_age=max_age, max_bytes=max_bytes))
    try:
        spool.open()
        spool.lock()
    except SpoolBusy as err:
        raise _fail(EXIT_LOCKED, f"{err}: another run is in progress, this one did nothing") from err
    except SpoolError as err:
        raise _fail(EXIT_USAGE, f"{err} (see --spool-dir)") from err
    return spool


def _push_exit_code(outcome: "Outcome", partial: bool, docker_down: bool = False) -> int:
    """The most serious thing that happened: lost > refused > Docker unreachable > spooled >
    unreadable containers."""
    if outcome.lost_items or outcome.dropped_batches:
        return EXIT_LOST
    if outcome.rejected_items or outcome.invalid_items or outcome.wrong_address:
        return EXIT_REJECTED
    if docker_down:
        return EXIT_DOCKER
    if outcome.spooled_batches or outcome.kept_batches:
        return EXIT_SPOOLED
    return EXIT_PARTIAL if partial else EXIT_OK


@main.command()
@_source_options
@click.option("--format", "output_format", type=click.Choice(["json", "text"]), default="json", show_default=True,
              help="json for tools, text for a terminal.")
@click.option("--include", multiple=True, metavar="PATTERN",
              help="Explain only containers whose name matches this glob, or with label KEY=VALUE (glob). Repeatable.")
@click.option("--exclude", multiple=True, metavar="PATTERN",
              help="Leave out containers whose name matches this glob, or with label KEY=VALUE (glob). Repeatable.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
              default="warning", show_default=True, help="Diagnostics on stderr at this level and above.")
def doctor(given: Settings, output_format: str, include: Tuple[str, ...], exclude: Tuple[str, ...],
           log_level: str) -> None:
    """Explain this host: each metric's scope on this kernel, the Docker API version,
    which containers share a namespace, and any container that could not be read and why;
    and the kernel's TCP table: how many namespaces share the host's, what a dump costs.

    The first command to run when numbers look odd. Exit codes as for collect.
    """
    import json

    from container_netstat import doctor as doctoring
    from container_netstat.errors import DockerUnavailable

    _setup_logging(log_level)
    settings = dataclasses.replace(given, groups=frozenset({metrics.BASIC, metrics.STATES, metrics.HOSTNET}),
                                   include=include, exclude=exclude)
    run_deadline = Deadline.after(DEFAULT_SECONDS)
    backend, snapshot, scopes = _snapshot(settings, run_deadline)
    unavailable = snapshot.tcp_path.reason or None if snapshot.tcp_path else None
    where = redact(backend.where)
    try:
        version = backend.version()
    except DockerUnavailable as err:
        raise _fail(EXIT_DOCKER, f"cannot reach {backend.name.capitalize()} at {where}: {err}") from err
    from container_netstat import transfer

    table = _table_probe(settings, snapshot, run_deadline)
    data = doctoring.report(snapshot, scopes, {"runtime": backend.name, "host": where, **version}, unavailable,
                            table, transfer.describe(settings.paths))
    if output_format == "json":
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(doctoring.format_text(data))
    if snapshot.failed:
        raise click.exceptions.Exit(EXIT_PARTIAL)


def _table_probe(settings: Settings, snapshot: "Snapshot", run_deadline: Deadline) -> "TableProbe":
    """doctor's look at the kernel's TCP table: the host's settings, a sample of namespaces."""
    from container_netstat import doctor as doctoring
    from container_netstat.namespaces import HOST_PID
    from container_netstat.procfs import ProcFS
    from container_netstat.tcp_reader import TcpReader

    proc = ProcFS(settings.paths.proc_root)
    reader = TcpReader(proc)
    unavailable = reader.probe()
    try:
        here = os.stat(doctoring.OWN_SOCKSTAT).st_ino == snapshot.host.key
    except OSError:
        here = False
    try:
        return doctoring.measure_table(reader, snapshot, HOST_PID, run_deadline, unavailable,
                                       doctoring.own_sysctl, here, proc.netns_key)
    finally:
        reader.close()
