"""Where the runtimes keep their files: command lines, configuration files, host paths.

Pure parser tables first, then the reader on fake /proc and host trees. The real daemons
are in tests/integration/test_data_roots.py; the TOML readers in tests/test_toml_config.py.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import pytest
from click.testing import CliRunner

from container_netstat import cli, runtime_dirs, discovery
from container_netstat.runtime_dirs import Dirs, Flags, HostView
from container_netstat.node_files import NodeFiles
from container_netstat.procfs import ProcFS


DOCKER_ID = "a" * 64
CRIO_ID = "d" * 64


# --- /proc/<pid>/cmdline ---

@pytest.mark.parametrize("raw, argv", [
    (b"dockerd\0--data-root\0/data/docker\0", ("dockerd", "--data-root", "/data/docker")),
    (b"dockerd\0--data-root\0\0", ("dockerd", "--data-root", "")),  # an empty argument stays
    (b"containerd", ("containerd",)),  # no final NUL (a process that rewrote its arguments)
    (b"", ()),  # a kernel thread, or a zombie
    (b"podman\0--root\0/d\xffata\0", ("podman", "--root", "/d\udcffata")),  # bytes kept as os.fsdecode does
])
def test_cmdline_parser(raw: bytes, argv: Tuple[str, ...]) -> None:
    assert runtime_dirs.parse_cmdline(raw) == argv


# --- daemon flags ---

@pytest.mark.parametrize("comm, args, flags", [
    # dockerd: spf13/pflag
    ("dockerd", [], Flags()),
    ("dockerd", ["--data-root", "/data/docker"], Flags(root="/data/docker")),
    ("dockerd", ["--data-root=/data/docker"], Flags(root="/data/docker")),
    ("dockerd", ["-g", "/old"], Flags(root="/old")),
    ("dockerd", ["-g/old"], Flags(root="/old")),
    ("dockerd", ["-g=/old"], Flags(root="/old")),
    ("dockerd", ["--graph", "/old"], Flags(root="/old")),
    ("dockerd", ["--graph=/old", "--data-root", "/new"], Flags(root="/new")),  # the last one wins
    ("dockerd", ["--config-file", "/etc/d.json"], Flags(config="/etc/d.json")),
    ("dockerd", ["--config-file=/etc/d.json", "-H", "unix:///x.sock", "--exec-root", "/run/x"],
     Flags(config="/etc/d.json")),
    ("dockerd", ["-H", "fd://", "--containerd=/run/containerd/containerd.sock"], Flags()),
    ("dockerd", ["-data-root", "/x"], Flags()),  # not pflag syntax: dockerd itself would refuse it
    ("dockerd", ["--data-root"], Flags()),  # no value
    ("dockerd", ["--", "--data-root", "/x"], Flags()),  # after "--" nothing is a flag
    # containerd: urfave/cli on Go's flag package, one or two dashes
    ("containerd", ["--config", "/var/run/docker/containerd/containerd.toml", "--log-level", "info"],
     Flags(config="/var/run/docker/containerd/containerd.toml")),
    ("containerd", ["-c", "/k3s/config.toml", "-a", "/run/k3s/containerd/containerd.sock",
                    "--state", "/run/k3s/containerd", "--root", "/var/lib/rancher/k3s/agent/containerd"],
     Flags(config="/k3s/config.toml", state="/run/k3s/containerd")),
    ("containerd", ["-config=/c.toml", "-state=/s"], Flags(config="/c.toml", state="/s")),
    # crio
    ("crio", ["--root", "/g", "--runroot=/r", "-c", "/etc/c.conf", "-d", "/etc/c.d"],
     Flags(config="/etc/c.conf", config_dir="/etc/c.d", root="/g", state="/r")),
    ("crio", ["-r", "/g", "--log-level", "debug"], Flags(root="/g")),
    # podman (pflag), flags after the subcommand too
    ("podman", ["system", "service", "--root", "/g", "--runroot", "/r", "--time=0"], Flags(root="/g", state="/r")),
    ("podman", ["--root=/g", "ps"], Flags(root="/g")),
    # no other program's flags are read
    ("containerd-shim", ["--root", "/x"], Flags()),
])
def test_flag_parser(comm: str, args: Sequence[str], flags: Flags) -> None:
    assert runtime_dirs.parse_flags(comm, [comm, *args]) == flags


# --- daemon.json ---

@pytest.mark.parametrize("text, root", [
    ('{"data-root": "/data/docker", "log-driver": "json-file"}', "/data/docker"),
    ('{"graph": "/old/docker"}', "/old/docker"),
    ('{"graph": "/old", "data-root": "/new"}', "/new"),
    ('{"debug": true}', ""),
    ('{"data-root": ""}', ""),
    ('{"data-root": 7}', ""),
    ("", None),
    ("{not json", None),
    ('["data-root"]', None),
])
def test_daemon_json_parser(text: str, root: Optional[str]) -> None:
    assert runtime_dirs.parse_daemon_json(text) == root


# --- host paths ---

@pytest.mark.parametrize("path, local", [
    ("/var/lib/docker", "/host/var/lib/docker"),
    ("/var/run/docker/containerd/daemon", "/host/run/docker/containerd/daemon"),
    ("/run/containerd", "/host/run/containerd"),
    ("/run", "/host/run"),
    ("/data/docker", "/host/data/docker"),
    ("/etc/docker/daemon.json", "/host/etc/docker/daemon.json"),
    ("/variable", "/host/variable"),  # not under /var
    ("/runner/x", "/host/runner/x"),
    ("/var/../etc/crio/crio.conf", "/host/etc/crio/crio.conf"),  # no climbing out of a root
    ("//data//docker/", "/host/data/docker"),
    ("/", "/host"),
])
def test_host_paths_map_under_the_roots(path: str, local: str) -> None:
    assert HostView("/host", "/host/run", "/host/var").local(path) == local


def test_default_view_changes_nothing() -> None:
    assert HostView().local("/var/lib/docker") == "/var/lib/docker"
    assert HostView().local("/var/run/docker") == "/run/docker"
    assert HostView().local("/data/docker") == "/data/docker"
    assert HostView(run_root="/r", var_root="/v").localize(runtime_dirs.DEFAULTS) == Dirs(
        ("/v/lib/docker",), ("/r/containerd",), ("/v/lib/containers/storage",), ("/r/containers/storage",))


def test_given_dirs_parser() -> None:
    given = runtime_dirs.parse_given(["docker=/data/docker", "docker=/data/docker2/", "containerd=/run/k3s/containerd",
                                   "graphroot=/g", "runroot=/r"])
    assert given == Dirs(("/data/docker", "/data/docker2"), ("/run/k3s/containerd",), ("/g",), ("/r",))
    assert runtime_dirs.parse_given([]) == Dirs()
    for bad in ("docker", "lxc=/x", "docker=data/docker", "docker="):
        with pytest.raises(ValueError):
            runtime_dirs.parse_given([bad])


def test_a_wrong_runtime_dir_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli.main, ["collect", "--dry-run", "--runtime", "proc", "--runtime-dir", "lxc=/x"])
    assert result.exit_code == cli.EXIT_USAGE
    assert "KIND one of docker, containerd, graphroot, runroot" in result.output
    result = CliRunner().invoke(cli.main, ["doctor", "--runtime-dir", "docker=relative"])
    assert result.exit_code == cli.EXIT_USAGE and "must be absolute" in result.output
    result = CliRunner().invoke(cli.main, ["collect", "--dry-run", "--runtime", "proc"],
                                env={"CONTAINER_NETSTAT_COLLECT_RUNTIME_DIR": "docker=/ok docker=relative"})
    assert result.exit_code == cli.EXIT_USAGE and "'docker=relative'" in result.output


# --- the reader, on a fake host ---

class Node:
    """A fake host under <tmp>/host: /proc, /etc, /run, /var and anything else."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.view = HostView(str(root), str(root / "run"), str(root / "var"))
        # pid 1's namespaces: files whose inodes stand for the host's (the real ones are nsfs inodes)
        (root / "proc" / "1" / "ns").mkdir(parents=True)
        for kind in ("mnt", "pid"):
            (root / "proc" / "1" / "ns" / kind).write_text("")

    def daemon(self, pid: int, *argv: str, uid: int = 0, cgroup: str = "0::/system.slice/x.service\n",
               ns: Tuple[str, ...] = ("mnt", "pid")) -> int:
        """A process; in the host's namespaces of ``ns``, in namespaces of its own for the others."""
        d = self.root / "proc" / str(pid)
        d.mkdir()
        (d / "ns").mkdir()
        for kind in ("mnt", "pid"):
            if kind in ns:
                (d / "ns" / kind).symlink_to(self.root / "proc" / "1" / "ns" / kind)
            else:
                (d / "ns" / kind).write_text("")
        (d / "cmdline").write_bytes(b"".join(a.encode() + b"\0" for a in argv))
        (d / "comm").write_text(os.path.basename(argv[0])[:15] + "\n")
        (d / "cgroup").write_text(cgroup)
        (d / "stat").write_text(f"{pid} (x) S 1 {pid} {pid} 0 -1\n")
        os.chown(d, uid, uid)
        return pid

    def file(self, path: str, text: str = "") -> Path:
        full = self.root / path.lstrip("/")
        full.parent.mkdir(parents=True, exist_ok=True)
        full.write_text(text)
        return full

    def find(self, daemons: Dict[int, str], given: Optional[Dirs] = None) -> Dirs:
        return runtime_dirs.find(str(self.root / "proc"), daemons, self.view, given or Dirs())


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(tmp_path / "host")


