"""The systemd units in contrib/systemd: valid for systemd, the cron entry's job, and enough rights.

- ``systemd-analyze verify`` (Debian's ``systemd`` package; it needs no systemd as PID 1) must
  accept both units without a single message. It only checks an ExecStart= whose program
  exists, so the copy it checks names the entry point beside this interpreter, as
  test_cron.py puts that directory in front of cron's PATH.
- The service runs the cron entry's command with the cron entry's timeouts and syslog tag,
  parsed from both files, so the two cannot drift apart.
- The service's command line runs, with the unit's capability bounding set and
  NoNewPrivileges=, in a mount namespace where every mount but the spool is read-only (what
  ProtectSystem=strict, ReadWritePaths=, ProtectKernelTunables= and ProtectControlGroups= give),
  against the real dockerd, containerd and receiver. This is the unit's sandbox rebuilt from
  the same kernel mechanisms, not systemd itself, which cannot run here without being PID 1.

Under CI=true a missing systemd-analyze, unshare or setpriv fails instead of skipping.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

from conftest import pid_of, unavailable
from container_netstat import spool
from integration.test_collect_docker import background, by_tags
from integration.test_containerd import Pods, pods  # noqa: F401 - pods is a fixture
from integration.test_cron import CRON_FILE, parse
from integration.workloads import hold
from receiver import AGENT, Receiver

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "contrib" / "systemd"
SERVICE = UNITS / "container-netstat.service"
TIMER = UNITS / "container-netstat.timer"
# Where systemd looks up an ExecStart= program given without a directory (systemd.service(5),
# "COMMAND LINES"): a fixed list, the same as the cron entry's PATH.
SEARCH_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

Unit = Dict[str, Dict[str, List[str]]]


def read_unit(path: Path) -> Unit:
    """Section -> key -> values, in order; comments and blank lines dropped."""
    sections: Unit = {}
    current: Optional[Dict[str, List[str]]] = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        assert not line.endswith("\\"), f"{path.name}: continued lines are not parsed here: {line}"
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None and "=" in line, f"{path.name}: {line}"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(unit: Unit, section: str, key: str) -> str:
    values = unit[section][key]
    assert len(values) == 1, (section, key, values)
    return values[0]


def cron_job() -> Tuple[Dict[str, str], List[str], List[str]]:
    """The cron entry's job: (timeout's options, the tool's argv, logger's argv)."""
    _, jobs = parse(CRON_FILE.read_text())
    words = shlex.split(jobs[0].split(None, 6)[6])
    start, stop = words.index("timeout"), words.index("||")
    # timeout -k KILL_AFTER DURATION COMMAND...
    assert words[start + 1] == "-k", words
    options = {"kill_after": words[start + 2], "duration": words[start + 3]}
    return options, words[start + 4 : stop], words[words.index("logger") + 1 :]


def entry_point() -> Path:
    """The entry point of the code under test, as test_cron.py finds it."""
    path = Path(sys.executable).parent / "container-netstat"
    if not path.exists():
        pytest.fail(f"no container-netstat entry point beside {sys.executable}: pip install -e . first")
    return path


def exec_start() -> List[str]:
    return shlex.split(one(read_unit(SERVICE), "Service", "ExecStart"))


@pytest.fixture
def analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        unavailable("systemd-analyze is not installed (Debian's systemd package)")
    assert found is not None
    return found


def run_analyze(analyze: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([analyze, *args], capture_output=True, text=True, timeout=60,
                          env={"PATH": os.environ.get("PATH", SEARCH_PATH), "LC_ALL": "C.UTF-8",
                               "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": ""})


def usec(analyze: str, span: str) -> int:
    """A systemd time span in microseconds, as systemd itself reads it (systemd.time(7))."""
    out = run_analyze(analyze, "timespan", span)
    assert out.returncode == 0, out.stderr
    match = re.search(r"(?:μs|us):\s*(\d+)", out.stdout)
    assert match, out.stdout
    return int(match.group(1))


def checkable_copies(directory: Path) -> Tuple[Path, Path]:
    """Both units, the service's program named by its path (verify checks that it exists)."""
    argv = exec_start()
    service = directory / SERVICE.name
    text = SERVICE.read_text()
    line = f"ExecStart={shlex.join(argv)}\n"
    assert text.count(line) == 1
    service.write_text(text.replace(line, f"ExecStart={shlex.join([str(entry_point()), *argv[1:]])}\n"))
    timer = directory / TIMER.name
    shutil.copyfile(TIMER, timer)
    return service, timer


def verify(analyze: str, *units: Path) -> str:
    """Every message verify prints: systemd 252 warns about an unknown key yet exits 0."""
    result = run_analyze(analyze, "verify", *map(str, units))
    return (result.stdout + result.stderr).strip() + ("" if result.returncode == 0 else f"\nexit {result.returncode}")


