"""The naive way, for comparison: the docker SDK's ``containers.list()`` and ``State.Pid``.

    python benchmarks/naive.py > items.json

``containers.list()`` asks for the list, then inspects every container (one request,
and with docker-py one new connection, each). The pid comes from each inspect's
``State.Pid``; the /proc half is ``reference.py``. The output is the same JSON array as
``container-netstat collect --dry-run``.
"""

from __future__ import annotations

import docker

from reference import Running, collect, emit


def main() -> None:
    client = docker.from_env()
    containers = client.containers.list()
    running = [
        Running(
            id=c.id,
            name=c.name,
            network_mode=c.attrs["HostConfig"].get("NetworkMode") or "default",
            labels=c.attrs["Config"].get("Labels") or {},
            pid=int(c.attrs["State"]["Pid"] or 0),
        )
        for c in containers
    ]
    emit(collect(running, listed=len(containers)))


if __name__ == "__main__":
    main()
