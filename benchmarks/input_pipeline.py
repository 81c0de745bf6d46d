r"""Training input pipeline throughput per CPU core, against the single-thread JPEG decode limit.

  python benchmarks/input_pipeline.py [--seconds=10] [--repeats=3] [--json=FILE]
      [--train_images_per_sec=N | --throughput_json=FILE]

Measures, in ONE run (SPEC §3: compare ratios taken in the same run), the images/sec of
train.py's training pipeline (`alexnet_tf.input_pipeline.build_train_dataset(...,
finish_in_step=True)`: validity check, fused decode + crop, resize, random flips and PCA lighting
shifts drawn, uint8 batch; all augmentation on; train.py's training step mirrors the batch's
flipped images and adds the lighting shifts, which `benchmarks/throughput.py` counts in the
step) on two kinds of data:

  (a) full-size JPEGs: --num_images synthetic photo-like images of about 500×375 (smooth
      colour fields, texture, blurred objects, grain; ~100 KB each at JPEG quality 90, 4:2:0),
      in the folder layout (ROOT/train/<label>/*.jpg), read as `--dataset=folder` reads them;
  (b) 256-pixel TFRecords: the same images converted by `alexnet_tf.tools.make_tfrecords.convert`
      (shorter side 256, quality 95), read as `--dataset=tfrecord` reads them;

each (1) with tf.data using every core (as in training) and (2) on one core (every thread of
the process pinned to one CPU while the pipeline is built and measured, as `taskset -c 0`
would), next to (3) the single-thread `tf.io.decode_jpeg` rate on the same encoded bytes,
the physical limit of one core (a tf.function loop, one image after another), and (4) the
same decode as a bare tf.data map (in-memory bytes → `decode_jpeg` → top-left crop → batch),
all cores and one core: what tf.data itself keeps of the limit, so "pipeline ÷ decode map"
is the share lost to the pipeline's own work (reading, checks, crop window, resize). Reported:
images/sec, images/sec per core, pipeline ÷ decode ratios and, given a training rate
(--train_images_per_sec, or the `train` section of a `benchmarks/throughput.py --json` file),
how many cores the pipeline needs to keep the training step fed.

The pipeline decodes only the crop window of a JPEG (`decode_and_crop_jpeg`), so per core it can
come close to, or on small crops exceed, a full decode; everything else it does costs extra.
Measurements are interleaved round-robin over --repeats (rotating order); each pipeline
measurement builds a fresh iterator, runs --warmup_seconds untimed, then times whole batches
for --seconds, and drops the iterator (so its threads stop) before the next one. Nothing is
asserted: the script reports.

On a VM the all-cores rates also depend on where the hypervisor puts the virtual CPUs: with
--core_probe (a compiled `benchmarks/core_to_core.c`) the core-to-core round trip is sampled
through the run and reported next to every all-cores repeat (RESULTS.md: the full-size
pipeline loses about a quarter of its 2-core rate while the two CPUs share no cache).
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # pylint: disable=g-import-not-at-top,wrong-import-position

_common.ensure_repo_on_path()
_common.quiet_tensorflow()

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app, flags  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS

flags.DEFINE_float("seconds", 10.0, "Timed seconds per measurement and repeat.")
flags.DEFINE_float("warmup_seconds", 2.0, "Untimed seconds before each pipeline measurement "
                   "(and once before the first decode measurement).")
flags.DEFINE_integer("repeats", 3, "Repeats of every measurement (the median is reported).")
flags.DEFINE_integer("batch_size", 128, "Batch size of the pipelines (train.py's global batch "
                     "with one replica).")
flags.DEFINE_integer("num_images", 200, "Synthetic full-size JPEGs to generate.")
flags.DEFINE_integer("num_shards", 4, "TFRecord shards for the 256-pixel copy.")
flags.DEFINE_bool("one_core", True, "Also measure each pipeline on one core (the process's "
                  "threads pinned to one CPU; Linux).")
flags.DEFINE_string("work_dir", None, "Where the JPEGs and TFRecords go; default a temporary "
                    "folder, deleted at the end. An existing work_dir with the same "
                    "--num_images is reused.")
flags.DEFINE_float("train_images_per_sec", None, "A training-step rate (images/sec) to compare "
                   "the pipeline with; overrides --throughput_json.")
flags.DEFINE_string("throughput_json", None, "A `benchmarks/throughput.py --json` file: its "
                    "synthetic-input training rates (float32, bfloat16) are compared with the "
                    "pipeline.")
flags.DEFINE_integer("seed", 0, "Seed of the generated images and the augmentation.")
flags.DEFINE_string("json", None, "Also write all results (every repeat) to this JSON file.")
flags.DEFINE_string("core_probe", None, "A compiled benchmarks/core_to_core.c: samples the "
                    "round trip between CPU 0 and CPU 1 every half second through the run and "
                    "reports its median during every all-cores repeat (where a VM's CPUs are).")

IMAGE_SIZE = 227
CLASSES = 4
# Sizes of the synthetic photos (width, height): around ImageNet's typical 500×375.
PHOTO_SIZES = ((500, 375), (375, 500), (500, 333), (500, 400), (400, 500), (480, 360),
               (500, 356), (500, 375))
_MARKER = ".benchmark_photos.json"


# ----------------------------------------------------------------------------
# Data.
# ----------------------------------------------------------------------------

def _photo(rng: np.random.Generator, width: int, height: int):
  """A photo-like RGB image: smooth colour field + texture + blurred objects + sensor noise."""
  from PIL import Image, ImageDraw, ImageFilter  # pylint: disable=g-import-not-at-top

  # Low-frequency colour field (sky, walls, lighting gradients).
  gh, gw = int(rng.integers(3, 7)), int(rng.integers(3, 7))
  field = rng.uniform(0, 255, (gh, gw, 3)).astype(np.uint8)
  image = Image.fromarray(field).resize((width, height), Image.BICUBIC)
  # Objects with edges (the high-frequency content JPEG pays for), slightly out of focus.
  draw = ImageDraw.Draw(image)
  for _ in range(int(rng.integers(4, 12))):
    x0, y0 = rng.uniform(-0.2, 1.0) * width, rng.uniform(-0.2, 1.0) * height
    x1, y1 = x0 + rng.uniform(0.05, 0.6) * width, y0 + rng.uniform(0.05, 0.6) * height
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    if rng.random() < 0.5:
      draw.ellipse([x0, y0, x1, y1], fill=colour)
    else:
      k = int(rng.integers(3, 7))
      cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
      angles = np.sort(rng.uniform(0, 2 * np.pi, k))
      radius = (x1 - x0 + y1 - y0) / 4
      draw.polygon([(cx + radius * np.cos(a), cy + radius * np.sin(a)) for a in angles],
                   fill=colour)
  image = image.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.5, 1.5))))
  pixels = np.asarray(image, np.float32)
  # Texture at two scales (foliage, fabric, fur): coarse noise, upsampled, partly coloured.
  for cell, low, high in ((6, 10.0, 25.0), (2, 15.0, 35.0)):
    coarse = rng.normal(0.0, 1.0, (height // cell + 1, width // cell + 1, 3)).astype(np.float32)
    coarse[..., 1:] = 0.6 * coarse[..., :1] + 0.4 * coarse[..., 1:]
    texture = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(coarse[..., c]),
                                                   mode="F").resize((width, height),
                                                                    Image.BILINEAR))
                        for c in range(3)], axis=-1)
    pixels += float(rng.uniform(low, high)) * texture
  # Fine detail and sensor noise, mostly in luminance (as in photos; JPEG keeps luminance at
  # full resolution). Tuned so a 500×375 file is ~100 KB at quality 90, about ImageNet's size.
  grain = rng.normal(0.0, float(rng.uniform(13, 19)), pixels.shape[:2] + (1,))
  pixels += grain.astype(np.float32)
  pixels += rng.normal(0.0, 3.0, pixels.shape).astype(np.float32)
  return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def make_photos(root: str, num_images: int, seed: int) -> dict[str, Any]:
  """Writes ROOT/train/class_<k>/photo_<i>.jpg (reused when already complete); returns stats."""
  marker = os.path.join(root, _MARKER)
  params = {"num_images": num_images, "seed": seed, "version": 1}
  try:
    with open(marker) as f:
      stats = json.load(f)
    if stats.get("params") == params:
      return stats
  except (OSError, ValueError):
    pass
  shutil.rmtree(os.path.join(root, "train"), ignore_errors=True)
  rng = np.random.default_rng(seed)
  sizes, nbytes = [], []
  for k in range(CLASSES):
    os.makedirs(os.path.join(root, "train", f"class_{k}"), exist_ok=True)
  for i in range(num_images):
    width, height = PHOTO_SIZES[int(rng.integers(len(PHOTO_SIZES)))]
    path = os.path.join(root, "train", f"class_{i % CLASSES}", f"photo_{i:05d}.jpg")
    _photo(rng, width, height).save(path, "JPEG", quality=90)
    sizes.append((height, width))
    nbytes.append(os.path.getsize(path))
  stats = {"params": params, "num_images": num_images,
           "mean_height": float(np.mean([s[0] for s in sizes])),
           "mean_width": float(np.mean([s[1] for s in sizes])),
           "mean_bytes": float(np.mean(nbytes)), "jpeg_quality": 90}
  with open(marker, "w") as f:
    json.dump(stats, f)
  return stats


def make_tfrecords(photos: str, dst: str, photo_params: dict[str, Any]) -> dict[str, Any]:
  """256-pixel TFRecords of the photos with the package's own tool (its library function)."""
  from alexnet_tf.tools import make_tfrecords as tool  # pylint: disable=g-import-not-at-top
  marker = os.path.join(dst, _MARKER)
  params = dict(photo_params, num_shards=FLAGS.num_shards)
  try:
    with open(marker) as f:
      if json.load(f) == params:
        with open(os.path.join(dst, "metadata.json")) as g:
          return json.load(g)
  except (OSError, ValueError):
    pass
  shutil.rmtree(dst, ignore_errors=True)
  metadata = tool.convert(photos, dst, num_shards=FLAGS.num_shards, size=256, quality=95,
                          log=_common.log)
  with open(marker, "w") as f:
    json.dump(params, f)
  return metadata