# -- what systemd makes of the files ------------------------------------------------------------


def test_systemd_analyze_verify_accepts_both_units_without_a_message(analyze: str, tmp_path: Path) -> None:
    assert verify(analyze, *checkable_copies(tmp_path)) == ""
    # Where the entry point is installed on systemd's search path, the shipped files as they are.
    if shutil.which(exec_start()[0], path=SEARCH_PATH):
        assert verify(analyze, SERVICE, TIMER) == ""


@pytest.mark.parametrize("unit, good, bad, message", [
    ("service", "ProtectSystem=strict", "ProtectSytem=strict", "Unknown key"),
    ("service", "RestrictAddressFamilies=AF_UNIX", "RestrictAddressFamilies=AF_UNIKS", "ignoring"),
    ("timer", "AccuracySec=1s", "AccuracySec=1 fortnight", "Failed to parse"),
])
def test_verify_would_report_a_mistake(analyze: str, tmp_path: Path, unit: str, good: str, bad: str,
                                       message: str) -> None:
    """The check above can fail: a misspelled key or a bad value is reported."""
    service, timer = checkable_copies(tmp_path)
    path = service if unit == "service" else timer
    text = path.read_text()
    assert good in text
    path.write_text(text.replace(good, bad, 1))
    assert message in verify(analyze, service, timer)


def test_the_timer_starts_the_service_at_the_start_of_every_minute(analyze: str) -> None:
    timer, service = read_unit(TIMER), read_unit(SERVICE)
    calendar = run_analyze(analyze, "calendar", one(timer, "Timer", "OnCalendar"))
    assert calendar.returncode == 0, calendar.stderr
    assert "Normalized form: *-*-* *:*:00" in calendar.stdout
    assert usec(analyze, one(timer, "Timer", "AccuracySec")) <= 1_000_000
    assert "Unit" not in timer["Timer"]  # so it starts the service of its own name
    assert one(timer, "Install", "WantedBy") == "timers.target"
    assert one(service, "Service", "Type") == "oneshot"
    start, stop = usec(analyze, one(service, "Service", "TimeoutStartSec")), \
        usec(analyze, one(service, "Service", "TimeoutStopSec"))
    assert start < 60_000_000 and start + stop <= 60_000_000


# -- the same job as the cron entry --------------------------------------------------------------


def test_the_service_runs_the_cron_entrys_command_with_its_timeouts_and_syslog_tag(analyze: str) -> None:
    service = read_unit(SERVICE)["Service"]
    timeout, command, logger = cron_job()
    assert exec_start() == command
    assert usec(analyze, service["TimeoutStartSec"][0]) == usec(analyze, timeout["duration"])
    assert usec(analyze, service["TimeoutStopSec"][0]) == usec(analyze, timeout["kill_after"])
    # logger -t TAG -p FACILITY.LEVEL
    assert logger[0::2] == ["-t", "-p"], logger
    facility, level = logger[3].split(".")
    assert service["SyslogIdentifier"] == [logger[1]]
    assert (service["SyslogFacility"], service["SyslogLevel"]) == ([facility], [level])
    assert service["StandardOutput"] == service["StandardError"] == ["journal"]


def test_the_service_may_write_only_the_tools_default_spool_and_makes_it_first() -> None:
    service = read_unit(SERVICE)["Service"]
    assert service["ProtectSystem"] == ["strict"]
    assert service["ReadWritePaths"] == [str(spool.ROOT_DIR)]
    # ReadWritePaths= refuses a missing path: the directory is made, outside the sandbox ("+")
    program, *args = shlex.split(one(read_unit(SERVICE), "Service", "ExecStartPre"))
    assert program.startswith("+") and Path(program[1:]).name == "mkdir"
    assert args[-1] == str(spool.ROOT_DIR) and "-p" in args and args[args.index("-m") + 1] == "0700"


# -- the service's command line in the unit's sandbox ---------------------------------------------

# Run as root: a private mount namespace (nothing propagates back), every mount but the
# writable directory made read-only except /proc and /dev (as ProtectSystem=strict leaves
# them; ProtectKernelTunables= then makes /proc/sys read-only), checked from mountinfo
# before the command starts. Mounts made on the host meanwhile do not propagate in.
SANDBOX = r"""
set -eu
w=$1; shift
mount --bind "$w" "$w"
awk '{print $5}' /proc/self/mountinfo | sort -u | while read -r mp; do
  case $mp in /proc|/proc/*|/dev|/dev/*) continue ;; esac
  # a container's mount may vanish meanwhile; any that stays writable is caught below
  [ "$mp" = "$w" ] || mount -o remount,bind,ro "$mp" 2>/dev/null || true
done
mount --bind /proc/sys /proc/sys
mount -o remount,bind,ro /proc/sys
writable=$(awk -v w="$w" '$5 != w && $5 !~ "^/(proc|dev)(/|$)" && $6 !~ /(^|,)ro(,|$)/ {print $5}' /proc/self/mountinfo)
[ -z "$writable" ] || { echo "sandbox: still writable: $writable" >&2; exit 99; }
exec "$@"
"""


