"""Where each running container runtime keeps the files that name its containers.

``node_files.NodeFiles`` names containers from files under a runtime's directories, which
move when the runtime is told so. For every runtime daemon running on the host (found
by ``/proc/<pid>/comm`` in the scan of ``discovery.scan_node``), this module reads them
the way the daemon resolves them: its command line, else its configuration file, else
the built-in default.

- ``dockerd``: the data-root, ``<data-root>/containers/<id>/config.v2.json``.
  ``--data-root`` (before Docker 23, also ``-g`` and ``--graph``), else ``data-root``
  (before 23, ``graph``) in ``--config-file`` (default ``/etc/docker/daemon.json``),
  else ``/var/lib/docker`` (moby ``cmd/dockerd/config.go`` for the flags,
  ``cmd/dockerd/docker.go`` for ``--config-file``, ``daemon/config/config.go`` for the
  keys; dockerd refuses to start when the flag and the file both set it).
- ``containerd``: the state directory, ``<state>/io.containerd.runtime.v2.task/<ns>/<id>``.
  ``--state``, else the top-level ``state`` of ``--config``/``-c`` (default
  ``/etc/containerd/config.toml``), else ``/run/containerd`` (containerd
  ``cmd/containerd/command/main.go``, ``defaults/defaults_unix.go``). Its ``root`` holds
  images and metadata, nothing that names a container.
- ``crio`` and ``podman`` (containers/storage): the graph root and the run root, each with
  ``<driver>-containers/<id>/userdata/`` and ``containers.json``. CRI-O: ``--root``/``-r``
  and ``--runroot``, else ``root`` and ``runroot`` of its ``[crio]`` table in ``--config``/
  ``-c`` (default ``/etc/crio/crio.conf``) and then the files of ``--config-dir``/``-d``
  (default ``/etc/crio/crio.conf.d``) in lexical order, the later winning (cri-o
  ``docs/crio.8.md``, ``docs/crio.conf.5.md``, ``docs/crio.conf.d.5.md``). Podman:
  ``--root`` and ``--runroot``. Then, for both, ``graphroot`` and ``runroot`` of the
  ``[storage]`` table of ``/etc/containers/storage.conf`` (else
  ``/usr/share/containers/storage.conf``), else ``/var/lib/containers/storage`` and
  ``/run/containers/storage`` (containers/storage ``types/options.go``,
  ``docs/containers-storage.conf.5.md``). Podman has no daemon, so that last answer is
  always taken as well: a ``podman run`` leaves no process with its flags.

A runtime with no running daemon is read as if one ran without flags: its containers can
outlive it (dockerd's live-restore, containerd's shims).

Which daemons are believed. A container can run a process called ``dockerd`` with any command
line, as root in its own user namespace, and can give it a cgroup that names no container (a
sub-cgroup called ``conmon`` in a cgroup it may write, or its own cgroup namespace on cgroup
v2); believing it would let its files name other tenants' containers. So a daemon's command
line is read only when all of these hold, checked under the proc root:

- ``/proc/<pid>`` is owned by uid 0 of the host;
- its mount and its pid namespace are the host's: ``stat`` of ``/proc/<pid>/ns/mnt`` and
  ``/proc/<pid>/ns/pid`` gives the same device and inode as ``/proc/1/ns/mnt`` and
  ``/proc/1/ns/pid`` ("two processes are in the same namespace if the device IDs and inode
  numbers of their /proc/[pid]/ns/xxx symbolic links are the same", namespaces(7)). Reading
  them needs ptrace read access to both processes (``proc_ns_get_link`` in the kernel's
  fs/proc/namespaces.c, ``PTRACE_MODE_READ_FSCREDS``): root with ``CAP_SYS_PTRACE``. Where
  pid 1's cannot be read (a supervisor holding capabilities this process lacks), kthreadd's
  stand for them: kernel threads keep the initial namespaces (``init_nsproxy``,
  kernel/kthread.c), which are the host's. Where neither can be read, this process's own
  do: they are the host's under cron (systemd's sandboxing gives a unit a mount namespace
  of its own, where kthreadd is the way), and in a pod of its own they match no daemon,
  which is then refused. Where a daemon's cannot be read, it is refused and that is said once;
- no line of its ``/proc/<pid>/cgroup`` has a component that names a container (a 64-hex id)
  or ``conmon``: a host's daemon runs in a service's or a slice's cgroup.

The paths it gives are then read on the host, through the roots below; never through
``/proc/<pid>/root``, which a container's process would make its own file system. Every file
is read through hostfile.py (a regular file, at most 1 MiB, never blocking), the TOML ones parsed
by toml_config.py (a file that is not TOML gives the defaults, and a warning); the configuration
files named here are the administrator's (``/etc``), so a symbolic link in their place is
followed, still to a regular file only.

Paths on the host are read under the roots the tool is given (``HostView``): a path under
``/run`` or ``/var/run`` under the run root, one under ``/var`` under the var root, any
other under the host root. ``Dirs`` given by the user (``--runtime-dir``) replace what is
found, kind by kind.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import re
from dataclasses import dataclass, replace
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

from container_netstat import cgroups, toml_config
from container_netstat.hostfile import HostFiles

log = logging.getLogger(__name__)

DOCKER = "docker"
CONTAINERD = "containerd"
GRAPHROOT = "graphroot"
RUNROOT = "runroot"
KINDS = (DOCKER, CONTAINERD, GRAPHROOT, RUNROOT)
_TITLES = {DOCKER: "Docker data-root", CONTAINERD: "containerd state", GRAPHROOT: "containers/storage graphroot",
           RUNROOT: "containers/storage runroot"}

# /proc/<pid>/comm of the daemons whose command lines say where their directories are
DAEMONS = frozenset({"dockerd", "containerd", "crio", "podman"})

DOCKER_CONFIG = "/etc/docker/daemon.json"
CONTAINERD_CONFIG = "/etc/containerd/config.toml"
CRIO_CONFIG = "/etc/crio/crio.conf"
CRIO_CONFIG_DIR = "/etc/crio/crio.conf.d"
STORAGE_CONFIGS = ("/etc/containers/storage.conf", "/usr/share/containers/storage.conf")


@dataclass(frozen=True)
class Dirs:
    """The runtimes' directories that name containers, by kind; a kind may list several."""

    docker: Tuple[str, ...] = ()  # dockerd data-roots
    containerd: Tuple[str, ...] = ()  # containerd state directories
    graphroot: Tuple[str, ...] = ()  # containers/storage graph roots (Podman, CRI-O)
    runroot: Tuple[str, ...] = ()  # containers/storage run roots (CRI-O's bundles)

    def of(self, kind: str) -> Tuple[str, ...]:
        return tuple(getattr(self, kind))


