"""What every command group of `pnyx` shares: the parser that turns a wrong flag into one
line, the two errors a command may raise, and the flag types."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NoReturn


class UsageError(Exception):
    """A wrong flag or combination: one line on stderr, exit status 2."""


class StartError(Exception):
    """A node or cluster cannot start: one line on stderr, exit status 1."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def check_data_dir(path: Path) -> None:
    """Fail now, with one line, if `path` cannot hold a node's files."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".pnyx-write-test"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise StartError(f"data directory {path} cannot be written: {exc.strerror}") from None
