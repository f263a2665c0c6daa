"""The docs stay true: every emitted metric is in docs/metrics.rst, every exit code in README.rst,
README.rst stays short and links every file of docs/."""

from __future__ import annotations

import re
from pathlib import Path
import pytest

from container_netstat import cli, metrics

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.rst").read_text()
METRICS_REFERENCE = (ROOT / "docs" / "metrics.rst").read_text()


def test_every_metric_is_documented() -> None:
    names = [m.name for m in metrics.NETNS_METRICS + metrics.HOST_METRICS]
    names += [name for name, _ in metrics.COLLECTOR_METRICS]
    missing = [n for n in names if f"``{metrics.PREFIX}{n}``" not in METRICS_REFERENCE]
    assert not missing


def test_every_exit_code_is_documented() -> None:
    codes = sorted({v for k, v in vars(cli).items() if k.startswith("EXIT_")})
    section = README.split("Exit codes", 1)[1]
    assert all(f"\n{code}  " in section for code in codes), codes


@pytest.mark.parametrize("path", [ROOT / "README.rst", *sorted((ROOT / "docs").glob("*.rst"))],
                         ids=lambda p: p.name)
def test_the_docs_are_valid_restructuredtext(path: Path) -> None:
    """A malformed table renders as an error block on PyPI and in every viewer."""
    import docutils.core
    from docutils import nodes

    tree = docutils.core.publish_doctree(
        path.read_text(), source_path=str(path),
        settings_overrides={"report_level": 2, "halt_level": 5, "warning_stream": False})
    find = getattr(tree, "findall", None) or tree.traverse
    problems = [m.astext()[:200] for m in find(nodes.system_message) if m["level"] >= 2]
    assert not problems


def test_the_readme_stays_short() -> None:
    assert len(README.splitlines()) < 300


@pytest.mark.parametrize("path", sorted((ROOT / "docs").glob("*.rst")), ids=lambda p: p.name)
def test_every_doc_is_linked_from_the_readme(path: Path) -> None:
    """A link, not a mention: `text <docs/x.rst>`_ or `text <docs/x.rst#section>`_."""
    target = re.escape(f"docs/{path.name}")
    assert re.search(rf"`[^`]*<{target}(#[^>]*)?>`__?", README), f"README.rst does not link {path.name}"


def test_the_test_command_is_what_ci_runs() -> None:
    ci = (Path(__file__).parent.parent / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in README and "scripts/test.sh" in ci