DEFAULTS = Dirs(
    docker=("/var/lib/docker",),
    containerd=("/run/containerd",),
    graphroot=("/var/lib/containers/storage",),
    runroot=("/run/containers/storage",),
)


@dataclass(frozen=True)
class Flags:
    """What a daemon's command line sets; "" where it sets nothing."""

    config: str = ""  # its configuration file
    config_dir: str = ""  # CRI-O's drop-in directory
    root: str = ""  # dockerd's data-root, CRI-O's and Podman's graph root
    state: str = ""  # containerd's state, CRI-O's and Podman's run root


# comm -> (long names, one-letter names, Go's flag syntax), each name -> a Flags field.
# dockerd and podman parse with spf13/pflag: --name value, --name=value, -n value, -nvalue,
# -n=value. containerd and CRI-O with urfave/cli over Go's flag package: -name or --name,
# with a value after a space or "=", for long and short names alike.
_FLAGS: Dict[str, Tuple[Dict[str, str], Dict[str, str], bool]] = {
    "dockerd": ({"data-root": "root", "graph": "root", "config-file": "config"}, {"g": "root"}, False),
    "containerd": ({"config": "config", "c": "config", "state": "state"}, {}, True),
    "crio": ({"config": "config", "c": "config", "config-dir": "config_dir", "d": "config_dir",
              "root": "root", "r": "root", "runroot": "state"}, {}, True),
    "podman": ({"root": "root", "runroot": "state"}, {}, False),
}