def test_nothing_running_and_no_files_gives_the_defaults(node: Node) -> None:
    assert node.find({}) == runtime_dirs.DEFAULTS


def test_dockerd_data_root_from_its_command_line(node: Node) -> None:
    node.file("/etc/docker/daemon.json", '{"data-root": "/not/this"}')
    pid = node.daemon(812, "/usr/bin/dockerd", "-H", "fd://", "--data-root", "/data/docker")
    assert node.find({pid: "dockerd"}).docker == ("/data/docker",)


def test_dockerd_data_root_from_its_config_file(node: Node) -> None:
    node.file("/etc/docker/daemon.json", '{"data-root": "/not/this"}')
    node.file("/opt/docker/daemon.json", '{"data-root": "/srv/docker"}')
    pid = node.daemon(812, "dockerd", "--config-file", "/opt/docker/daemon.json")
    assert node.find({pid: "dockerd"}).docker == ("/srv/docker",)
    assert node.find({}).docker == ("/not/this",)  # no dockerd: as if one ran without flags


def test_dockerd_default_when_neither_says(node: Node) -> None:
    pid = node.daemon(812, "dockerd")
    assert node.find({pid: "dockerd"}).docker == ("/var/lib/docker",)


def test_two_dockerds_two_roots_once_each(node: Node) -> None:
    a = node.daemon(812, "dockerd")
    b = node.daemon(900, "dockerd", "--data-root=/tmp/private/data", "--host", "unix:///tmp/private/d.sock")
    c = node.daemon(901, "dockerd", "-g", "/var/lib/docker/")
    assert node.find({a: "dockerd", b: "dockerd", c: "dockerd"}).docker == ("/var/lib/docker", "/tmp/private/data")


