"""Helpers shared by the benchmark scripts: machine description, statistics, table, JSON.

Not part of the `alexnet_tf` package. The scripts run as `python benchmarks/<name>.py` from the
repository root (or from anywhere: they put the repository root on sys.path themselves).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from typing import Any, Iterable, Sequence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ensure_repo_on_path() -> None:
  """Makes `import alexnet_tf` find this checkout even without an installed package."""
  if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)


def quiet_tensorflow() -> None:
  """Hides TF's C++ start-up chatter (set before TensorFlow is imported)."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# ----------------------------------------------------------------------------
# The machine.
# ----------------------------------------------------------------------------

_CPU_FLAGS_OF_INTEREST = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile",
                          "amx_bf16", "amx_int8")


def _cpuinfo() -> dict[str, Any]:
  info: dict[str, Any] = {"model": platform.processor() or platform.machine(), "flags": []}
  try:
    with open("/proc/cpuinfo") as f:
      text = f.read()
  except OSError:
    return info
  for line in text.splitlines():
    key, _, value = line.partition(":")
    key, value = key.strip(), value.strip()
    if key == "model name" and info["model"] in ("", platform.machine(), platform.processor()):
      info["model"] = value
    elif key == "flags" and not info["flags"]:
      present = set(value.split())
      info["flags"] = [f for f in _CPU_FLAGS_OF_INTEREST if f in present]
  return info


def _cgroup_cpu_limit() -> float | None:
  """CPUs allowed by a cgroup v2 quota (containers), or None when unlimited/unknown."""
  try:
    with open("/sys/fs/cgroup/cpu.max") as f:
      quota, period = f.read().split()[:2]
    if quota == "max":
      return None
    return int(quota) / int(period)
  except (OSError, ValueError):
    return None


def usable_cores() -> int:
  """CPU cores this process may run on (affinity, then a cgroup quota, if lower)."""
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:
    cores = os.cpu_count() or 1
  limit = _cgroup_cpu_limit()
  if limit is not None:
    cores = max(1, min(cores, int(limit + 0.5)))
  return cores


def load_average() -> list[float] | None:
  try:
    return [round(v, 2) for v in os.getloadavg()]
  except OSError:
    return None


def machine_info() -> dict[str, Any]:
  """CPU model, cores, memory, TF/Keras versions, GPUs (TensorFlow must be importable)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import keras  # pylint: disable=g-import-not-at-top

  cpu = _cpuinfo()
  gpus = []
  for gpu in tf.config.list_physical_devices("GPU"):
    try:
      details = tf.config.experimental.get_device_details(gpu)
    except Exception:  # pylint: disable=broad-except
      details = {}
    gpus.append({"device": gpu.name, "name": details.get("device_name", "unknown"),
                 "compute_capability": details.get("compute_capability")})
  memory_gb = None
  try:
    memory_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
  except (ValueError, OSError, AttributeError):
    pass
  build = tf.sysconfig.get_build_info()
  return {
      "cpu_model": cpu["model"],
      "cpu_flags": cpu["flags"],
      "cpu_count": os.cpu_count(),
      "usable_cores": usable_cores(),
      "cgroup_cpu_limit": _cgroup_cpu_limit(),
      "memory_gb": memory_gb,
      "platform": platform.platform(),
      "python": platform.python_version(),
      "tensorflow": tf.__version__,
      "keras": keras.__version__,
      "tf_cuda_build": bool(build.get("is_cuda_build", False)),
      "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on for x86)"),
      "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads() or "auto",
      "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads() or "auto",
      "tensor_float_32": tf.config.experimental.tensor_float_32_execution_enabled(),
      "gpus": gpus,
      "gpu": gpus[0]["name"] if gpus else None,
  }


def describe_machine(info: dict[str, Any]) -> str:
  gpu = f", GPU {info['gpu']}" if info.get("gpu") else ", no GPU"
  return (f"{info['cpu_model']} ({info['usable_cores']} usable cores of {info['cpu_count']}; "
          f"{', '.join(info['cpu_flags']) or 'no AVX flags read'}){gpu}; "
          f"TF {info['tensorflow']}, Keras {info['keras']}")


# ----------------------------------------------------------------------------
# Statistics.
# ----------------------------------------------------------------------------

def median(values: Sequence[float]) -> float:
  return float(statistics.median(values)) if values else float("nan")


def spread(values: Sequence[float]) -> str:
  """'min–max' of the repeats, for the table (no judgement is made on it)."""
  if not values:
    return "-"
  return f"{fmt(min(values))}–{fmt(max(values))}"


def fmt(value: float | None, digits: int = 3) -> str:
  """A number with `digits` significant digits, no exponent for everyday sizes."""
  if value is None or value != value:  # None or NaN.
    return "-"
  if value == 0:
    return "0"
  magnitude = abs(value)
  if magnitude >= 10 ** digits:
    return f"{value:,.0f}"
  decimals = max(0, digits - 1 - int(f"{magnitude:e}".split("e")[1]))
  return f"{value:.{decimals}f}"


def pct(fraction: float | None) -> str:
  if fraction is None or fraction != fraction:
    return "-"
  return f"{100 * fraction:.1f}%"


# ----------------------------------------------------------------------------
# Output.
# ----------------------------------------------------------------------------

def print_table(title: str, header: Sequence[str], rows: Iterable[Sequence[Any]],
                notes: Sequence[str] = ()) -> None:
  """One plain-text (also valid Markdown) table on stdout."""
  rows = [[str(c) for c in row] for row in rows]
  widths = [max(len(str(h)), *(len(r[i]) for r in rows)) if rows else len(str(h))
            for i, h in enumerate(header)]

  def line(cells: Sequence[str]) -> str:
    return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"

  print()
  print(title)
  print()
  print(line(header))
  print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
  for row in rows:
    print(line(row))
  for note in notes:
    print(note)
  print(flush=True)


def write_json(path: str | None, payload: dict[str, Any]) -> None:
  if not path:
    return
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(payload, f, indent=2, sort_keys=False, default=_json_default)
    f.write("\n")
  os.replace(tmp, path)
  print(f"Wrote {path}")


def _json_default(value: Any) -> Any:
  try:
    return float(value)
  except (TypeError, ValueError):
    return str(value)


def log(message: str) -> None:
  """Progress on stderr, so stdout holds only the table."""
  print(message, file=sys.stderr, flush=True)