def parse_cmdline(raw: bytes) -> Tuple[str, ...]:
    """/proc/<pid>/cmdline: the arguments, each ended by a NUL."""
    parts = raw.split(b"\0")
    if parts and parts[-1] == b"":
        parts.pop()
    return tuple(os.fsdecode(p) for p in parts)


def parse_flags(comm: str, argv: Sequence[str]) -> Flags:
    """The directory and configuration flags of a daemon's command line (the last one wins)."""
    if comm not in _FLAGS:
        return Flags()
    long_names, letters, go_style = _FLAGS[comm]
    found: Dict[str, str] = {}
    args = list(argv[1:])
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            break
        if not arg.startswith("-") or arg == "-":
            continue
        value: Optional[str] = None
        if arg.startswith("--") or go_style:
            name, eq, attached = arg.lstrip("-").partition("=")
            key = long_names.get(name)
            if eq:
                value = attached
        else:  # pflag's one-letter form: -gVALUE, -g=VALUE, or -g VALUE
            key, attached = letters.get(arg[1]), arg[2:]
            if attached:
                value = attached[1:] if attached.startswith("=") else attached
        if key is None:
            continue
        if value is None:
            if i == len(args):
                break
            value = args[i]
            i += 1
        found[key] = value
    return Flags(**found)


def parse_daemon_json(text: str) -> Optional[str]:
    """Docker's daemon.json -> its ``data-root`` (else the old ``graph``), "" if neither;
    None if the text is not a JSON object."""
    try:
        config = json.loads(text)
    except ValueError:
        return None
    if not isinstance(config, dict):
        return None
    for key in ("data-root", "graph"):
        value = config.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def host_path(path: str) -> Optional[str]:
    """A clean absolute path, or None for a relative one (it would be the daemon's cwd's)."""
    if not path.startswith("/"):
        return None
    return "/" + posixpath.normpath(path).lstrip("/")


@dataclass(frozen=True)
class HostView:
    """Where the host's /, /run and /var are seen from here (``--host-root``, ``--run-root``,
    ``--var-root``)."""

    host_root: str = "/"
    run_root: str = "/run"
    var_root: str = "/var"

    def local(self, path: str) -> str:
        """Where a path on the host is read from here. ``/var/run`` is taken for ``/run``, as on
        every distribution with systemd (and Debian since 7), where it is a link to it."""
        clean = host_path(path) or path
        for prefix, root in (("/var/run", self.run_root), ("/run", self.run_root), ("/var", self.var_root),
                             ("/", self.host_root)):
            if clean == prefix or clean.startswith(prefix.rstrip("/") + "/"):
                rest = clean[len(prefix):].lstrip("/")
                return os.path.join(root, rest) if rest else root
        return clean

    def localize(self, dirs: Dirs) -> Dirs:
        return Dirs(**{kind: tuple(self.local(p) for p in dirs.of(kind)) for kind in KINDS})


def parse_given(values: Iterable[str]) -> Dirs:
    """``--runtime-dir KIND=PATH`` values -> the directories they give; ValueError if one is wrong."""
    given: Dict[str, List[str]] = {kind: [] for kind in KINDS}
    for value in values:
        kind, sep, path = value.partition("=")
        kind = kind.strip()
        if not sep or kind not in given:
            raise ValueError(f"{value!r}: expected KIND=PATH, KIND one of {', '.join(KINDS)}")
        clean = host_path(path.strip())
        if clean is None:
            raise ValueError(f"{value!r}: PATH must be absolute, as seen on the host")
        given[kind].append(clean)
    return Dirs(**{kind: tuple(paths) for kind, paths in given.items()})


# --- the reader: command lines under the proc root, configuration files through a HostView ---


@dataclass(frozen=True)
class Found:
    """One directory of one runtime, and where it was read."""

    kind: str
    path: str  # on the host
    source: str  # for the debug log: "dockerd 812: --data-root", "no containerd running: default"...
    running: bool  # from a running daemon (not from the files alone)


