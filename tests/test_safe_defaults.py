"""Safe defaults (issue 7, item 6) that a grep can prove; the rest is tested where it happens:
`autotune ui` binds 127.0.0.1
(tests/test_cli_study_commands.py::test_ui_serves_the_store_on_loopback),
credentials in a tracking URI are never printed, written or recorded
(tests/test_reliability.py::test_tracking_server_killed_then_back_loses_nothing,
tests/test_tracking.py::test_redact_uri), selection rules are parsed (tests/test_selection.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "autotune"
SOURCES = sorted(PACKAGE.rglob("*.py"))

FORBIDDEN = {
    "yaml.load( (use yaml.safe_load)": re.compile(r"\byaml\.(load|load_all|unsafe_load)\("),
    "a non-safe YAML Loader": re.compile(r"Loader\s*=\s*yaml\.(Loader|FullLoader|UnsafeLoader)"),
    "eval(": re.compile(r"(?<![.\w])eval\("),
    "exec(": re.compile(r"(?<![.\w])exec\("),
    "unsafe": re.compile(r"unsafe", re.I),
    "pickle.load": re.compile(r"\bpickle\.loads?\("),
    "shell=True": re.compile(r"shell\s*=\s*True"),
}


def test_there_is_source_to_check() -> None:
    assert len(SOURCES) > 10


@pytest.mark.parametrize("what", sorted(FORBIDDEN))
def test_package_never_uses(what: str) -> None:
    hits = [f"{p.relative_to(PACKAGE.parent)}:{n}: {line.strip()}"
            for p in SOURCES for n, line in enumerate(p.read_text().splitlines(), 1)
            if FORBIDDEN[what].search(line)]
    assert not hits, f"{what} in the package:\n" + "\n".join(hits)


def test_yaml_is_loaded_with_safe_load() -> None:
    users = [p for p in SOURCES if "yaml." in p.read_text()]
    assert users, "no module loads YAML?"
    for p in users:
        text = p.read_text()
        if re.search(r"yaml\.\w*load", text):
            assert "yaml.safe_load" in text, p


def test_ui_defaults_to_loopback() -> None:
    import inspect

    from autotune.cli import ui

    assert inspect.signature(ui).parameters["host"].default == "127.0.0.1"