def test_a_daemon_not_run_by_root_is_not_believed(node: Node) -> None:
    pid = node.daemon(4242, "dockerd", "--data-root", "/home/mallory/fake", uid=1000)
    assert node.find({pid: "dockerd"}).docker == ("/var/lib/docker",)


def test_a_relative_data_root_is_not_taken(node: Node) -> None:
    pid = node.daemon(812, "dockerd", "--data-root", "data")
    assert node.find({pid: "dockerd"}).docker == ()


def test_a_broken_daemon_json_warns_and_gives_the_default(node: Node, caplog: pytest.LogCaptureFixture) -> None:
    node.file("/etc/docker/daemon.json", '{"data-root": ')
    (node.root / "var/lib/docker/containers").mkdir(parents=True)
    pid = node.daemon(812, "dockerd")
    with caplog.at_level(logging.WARNING, logger="container_netstat"):
        assert node.find({pid: "dockerd"}).docker == ("/var/lib/docker",)
    (warning,) = caplog.records
    assert "/etc/docker/daemon.json: not a JSON object" in warning.getMessage()


def test_an_unreadable_running_docker_root_is_one_warning(node: Node, caplog: pytest.LogCaptureFixture) -> None:
    pid = node.daemon(812, "dockerd", "--data-root", "/data/docker")
    with caplog.at_level(logging.WARNING, logger="container_netstat"):
        node.find({pid: "dockerd"})
        node.find({})  # no dockerd: its default directory may well be missing, and that is fine
    (warning,) = caplog.records
    message = warning.getMessage()
    assert "dockerd 812: --data-root" in message and f"{node.root}/data/docker/containers" in message
    assert "named by short id" in message
    caplog.clear()
    (node.root / "data/docker/containers").mkdir(parents=True)
    with caplog.at_level(logging.WARNING, logger="container_netstat"):
        node.find({pid: "dockerd"})
    assert not caplog.records


