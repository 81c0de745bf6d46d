"""User-facing errors: one clear sentence, no traceback."""

from __future__ import annotations

import fnmatch
import os
import sys
import tempfile
from typing import Callable, Sequence


def log_line(line: str) -> None:
  """Prints a progress line at once, also when stdout is a file or a pipe (cluster logs)."""
  print(line, flush=True)


class UserError(ValueError):
  """A mistake in the user's flags, files or data, worded for the user."""


def first_line(error: BaseException, limit: int = 300) -> str:
  """The first line of an exception's message (its type's name when it has none), for a
  one-sentence error: TF's messages run to many lines of graph context."""
  return (str(error).strip().splitlines() or [type(error).__name__])[0][:limit]


def check_writable_dir(name: str, path: str) -> None:
  """UserError unless `path` is a folder, or one can be created there, that we may write in.

  For outputs, checked before the work: a bad path should not cost a run. `name` is how the
  user gave it ("--model_dir", "DST"). A URL (gs://...) is left to TF's file systems.
  Also creates and removes an empty folder in the nearest existing one: os.access only reads
  permission bits, which do not stop root, while some file systems (/sys, /proc, a read-only
  mount) refuse every new entry, root's too.
  """
  _check_writable(name, path, path)


def check_writable_file(name: str, path: str) -> None:
  """UserError unless a file can be written at `path`, in its folder or one created for it
  (tried, as in `check_writable_dir`)."""
  if "://" in path:
    return
  if os.path.isdir(path):
    raise UserError(f"{name} {path!r} is a directory; give a file name.")
  _check_writable(name, os.path.dirname(os.path.abspath(path)), path)


def _check_writable(name: str, folder: str, target: str) -> None:
  """`check_writable_dir` of `folder`, for the output `target` (the folder, or a file in it)."""
  if "://" in folder:
    return
  if os.path.exists(folder) and not os.path.isdir(folder):
    raise UserError(f"{name} {folder!r} exists and is not a directory.")
  parent = folder if os.path.isdir(folder) else os.path.dirname(os.path.abspath(folder))
  while parent and not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise UserError(f"{name} {folder!r} cannot be created: {parent!r} is not a directory.")
  if not os.access(parent, os.W_OK | os.X_OK):
    raise UserError(f"{name} {target!r} is not writable.")
  try:
    os.rmdir(tempfile.mkdtemp(prefix=".tmp-write-check-", dir=parent))
  except OSError as e:
    where = "" if os.path.abspath(parent) == os.path.abspath(target) else f" (in {parent!r})"
    raise UserError(f"{name} {target!r} cannot be written{where}: "
                    f"{e.strerror or type(e).__name__}.") from e


def read_text_file(name: str, path: str) -> str:
  """The contents of a UTF-8 text file the user named with `name` ("--labels"), or UserError.

  A file that is not UTF-8 (a Latin-1 synset list, a JPEG given by mistake) is named in one
  sentence instead of a UnicodeDecodeError traceback.
  """
  try:
    with open(path, encoding="utf-8") as f:
      return f.read()
  except OSError as e:
    raise UserError(f"{name} {path!r} cannot be read: {e.strerror or type(e).__name__}.") from e
  except UnicodeDecodeError as e:
    raise UserError(f"{name} {path!r} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at "
                    f"offset {e.start}); it must be a UTF-8 text file of class names, one a "
                    "line.") from e


def check_tf_can_read_back(name: str, path: str) -> None:
  """UserError when TF could write checkpoints or a SavedModel under `path` but not read them.

  TF opens a checkpoint through a glob of its path (tensorflow#6082), so a path that does not
  match itself as a pattern ("runs/lr[0.01]", a set of characters; a backslash, an escape) saves
  fine and never loads: a rerun would start over instead of resuming.
  """
  full = path if "://" in path else os.path.abspath(os.path.expanduser(path))
  if "\\" in full or not fnmatch.fnmatchcase(full, full):
    where = path if full == path else f"{path} ({full})"
    raise UserError(f"{name} {where}: TensorFlow cannot load checkpoints or SavedModels from a "
                    "path with '[...]' or '\\' in it (it reads them through a glob); choose "
                    "another name.")


def run_cli(main: Callable[[Sequence[str]], None]) -> None:
  """Runs an absl `main`: a `UserError` is a one-line message and exit 1, Ctrl-C exit 130.

  A Ctrl-C is not a crash, so it gets one line too, not Python's traceback (exit 130, the
  shell's code for SIGINT). The library cleans up on the way out (make_tfrecords keeps no
  shard, a write in progress keeps the earlier file; train.py saves a checkpoint on the first
  Ctrl-C and only a second one reaches here).
  """
  from absl import app  # Imported here so the library does not need absl.

  def _wrapped(argv: Sequence[str]) -> None:
    try:
      main(argv)
    except UserError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(1)
    except KeyboardInterrupt:
      print("interrupted (Ctrl-C).", file=sys.stderr)
      sys.exit(130)

  try:
    app.run(_wrapped)
  except app.UsageError:  # Already reported by absl.
    raise