def _tfrecord_jpegs(dst: str) -> list[bytes]:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  files = sorted(tf.io.gfile.glob(os.path.join(dst, "train-*")))
  spec = {"image/encoded": tf.io.FixedLenFeature([], tf.string)}
  return [tf.io.parse_single_example(r, spec)["image/encoded"].numpy()
          for r in tf.data.TFRecordDataset(files)]


def _folder_jpegs(source) -> list[bytes]:
  out = []
  for path in source.files:
    with open(path, "rb") as f:
      out.append(f.read())
  return out


# ----------------------------------------------------------------------------
# Measurements.
# ----------------------------------------------------------------------------

def _pin_threads(cpus: set[int]) -> None:
  """Puts every thread of this process on `cpus` (threads started later inherit it)."""
  for task in os.listdir("/proc/self/task"):
    try:
      os.sched_setaffinity(int(task), cpus)
    except OSError:  # The thread has just exited.
      pass


def on_one_core(build: Callable[[], Any]) -> float:
  """`measure_pipeline(build())` with the whole process on one CPU (the "1 core" rows).

  Pinning every thread, not limiting tf.data's thread pool, is what bounds the pipeline to one
  core: the training pipeline decodes 256-pixel JPEGs on its interleave's own threads, outside
  that pool (`input_pipeline.map_inline`). The pipeline is built while pinned, so it sizes
  itself for one core, as on a one-core machine.
  """
  cpus = os.sched_getaffinity(0)
  _pin_threads({min(cpus)})
  try:
    return measure_pipeline(build())
  finally:
    _pin_threads(cpus)