def test_containerd_state_from_flag_config_or_default(node: Node) -> None:
    node.file("/etc/containerd/config.toml", 'version = 2\nstate = "/run/containerd-etc"\n')
    # /var/run is read as /run: it is a link to it on the host
    node.file("/run/docker/containerd/containerd.toml",
              'root = "/var/lib/docker/containerd/daemon"\nstate = "/var/run/docker/containerd/daemon"\n')
    k3s = node.daemon(700, "containerd", "-c", "/var/lib/rancher/k3s/agent/etc/containerd/config.toml",
                      "--state", "/run/k3s/containerd", "--root", "/var/lib/rancher/k3s/agent/containerd")
    moby = node.daemon(701, "containerd", "--config", "/var/run/docker/containerd/containerd.toml")
    system = node.daemon(702, "containerd")
    got = node.find({k3s: "containerd", moby: "containerd", system: "containerd"})
    assert got.containerd == ("/run/k3s/containerd", "/var/run/docker/containerd/daemon", "/run/containerd-etc")
    node.file("/etc/containerd/config.toml", 'version = 2\n[plugins]\n  state = "/not/top-level"\n')
    assert node.find({system: "containerd"}).containerd == ("/run/containerd",)


def test_crio_roots_flags_then_crio_conf_and_drop_ins_then_storage_conf(node: Node) -> None:
    node.file("/etc/containers/storage.conf", '[storage]\ngraphroot = "/sc/graph"\nrunroot = "/sc/run"\n')
    pid = node.daemon(600, "crio")
    assert node.find({pid: "crio"}).graphroot == ("/sc/graph",)  # (and the same for podman)
    node.file("/etc/crio/crio.conf", '[crio]\nroot = "/cc/graph"\nrunroot = "/cc/run"\n')
    node.file("/etc/crio/crio.conf.d/10-root.conf", '[crio]\nroot = "/d10/graph"\n')
    node.file("/etc/crio/crio.conf.d/05-root.conf", '[crio]\nroot = "/d05/graph"\nrunroot = "/d05/run"\n')
    got = node.find({pid: "crio"})
    assert got.graphroot == ("/d10/graph", "/sc/graph") and got.runroot == ("/d05/run", "/sc/run")
    flagged = node.daemon(601, "crio", "--root", "/f/graph", "-c", "/nonexistent", "-d", "/nonexistent.d")
    got = node.find({flagged: "crio"})
    assert got.graphroot == ("/f/graph", "/sc/graph") and got.runroot == ("/sc/run",)


def test_storage_conf_in_usr_share_only_when_etc_has_none(node: Node) -> None:
    node.file("/usr/share/containers/storage.conf", '[storage]\ngraphroot = "/vendor/graph"\n')
    assert node.find({}).graphroot == ("/vendor/graph",)
    node.file("/etc/containers/storage.conf", '[storage]\ndriver = "overlay"\n')  # replaces it, with no graphroot
    assert node.find({}).graphroot == ("/var/lib/containers/storage",)


RUNTIME_CONFIG = Path(__file__).parent / "fixtures" / "runtime-config"


def test_the_shipped_config_files_as_an_administrator_edits_them(node: Node) -> None:
    """Debian's containerd default and containers-storage's storage.conf (SOURCES.md there),
    with the one line an administrator changes to move the state and the graph root."""
    containerd = (RUNTIME_CONFIG / "containerd-config.toml").read_text()
    storage = (RUNTIME_CONFIG / "storage.conf").read_text()
    assert 'state = "/run/containerd"\n' in containerd and 'graphroot = "/var/lib/containers/storage"\n' in storage
    node.file("/etc/containerd/config.toml", containerd.replace('state = "/run/containerd"', 'state = "/srv/ctrd"'))
    node.file("/etc/containers/storage.conf",
              storage.replace('graphroot = "/var/lib/containers/storage"', 'graphroot = "/srv/graph"'))
    for name in ("crio.conf", "crio.conf.d/05-root.conf", "crio.conf.d/10-root.conf"):
        node.file(f"/etc/crio/{name}", (RUNTIME_CONFIG / name).read_text())
    got = node.find({node.daemon(702, "containerd"): "containerd", node.daemon(600, "crio"): "crio"})
    assert got.containerd == ("/srv/ctrd",)
    assert got.graphroot == ("/d10/graph", "/srv/graph") and got.runroot == ("/d05/run", "/run/containers/storage")