def bounding_set(caps: str) -> str:
    """CapabilityBoundingSet=CAP_A CAP_B as setpriv's --bounding-set=-all,+a,+b."""
    return ",".join(["-all", *(f"+{cap.lower().removeprefix('cap_')}" for cap in caps.split())])


Sandboxed = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def sandboxed() -> Iterator[Sandboxed]:
    if os.geteuid() != 0:
        unavailable("the sandbox needs root (mount namespaces, the unit runs as root)")
    for tool in ("unshare", "setpriv", "awk"):
        if shutil.which(tool) is None:
            unavailable(f"{tool} is not installed (util-linux; awk from mawk)")
    service = read_unit(SERVICE)["Service"]
    assert service["NoNewPrivileges"] == ["yes"]

    def run(writable: Path, extra: List[str], env: Dict[str, str],
            caps: str = service["CapabilityBoundingSet"][0]) -> subprocess.CompletedProcess[str]:
        argv = exec_start()
        # the entry point under test first, as test_cron.py puts it first in cron's PATH
        program = shutil.which(argv[0], path=f"{entry_point().parent}:{SEARCH_PATH}")
        assert program is not None
        environment = {"PATH": SEARCH_PATH, **dict(v.split("=", 1) for v in service.get("Environment", [])), **env}
        return subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", SANDBOX, "sandbox", str(writable),
             "setpriv", f"--bounding-set={bounding_set(caps)}", "--inh-caps=-all", "--no-new-privs",
             program, *argv[1:], *extra],
            capture_output=True, text=True, timeout=120, cwd="/", env=environment)

    yield run


def tags_of(result: subprocess.CompletedProcess[str]) -> List[str]:
    assert result.returncode == 0, result.stderr
    return sorted({item["tags"] for item in json.loads(result.stdout)})


@pytest.mark.docker
def test_the_service_command_in_the_units_sandbox_pushes_a_containers_numbers(
    sandboxed: Sandboxed, run_container: Any, tmp_path: Path
) -> None:
    server = run_container(name="sd-server", network_mode="none")
    holder = background(pid_of(server), hold(3))
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir(mode=0o700)  # the unit's ExecStartPre=
    try:
        with Receiver() as receiver:
            result = sandboxed(spool_dir, ["--log-level", "info"],
                               {"CONTAINER_NETSTAT_COLLECT_FALCON_URL": receiver.url(AGENT),
                                "CONTAINER_NETSTAT_COLLECT_SPOOL_DIR": str(spool_dir)})
            items = receiver.items()
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert "sandbox:" not in result.stderr
    got = by_tags(items)[f"container={server.name}"]
    assert got["tcp.established"] == 6
    # The unit's capabilities are what the sock_diag path needs: states with their percentages.
    assert "TCP states: sock_diag inside each network namespace" in result.stderr
    assert got["tcp.state.listen"] == 1 and "tcp.listen.fill_max_pct" in got and "tcp.ports.pressure_pct" in got
    assert receiver.invalid() == [] and receiver.problems() == []
    # the lock, and the agent's name kept for the next run (agent.py)
    assert sorted(p.name for p in spool_dir.iterdir()) == ["agent-hostname", "lock"]


def test_the_units_one_capability_names_a_containerd_pod_through_its_shim(
    sandboxed: Sandboxed, pods: Pods, tmp_path: Path  # noqa: F811 - the fixture
) -> None:
    """CAP_SYS_PTRACE is what reads /proc/<shim>/cwd; without it the pod is a short id."""
    pods.pod("shop", "sd-cart-0", ["cart"])
    short_id = pods.started[0][:12]  # the pod's sandbox
    # Its state directory is kept from the tool (found from the daemon's --config otherwise),
    # so that the shim's working directory is the one way to the bundle.
    args = ["--dry-run", "--runtime", "proc", "--runtime-dir", "containerd=/nonexistent/state",
            "--include", f"{short_id}*"]
    kept = tags_of(sandboxed(tmp_path, [*args, "--include", "io.kubernetes.cri.sandbox-name=sd-cart-0"], {}))
    assert kept == ["", "namespace=shop,pod=sd-cart-0"]
    none = tags_of(sandboxed(tmp_path, args, {}, caps=""))
    assert none == ["", f"container={short_id}"]
