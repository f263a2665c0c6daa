"""A Kubernetes pod's identity: the kubelet's label keys, the runtimes' annotations, and the
pod's name and namespace wherever they are found.

- Docker (dockershim, cri-dockerd) shows the kubelet's labels on each container:
  ``io.kubernetes.pod.name``, ``.pod.namespace``, ``.pod.uid``, ``io.kubernetes.container.name``
  and ``io.kubernetes.docker.type`` (docs/facts.rst, "Shared network namespaces").
- containerd's CRI plugin and CRI-O write them as OCI annotations of their own, which the
  proc backend reads from the bundle's config.json (node_files.py) and turns into the same
  label keys here, so ``--include``/``--exclude`` and the pod tags work alike on every runtime.
- The kubelet's log directories name a pod by its uid and a container by its id.
"""

from __future__ import annotations

import json
import re
from typing import Any, Dict, Mapping, Optional, Tuple

# Kubernetes (dockershim / cri-dockerd) labels: docs/facts.rst, "Shared network namespaces".
POD_NAME = "io.kubernetes.pod.name"
POD_NAMESPACE = "io.kubernetes.pod.namespace"
POD_UID = "io.kubernetes.pod.uid"
DOCKER_TYPE = "io.kubernetes.docker.type"
# A pod's sandbox as containerd's CRI plugin and CRI-O mark it in the OCI annotations,
# which the proc backend passes on as labels (node_files.py).
SANDBOX_ANNOTATIONS = ("io.kubernetes.cri.container-type", "io.kubernetes.cri-o.ContainerType")
CONTAINER_NAME = "io.kubernetes.container.name"
# containerd CRI annotations (pkg/cri/annotations/annotations.go)
CRI_TYPE = "io.kubernetes.cri.container-type"
CRI_SANDBOX_NAME = "io.kubernetes.cri.sandbox-name"
CRI_SANDBOX_NAMESPACE = "io.kubernetes.cri.sandbox-namespace"
CRI_SANDBOX_UID = "io.kubernetes.cri.sandbox-uid"
CRI_CONTAINER_NAME = "io.kubernetes.cri.container-name"
# CRI-O annotations (pkg/annotations/annotations.go)
CRIO_TYPE = "io.kubernetes.cri-o.ContainerType"
CRIO_LABELS = "io.kubernetes.cri-o.Labels"
SANDBOX = "sandbox"

# <pod>_<namespace>_<container>-<id>.log; Kubernetes names hold no "_" (DNS-1123)
_CONTAINER_LOG = re.compile(r"(?P<pod>[^_]+)_(?P<namespace>[^_]+)_(?P<container>[^_]+)-(?P<id>[0-9a-f]{64})\.log")


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def pod_of(labels: Mapping[str, str]) -> Optional[Tuple[str, str]]:
    """(namespace, pod) from the kubelet's labels, else None."""
    name, namespace = labels.get(POD_NAME), labels.get(POD_NAMESPACE)
    return (namespace, name) if name and namespace else None


def is_sandbox_container(labels: Mapping[str, str]) -> bool:
    """True for a pod's sandbox ("pause") container, by Docker's label or a CRI annotation."""
    return labels.get(DOCKER_TYPE) == "podsandbox" or any(labels.get(key) == SANDBOX for key in SANDBOX_ANNOTATIONS)


def kubernetes_labels(annotations: Mapping[str, str]) -> Dict[str, str]:
    """The kubelet's labels (pod name, namespace, uid, container name) from OCI annotations."""
    labels: Dict[str, str] = {}
    crio = _json(annotations.get(CRIO_LABELS, "")) if CRIO_LABELS in annotations else None
    if isinstance(crio, dict):
        labels.update({str(k): str(v) for k, v in crio.items()})
    for key, annotation in (
        (POD_NAME, CRI_SANDBOX_NAME),
        (POD_NAMESPACE, CRI_SANDBOX_NAMESPACE),
        (POD_UID, CRI_SANDBOX_UID),
        (CONTAINER_NAME, CRI_CONTAINER_NAME),
    ):
        if annotations.get(annotation):
            labels.setdefault(key, annotations[annotation])
    if is_sandbox(annotations):
        labels.setdefault(CONTAINER_NAME, "POD")
    return labels


def is_sandbox(annotations: Mapping[str, str]) -> bool:
    """True for a pod's sandbox ("pause") container, by containerd's or CRI-O's annotation."""
    return annotations.get(CRI_TYPE) == SANDBOX or annotations.get(CRIO_TYPE) == SANDBOX


def container_name(labels: Mapping[str, str], fallback: str) -> str:
    pod, namespace = labels.get(POD_NAME), labels.get(POD_NAMESPACE)
    if pod and namespace:
        return f"{namespace}/{pod}/{labels.get(CONTAINER_NAME) or fallback}"
    return fallback


def parse_pod_dir(name: str) -> Optional[Tuple[str, str, str]]:
    """``<namespace>_<pod>_<uid>`` (a /var/log/pods entry) -> (namespace, pod, uid)."""
    parts = name.split("_")
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 and all(parts) else None


def parse_container_log(name: str) -> Optional[Tuple[str, str, str, str]]:
    """``<pod>_<namespace>_<container>-<id>.log`` -> (namespace, pod, container, id)."""
    match = _CONTAINER_LOG.fullmatch(name)
    if not match:
        return None
    return match.group("namespace"), match.group("pod"), match.group("container"), match.group("id")