def _pipeline(source):
  from alexnet_tf import input_pipeline  # pylint: disable=g-import-not-at-top
  # train.py's defaults and its finish_in_step=True: uint8 batches + flips + lighting shifts.
  return input_pipeline.build_train_dataset(source, FLAGS.batch_size, IMAGE_SIZE, None,
                                            seed=FLAGS.seed, finish_in_step=True)


def _decode_map(blobs, cores: int):
  """The bare tf.data reference: in-memory JPEG bytes → decode_jpeg → crop → batch.

  Threading as the training pipeline's: one call per core at least.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  def _decode(blob):
    return tf.io.decode_jpeg(blob, channels=3)[:IMAGE_SIZE, :IMAGE_SIZE], tf.constant(0)

  ds = tf.data.Dataset.from_tensor_slices(blobs).repeat()
  ds = ds.map(_decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
  ds = ds.batch(FLAGS.batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  options = tf.data.Options()
  options.autotune.min_parallelism = cores  # As build_train_dataset sets it.
  return ds.with_options(options)


def measure_pipeline(dataset) -> float:
  """Images/sec over whole batches: fresh iterator, warm-up, timed, iterator dropped."""
  iterator = iter(dataset)
  try:
    end = time.perf_counter() + FLAGS.warmup_seconds
    next(iterator)
    while time.perf_counter() < end:
      next(iterator)
    start = time.perf_counter()
    images = 0
    while True:
      _, labels = next(iterator)
      images += int(labels.shape[0])
      elapsed = time.perf_counter() - start
      if elapsed >= FLAGS.seconds:
        return images / elapsed
  finally:
    del iterator
    gc.collect()


def _decode_fn():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  @tf.function
  def decode_all(blobs):
    """Decodes every JPEG of `blobs` one after another (one thread); returns a checksum."""
    n = tf.shape(blobs)[0]

    def body(i, acc):
      image = tf.io.decode_jpeg(blobs[i], channels=3)
      return i + 1, acc + tf.cast(image[0, 0, 0], tf.int64)

    _, acc = tf.while_loop(lambda i, acc: i < n, body, (tf.constant(0), tf.constant(0, tf.int64)),
                           parallel_iterations=1)
    return acc

  return decode_all


def measure_decode(decode_all, blobs, count: int) -> float:
  """Single-thread tf.io.decode_jpeg images/sec: whole passes over the files for --seconds."""
  start = time.perf_counter()
  images = 0
  while True:
    decode_all(blobs).numpy()
    images += count
    elapsed = time.perf_counter() - start
    if elapsed >= FLAGS.seconds:
      return images / elapsed


# ----------------------------------------------------------------------------
# Where the CPUs are (--core_probe).
# ----------------------------------------------------------------------------

def _start_core_probe(path: str, output) -> subprocess.Popen:
  """Runs `core_to_core` (2 CPUs), writing "unix_time round_trip_ns" lines to `output`.

  Under SCHED_FIFO (`chrt`, as root) its two threads preempt the benchmark at once; otherwise
  a busy machine delays them and inflates the round trip.
  """
  command = [path, "1000000", "20000", "0.5"]
  if os.geteuid() == 0 and shutil.which("chrt"):
    command = ["chrt", "-f", "50"] + command
  else:
    _common.log("Note: --core_probe runs without chrt (not root): round trips measured while "
                "the benchmark keeps the CPUs busy are inflated.")
  return subprocess.Popen(command, stdout=output, stderr=subprocess.DEVNULL)


def _round_trips(samples: list[tuple[float, float]],
                 windows: list[tuple[float, float]]) -> list[float | None]:
  """The median round trip (ns) sampled inside each (start, end) window (unix time)."""
  out = []
  for start, end in windows:
    inside = [ns for t, ns in samples if start <= t <= end]
    out.append(_common.median(inside) if inside else None)
  return out


def _nanoseconds(value: float | None) -> str:
  return "? ns (no sample)" if value is None else f"{value:.0f} ns"


def _training_rates() -> dict[str, float]:
  if FLAGS.train_images_per_sec:
    return {"train step (--train_images_per_sec)": float(FLAGS.train_images_per_sec)}
  if not FLAGS.throughput_json:
    return {}
  with open(FLAGS.throughput_json) as f:
    payload = json.load(f)
  return {f"train step {p} (throughput.py)": float(entry["images_per_sec"])
          for p, entry in payload.get("train", {}).items() if "images_per_sec" in entry}


def main(argv) -> None:
  del argv
  for name in ("seconds", "repeats", "batch_size", "num_images", "num_shards"):
    if getattr(FLAGS, name) <= 0:
      raise app.UsageError(f"--{name} must be positive")
  if FLAGS.num_images < CLASSES:
    raise app.UsageError(f"--num_images must be at least {CLASSES}")
  if FLAGS.core_probe and not os.access(FLAGS.core_probe, os.X_OK):
    raise app.UsageError(f"--core_probe: {FLAGS.core_probe} is not an executable (build it: "
                         f"gcc -O2 -pthread -o core_to_core benchmarks/core_to_core.c)")
  if FLAGS.core_probe and os.sched_getaffinity(0) != {0, 1}:
    raise app.UsageError("--core_probe measures between CPU 0 and CPU 1: the benchmark must run "
                         f"on exactly those CPUs, not {sorted(os.sched_getaffinity(0))}")
  if FLAGS.one_core and not os.path.isdir("/proc/self/task"):
    raise app.UsageError("--one_core pins threads through Linux's /proc/self/task; on this "
                         "system pass --noone_core")
  train_rates = _training_rates()  # Fail early on a bad --throughput_json.

  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from alexnet_tf import datasets  # pylint: disable=g-import-not-at-top

  wall_start = time.perf_counter()
  load_start = _common.load_average()
  machine = _common.machine_info()
  cores = machine["usable_cores"]
  _common.log(f"Machine: {_common.describe_machine(machine)}")
  if load_start and load_start[0] > 0.5 * cores:
    _common.log(f"Note: load average {load_start} at start; other processes may be running.")

  temporary = FLAGS.work_dir is None
  work = tempfile.mkdtemp(prefix="alexnet_tf_bench_") if temporary else FLAGS.work_dir
  probe_output = tempfile.TemporaryFile("w+") if FLAGS.core_probe else None
  probe = None
  try:
    photos_dir = os.path.join(work, "photos")
    records_dir = os.path.join(work, "tfrecords")
    _common.log(f"Generating {FLAGS.num_images} full-size JPEGs in {photos_dir} ...")
    photo_stats = make_photos(photos_dir, FLAGS.num_images, FLAGS.seed)
    _common.log(f"Converting them to 256-pixel TFRecords in {records_dir} ...")
    make_tfrecords(photos_dir, records_dir, photo_stats["params"])
    sources = {
        "full_size_jpeg": datasets.load_source("folder", "train", photos_dir),
        "tfrecord_256": datasets.load_source("tfrecord", "train", records_dir),
    }
    blobs = {"full_size_jpeg": _folder_jpegs(sources["full_size_jpeg"]),
             "tfrecord_256": _tfrecord_jpegs(records_dir)}
    record_heights, record_widths = [], []
    for blob in blobs["tfrecord_256"]:
      h, w, _ = tf.image.extract_jpeg_shape(blob).numpy()
      record_heights.append(int(h))
      record_widths.append(int(w))
    data_info = {
        "full_size_jpeg": dict(photo_stats, dir=photos_dir),
        "tfrecord_256": {"num_images": len(blobs["tfrecord_256"]), "dir": records_dir,
                         "num_shards": FLAGS.num_shards, "jpeg_quality": 95,
                         "mean_height": float(np.mean(record_heights)),
                         "mean_width": float(np.mean(record_widths)),
                         "mean_bytes": float(np.mean([len(b) for b in blobs["tfrecord_256"]]))},
    }

    decode_all = _decode_fn()
    measurements: list[tuple[str, str, Callable[[], float]]] = []
    for name, source in sources.items():
      tensor = tf.constant(blobs[name], tf.string)
      count = len(blobs[name])
      decode_all(tensor).numpy()  # Trace + warm caches (untimed).
      measurements.append((name, "decode_jpeg_one_thread",
                           lambda t=tensor, c=count: measure_decode(decode_all, t, c)))
      all_cores = _pipeline(source)
      measurements.append((name, "pipeline_all_cores",
                           lambda ds=all_cores: measure_pipeline(ds)))
      decode_map = _decode_map(tensor, cores=cores)
      measurements.append((name, "decode_map_all_cores",
                           lambda ds=decode_map: measure_pipeline(ds)))
      if FLAGS.one_core:
        measurements.append((name, "pipeline_one_core",
                             lambda s=source: on_one_core(lambda: _pipeline(s))))
        measurements.append((name, "decode_map_one_core",
                             lambda t=tensor: on_one_core(lambda: _decode_map(t, cores=1))))

    values: dict[tuple[str, str], list[float]] = {(d, m): [] for d, m, _ in measurements}
    windows: dict[tuple[str, str], list[tuple[float, float]]] = {k: [] for k in values}
    if probe_output:
      probe = _start_core_probe(FLAGS.core_probe, probe_output)
    for r in range(FLAGS.repeats):
      shift = r % len(measurements)
      for data, kind, fn in measurements[shift:] + measurements[:shift]:
        start = time.time()
        values[(data, kind)].append(fn())
        windows[(data, kind)].append((start, time.time()))
      _common.log(f"Repeat {r + 1}/{FLAGS.repeats} done "
                  f"({time.perf_counter() - wall_start:.0f} s so far).")
  finally:
    if probe:
      if probe.poll() is not None:
        _common.log(f"Note: --core_probe exited early (status {probe.returncode}).")
      probe.terminate()
      probe.wait()
    if temporary:
      shutil.rmtree(work, ignore_errors=True)
  probe_samples = []
  if probe_output:
    probe_output.seek(0)
    probe_samples = [tuple(map(float, line.split())) for line in probe_output
                     if len(line.split()) == 2]
    probe_output.close()

  labels = {
      "decode_jpeg_one_thread": "tf.io.decode_jpeg, 1 thread (limit of one core)",
      "pipeline_all_cores": f"training pipeline, all {cores} cores",
      "pipeline_one_core": "training pipeline, 1 core",
      "decode_map_all_cores": f"bare decode_jpeg map in tf.data, all {cores} cores",
      "decode_map_one_core": "bare decode_jpeg map in tf.data, 1 core",
  }
  titles = {"full_size_jpeg": "full-size JPEGs", "tfrecord_256": "256-px TFRecords"}
  results: dict[str, Any] = {}
  rows = []
  probe_notes: list[str] = []
  for data in sources:
    info = data_info[data]
    title = (f"{titles[data]} (~{info['mean_width']:.0f}×{info['mean_height']:.0f}, "
             f"{info['mean_bytes'] / 1024:.0f} KB)")
    decode = values[(data, "decode_jpeg_one_thread")]
    entry: dict[str, Any] = {}
    for kind in ("decode_jpeg_one_thread", "pipeline_all_cores", "pipeline_one_core",
                 "decode_map_all_cores", "decode_map_one_core"):
      if (data, kind) not in values:
        continue
      v = values[(data, kind)]
      per_core = [x / cores for x in v] if kind.endswith("_all_cores") else v
      over_decode = [p / d for p, d in zip(per_core, decode)]  # Paired per repeat.
      entry[kind] = {"images_per_sec": _common.median(v), "values": v,
                     "per_core": _common.median(per_core),
                     "per_core_over_decode": _common.median(over_decode)}
      if FLAGS.core_probe and kind.endswith("_all_cores"):
        trips = _round_trips(probe_samples, windows[(data, kind)])
        entry[kind]["core_round_trip_ns"] = trips
        probe_notes.append(f"{titles[data]}, {labels[kind]}, per repeat: " + ", ".join(
            f"{_common.fmt(x)} img/s at {_nanoseconds(ns)}" for x, ns in zip(v, trips)))
      rows.append([title, labels[kind], _common.fmt(_common.median(v)), "img/s",
                   _common.spread(v), _common.fmt(_common.median(per_core)),
                   _common.fmt(_common.median(over_decode))])
      title = ""
    for threads in ("all_cores", "one_core"):
      if (data, f"pipeline_{threads}") not in values:
        continue
      over_map = [p / d for p, d in zip(values[(data, f"pipeline_{threads}")],
                                        values[(data, f"decode_map_{threads}")])]
      entry[f"pipeline_over_decode_map_{threads}"] = {"median": _common.median(over_map),
                                                      "values": over_map}
      rows.append(["", f"training pipeline ÷ bare decode map, "
                   f"{'all cores' if threads == 'all_cores' else '1 core'}",
                   _common.fmt(_common.median(over_map)), "ratio", _common.spread(over_map),
                   "", ""])
    pipe = entry["pipeline_all_cores"]
    entry["vs_training"] = {}
    for label, rate in train_rates.items():
      cores_needed = rate / pipe["per_core"]
      entry["vs_training"][label] = {"train_images_per_sec": rate,
                                     "pipeline_over_train": pipe["images_per_sec"] / rate,
                                     "cores_to_feed_training": cores_needed}
      rows.append(["", f"cores to feed {label} at {_common.fmt(rate)} img/s",
                   _common.fmt(cores_needed), "cores", "", "",
                   f"pipeline/train {_common.fmt(pipe['images_per_sec'] / rate)}"])
    results[data] = entry

  load_end = _common.load_average()
  wall = time.perf_counter() - wall_start
  header = ["data", "measurement", "median", "unit", "range (repeats)", "per core",
            "per core ÷ decode"]
  notes = [
      f"Machine: {_common.describe_machine(machine)}.",
      f"batch {FLAGS.batch_size}, {IMAGE_SIZE}×{IMAGE_SIZE} crops, train.py's augmentation "
      f"(crop, flip, PCA lighting); {FLAGS.seconds:g} s per measurement x {FLAGS.repeats} "
      f"repeats (interleaved), {FLAGS.warmup_seconds:g} s warm-up each; 'per core' of the "
      f"all-cores pipeline = rate / {cores}; ratios paired per repeat. Load average start "
      f"{load_start}, end {load_end}; {wall:.0f} s in all.",
  ]
  if not train_rates:
    notes.append("No training rate given (--train_images_per_sec or --throughput_json): "
                 "cores-to-feed rows omitted.")
  if FLAGS.core_probe:
    notes.append("Core-to-core round trip (--core_probe, median during each repeat, its "
                 "warm-up included; ~50-60 ns where the CPUs share a cache, ~320-340 ns where "
                 "they do not on our CI VM):")
    notes.extend(probe_notes)
  _common.print_table("Training input pipeline (benchmarks/input_pipeline.py)", header, rows,
                      notes)
  payload = {
      "benchmark": "input_pipeline",
      "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
      "machine": machine,
      "settings": {"seconds": FLAGS.seconds, "warmup_seconds": FLAGS.warmup_seconds,
                   "repeats": FLAGS.repeats, "batch_size": FLAGS.batch_size,
                   "image_size": IMAGE_SIZE, "num_images": FLAGS.num_images,
                   "num_shards": FLAGS.num_shards, "seed": FLAGS.seed,
                   "train_rates": train_rates, "core_probe": bool(FLAGS.core_probe),
                   "one_core": FLAGS.one_core},
      "data": data_info,
      "results": results,
      "load_average_start": load_start,
      "load_average_end": load_end,
      "wall_seconds": wall,
  }
  if temporary:
    for info in data_info.values():
      info["dir"] = None  # Deleted.
  _common.write_json(FLAGS.json, payload)


if __name__ == "__main__":
  app.run(main)
