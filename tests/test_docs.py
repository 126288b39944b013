"""docs/troubleshooting.md quotes qexact's messages in its headings: each quoted phrase is still
in a string the package builds (string literals read with ``ast``, implicit concatenation
joined; an f-string's literal parts between its placeholders), so the page cannot drift from
the code it explains."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "troubleshooting.md"
COMMAND_WORDS = {"conformance"}
"""Quoted words in headings that name a command, not a message."""


def _package_strings() -> list[str]:
    strings = []
    for path in (ROOT / "src" / "qexact").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                strings.append(node.value)
    return strings


def _quoted_messages() -> list[str]:
    headings = [line for line in PAGE.read_text(encoding="utf-8").splitlines()
                if line.startswith("### ")]
    return [phrase for heading in headings for phrase in re.findall(r"`([^`]+)`", heading)
            if phrase not in COMMAND_WORDS]


@pytest.fixture(scope="module")
def package_strings():
    return _package_strings()


@pytest.mark.parametrize("phrase", _quoted_messages())
def test_troubleshooting_quotes_what_qexact_says(phrase, package_strings):
    assert any(phrase in text for text in package_strings), (
        f"docs/troubleshooting.md quotes {phrase!r}, which no message of qexact contains")


def test_the_page_is_linked_from_the_readme():
    assert "docs/troubleshooting.md" in (ROOT / "README.md").read_text(encoding="utf-8")
