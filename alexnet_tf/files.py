"""Output files written whole: a crash, Ctrl-C or a full disk never leaves half a file."""

from __future__ import annotations

import os
from typing import IO, Callable


def write_whole(path: str, write: Callable[[IO], None], *, binary: bool = False) -> None:
  """Calls `write(f)` on a temporary file beside PATH, then renames it to PATH.

  A write that fails leaves an earlier file at PATH as it was, and no temporary file; a reader
  sees the old file or the new one, never a part. OSErrors name PATH. The temporary name holds
  the process id, so that processes writing the same PATH do not share one.
  """
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.{os.getpid()}.tmp"
  try:
    with open(tmp, "wb" if binary else "w", encoding=None if binary else "utf-8") as f:
      write(f)
    os.replace(tmp, path)
  except BaseException as e:
    if os.path.exists(tmp):
      os.remove(tmp)
    if isinstance(e, OSError):
      raise OSError(e.errno, e.strerror, path) from None
    raise
