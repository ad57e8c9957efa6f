"""Shared pytest options and fixtures of the suite."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--rewrite-scenarios", action="store_true",
                     help="write the golden scenarios' outputs anew (tests/scenarios/*.txt)")
