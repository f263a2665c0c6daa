"""Names and labels of containers from the files runtimes and the kubelet keep on the node.

The ``proc`` backend finds containers without any runtime API; this module names
them. Pure parsers take the text of one file; ``NodeFiles`` opens the files under
the host's /run and /var (injectable, like the proc root). A file that is missing or
unreadable is not an error: the container is then named by its short id.

Every file is read through hostfile.py: a regular file only, never through a symbolic link as
its last component, at most 1 MiB (16 MiB for ``containers.json``). These directories hold
what containers write (their root file systems, volumes, logs), so a link, fifo or huge file
where a runtime keeps a small JSON file is refused, said once, and the container goes
unnamed; nothing else of the run waits for it.

Sources, tried in this order for each container id. The runtimes' directories are
``runtime_dirs.Dirs``: those of the running daemons, found by runtime_dirs.py, else the defaults
shown here (``<var>/lib/docker``, ``<run>/containerd``, ``<var>/lib/containers/storage``,
``<run>/containers/storage``).

1. Docker's ``<data-root>/containers/<id>/config.v2.json`` (``Name``,
   ``Config.Labels``) and ``hostconfig.json`` (``HostConfig.NetworkMode``). These are
   Docker-internal files, not an API; root-only.
2. The OCI bundle ``config.json`` of the container, whose ``annotations`` carry the
   Kubernetes identity:
   - containerd: ``<state>/io.containerd.runtime.v2.task/<namespace>/<id>/``;
     its CRI plugin writes ``io.kubernetes.cri.sandbox-name``, ``sandbox-namespace``,
     ``sandbox-uid`` (from 1.6.11), ``container-name`` and ``container-type``
     (``sandbox`` or ``container``), containerd ``pkg/cri/annotations/annotations.go``;
   - CRI-O: ``<runroot>/<driver>-containers/<id>/userdata/`` (``overlay-containers``,
     ``vfs-containers``...); it writes the kubelet's labels as JSON in
     ``io.kubernetes.cri-o.Labels`` and the type in ``io.kubernetes.cri-o.ContainerType``
     (cri-o ``pkg/annotations``);
   - Podman: ``<graphroot>/<driver>-containers/<id>/userdata/``;
   - any containerd, wherever its state lives: the shim runs in the bundle directory,
     so ``/proc/<shim pid>/cwd/config.json`` (needs ptrace rights over the shim).
3. ``<driver>-containers/containers.json`` of containers/storage (CRI-O, Podman): the
   container's names.
4. The kubelet's log directories: ``<var>/log/pods/<namespace>_<pod>_<uid>/`` names a
   pod by its uid (from the cgroup path) and ``<var>/log/containers/
   <pod>_<namespace>_<container>-<id>.log`` a container by its id.

Whatever the file, the Kubernetes identity is given under the kubelet's own label
keys (``io.kubernetes.pod.name``, ``.pod.namespace``, ``.pod.uid``,
``io.kubernetes.container.name``), the keys Docker shows, so ``--include``/``--exclude``
and the pod tags work the same on every runtime.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Tuple

from container_netstat.cgroups import DOCKER, UNKNOWN
from container_netstat.hostfile import HostFiles
from container_netstat.kubernetes import POD_NAME, POD_NAMESPACE, POD_UID
from container_netstat import kubernetes

if TYPE_CHECKING:  # pragma: no cover
    from container_netstat.runtime_dirs import Dirs, HostProcesses

log = logging.getLogger(__name__)

_CONTAINERD_TASKS = "io.containerd.runtime.v2.task"
_STORAGE_SUFFIX = "-containers"  # containers/storage's <driver>-containers directories
# containers.json lists every container of the store, about 1 KiB each (containers/storage
# containers.go, the Container struct): more than hostfile.CAP on a host of a thousand.
_STORAGE_LIST_CAP = 16 << 20
@dataclass(frozen=True)
class Identity:
    """What the node's files say about one container."""

    name: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    network_mode: str = "default"
    named_from: str = ""


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def parse_docker_config(config_text: str, hostconfig_text: str = "") -> Optional[Identity]:
    """Docker's config.v2.json (+ hostconfig.json) -> name, labels and network mode."""
    config = _json(config_text)
    if not isinstance(config, dict):
        return None
    labels = (config.get("Config") or {}).get("Labels") or {}
    hostconfig = _json(hostconfig_text) if hostconfig_text else None
    mode = (hostconfig or {}).get("NetworkMode") if isinstance(hostconfig, dict) else None
    return Identity(
        name=str(config.get("Name") or "").lstrip("/"),
        labels={str(k): str(v) for k, v in labels.items()},
        network_mode=str(mode or "default"),
        named_from="docker config.v2.json",
    )


