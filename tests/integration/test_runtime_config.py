"""A runtime's TOML file that is not TOML, read for a real running daemon: the run goes on.

Docker's own containerd runs with ``--config /var/run/docker/containerd/containerd.toml``
(moby ``libcontainerd/supervisor``). The test gives the tool a host tree of its own
(``--host-root``, ``--run-root``, ``--var-root``) where that file is arrays nested 200,000
deep (tomllib recurses once per level: a RecursionError if not caught) and where Docker's
data-root holds the real ``config.v2.json`` of the test's container. The run must end with
exit 0, its items on stdout, the container still named and selected by its label from its
``config.v2.json``, and one
warning line for the file on stderr, no traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import TEST_LABEL, unavailable

pytestmark = pytest.mark.docker

MOBY_CONTAINERD_CONFIG = "/var/run/docker/containerd/containerd.toml"


def _moby_containerd_runs() -> bool:
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if os.path.basename(argv[0]) == b"containerd" and MOBY_CONTAINERD_CONFIG.encode() in argv:
            return True
    return False


@pytest.mark.skipif(sys.version_info < (3, 11), reason="before 3.11 the small reader reads around the line")
def test_a_broken_containerd_config_costs_only_its_own_settings(run_container: Any, tmp_path: Path) -> None:
    if not _moby_containerd_runs():
        unavailable(f"no containerd runs with --config {MOBY_CONTAINERD_CONFIG} (Docker's own)")
    container = run_container(name="toml")
    host = tmp_path / "host"
    broken = host / "run" / MOBY_CONTAINERD_CONFIG[len("/var/run/"):]
    broken.parent.mkdir(parents=True)
    broken.write_text("version = 2\nstate = " + "[" * 200_000 + "\n")
    config_v2 = Path("/var/lib/docker/containers", container.id, "config.v2.json")
    named = host / "var" / "lib" / "docker" / "containers" / container.id / "config.v2.json"
    named.parent.mkdir(parents=True)
    named.write_bytes(config_v2.read_bytes())

    result = subprocess.run(
        [sys.executable, "-m", "container_netstat", "collect", "--dry-run", "--runtime", "proc",
         "--host-root", str(host), "--run-root", str(host / "run"), "--var-root", str(host / "var"),
         "--include", f"{TEST_LABEL}={container.labels[TEST_LABEL]}"],
        capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    said = [line for line in result.stderr.splitlines() if "not valid TOML" in line]
    assert said == [f"container-netstat: WARNING: {MOBY_CONTAINERD_CONFIG}: not valid TOML; "
                    "its settings are not read, the defaults are taken"]
    items = json.loads(result.stdout)
    tags = {item["tags"] for item in items if item["metric"] == "container.net.tcp.inuse"}
    assert tags == {f"container={container.name}"}
