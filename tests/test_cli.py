"""The CLI surface: help, option validation, environment variables, exit codes."""

from __future__ import annotations

import subprocess
import sys
from typing import Any, List, Tuple

import pytest
from click.testing import CliRunner

from container_netstat import cli
from container_netstat import diagnostics


def test_help_explains_every_option() -> None:
    result = CliRunner().invoke(cli.main, ["collect", "--help"])
    assert result.exit_code == 0
    for option in ("--dry-run", "--docker-host", "--docker-timeout", "--proc-root", "--cgroup-root",
                   "--run-root", "--endpoint", "--step", "--field-scope", "--log-level"):
        assert option in result.output


def test_bad_field_scope_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli.main, ["collect", "--dry-run", "--field-scope", "tw"])
    assert result.exit_code == 2
    assert "expected FIELD=netns or FIELD=host" in result.output


@pytest.mark.parametrize("command", ["collect", "doctor"])
@pytest.mark.parametrize("value, why", [("tw=pod", "bad scope override tw=pod"),
                                        ("orphan=netns", "bad scope override orphan=netns")])
def test_an_unknown_field_or_scope_is_a_usage_error_before_any_work(command: str, value: str, why: str) -> None:
    # A Docker address nobody answers on: reaching it would be exit 3, so exit 2 means
    # the value was refused before anything was collected.
    args = [command, "--field-scope", value, "--docker-host", "unix:///nonexistent/never-asked.sock"]
    result = subprocess.run([sys.executable, "-m", "container_netstat", *args],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert why in result.stderr and "never-asked" not in result.stderr
    assert result.stdout == ""


def test_bad_step_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli.main, ["collect", "--step", "0"])
    assert result.exit_code == 2


def test_environment_variable_sets_an_option_and_a_flag_wins() -> None:
    env = {"CONTAINER_NETSTAT_COLLECT_DOCKER_HOST": "unix:///nonexistent/env.sock"}
    result = CliRunner().invoke(cli.main, ["collect", "--dry-run"], env=env)
    assert result.exit_code == cli.EXIT_DOCKER
    assert "unix:///nonexistent/env.sock" in result.output
    result = CliRunner().invoke(
        cli.main, ["collect", "--dry-run", "--docker-host", "unix:///nonexistent/flag.sock"], env=env
    )
    assert "unix:///nonexistent/flag.sock" in result.output


def test_credentials_in_docker_host_are_not_logged() -> None:
    assert diagnostics.redact("tcp://user:secret@host:2376") == "tcp://***@host:2376"
    assert diagnostics.redact("unix:///var/run/docker.sock") == "unix:///var/run/docker.sock"


def test_workers_reach_the_run_from_the_option_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from container_netstat import run, settings
    from container_netstat.errors import DockerUnavailable

    seen: List[Tuple[int, Any]] = []

    def take_snapshot(given: settings.Settings, backend: Any, deadline: Any = None) -> None:
        seen.append((given.workers, deadline))
        raise DockerUnavailable("stopped here")

    monkeypatch.setattr(run, "take_snapshot", take_snapshot)
    result = CliRunner().invoke(cli.main, ["collect", "--dry-run", "--workers", "1"])
    assert result.exit_code == cli.EXIT_DOCKER, result.output
    result = CliRunner().invoke(cli.main, ["collect", "--dry-run"], env={"CONTAINER_NETSTAT_COLLECT_WORKERS": "3"})
    assert result.exit_code == cli.EXIT_DOCKER, result.output
    result = CliRunner().invoke(cli.main, ["collect", "--dry-run"])
    assert [w for w, _ in seen] == [1, 3, settings.DEFAULT_WORKERS]
    assert 1 <= settings.DEFAULT_WORKERS <= 4
    # One deadline, made at the start of the run, reaches the collection.
    assert all(d is not None and 0 < d.remaining() <= 40 for _, d in seen)
    assert CliRunner().invoke(cli.main, ["collect", "--workers", "0"]).exit_code == 2


def test_the_help_documents_the_deadlines_exit_codes() -> None:
    text = " ".join(CliRunner().invoke(cli.main, ["collect", "--help"]).output.split())
    assert "4 some containers could not be read, or were not read by the deadline" in text
    assert "--workers" in text and "--deadline" in text