_Keys = Dict[Tuple[str, ...], Tuple[str, str]]  # TOML key -> (value, the file that set it)


class _Reader:
    """Reads the runtimes' configuration files, each once, at their host paths through ``view``."""

    def __init__(self, view: HostView, files: HostFiles) -> None:
        self.view = view
        self.files = files
        self._texts: Dict[str, Optional[str]] = {}
        self._strings: Dict[str, Optional[toml_config.Strings]] = {}

    def text(self, path: str) -> Optional[str]:
        clean = host_path(path)
        if clean is None:
            return None
        if clean not in self._texts:
            # The administrator's files (/etc...): a link to a regular file is followed.
            self._texts[clean] = self.files.text(self.view.local(clean), follow=True)
        return self._texts[clean]

    def toml(self, paths: Iterable[str]) -> _Keys:
        """The non-empty string values of these files, a later file's winning. A file that is
        not TOML gives none, and that is said once."""
        keys: _Keys = {}
        for path in paths:
            text = self.text(path)
            if text is None:
                continue
            if path not in self._strings:
                self._strings[path] = toml_config.parse_strings(text)
                if self._strings[path] is None:
                    log.warning("%s: not valid TOML; its settings are not read, the defaults are taken", path)
            keys.update({key: (value, path) for key, value in (self._strings[path] or {}).items() if value})
        return keys

    def files_in(self, directory: str) -> List[str]:
        """The host paths of the entries in a directory but its subdirectories, in name order
        (a fifo or a link there is then refused, and said, by the reader)."""
        clean = host_path(directory)
        if clean is None:
            return []
        local = self.view.local(clean)
        try:
            names = sorted(os.listdir(local))
        except OSError:
            return []
        return [posixpath.join(clean, n) for n in names if not os.path.isdir(os.path.join(local, n))]

    def dockerd(self, who: str, flags: Flags, running: bool) -> List[Found]:
        if flags.root:
            return [Found(DOCKER, flags.root, f"{who}: --data-root", running)]
        config = flags.config or DOCKER_CONFIG
        text = self.text(config)
        root = parse_daemon_json(text) if text is not None else ""
        if root:
            return [Found(DOCKER, root, f"{who}: {config}", running)]
        if root is None:
            log.warning("%s: not a JSON object; Docker's data-root taken as the default %s",
                        config, DEFAULTS.docker[0])
        return [Found(DOCKER, DEFAULTS.docker[0], f"{who}: default", running)]

    def containerd(self, who: str, flags: Flags, running: bool) -> List[Found]:
        if flags.state:
            return [Found(CONTAINERD, flags.state, f"{who}: --state", running)]
        state = self.toml([flags.config or CONTAINERD_CONFIG]).get(("state",))
        if state:
            return [Found(CONTAINERD, state[0], f"{who}: {state[1]}", running)]
        return [Found(CONTAINERD, DEFAULTS.containerd[0], f"{who}: default", running)]

    def storage(self, who: str, flags: Flags, crio: bool, running: bool) -> List[Found]:
        """Graph and run roots: the flags, then (CRI-O) crio.conf and its drop-ins, then storage.conf."""
        storage_conf = next((p for p in STORAGE_CONFIGS if self.text(p) is not None), None)
        storage = self.toml([storage_conf] if storage_conf else [])
        crio_keys: _Keys = {}
        if crio:
            crio_keys = self.toml([flags.config or CRIO_CONFIG, *self.files_in(flags.config_dir or CRIO_CONFIG_DIR)])
        out = []
        for kind, flag, name, crio_key, storage_key in (
            (GRAPHROOT, flags.root, "--root", ("crio", "root"), ("storage", "graphroot")),
            (RUNROOT, flags.state, "--runroot", ("crio", "runroot"), ("storage", "runroot")),
        ):
            if flag:
                out.append(Found(kind, flag, f"{who}: {name}", running))
                continue
            value, source = crio_keys.get(crio_key) or storage.get(storage_key) or (DEFAULTS.of(kind)[0], "default")
            out.append(Found(kind, value, f"{who}: {source}", running))
        return out