def test_a_broken_toml_file_warns_once_and_gives_the_defaults(node: Node, caplog: pytest.LogCaptureFixture) -> None:
    """What the runtime would refuse to start with: tomllib's error, or its recursion on deep
    nesting, ends in a warning and the defaults (the small reader, before Python 3.11, reads
    around the line). Podman and CRI-O read the one storage.conf: one warning for it."""
    node.file("/etc/containerd/config.toml", 'version = 2\nstate = "/run/ctrd"\nstate = "/run/twice"\n')
    node.file("/etc/containers/storage.conf", '[storage]\ngraphroot = "/g"\nx = ' + "[" * 200_000)
    node.file("/etc/crio/crio.conf.d/10-root.conf", '[crio]\nroot = "/d10/graph"\n[crio]\n')
    daemons = {node.daemon(702, "containerd"): "containerd", node.daemon(600, "crio"): "crio",
               node.daemon(500, "podman", "system", "service"): "podman"}
    with caplog.at_level(logging.WARNING, logger="container_netstat"):
        got = node.find(daemons)
    if sys.version_info < (3, 11):
        assert got.containerd == ("/run/twice",) and got.graphroot == ("/d10/graph", "/g")
        return
    assert got == runtime_dirs.DEFAULTS
    warnings = sorted(r.getMessage() for r in caplog.records)
    assert warnings == [f"{path}: not valid TOML; its settings are not read, the defaults are taken" for path in
                        ("/etc/containerd/config.toml", "/etc/containers/storage.conf",
                         "/etc/crio/crio.conf.d/10-root.conf")]
    assert all(r.name == "container_netstat.runtime_dirs" for r in caplog.records)


def test_podman_service_roots_and_storage_conf_both(node: Node) -> None:
    pid = node.daemon(500, "podman", "--root", "/tmp/p/graph", "--runroot", "/tmp/p/run", "system", "service")
    got = node.find({pid: "podman"})
    assert got.graphroot == ("/tmp/p/graph", "/var/lib/containers/storage")
    assert got.runroot == ("/tmp/p/run", "/run/containers/storage")


def test_given_dirs_replace_what_is_found_kind_by_kind(node: Node) -> None:
    pid = node.daemon(812, "dockerd", "--data-root", "/data/docker")
    got = node.find({pid: "dockerd"}, Dirs(docker=("/given",), runroot=("/given/run",)))
    assert got.docker == ("/given",) and got.runroot == ("/given/run",)
    assert got.containerd == ("/run/containerd",) and got.graphroot == ("/var/lib/containers/storage",)


def test_daemons_are_found_in_the_same_scan_outside_containers(node: Node) -> None:
    node.daemon(10, "dockerd")
    node.daemon(11, "containerd")
    node.daemon(12, "/usr/bin/containerd-shim-runc-v2", "-namespace", "moby")  # comm containerd-shim
    node.daemon(13, "crio")
    node.daemon(14, "podman")
    node.daemon(15, "sshd")
    node.daemon(20, "dockerd", cgroup=f"0::/docker/{DOCKER_ID}\n")  # Docker in Docker: not the host's
    scanned = discovery.scan_node(ProcFS(str(node.root / "proc")), runtime_dirs.DAEMONS)
    assert scanned.daemons == {10: "dockerd", 11: "containerd", 13: "crio", 14: "podman"}
    assert list(scanned.containers) == [DOCKER_ID]
    assert discovery.scan_node(ProcFS(str(node.root / "proc"))).daemons == {}


# --- naming from the directories found ---

