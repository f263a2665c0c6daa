"""Running containers from the Docker Engine API: one ``GET /containers/json`` per run.

The list call already carries names, labels and the network mode, so no container is
inspected in the normal case (``containers.list()`` of the high-level SDK inspects
every container: one request each). ``docker`` is imported only when a client is made.

On a local socket (``unix://``, the default) the list call is made with ``http.client``
(``list_unix``): the docker SDK with requests and urllib3 takes 90 to 150 ms to import,
and its client first asks ``GET /version`` to negotiate the API version, for which dockerd
runs ``runc --version`` (docs/performance.rst). The unversioned path answers in the daemon's own
API version (the Engine API's docs, "Versioning"); the fields read here (Id, Names, Labels,
HostConfig.NetworkMode) are the same in every version since 1.24. tcp:// and TLS addresses,
the inspect fallback and ``version()`` keep the SDK.
"""

from __future__ import annotations

import json
import logging
import socket
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Tuple, Type

from container_netstat.errors import DockerUnavailable
from container_netstat.pids import Inspect
from container_netstat.records import Container

if TYPE_CHECKING:  # pragma: no cover
    import http.client

    import docker

log = logging.getLogger(__name__)

def describe_docker_error(err: BaseException) -> str:
    """A one-line reason for a failed Docker call, from the exception chain."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, PermissionError):
            return "permission denied (run as root or as a member of the docker group)"
        if isinstance(seen, FileNotFoundError):
            return "no such socket (is dockerd running?)"
        if isinstance(seen, ConnectionRefusedError):
            return "connection refused (is dockerd running?)"
        if isinstance(seen, TimeoutError) or "timed out" in str(seen).lower():
            return "timed out"
        seen = seen.__cause__ or seen.__context__
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return text[:200]


def connect(environment: Mapping[str, str], timeout: float) -> "docker.DockerClient":
    """A client honouring DOCKER_HOST, DOCKER_TLS_VERIFY and DOCKER_CERT_PATH in ``environment``."""
    import docker  # deferred: ~0.3 s of imports that --help does not need

    try:
        return docker.from_env(environment=dict(environment), timeout=timeout)
    except docker.errors.DockerException as err:
        raise DockerUnavailable(describe_docker_error(err)) from err


def _name(raw: Mapping[str, Any]) -> str:
    names: List[str] = [n.lstrip("/") for n in raw.get("Names") or []]
    # A linked container also lists "other/alias" names; its own name has no "/".
    plain = [n for n in names if "/" not in n]
    return (plain or names or [raw["Id"][:12]])[0]


def from_api(raw: Mapping[str, Any]) -> Container:
    """Build a Container from one item of ``GET /containers/json``."""
    return Container(
        id=raw["Id"],
        name=_name(raw),
        network_mode=(raw.get("HostConfig") or {}).get("NetworkMode") or "default",
        labels=dict(raw.get("Labels") or {}),
    )


def _api_errors() -> Tuple[Type[BaseException], ...]:
    """What an Engine API call raises when the daemon cannot answer: docker-py's own errors;
    requests' (a RequestException is an OSError), e.g. when the socket dies mid-call; a reply
    that is not JSON (ValueError)."""
    import docker

    return (docker.errors.DockerException, OSError, ValueError)


def list_containers(client: "docker.DockerClient") -> List[Container]:
    """The running containers, from one list call."""

    try:
        raw = client.api.containers()
    except _api_errors() as err:
        raise DockerUnavailable(describe_docker_error(err)) from err
    return [from_api(item) for item in raw]


def unix_path(address: str) -> Optional[str]:
    """The socket path of a ``unix:///path`` address; None for any other kind."""
    if address.startswith("unix://") and address[len("unix://"):].startswith("/"):
        return address[len("unix://"):]
    return None


def _unix_connection(path: str, timeout: float) -> "http.client.HTTPConnection":
    import http.client  # here: a run with --runtime proc, or on tcp://, never needs it

    class UnixConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                sock.settimeout(self.timeout)
                sock.connect(path)
            except BaseException:
                sock.close()
                raise
            self.sock = sock

    return UnixConnection("localhost", timeout=timeout)


def list_unix(path: str, timeout: float) -> List[Container]:
    """The running containers, from one ``GET /containers/json`` on a local socket."""
    import http.client

    conn = _unix_connection(path, timeout)
    try:
        conn.request("GET", "/containers/json", headers={"Accept": "application/json"})
        response = conn.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException) as err:
        raise DockerUnavailable(describe_docker_error(err)) from err
    finally:
        conn.close()
    if response.status != 200:
        raise DockerUnavailable(f"GET /containers/json: {response.status} {response.reason}: "
                                f"{body[:200].decode('utf-8', 'replace').strip()}")
    try:
        raw = json.loads(body)
        if not isinstance(raw, list):
            raise ValueError("not a list")
        return [from_api(item) for item in raw]
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise DockerUnavailable(f"GET /containers/json: not a container list ({err})") from err


def inspector(client: "docker.DockerClient") -> Inspect:
    """A function id -> pid (None if the container is gone) for the pid fallback."""
    import docker

    def inspect(container_id: str) -> Optional[int]:
        try:
            state: Dict[str, Any] = client.api.inspect_container(container_id)["State"]
        except docker.errors.NotFound:
            log.debug("container %s: gone before inspect", container_id[:12])
            return None
        except _api_errors() as err:
            raise DockerUnavailable(describe_docker_error(err)) from err
        pid = int(state.get("Pid") or 0)
        return pid or None

    return inspect


def server_version(client: "docker.DockerClient") -> Dict[str, str]:
    """The daemon's version and the API version in use (one ``GET /version``)."""
    try:
        info = client.api.version()
    except _api_errors() as err:
        raise DockerUnavailable(describe_docker_error(err)) from err
    return {
        "server_version": str(info.get("Version", "")),
        "api_version": str(client.api.api_version),
        "server_api_version": str(info.get("ApiVersion", "")),
    }