_NAMESPACES = ("mnt", "pid")
KTHREADD_PID = 2  # the kernel's second task (init/main.c rest_init)
_NAMES_A_CONTAINER = re.compile(r"[0-9a-f]{64}|conmon")


def names_a_container(cgroup_text: str) -> bool:
    """True if any line of a ``/proc/<pid>/cgroup`` text has a component naming a container
    (cgroups.py), a 64-hex id anywhere in it, or a ``conmon`` monitor's cgroup."""
    if cgroups.parse(cgroup_text) is not None:
        return True
    for line in cgroup_text.splitlines():
        path = line.split(":", 2)[-1]
        if any(_NAMES_A_CONTAINER.search(component) for component in path.split("/")):
            return True
    return False


class HostProcesses:
    """Which processes under the proc root are the host's own: uid 0, the mount and pid
    namespaces of pid 1, a cgroup that names no container (the module docstring)."""

    def __init__(self, proc_root: str, files: HostFiles) -> None:
        self.proc_root = proc_root
        self.files = files
        self._host: Optional[Tuple[Tuple[int, int], ...]] = None
        self._said_unreadable = False

    def _namespaces(self, pid: object) -> Tuple[Tuple[int, int], ...]:
        """(device, inode) of each of the process's namespaces; OSError if one cannot be read."""
        out = []
        for kind in _NAMESPACES:
            info = os.stat(os.path.join(self.proc_root, str(pid), "ns", kind))
            out.append((info.st_dev, info.st_ino))
        return tuple(out)

    def _unreadable(self, who: str, err: OSError) -> None:
        if not self._said_unreadable:
            self._said_unreadable = True
            log.warning("%s: cannot read its namespaces under %s (%s; ptrace read access, CAP_SYS_PTRACE, is "
                        "needed): its directories are not taken, the runtimes' files and defaults are",
                        who, self.proc_root, err.strerror or err)

    def _is_kthreadd(self, pid: int) -> bool:
        """The kernel's thread spawner: a kernel thread (``Kthread: 1``, since 6.1; else no
        parent) named kthreadd. Nothing in a container can be it."""
        status = self.files.text(os.path.join(self.proc_root, str(pid), "status"))
        if not status:
            return False
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        kernel = fields.get("Kthread", "").strip() == "1" or fields.get("PPid", "").strip() == "0"
        return fields.get("Name", "").strip() == "kthreadd" and kernel

    def _reference(self) -> Optional[Tuple[Tuple[int, int], ...]]:
        """The host's namespaces: pid 1's, else (a pid 1 with capabilities this process lacks
        is out of its ptrace reach) kthreadd's, else this process's own (the module
        docstring); None if none can be read."""
        try:
            return self._namespaces(1)
        except OSError as err:
            first = err
        if self._is_kthreadd(KTHREADD_PID):
            try:
                return self._namespaces(KTHREADD_PID)
            except OSError:
                pass
        try:
            own = self._namespaces("self")  # this process, as the proc root's pid namespace sees it
        except OSError:
            self._unreadable("process 1", first)
            return None
        log.debug("process 1: cannot read its namespaces (%s): this process's are taken for the host's",
                  first.strerror or first)
        return own

    def refusal(self, pid: int, who: str, cgroup_checked: bool = True) -> Optional[str]:
        """Why ``pid`` is not one of the host's processes, or None if it is.

        ``cgroup_checked=False`` for a process that may sit in a container's cgroup yet is the
        host's (a containerd shim can be placed in its pod's cgroup): root, and the host's
        mount and pid namespaces, which no container process has."""
        try:
            if os.stat(os.path.join(self.proc_root, str(pid))).st_uid != 0:
                return "not run by root"
            if self._host is None:
                self._host = self._reference()
                if self._host is None:
                    return "the host's namespaces cannot be read"
            try:
                mine = self._namespaces(pid)
            except FileNotFoundError:
                return "gone"
            except OSError as err:
                self._unreadable(who, err)
                return "its namespaces cannot be read"
        except OSError:
            return "gone"
        if mine != self._host:
            return "in a mount or pid namespace that is not the host's (a container's)"
        if not cgroup_checked:
            return None
        cgroup = self.files.text(os.path.join(self.proc_root, str(pid), "cgroup"))
        if cgroup is None:
            return "gone"
        if names_a_container(cgroup):
            return "in a container's cgroup"
        return None