def test_node_files_read_every_given_directory(tmp_path: Path) -> None:
    docker = tmp_path / "second-docker"
    (docker / "containers" / DOCKER_ID).mkdir(parents=True)
    (docker / "containers" / DOCKER_ID / "config.v2.json").write_text(json.dumps({"Name": "/private"}))
    runroot = tmp_path / "crio-run"
    bundle = runroot / "vfs-containers" / CRIO_ID / "userdata"  # another storage driver
    bundle.mkdir(parents=True)
    (bundle / "config.json").write_text(json.dumps({"annotations": {
        "io.kubernetes.cri-o.Labels": json.dumps({"io.kubernetes.pod.name": "db-0", "io.kubernetes.pod.namespace": "data",
                                                  "io.kubernetes.container.name": "pg"})}}))
    dirs = Dirs(docker=(str(tmp_path / "nothing"), str(docker)), runroot=(str(runroot),))
    files = NodeFiles(str(tmp_path / "run"), str(tmp_path / "var"), str(tmp_path / "proc"), dirs=dirs)
    assert files.identify(DOCKER_ID, "docker").name == "private"
    assert files.identify(CRIO_ID, "cri-o").name == "data/db-0/pg"


def test_proc_backend_names_containers_of_a_docker_with_another_data_root(node: Node) -> None:
    node.daemon(812, "dockerd", "--config-file", "/etc/docker/private.json")
    node.file("/etc/docker/private.json", '{"data-root": "/srv/docker"}')
    node.file(f"/srv/docker/containers/{DOCKER_ID}/config.v2.json",
              json.dumps({"Name": "/web", "Config": {"Labels": {"tier": "front"}}}))
    node.file(f"/srv/docker/containers/{DOCKER_ID}/hostconfig.json", json.dumps({"NetworkMode": "bridge"}))
    node.daemon(300, "sh", cgroup=f"0::/docker/{DOCKER_ID}\n")
    paths = discovery.Paths(str(node.root / "proc"), str(node.root / "run"), str(node.root / "var"), str(node.root))
    (web,) = discovery.ProcBackend(paths).containers()
    assert (web.name, web.labels, web.network_mode, web.pid) == ("web", {"tier": "front"}, "bridge", 300)
    given = discovery.Paths(paths.proc_root, paths.run_root, paths.var_root, paths.host_root,
                           Dirs(docker=("/var/lib/docker",)))
    (unnamed,) = discovery.ProcBackend(given).containers()
    assert unnamed.name == DOCKER_ID[:12]


# --- which daemons are the host's ---

