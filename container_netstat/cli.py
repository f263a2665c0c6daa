"""Command line: options, environment variables, logging and exit codes live here only."""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from typing import Dict, Optional, Tuple

import click

from container_netstat import __version__

log = logging.getLogger("container_netstat")

# Exit codes, documented in README.rst.
EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_DOCKER = 3
EXIT_PARTIAL = 4

ENV_PREFIX = "CONTAINER_NETSTAT"


class _OneLineFormatter(logging.Formatter):
    """``container-netstat: level: message`` on one line, whatever the message holds."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text.replace("\r", "\\r").replace("\n", "\\n")


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLineFormatter("container-netstat: %(levelname)s: %(message)s"))
    root = logging.getLogger("container_netstat")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def _parse_scopes(values: Tuple[str, ...]) -> Dict[str, str]:
    scopes: Dict[str, str] = {}
    for value in values:
        name, sep, scope = value.partition("=")
        if not sep:
            raise click.BadParameter(f"{value!r}: expected FIELD=netns or FIELD=host", param_hint="--field-scope")
        scopes[name.strip()] = scope.strip()
    return scopes


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


@main.command()
@click.option("--dry-run", is_flag=True, help="Print the JSON array on stdout instead of pushing it.")
@click.option(
    "--docker-host",
    metavar="URL",
    help="Docker daemon address (unix:///var/run/docker.sock, tcp://host:2376). "
    "Default: DOCKER_HOST, then the local socket. DOCKER_TLS_VERIFY and DOCKER_CERT_PATH apply.",
)
@click.option("--docker-timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              help="Seconds to wait for each Docker API call.")
@click.option("--proc-root", default="/proc", show_default=True, type=click.Path(file_okay=False),
              help="Where the host's /proc is mounted (e.g. /host/proc when run in a container).")
@click.option("--cgroup-root", default="/sys/fs/cgroup", show_default=True, type=click.Path(file_okay=False),
              help="Where the host's cgroup hierarchies are mounted; used to find container pids.")
@click.option("--run-root", default="/run", show_default=True, type=click.Path(file_okay=False),
              help="The host's /run, where the container runtime keeps its pid files.")
@click.option("--endpoint", default=None, metavar="NAME",
              help="Endpoint of every item. Default: this host's name, as the falcon-agent uses.")
@click.option("--step", type=click.IntRange(min=1), default=60, show_default=True,
              help="Seconds between runs, sent as each item's step.")
@click.option("--field-scope", "field_scopes", multiple=True, metavar="FIELD=netns|host",
              help="Override whether a kernel-dependent sockstat field (tw, sockets_used) is per "
              "network namespace on this kernel (for backports). Repeatable.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
              default="warning", show_default=True, help="Diagnostics on stderr at this level and above.")
def collect(
    dry_run: bool,
    docker_host: Optional[str],
    docker_timeout: float,
    proc_root: str,
    cgroup_root: str,
    run_root: str,
    endpoint: Optional[str],
    step: int,
    field_scopes: Tuple[str, ...],
    log_level: str,
) -> None:
    """Take one snapshot of every running container's network namespace.

    Reads /proc/<pid>/net/{sockstat,sockstat6,snmp} once per network namespace and
    prints (--dry-run) or pushes an open-falcon JSON array. Exit codes: 0 ok,
    2 usage, 3 Docker unreachable, 4 some containers could not be read, 1 internal error.
    """
    _setup_logging(log_level)
    overrides = _parse_scopes(field_scopes)

    # Imports kept here so `--help` stays fast.
    from container_netstat import collect as collecting
    from container_netstat import discovery, falcon, metrics
    from container_netstat.errors import ContainerNetstatError, DockerUnavailable
    from container_netstat.pids import PidResolver
    from container_netstat.procfs import ProcFS

    environment = dict(os.environ)
    if docker_host:
        environment["DOCKER_HOST"] = docker_host
    where = environment.get("DOCKER_HOST") or "the local Docker socket"
    proc = ProcFS(proc_root)
    try:
        client = discovery.connect(environment, docker_timeout)
        containers = discovery.list_containers(client)
        resolver = PidResolver(proc, cgroup_root, run_root, inspect=discovery.inspector(client))
        snapshot = collecting.collect(containers, resolver, proc)
        scopes = metrics.field_scopes(snapshot.host.kernel_release, overrides)
    except DockerUnavailable as err:
        raise _fail(EXIT_DOCKER, f"cannot reach Docker at {_redact(where)}: {err}")
    except ContainerNetstatError as err:
        raise _fail(EXIT_PARTIAL, f"cannot read the host's /proc: {err}")
    samples, failed = metrics.snapshot_samples(snapshot, scopes)
    items = falcon.build_items(samples, endpoint or socket.gethostname(), int(time.time()), step)
    log.info(
        "%d containers, %d namespaces, %d items; %d exited during the run, %d failed",
        snapshot.containers, len(snapshot.namespaces), len(items), len(snapshot.gone), len(failed),
    )
    if not dry_run:
        raise _fail(EXIT_USAGE, "pushing is not available yet: use --dry-run")
    click.echo(falcon.dumps(items))
    if failed:
        raise click.exceptions.Exit(EXIT_PARTIAL)


def _redact(url: str) -> str:
    """Hide credentials in a URL (user:password@host) before it is logged."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