def _argv(hosts: HostProcesses, pid: int, comm: str) -> Optional[Tuple[str, ...]]:
    """The command line of a daemon of the host's, or None (gone, or not the host's)."""
    who = f"{comm} {pid}"
    why = hosts.refusal(pid, who)
    if why is not None:
        (log.debug if why in ("gone", "not run by root") else log.info)(
            "%s: %s, its directories are not taken", who, why)
        return None
    raw = hosts.files.read(os.path.join(hosts.proc_root, str(pid), "cmdline"))
    return None if raw is None else parse_cmdline(raw)


def discover(proc_root: str, daemons: Mapping[int, str], view: HostView,
             files: Optional[HostFiles] = None) -> List[Found]:
    """Every directory of the running ``daemons`` (pid -> comm) that are the host's, and those
    of the runtimes with none running, as their configuration files (else their defaults)
    give them."""
    files = files or HostFiles()
    reader = _Reader(view, files)
    hosts = HostProcesses(proc_root, files)
    found: List[Found] = []
    running: Set[str] = set()
    for pid, comm in sorted(daemons.items()):
        argv = _argv(hosts, pid, comm)
        if argv is None:
            continue
        running.add(comm)
        flags, who = parse_flags(comm, argv), f"{comm} {pid}"
        if comm == "dockerd":
            found += reader.dockerd(who, flags, running=True)
        elif comm == "containerd":
            found += reader.containerd(who, flags, running=True)
        elif comm in ("crio", "podman"):
            found += reader.storage(who, flags, crio=comm == "crio", running=True)
    if "dockerd" not in running:
        found += reader.dockerd("no dockerd running", Flags(), running=False)
    if "containerd" not in running:
        found += reader.containerd("no containerd running", Flags(), running=False)
    # Podman has no daemon: what storage.conf says holds whether or not a podman process runs.
    found += reader.storage("podman", Flags(), crio=False, running=False)
    return found


def find(proc_root: str, daemons: Mapping[int, str], view: HostView, given: Dirs = Dirs(),
         files: Optional[HostFiles] = None) -> Dirs:
    """The host paths of the runtimes' directories: ``given``'s for each kind it names, else
    the ones ``discover`` finds. Logs each at debug level, and warns when a running
    dockerd's data-root cannot be read here (its containers would be named by short id)."""
    dirs: Dict[str, List[str]] = {kind: list(given.of(kind)) for kind in KINDS}
    checked = [Found(kind, path, "--runtime-dir", True) for kind in KINDS for path in given.of(kind)]
    wanted = [kind for kind in KINDS if not given.of(kind)]
    if wanted:
        for item in discover(proc_root, daemons, view, files):
            clean = host_path(item.path)
            if item.kind not in wanted:
                continue
            if clean is None:
                log.debug("%s %r (%s) is relative: not taken", _TITLES[item.kind], item.path, item.source)
            elif clean not in dirs[item.kind]:
                dirs[item.kind].append(clean)
                checked.append(replace(item, path=clean))
    for item in checked:
        local = view.local(item.path)
        log.debug("%s %s (%s), read at %s", _TITLES[item.kind], item.path, item.source, local)
        if item.kind == DOCKER and item.running and not os.path.isdir(os.path.join(local, "containers")):
            log.warning("%s: Docker keeps its containers in %s/containers, not readable at %s/containers: "
                        "they are named by short id (see --host-root, --runtime-dir)", item.source, item.path, local)
    return Dirs(**{kind: tuple(paths) for kind, paths in dirs.items()})