@pytest.mark.parametrize("ns", [("pid",), ("mnt",), ()])
def test_a_daemon_in_a_namespace_of_its_own_is_not_believed(node: Node, ns: Tuple[str, ...],
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """A container's "dockerd": root, a cgroup naming no container, but its own mount or pid namespace."""
    pid = node.daemon(4242, "dockerd", "--data-root", "/var/lib/docker/overlay2/x/merged/fake", ns=ns)
    with caplog.at_level(logging.INFO, logger="container_netstat"):
        assert node.find({pid: "dockerd"}).docker == ("/var/lib/docker",)
    assert any("dockerd 4242: in a mount or pid namespace that is not the host's" in r.getMessage()
               for r in caplog.records)
    assert all(r.levelno < logging.WARNING for r in caplog.records)


@pytest.mark.parametrize("cgroup", [
    f"0::/docker/{DOCKER_ID}/conmon\n",  # a sub-cgroup its container made: reads as no container
    "0::/system.slice/docker.service/conmon\n",
    f"12:pids:/\n0::/system.slice/foo-{DOCKER_ID}x.scope\n",  # an id anywhere in a component
    f"5:memory:/docker/{DOCKER_ID}\n0::/\n",  # any line
])
def test_a_daemon_whose_cgroup_names_a_container_is_not_believed(node: Node, cgroup: str) -> None:
    pid = node.daemon(4242, "dockerd", "--data-root", "/fake", cgroup=cgroup)
    assert node.find({pid: "dockerd"}).docker == ("/var/lib/docker",)


@pytest.mark.parametrize("text, names", [
    ("0::/system.slice/docker.service\n", False),
    ("12:pids:/system.slice/containerd.service\n0::/system.slice/containerd.service\n", False),
    ("0::/\n", False),
    ("0::/process_api/e7631a387be700218f123a105991f298\n", False),  # 32 hex: not a container id
    (f"0::/kubepods.slice/cri-containerd-{DOCKER_ID}.scope\n", True),
    (f"0::/machine.slice/libpod-conmon-{DOCKER_ID}.scope\n", True),
    ("0::/libpod_parent/conmon\n", True),
    (f"0::/docker/{DOCKER_ID}/conmon\n", True),
])
def test_names_a_container(text: str, names: bool) -> None:
    assert runtime_dirs.names_a_container(text) is names


def test_unreadable_namespaces_refuse_the_daemon_and_are_said_once(node: Node,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    a = node.daemon(812, "dockerd", "--data-root", "/a")
    b = node.daemon(813, "containerd", "--state", "/b")
    for pid in (a, b):
        link = node.root / "proc" / str(pid) / "ns" / "mnt"
        link.unlink()
        link.symlink_to("mnt")  # stat fails (ELOOP), as it does with EACCES without ptrace rights
    with caplog.at_level(logging.WARNING, logger="container_netstat"):
        got = node.find({a: "dockerd", b: "containerd"})
    assert got.docker == ("/var/lib/docker",) and got.containerd == ("/run/containerd",)
    (warning,) = warnings_of(caplog)
    assert "dockerd 812: cannot read its namespaces" in warning and "CAP_SYS_PTRACE" in warning


def test_without_pid_1s_namespaces_no_daemon_is_believed(node: Node, caplog: pytest.LogCaptureFixture) -> None:
    pid = node.daemon(812, "dockerd", "--data-root", "/a")
    other = node.daemon(813, "dockerd", "--data-root", "/b")
    (node.root / "proc" / "1" / "ns" / "mnt").unlink()
    with caplog.at_level(logging.WARNING, logger="container_netstat"):
        assert node.find({pid: "dockerd", other: "dockerd"}).docker == ("/var/lib/docker",)
    (warning,) = warnings_of(caplog)
    assert warning.startswith("process 1: cannot read its namespaces under ") and "CAP_SYS_PTRACE" in warning


def test_without_pid_1s_namespaces_the_tools_own_stand_for_the_hosts(node: Node) -> None:
    """A pid 1 out of ptrace reach: this process's namespaces (``<proc>/self``) are the reference."""
    host = node.daemon(812, "dockerd", "--data-root", "/host/docker")
    contained = node.daemon(813, "dockerd", "--data-root", "/contained/docker", ns=("pid",))
    ns = node.root / "proc" / "1" / "ns"
    (node.root / "proc" / "self").mkdir()
    ns.rename(node.root / "proc" / "self" / "ns")
    for kind in ("mnt", "pid"):
        for pid in (host, contained):
            link = node.root / "proc" / str(pid) / "ns" / kind
            if link.is_symlink():
                link.unlink()
                link.symlink_to(node.root / "proc" / "self" / "ns" / kind)
    assert node.find({host: "dockerd", contained: "dockerd"}).docker == ("/host/docker",)


@pytest.mark.parametrize("kthreadd, believed", [
    ("Name:\tkthreadd\nPPid:\t0\nKthread:\t1\n", ("/host/docker",)),
    # A process calling itself kthreadd is not the kernel's: no reference, no daemon believed.
    ("Name:\tkthreadd\nPPid:\t1\nKthread:\t0\n", ("/var/lib/docker",)),
])
def test_without_pid_1s_namespaces_kthreadds_stand_for_the_hosts(node: Node, kthreadd: str,
                                                                  believed: Tuple[str, ...]) -> None:
    """A pid 1 out of ptrace reach, and the tool in a mount namespace of its own (systemd's
    sandbox): kthreadd keeps the initial namespaces, so it is the reference."""
    host = node.daemon(812, "dockerd", "--data-root", "/host/docker")
    ns = node.root / "proc" / "1" / "ns"
    (node.root / "proc" / "2").mkdir()
    (node.root / "proc" / "2" / "status").write_text(kthreadd)
    ns.rename(node.root / "proc" / "2" / "ns")
    for kind in ("mnt", "pid"):
        link = node.root / "proc" / str(host) / "ns" / kind
        link.unlink()
        link.symlink_to(node.root / "proc" / "2" / "ns" / kind)
    (node.root / "proc" / "self" / "ns").mkdir(parents=True)  # the tool's own: a private mount namespace
    for kind in ("mnt", "pid"):
        (node.root / "proc" / "self" / "ns" / kind).write_text("")
    assert node.find({host: "dockerd"}).docker == believed


def warnings_of(caplog: pytest.LogCaptureFixture) -> List[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


# --- hostile files where the configuration is read ---

@pytest.mark.usefixtures("alarm")
def test_fifos_devices_and_huge_files_in_place_of_the_configuration_are_refused_once(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    etc = node.root / "etc"
    for d in ("docker", "containerd", "crio/crio.conf.d", "containers"):
        (etc / d).mkdir(parents=True)
    os.mkfifo(etc / "docker" / "daemon.json")
    (etc / "containerd" / "config.toml").symlink_to("/dev/zero")
    with open(etc / "containers" / "storage.conf", "wb") as f:
        f.truncate(2 << 20)
    os.mkfifo(etc / "crio" / "crio.conf.d" / "10-fifo.conf")
    node.file("/etc/crio/crio.conf.d/20-ok.conf", '[crio]\nroot = "/ok/graph"\n')
    (etc / "crio" / "crio.conf.d" / "30-dir.conf").mkdir()  # not a file: skipped, nothing to say
    (node.root / "var/lib/docker/containers").mkdir(parents=True)
    daemons = {node.daemon(812, "dockerd"): "dockerd", node.daemon(700, "containerd"): "containerd",
               node.daemon(600, "crio"): "crio"}
    with caplog.at_level(logging.WARNING, logger="container_netstat"):
        got = node.find(daemons)
    assert got.docker == ("/var/lib/docker",) and got.containerd == ("/run/containerd",)
    assert got.graphroot == ("/ok/graph", "/var/lib/containers/storage")
    assert sorted(warnings_of(caplog)) == sorted([
        f"{etc}/docker/daemon.json: not a regular file; not read",
        f"{etc}/containerd/config.toml: not a regular file; not read",
        f"{etc}/containers/storage.conf: larger than {1 << 20} bytes; not read",
        f"{etc}/crio/crio.conf.d/10-fifo.conf: not a regular file; not read",
    ])


def test_an_administrators_link_to_a_configuration_file_is_followed(node: Node) -> None:
    node.file("/opt/managed/daemon.json", '{"data-root": "/srv/docker"}')
    (node.root / "etc" / "docker").mkdir(parents=True)
    (node.root / "etc" / "docker" / "daemon.json").symlink_to(node.root / "opt" / "managed" / "daemon.json")
    assert node.find({node.daemon(812, "dockerd"): "dockerd"}).docker == ("/srv/docker",)


@pytest.mark.usefixtures("alarm")
def test_planted_state_files_leave_the_container_unnamed(tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """config.v2.json as a fifo, a link to /dev/zero or to another container's file, or huge."""
    root = tmp_path / "docker" / "containers"
    victim = "b" * 64
    (root / victim).mkdir(parents=True)
    (root / victim / "config.v2.json").write_text(json.dumps({"Name": "/victim", "Config": {"Labels": {"t": "v"}}}))
    ids = {"fifo": "1" * 64, "zero": "2" * 64, "link": "3" * 64, "huge": "4" * 64}
    for cid in ids.values():
        (root / cid).mkdir()
    os.mkfifo(root / ids["fifo"] / "config.v2.json")
    (root / ids["zero"] / "config.v2.json").symlink_to("/dev/zero")
    (root / ids["link"] / "config.v2.json").symlink_to(root / victim / "config.v2.json")
    with open(root / ids["huge"] / "config.v2.json", "wb") as f:
        f.write(b'{"Name": "/huge", "x": "')
        f.truncate(64 << 20)
    os.mkfifo(root / victim / "hostconfig.json")  # its network mode is lost, not its name
    files = NodeFiles(str(tmp_path / "run"), str(tmp_path / "var"), str(tmp_path / "proc"),
                      dirs=Dirs(docker=(str(tmp_path / "docker"),)))
    with caplog.at_level(logging.WARNING, logger="container_netstat"):
        for how, cid in ids.items():
            got = files.identify(cid, "docker")
            assert (got.name, dict(got.labels)) == (cid[:12], {}), how
        named = files.identify(victim, "docker")
    assert (named.name, dict(named.labels), named.network_mode) == ("victim", {"t": "v"}, "default")
    assert len(warnings_of(caplog)) == 5
