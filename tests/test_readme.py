"""README.rst stays true: every emitted metric and every exit code is documented there."""

from __future__ import annotations

from pathlib import Path

from container_netstat import cli, metrics

README = (Path(__file__).parent.parent / "README.rst").read_text()


def test_every_metric_is_documented() -> None:
    names = [m.name for m in metrics.NETNS_METRICS + metrics.HOST_METRICS]
    names += [name for name, _ in metrics.COLLECTOR_METRICS]
    missing = [n for n in names if f"``{metrics.PREFIX}{n}``" not in README]
    assert not missing


def test_every_exit_code_is_documented() -> None:
    codes = sorted({v for k, v in vars(cli).items() if k.startswith("EXIT_")})
    section = README.split("Exit codes", 1)[1]
    assert all(f"\n{code}  " in section for code in codes), codes


def test_the_test_command_is_what_ci_runs() -> None:
    ci = (Path(__file__).parent.parent / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in README and "scripts/test.sh" in ci
