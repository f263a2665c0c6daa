"""What one listing of the kubelet's pod cgroups costs (pids.pod_cgroups), on real cgroup2.

Makes PODS pod cgroups of two container cgroups each, in the kubelet's cgroupfs shape
(``kubepods/{burstable,besteffort,}/pod<uid>/<64-hex id>``), under a directory of its own
in the host's cgroup2 hierarchy; times the listing (median of ROUNDS) and removes them.
Every cgroup2 directory has its interface files, so each listing reads a real directory.

    python benchmarks/pod_cgroups.py [PODS] [ROUNDS]      # as root; defaults 300 and 20
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import uuid
from typing import List

from container_netstat.pids import pod_cgroups


def cgroup2_mount() -> str:
    """The first cgroup2 mount point in /proc/self/mountinfo (field 5; type after " - ")."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields, _, tail = line.partition(" - ")
            if tail.split()[0] == "cgroup2":
                return fields.split()[4]
    raise SystemExit("no cgroup2 mount on this host")


def main(pods: int, rounds: int) -> None:
    root = os.path.join(cgroup2_mount(), f"cn-bench-{uuid.uuid4().hex[:8]}")
    made: List[str] = []
    try:
        os.mkdir(root)
        made.append(root)
        for qos in ("kubepods", "kubepods/burstable", "kubepods/besteffort"):
            os.mkdir(os.path.join(root, qos))
            made.append(os.path.join(root, qos))
        for n in range(pods):
            pod = os.path.join(root, "kubepods", ("burstable/", "besteffort/", "")[n % 3] + f"pod{uuid.uuid4()}")
            os.mkdir(pod)
            made.append(pod)
            for _ in range(2):
                container = os.path.join(pod, uuid.uuid4().hex * 2)
                os.mkdir(container)
                made.append(container)
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            found = pod_cgroups(root, "")
            times.append(time.perf_counter() - start)
        assert len(found) == 2 * pods, len(found)
        entries = len(os.listdir(os.path.dirname(made[-1])))
        print(f"{pods} pods, {2 * pods} containers ({entries} entries in a pod directory): "
              f"listing {statistics.median(times) * 1000:.1f} ms (median of {rounds}), "
              f"{pods + 3} directories read")
    finally:
        for path in sorted(set(made), key=len, reverse=True):
            try:
                os.rmdir(path)
            except OSError:
                pass


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300, int(sys.argv[2]) if len(sys.argv) > 2 else 20)
