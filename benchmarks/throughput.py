r"""AlexNet training and inference throughput against the machine's own compute ceiling.

  python benchmarks/throughput.py [--batch_size=128] [--mixed_precision=none|bfloat16|both]
      [--repeats=5] [--steps=5] [--json=FILE]

Measures in ONE run (SPEC §3: timings drift 20–50% between runs, so only ratios taken in the
same run are compared), after warm-up, the median over --repeats of:

  1. ceiling    a large matrix product (--matmul_size, 4096³ by default) in float32 and
                bfloat16, GFLOP/s: what this machine's TensorFlow can do at best;
  2. train      training-step images/sec on synthetic input (random tensors already on the
                device, in train.py's input format: uint8 images, flips and PCA lighting
                shifts, which the step applies), float32 and bfloat16 (`mixed_bfloat16`
                policy), with the package's own step (`alexnet_tf.training.make_train_step`:
                PaperSGD, loss, metrics, one host sync per step, exactly what train.py runs),
                and the GFLOP/s this is at 4.14 GFLOP/image (SPEC §1) as a fraction of (1) at
                the same precision;
  3. inference  forward-pass images/sec (training=False) and its fraction of (1) at
                1.449 GFLOP/image;
  4. pipeline   the same training step fed by train.py's real input path (`datasets.
                load_source("shapes", "train")` JPEGs → `input_pipeline.build_train_dataset`
                → `strategy.distribute_datasets_from_function`), and its ratio to (2);
  5. lrn        the share of a training step spent in LRN: 1 − t(lrn="none") / t(lrn="paper").

Every measurement runs --steps steps per repeat; the repeats are interleaved round-robin (each
repeat times every measurement once, in a rotating order), so slow drift of the machine hits all
of them alike, and ratios are taken per repeat (paired) before the median. Nothing is asserted:
the script reports. With a GPU visible to TensorFlow, everything runs on it (synthetic tensors,
models and matmuls are placed on /GPU:0; the input pipeline stays on the host).

The model is the default train.py model (two towers, paper LRN, 1000 classes, 227×227 input,
logits out). The pipeline measurement feeds the shapes dataset's labels (6 classes) to the same
1000-class model, so (4) differs from (2) only by its input. Synthetic data uses a small
learning rate (--learning_rate) so the loss stays finite over many steps; speed does not depend
on it.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import os
import sys
import time
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # pylint: disable=g-import-not-at-top,wrong-import-position

_common.ensure_repo_on_path()
_common.quiet_tensorflow()

from absl import app, flags  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS

SECTIONS = ("matmul", "train", "inference", "pipeline", "lrn")
TRAIN_GFLOP_PER_IMAGE = 4.14     # SPEC §1: ≈ 3 × forward (conv1 needs no input gradient).
INFER_GFLOP_PER_IMAGE = 1.449    # SPEC §1: 724.4 M multiply-adds.
IMAGE_SIZE = 227
NUM_CLASSES = 1000

flags.DEFINE_integer("batch_size", 128, "Global batch size of every model measurement "
                     "(paper: 128).")
flags.DEFINE_enum("mixed_precision", "both", ["none", "bfloat16", "both"],
                  "none: float32 only; bfloat16: the mixed_bfloat16 policy only; both.")
flags.DEFINE_integer("repeats", 5, "Repeats of every measurement (the median is reported).")
flags.DEFINE_integer("steps", 5, "Timed training/inference steps per measurement and repeat.")
flags.DEFINE_integer("warmup_steps", 2, "Untimed steps per measurement before the first repeat "
                     "(the first one traces the tf.function).")
flags.DEFINE_integer("matmul_size", 4096, "Side n of the n×n×n ceiling matrix product; use e.g. "
                     "2048 on a small-memory machine.")
flags.DEFINE_float("matmul_seconds", 1.0, "Approximate seconds of matrix products per repeat "
                   "(the number of products is chosen from the warm-up; at least 2).")
flags.DEFINE_list("sections", list(SECTIONS), "Which measurements to run, of "
                  f"{','.join(SECTIONS)}. pipeline and lrn imply train.")
flags.DEFINE_string("data_dir", None, "Shapes dataset folder for the pipeline measurement "
                    "(train.py's --data_dir); default $ALEXNET_TF_CACHE/shapes or "
                    "~/.cache/alexnet_tf/shapes, generated there on first use (~10-20 s).")
flags.DEFINE_integer("pipeline_presteps", 2, "Untimed steps after the input iterator is created "
                     "anew at each repeat (the iterator is dropped between repeats so its "
                     "background threads neither compete with other measurements nor hand the "
                     "next repeat a buffer filled while idle).")
flags.DEFINE_list("lrn_compare", [], "Also time these LRN implementations (of primitive, "
                  "primitive_float32, op) in training and inference, next to the default "
                  "'fused', with paired rate ratios.")
flags.DEFINE_float("learning_rate", 1e-4, "Learning rate of the synthetic-input steps.")
flags.DEFINE_integer("seed", 0, "Seed of the models and synthetic data.")
flags.DEFINE_string("json", None, "Also write all results (every repeat) to this JSON file.")


@dataclasses.dataclass
class Bench:
  """One measurement: `call()` does one step; `sync(result)` waits for the device."""
  key: str
  label: str
  precision: str
  call: Callable[[], Any]
  steps: int
  items_per_step: float           # images (matmul: 1 product)
  flop_per_step: float
  unit: str = "img/s"
  sync: Callable[[Any], None] = lambda result: None
  before_repeat: Callable[[], None] | None = None
  after_repeat: Callable[[], None] | None = None
  trainer: Any = None             # the Trainer of a training measurement (loss check)
  seconds: list = dataclasses.field(default_factory=list)

  def run(self, steps: int) -> float:
    if self.before_repeat:
      self.before_repeat()
    try:
      start = time.perf_counter()
      result = None
      for _ in range(steps):
        result = self.call()
      self.sync(result)
      return time.perf_counter() - start
    finally:
      if self.after_repeat:
        self.after_repeat()

  def rates(self) -> list[float]:
    """Items per second of every repeat."""
    return [self.items_per_step * self.steps / s for s in self.seconds]

  def gflops(self) -> list[float]:
    return [self.flop_per_step * self.steps / s / 1e9 for s in self.seconds]


class _OnDevice:
  """A stand-in for the input iterator that train.py's step calls `next()` on: returns the same
  batch of tensors that already live on the device, so the step measures compute alone.

  (`make_train_step`'s tf.function traces `next(iterator)` once and captures these tensors.)
  """

  def __init__(self, inputs, labels) -> None:
    self.inputs, self.labels = inputs, labels

  def __iter__(self) -> "_OnDevice":
    return self

  def __next__(self):
    return self.inputs, self.labels


class Trainer:
  """A model + PaperSGD + train.py's train step, built the way `training.train` builds them."""

  def __init__(self, precision: str, lrn: str = "paper",
               lrn_implementation: str = "fused") -> None:
    import keras  # pylint: disable=g-import-not-at-top
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from alexnet_tf import model_dir as model_dir_lib  # pylint: disable=g-import-not-at-top
    from alexnet_tf import training  # pylint: disable=g-import-not-at-top
    from alexnet_tf.optimization import PaperSGD  # pylint: disable=g-import-not-at-top

    self.precision = precision
    self.strategy = tf.distribute.get_strategy()  # train.py's --strategy=default.
    config = model_dir_lib.default_model_config(classes=NUM_CLASSES, lrn=lrn,
                                                lrn_implementation=lrn_implementation,
                                                image_size=IMAGE_SIZE)
    if precision == "bfloat16":
      keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
      with self.strategy.scope():
        self.model = model_dir_lib.build_model(config, None, classifier_activation=None,
                                               seed=FLAGS.seed)
        self.optimizer = PaperSGD(learning_rate=FLAGS.learning_rate, momentum=0.9,
                                  coupled_weight_decay=5e-4)
        self.optimizer.build(self.model.trainable_variables)
    finally:
      keras.mixed_precision.set_global_policy("float32")
    self.metrics = training.StepMetrics(self.strategy)
    self.train_step = training.make_train_step(
        self.strategy, self.model, self.optimizer, self.metrics, FLAGS.batch_size,
        loss_scaling=False)
    self.last_loss = float("nan")
    self._infer = None

  def step(self, iterator) -> float:
    """One training step as train.py's loop does it (new lr tensor, loss fetched to the host)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    loss, _ = self.train_step(iterator, tf.constant(FLAGS.learning_rate, tf.float32))
    self.last_loss = float(loss.numpy())
    return self.last_loss

  def infer(self, images):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    if self._infer is None:
      model = self.model
      self._infer = tf.function(lambda x: model(x, training=False))
    return self._infer(images).numpy()


def _precisions() -> list[str]:
  return {"none": ["float32"], "bfloat16": ["bfloat16"],
          "both": ["float32", "bfloat16"]}[FLAGS.mixed_precision]


def _device() -> str:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return "/GPU:0" if tf.config.list_logical_devices("GPU") else "/CPU:0"


def _matmul_benches() -> list[Bench]:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  n = FLAGS.matmul_size
  benches = []

  @tf.function
  def product(a, b):
    # One element of the product forces the whole product and costs nothing to fetch.
    return tf.linalg.matmul(a, b)[0, 0]

  for precision, dtype in (("float32", tf.float32), ("bfloat16", tf.bfloat16)):
    with tf.device(_device()):
      a = tf.cast(tf.random.normal([n, n], seed=FLAGS.seed), dtype)
      b = tf.cast(tf.random.normal([n, n], seed=FLAGS.seed + 1), dtype)
    benches.append(Bench(
        key=f"matmul/{precision}", label=f"matmul {n}³ (ceiling)", precision=precision,
        call=lambda a=a, b=b: product(a, b), steps=2, items_per_step=1,
        flop_per_step=2.0 * n ** 3, unit="GFLOP/s", sync=lambda r: r.numpy()))
  return benches


def _synthetic_batch():
  """(uint8 images, flips, lighting shifts): train.py's input format (`finish_in_step`), float32
  images (the same pixels), labels; on the device."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  with tf.device(_device()):
    pixels = tf.random.uniform([FLAGS.batch_size, IMAGE_SIZE, IMAGE_SIZE, 3], 0, 256,
                               dtype=tf.int32, seed=FLAGS.seed)
    flips = tf.random.uniform([FLAGS.batch_size], seed=FLAGS.seed) < 0.5
    shifts = tf.random.normal([FLAGS.batch_size, 3], stddev=5.0, seed=FLAGS.seed)
    labels = tf.random.uniform([FLAGS.batch_size], 0, NUM_CLASSES, dtype=tf.int64,
                               seed=FLAGS.seed)
  return (tf.cast(pixels, tf.uint8), flips, shifts), tf.cast(pixels, tf.float32), labels


def _train_bench(trainer: Trainer, key: str, label: str, iterator) -> Bench:
  batch = FLAGS.batch_size
  return Bench(key=key, label=label, precision=trainer.precision,
               call=lambda: trainer.step(iterator), steps=FLAGS.steps, items_per_step=batch,
               flop_per_step=TRAIN_GFLOP_PER_IMAGE * 1e9 * batch, trainer=trainer)


def _shapes_source():
  """train.py's default training data: the shapes JPEGs (generated on first use)."""
  from alexnet_tf import datasets  # pylint: disable=g-import-not-at-top
  return datasets.load_source("shapes", "train", FLAGS.data_dir)


def _pipeline_bench(trainer: Trainer, source) -> Bench:
  """train.py's input path (shapes JPEGs) feeding the same step; a fresh iterator per repeat."""
  from alexnet_tf import input_pipeline  # pylint: disable=g-import-not-at-top

  strategy = trainer.strategy
  batch = input_pipeline.per_replica_batch_size(FLAGS.batch_size,
                                                strategy.num_replicas_in_sync)

  def dataset_fn(ctx):
    # As training.train's make_train_dataset with train.py's defaults (augmentation on).
    return input_pipeline.build_train_dataset(
        source, batch, IMAGE_SIZE, ctx, seed=FLAGS.seed, random_crop=True, random_flip=True,
        pca_lighting=True, deterministic=False, strict=False, finish_in_step=True)

  dataset = strategy.distribute_datasets_from_function(dataset_fn)
  state: dict[str, Any] = {"iterator": None}

  def before():
    state["iterator"] = iter(dataset)
    for _ in range(FLAGS.pipeline_presteps):
      trainer.step(state["iterator"])

  def after():
    state["iterator"] = None
    gc.collect()

  return Bench(key=f"pipeline/{trainer.precision}",
               label=f"train step, train.py input ({source.num_examples} shapes JPEGs)",
               precision=trainer.precision, call=lambda: trainer.step(state["iterator"]),
               steps=FLAGS.steps, items_per_step=FLAGS.batch_size,
               flop_per_step=TRAIN_GFLOP_PER_IMAGE * 1e9 * FLAGS.batch_size,
               before_repeat=before, after_repeat=after, trainer=trainer)


def _paired(a: Bench, b: Bench, fn: Callable[[float, float], float]) -> list[float]:
  """fn(rate_a, rate_b) per repeat (both measured in the same repeat)."""
  return [fn(x, y) for x, y in zip(a.rates(), b.rates())]


def main(argv) -> None:
  del argv
  for name in FLAGS.sections:
    if name not in SECTIONS:
      raise app.UsageError(f"--sections: unknown section {name!r}; choose from "
                           f"{','.join(SECTIONS)}")
  from alexnet_tf.layers import LRN_IMPLEMENTATIONS  # pylint: disable=g-import-not-at-top
  alternatives = [name for name in LRN_IMPLEMENTATIONS if name != "fused"]
  for name in FLAGS.lrn_compare:
    if name not in alternatives:
      raise app.UsageError(f"--lrn_compare: unknown LRN implementation {name!r}; choose from "
                           f"{','.join(alternatives)}")
  for name, value in (("batch_size", FLAGS.batch_size), ("repeats", FLAGS.repeats),
                      ("steps", FLAGS.steps), ("matmul_size", FLAGS.matmul_size)):
    if value < 1:
      raise app.UsageError(f"--{name} must be >= 1")
  sections = set(FLAGS.sections)
  if sections & {"pipeline", "lrn"}:
    sections.add("train")

  wall_start = time.perf_counter()
  load_start = _common.load_average()
  machine = _common.machine_info()
  _common.log(f"Machine: {_common.describe_machine(machine)}")
  if load_start and load_start[0] > 0.5 * machine["usable_cores"]:
    _common.log(f"Note: load average {load_start} at start; other processes may be running.")

  precisions = _precisions()
  benches: list[Bench] = []
  trainers: dict[tuple, Trainer] = {}
  train_inputs, images, labels = (_synthetic_batch() if sections & {"train", "inference"}
                                  else (None, None, None))
  synthetic = _OnDevice(train_inputs, labels)
  shapes_source = None

  if "matmul" in sections:
    benches += _matmul_benches()
  for precision in precisions:
    if sections & {"train", "inference"}:
      _common.log(f"Building the {precision} model ...")
      trainers[(precision, "paper", "fused")] = Trainer(precision)
  for precision in precisions:
    trainer = trainers.get((precision, "paper", "fused"))
    if "train" in sections:
      benches.append(_train_bench(trainer, f"train/{precision}", "train step, synthetic input",
                                  synthetic))
    if "inference" in sections:
      benches.append(Bench(
          key=f"inference/{precision}", label="inference, synthetic input",
          precision=precision, call=lambda t=trainer: t.infer(images), steps=FLAGS.steps,
          items_per_step=FLAGS.batch_size,
          flop_per_step=INFER_GFLOP_PER_IMAGE * 1e9 * FLAGS.batch_size))
    if "pipeline" in sections:
      if shapes_source is None:
        _common.log("Preparing the shapes dataset (generated on first use) ...")
        shapes_source = _shapes_source()
      benches.append(_pipeline_bench(trainer, shapes_source))
    if "lrn" in sections:
      _common.log(f"Building the {precision} model without LRN ...")
      t_none = trainers[(precision, "none", "fused")] = Trainer(precision, lrn="none")
      benches.append(_train_bench(t_none, f"train_lrn_none/{precision}",
                                  'train step, lrn="none"', synthetic))
    for impl in FLAGS.lrn_compare if sections & {"train", "inference"} else ():
      _common.log(f"Building the {precision} model with LRN implementation {impl!r} ...")
      other = trainers[(precision, "paper", impl)] = Trainer(precision, lrn_implementation=impl)
      if "train" in sections:
        benches.append(_train_bench(other, f"train_lrn_{impl}/{precision}",
                                    f'train step, lrn_implementation="{impl}"', synthetic))
      if "inference" in sections:
        benches.append(Bench(
            key=f"inference_lrn_{impl}/{precision}",
            label=f'inference, lrn_implementation="{impl}"', precision=precision,
            call=lambda t=other: t.infer(images), steps=FLAGS.steps,
            items_per_step=FLAGS.batch_size,
            flop_per_step=INFER_GFLOP_PER_IMAGE * 1e9 * FLAGS.batch_size))

  # Warm-up: traces every tf.function, fills caches, sizes the matmul measurement.
  for bench in benches:
    _common.log(f"Warming up {bench.key} ...")
    if bench.unit == "GFLOP/s":
      bench.run(2)  # Traces.
      per_product = bench.run(3) / 3
      bench.steps = max(2, int(math.ceil(FLAGS.matmul_seconds / max(per_product, 1e-6))))
    else:
      bench.run(FLAGS.warmup_steps)

  traces = {id(t): t.train_step.experimental_get_tracing_count() for t in trainers.values()}
  for r in range(FLAGS.repeats):
    shift = r % max(len(benches), 1)
    for bench in benches[shift:] + benches[:shift]:
      seconds = bench.run(bench.steps)
      bench.seconds.append(seconds)
    _common.log(f"Repeat {r + 1}/{FLAGS.repeats} done "
                f"({time.perf_counter() - wall_start:.0f} s so far).")

  retraced = any(t.train_step.experimental_get_tracing_count() != traces[id(t)]
                 for t in trainers.values())
  if retraced:
    _common.log("Warning: a train step was traced again during the timed repeats; "
                "its timings include tracing.")
  by_key = {b.key: b for b in benches}
  ceiling = {p: _common.median(by_key[f"matmul/{p}"].gflops())
             for p in ("float32", "bfloat16") if f"matmul/{p}" in by_key}

  results: dict[str, Any] = {}
  rows = []
  for bench in benches:
    section, precision = bench.key.split("/")
    if bench.unit == "GFLOP/s":
      values = bench.gflops()
      entry = {"gflops": _common.median(values), "values": values,
               "matrix_size": FLAGS.matmul_size, "products_per_repeat": bench.steps}
      rows.append([bench.label, precision, _common.fmt(entry["gflops"]), "GFLOP/s",
                   _common.spread(values), _common.fmt(entry["gflops"]), "100%"])
    else:
      values = bench.rates()
      gflops = _common.median(bench.gflops())
      fraction = gflops / ceiling[precision] if precision in ceiling else None
      entry = {"images_per_sec": _common.median(values), "values": values,
               "step_seconds": _common.median([s / bench.steps for s in bench.seconds]),
               "gflops": gflops, "fraction_of_ceiling": fraction,
               "gflop_per_image": bench.flop_per_step / bench.items_per_step / 1e9}
      if bench.trainer is not None:
        entry["last_loss"] = bench.trainer.last_loss
        if not math.isfinite(bench.trainer.last_loss):
          _common.log(f"Warning: {bench.key}: the loss is not finite "
                      f"({bench.trainer.last_loss}); NaN arithmetic may change the speed.")
      rows.append([bench.label, precision, _common.fmt(entry["images_per_sec"]), "img/s",
                   _common.spread(values), _common.fmt(gflops), _common.pct(fraction)])
    results.setdefault(section, {})[precision] = entry

  derived_rows = []
  for precision in precisions:
    train = by_key.get(f"train/{precision}")
    pipe = by_key.get(f"pipeline/{precision}")
    if train and pipe:
      ratios = _paired(pipe, train, lambda p, t: p / t)
      results["pipeline"][precision].update(ratio_to_synthetic=_common.median(ratios),
                                            ratio_values=ratios)
      derived_rows.append(["input pipeline / synthetic (paired ratio)", precision,
                           _common.fmt(_common.median(ratios)), "ratio", _common.spread(ratios),
                           "", ""])
    none = by_key.get(f"train_lrn_none/{precision}")
    if train and none:
      # 1 - t_none / t_lrn with t = seconds per step = 1 - rate_lrn / rate_none.
      shares = _paired(train, none, lambda lrn, no: 1.0 - lrn / no)
      results["train_lrn_none"][precision].update(lrn_share=_common.median(shares),
                                                  lrn_share_values=shares)
      results.setdefault("lrn", {})[precision] = {
          "share": _common.median(shares), "values": shares,
          "step_seconds_lrn": results["train"][precision]["step_seconds"],
          "step_seconds_none": results["train_lrn_none"][precision]["step_seconds"]}
      derived_rows.append(["LRN share of a training step: 1 − t_none/t_lrn", precision,
                           _common.pct(_common.median(shares)), "share",
                           f"{_common.pct(min(shares))}–{_common.pct(max(shares))}", "", ""])
    for impl in FLAGS.lrn_compare:
      for kind, label in (("train", "train step"), ("inference", "inference")):
        default, other = by_key.get(f"{kind}/{precision}"), by_key.get(
            f"{kind}_lrn_{impl}/{precision}")
        if default and other:
          ratios = _paired(default, other, lambda d, o: d / o)
          results[f"{kind}_lrn_{impl}"][precision].update(
              fused_speedup=_common.median(ratios), fused_speedup_values=ratios)
          derived_rows.append([f'{label} rate, lrn "fused" / "{impl}" (paired)', precision,
                               _common.fmt(_common.median(ratios)), "ratio",
                               _common.spread(ratios), "", ""])
  if "train" in results and "inference" in results:
    for precision in precisions:
      t, i = by_key[f"train/{precision}"], by_key[f"inference/{precision}"]
      ratios = _paired(i, t, lambda inf, tr: inf / tr)
      results["inference"][precision]["ratio_to_train"] = _common.median(ratios)

  shapes_dir = None
  if shapes_source is not None:
    from alexnet_tf import shapes  # pylint: disable=g-import-not-at-top
    shapes_dir = os.path.abspath(os.path.expanduser(FLAGS.data_dir or shapes.default_dir()))
  load_end = _common.load_average()
  wall = time.perf_counter() - wall_start
  header = ["measurement", "precision", "median", "unit", "range (repeats)", "GFLOP/s",
            "of ceiling"]
  notes = [
      f"Machine: {_common.describe_machine(machine)}; device {_device()}.",
      f"batch {FLAGS.batch_size}, {FLAGS.steps} steps x {FLAGS.repeats} repeats (interleaved), "
      f"{FLAGS.warmup_steps} warm-up steps; GFLOP/s at {TRAIN_GFLOP_PER_IMAGE} GFLOP/image "
      f"(train) and {INFER_GFLOP_PER_IMAGE} (inference); 'of ceiling' = / matmul GFLOP/s at "
      f"the same precision. Load average start {load_start}, end {load_end}; "
      f"{wall:.0f} s in all.",
  ]
  _common.print_table("AlexNet throughput (benchmarks/throughput.py)", header,
                      rows + derived_rows, notes)

  payload = {
      "benchmark": "throughput",
      "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
      "machine": machine,
      "device": _device(),
      "settings": {
          "batch_size": FLAGS.batch_size, "precisions": precisions, "repeats": FLAGS.repeats,
          "steps": FLAGS.steps, "warmup_steps": FLAGS.warmup_steps,
          "matmul_size": FLAGS.matmul_size, "sections": sorted(sections),
          "pipeline_presteps": FLAGS.pipeline_presteps, "learning_rate": FLAGS.learning_rate,
          "image_size": IMAGE_SIZE, "classes": NUM_CLASSES,
          "train_gflop_per_image": TRAIN_GFLOP_PER_IMAGE,
          "inference_gflop_per_image": INFER_GFLOP_PER_IMAGE,
          "shapes_dir": shapes_dir,
          "shapes_train_images": getattr(shapes_source, "num_examples", None),
      },
      "ceiling": results.get("matmul", {}),
      "train": results.get("train", {}),
      "inference": results.get("inference", {}),
      "pipeline": results.get("pipeline", {}),
      "lrn": results.get("lrn", {}),
      "train_lrn_none": results.get("train_lrn_none", {}),
      "lrn_compare": {key: value for key, value in results.items() if "_lrn_" in key
                      and key != "train_lrn_none"},
      "retraced_during_timing": retraced,
      "load_average_start": load_start,
      "load_average_end": load_end,
      "wall_seconds": wall,
  }
  _common.write_json(FLAGS.json, payload)


if __name__ == "__main__":
  app.run(main)
