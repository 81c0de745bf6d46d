"""tf.distribute strategy creation for `--strategy` and `--cpu_replicas`.

  default       no strategy (TF's default: one device, the first GPU if any)
  one_device    OneDeviceStrategy on /gpu:0, or /cpu:0 without GPUs
  mirrored      MirroredStrategy over all local GPUs, or over `--cpu_replicas`
                logical CPU devices when there is no GPU
  multi_worker  MultiWorkerMirroredStrategy; the cluster comes from TF_CONFIG
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

from alexnet_tf.errors import UserError

STRATEGIES = ("default", "one_device", "mirrored", "multi_worker")
ALL_REDUCE = ("auto", "nccl", "hierarchical", "ring", "one_device")


def configure_cpu_replicas(num_replicas: int) -> None:
  """Splits the host CPU into `num_replicas` logical devices.

  Must run before TensorFlow initialises its devices (its first op), which is
  why train.py calls it straight after parsing flags.
  """
  if num_replicas < 1:
    raise UserError(f"--cpu_replicas must be >= 1; got {num_replicas}.")
  if num_replicas == 1:
    return
  cpus = tf.config.list_physical_devices("CPU")
  try:
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration()] * num_replicas)
  except RuntimeError as e:
    raise RuntimeError("--cpu_replicas must be applied before TensorFlow initialises its "
                       "devices (call configure_cpu_replicas first).") from e


def tf_config() -> dict | None:
  """The parsed TF_CONFIG, or None; UserError if it is not valid JSON."""
  raw = os.environ.get("TF_CONFIG")
  if not raw:
    return None
  try:
    config = json.loads(raw)
  except ValueError as e:
    raise UserError(f"TF_CONFIG is not valid JSON ({e}).") from e
  if not isinstance(config, dict) or "cluster" not in config or "task" not in config:
    raise UserError("TF_CONFIG must have 'cluster' and 'task' entries, e.g. "
                    '{"cluster": {"worker": ["host1:port", "host2:port"]}, '
                    '"task": {"type": "worker", "index": 0}}.')
  return config


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """Whether this process writes the real checkpoints, logs and exports."""
  if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return True
  resolver = strategy.cluster_resolver
  task_type, task_id = resolver.task_type, resolver.task_id
  if task_type is None:
    return True
  has_chief = "chief" in resolver.cluster_spec().as_dict()
  return task_type == "chief" or (task_type == "worker" and task_id == 0 and not has_chief)


def worker_id(strategy: tf.distribute.Strategy) -> int:
  if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return int(strategy.cluster_resolver.task_id or 0)
  return 0


def num_workers(strategy: tf.distribute.Strategy) -> int:
  """How many processes (each with its own input pipeline) the strategy's replicas span."""
  if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return 1
  spec = strategy.cluster_resolver.cluster_spec()
  return max(1, sum(spec.num_tasks(job) for job in ("chief", "worker") if job in spec.jobs))


def _cross_device_ops(all_reduce: str, gpus: list) -> tf.distribute.CrossDeviceOps | None:
  if all_reduce == "auto":
    return None if gpus else tf.distribute.ReductionToOneDevice()
  if all_reduce == "nccl":
    if not gpus:
      raise UserError("--all_reduce=nccl needs GPUs; use auto or one_device on CPU.")
    return tf.distribute.NcclAllReduce()
  if all_reduce == "hierarchical":
    return tf.distribute.HierarchicalCopyAllReduce()
  if all_reduce == "one_device":
    return tf.distribute.ReductionToOneDevice()
  raise UserError(f"--all_reduce={all_reduce} applies to multi_worker only; for mirrored use "
                  "auto, nccl, hierarchical or one_device.")


def native_bfloat16() -> tuple[bool, str]:
  """Whether this machine computes bfloat16 natively, and why (for `--mixed_precision=auto`).

  With GPUs: all of them have compute capability >= 8.0 (Ampere and later). Without: the CPU
  advertises AVX512_BF16 or AMX-BF16 (Linux /proc/cpuinfo); elsewhere bfloat16 is emulated and
  slower than float32.
  """
  gpus = tf.config.list_physical_devices("GPU")
  if gpus:
    capabilities = [tf.config.experimental.get_device_details(g).get("compute_capability")
                    for g in gpus]
    native = all(c is not None and tuple(c) >= (8, 0) for c in capabilities)
    return native, f"GPU compute capability {', '.join(str(c) for c in capabilities)}"
  try:
    with open("/proc/cpuinfo") as f:
      flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
  except OSError:
    flags = []
  found = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
  return bool(found), f"CPU {'has ' + ' and '.join(found) if found else 'lacks avx512_bf16'}"


def create_strategy(name: str, cpu_replicas: int = 1, all_reduce: str = "auto",
                    collective_timeout_s: float | None = None) -> tf.distribute.Strategy:
  """Creates the tf.distribute strategy named by `--strategy`.

  Args:
    name: one of STRATEGIES.
    cpu_replicas: logical CPU devices made by `configure_cpu_replicas`; with
      `mirrored` and no GPU, one replica per logical CPU device.
    all_reduce: for mirrored: auto | nccl | hierarchical | one_device; for
      multi_worker: auto | ring | nccl.
    collective_timeout_s: multi_worker only: a collective that waits longer
      (e.g. because a peer died) fails instead of hanging forever.

  Returns:
    The strategy.
  """
  if name not in STRATEGIES:
    raise UserError(f"--strategy must be one of {', '.join(STRATEGIES)}; got {name!r}.")
  if all_reduce not in ALL_REDUCE:
    raise UserError(f"--all_reduce must be one of {', '.join(ALL_REDUCE)}; got {all_reduce!r}.")
  if name == "multi_worker":
    return _multi_worker_strategy(all_reduce, collective_timeout_s)
  # Lists (and so initialises) the devices: multi_worker must come before this.
  gpus = tf.config.list_logical_devices("GPU")
  if name == "default":
    return tf.distribute.get_strategy()
  if name == "one_device":
    return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
  if name == "mirrored":
    if gpus:
      devices = [d.name for d in gpus]
    else:
      devices = [d.name for d in tf.config.list_logical_devices("CPU")][:max(cpu_replicas, 1)]
    return tf.distribute.MirroredStrategy(devices=devices,
                                          cross_device_ops=_cross_device_ops(all_reduce, gpus))


def _multi_worker_strategy(all_reduce: str, collective_timeout_s: float | None
                           ) -> tf.distribute.Strategy:
  """MultiWorkerMirroredStrategy from TF_CONFIG; must run before any TF op."""
  config = tf_config()
  if config is None:
    raise UserError("--strategy=multi_worker needs the TF_CONFIG environment variable "
                    '(e.g. {"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                    '"task": {"type": "worker", "index": 0}}).')
  implementation = {
      "auto": tf.distribute.experimental.CommunicationImplementation.AUTO,
      "ring": tf.distribute.experimental.CommunicationImplementation.RING,
      "nccl": tf.distribute.experimental.CommunicationImplementation.NCCL,
  }.get(all_reduce)
  if implementation is None:
    raise UserError(f"--all_reduce={all_reduce} does not apply to multi_worker; use auto, ring "
                    "or nccl.")
  options = tf.distribute.experimental.CommunicationOptions(
      implementation=implementation, timeout_seconds=collective_timeout_s)
  return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
