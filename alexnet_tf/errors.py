"""User-facing errors: one clear sentence, no traceback."""

from __future__ import annotations

import sys
from typing import Callable, Sequence


def log_line(line: str) -> None:
  """Prints a progress line at once, also when stdout is a file or a pipe (cluster logs)."""
  print(line, flush=True)


class UserError(ValueError):
  """A mistake in the user's flags, files or data, worded for the user."""


def run_cli(main: Callable[[Sequence[str]], None]) -> None:
  """Runs an absl `main` and turns `UserError` into a one-line message, exit 1."""
  from absl import app  # Imported here so the library does not need absl.

  def _wrapped(argv: Sequence[str]) -> None:
    try:
      main(argv)
    except UserError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(1)

  try:
    app.run(_wrapped)
  except app.UsageError:  # Already reported by absl.
    raise