def parse_bundle_config(text: str, container_id: str, named_from: str) -> Optional[Identity]:
    """An OCI bundle's config.json -> its annotations, plus the kubelet labels they carry."""
    config = _json(text)
    if not isinstance(config, dict):
        return None
    raw = config.get("annotations") or {}
    annotations = {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
    labels = {**annotations, **kubernetes.kubernetes_labels(annotations)}
    return Identity(name=kubernetes.container_name(labels, container_id[:12]), labels=labels, named_from=named_from)


def parse_storage_names(text: str) -> Dict[str, str]:
    """containers/storage's containers.json -> {id: first name}."""
    entries = _json(text)
    if not isinstance(entries, list):
        return {}
    return {
        str(e["id"]): str(e["names"][0])
        for e in entries
        if isinstance(e, dict) and e.get("id") and e.get("names")
    }


def _listdir(path: str) -> Tuple[str, ...]:
    try:
        return tuple(os.listdir(path))
    except OSError:
        return ()


class NodeFiles:
    """Reads the node's runtime and kubelet files under injectable /run and /var roots,
    and the runtimes' directories ``dirs`` (local paths; the defaults under those roots if
    not given).

    Directory listings are read once per instance (one run).
    """

    def __init__(
        self,
        run_root: str = "/run",
        var_root: str = "/var",
        proc_root: str = "/proc",
        parent_of: Optional[Callable[[int], Optional[int]]] = None,
        dirs: Optional[Dirs] = None,
        files: Optional[HostFiles] = None,
    ) -> None:
        self.run_root = run_root
        self.var_root = var_root
        self.proc_root = proc_root
        self.parent_of = parent_of
        if dirs is None:
            from container_netstat.runtime_dirs import DEFAULTS, HostView

            dirs = HostView(run_root=run_root, var_root=var_root).localize(DEFAULTS)
        self.dirs = dirs
        self.files = files or HostFiles()
        self._listings: Dict[str, Tuple[str, ...]] = {}
        self._storage_names: Optional[Dict[str, str]] = None
        self._hosts: Optional["HostProcesses"] = None
        self._pods: Optional[Dict[str, Tuple[str, str]]] = None
        self._logs: Optional[Dict[str, Tuple[str, str, str]]] = None

    def _list(self, path: str) -> Tuple[str, ...]:
        if path not in self._listings:
            self._listings[path] = _listdir(path)
        return self._listings[path]

    def _storage_dirs(self, root: str) -> List[str]:
        """``<root>/<driver>-containers`` of a containers/storage root, for any driver."""
        return [os.path.join(root, e) for e in self._list(root) if e.endswith(_STORAGE_SUFFIX)]

    def docker(self, container_id: str) -> Optional[Identity]:
        for root in self.dirs.docker:
            base = os.path.join(root, "containers", container_id)
            config = self.files.text(os.path.join(base, "config.v2.json"))
            if config is not None:
                return parse_docker_config(config, self.files.text(os.path.join(base, "hostconfig.json")) or "")
        return None

    def _bundle_paths(self, container_id: str) -> List[Tuple[str, str]]:
        paths = []
        for state in self.dirs.containerd:
            tasks = os.path.join(state, _CONTAINERD_TASKS)
            paths += [(os.path.join(tasks, ns, container_id, "config.json"), f"containerd bundle ({ns})")
                      for ns in self._list(tasks)]
        for roots, named_from in ((self.dirs.runroot, "cri-o bundle"), (self.dirs.graphroot, "podman bundle")):
            paths += [(os.path.join(d, container_id, "userdata", "config.json"), named_from)
                      for root in roots for d in self._storage_dirs(root)]
        return paths

    def bundle(self, container_id: str, pid: Optional[int] = None) -> Optional[Identity]:
        """The container's OCI bundle config.json, from the known state directories, else
        through its shim's working directory (the parent of the container's init ``pid``)."""
        paths = self._bundle_paths(container_id)
        shim = self.parent_of(pid) if pid and self.parent_of else None
        # Only a containerd shim runs in the bundle; conmon and others run anywhere. A process
        # of the container may call itself a shim (its comm is its own to set) and run in a
        # directory it wrote: its cwd is taken only where it runs as root in the host's mount
        # and pid namespaces (runtime_dirs.HostProcesses).
        if shim and (self.files.text(os.path.join(self.proc_root, str(shim), "comm")) or "").startswith("containerd-shim") \
                and self._host_process(shim):
            paths.append((os.path.join(self.proc_root, str(shim), "cwd", "config.json"), "shim bundle"))
        for path, named_from in paths:
            text = self.files.text(path)
            identity = parse_bundle_config(text, container_id, named_from) if text is not None else None
            if identity is not None:
                return identity
        return None

    def _host_process(self, pid: int) -> bool:
        from container_netstat.runtime_dirs import HostProcesses

        if self._hosts is None:
            self._hosts = HostProcesses(self.proc_root, self.files)
        why = self._hosts.refusal(pid, f"shim {pid}", cgroup_checked=False)
        if why is not None and why != "gone":
            log.info("shim %d: %s: its working directory is not read", pid, why)
        return why is None

    def storage_name(self, container_id: str) -> Optional[str]:
        if self._storage_names is None:
            self._storage_names = {}
            for root in (*self.dirs.graphroot, *self.dirs.runroot):
                for directory in self._storage_dirs(root):
                    text = self.files.text(os.path.join(directory, "containers.json"), cap=_STORAGE_LIST_CAP)
                    if text:
                        self._storage_names.update(parse_storage_names(text))
        return self._storage_names.get(container_id)

    def pod(self, pod_uid: str) -> Optional[Tuple[str, str]]:
        """(namespace, pod) of a pod uid, from /var/log/pods."""
        if self._pods is None:
            self._pods = {}
            for entry in _listdir(os.path.join(self.var_root, "log", "pods")):
                parsed = kubernetes.parse_pod_dir(entry)
                if parsed:
                    self._pods[parsed[2]] = (parsed[0], parsed[1])
        return self._pods.get(pod_uid)

    def container_log(self, container_id: str) -> Optional[Tuple[str, str, str]]:
        """(namespace, pod, container) of a container id, from /var/log/containers."""
        if self._logs is None:
            self._logs = {}
            for entry in _listdir(os.path.join(self.var_root, "log", "containers")):
                parsed = kubernetes.parse_container_log(entry)
                if parsed:
                    self._logs[parsed[3]] = parsed[:3]
        return self._logs.get(container_id)

    def from_logs(self, container_id: str, pod_uid: str) -> Optional[Identity]:
        """The Kubernetes identity from the kubelet's log directories, if they name it."""
        logged = self.container_log(container_id)
        if logged:
            namespace, pod, container = logged
        else:
            found = self.pod(pod_uid) if pod_uid else None
            if not found:
                return None
            # A pod's sandbox writes no log: a container of a known pod without one is it.
            (namespace, pod), container = found, "POD"
        labels = {POD_NAMESPACE: namespace, POD_NAME: pod, kubernetes.CONTAINER_NAME: container}
        if pod_uid:
            labels[POD_UID] = pod_uid
        return Identity(name=kubernetes.container_name(labels, container_id[:12]), labels=labels, named_from="kubelet log dirs")

    def identify(self, container_id: str, runtime: str, pod_uid: str = "", pid: Optional[int] = None) -> Identity:
        """Everything the node's files say about a container; its short id if nothing does.

        ``runtime`` and ``pod_uid`` come from the cgroup path, ``pid`` is the container's init.
        """
        found = self.docker(container_id) if runtime in (DOCKER, UNKNOWN) else None
        if found is None:
            found = self.bundle(container_id, pid)
        if found is None or POD_NAME not in found.labels:
            logged = self.from_logs(container_id, pod_uid)
            if logged is not None:
                extra = found.labels if found is not None else {}
                mode = found.network_mode if found is not None else "default"
                return replace(logged, labels={**extra, **logged.labels}, network_mode=mode)
        if found is None:
            found = Identity(name=container_id[:12], named_from="cgroup")
        if found.name in ("", container_id[:12]):
            found = replace(found, name=self.storage_name(container_id) or container_id[:12])
        if pod_uid and not found.labels.get(POD_UID):
            found = replace(found, labels={**found.labels, POD_UID: pod_uid})
        return found
