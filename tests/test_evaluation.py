"""Evaluation (issue 5): centre crop and 10-crop against an independent numpy computation, exact
image counts under a 2-replica MirroredStrategy and two multi-worker processes, ensembles, the
top-k note, and evaluate.py's one-sentence errors.

The models are AlexNets (3 classes) whose weights the test fixes: He-normal kernels drawn from a
seeded numpy RNG, and fc8 rescaled/centred on the test images so that the logits vary from image
to image and from crop to crop by O(1) (a freshly initialised AlexNet outputs nearly the same
probabilities for every input, which would make these comparisons vacuous).

The images are PNGs whose shorter side is 256 (plus a few of other sizes): for those the
fixed-resolution step is the central 256x256 slice of the decoded image, so the reference below
needs no resampling and is computed with PIL and numpy slicing only. For the other sizes the
reference takes the 256x256 image from `preprocessing.decode_crop_and_resize` (the resampling is
tested in test_preprocessing) and still cuts and mirrors the crops itself.

Runs that need logical CPU devices (--cpu_replicas) or TF_CONFIG, or test the command line, start
fresh Python processes (`python evaluate.py ...`).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import keras
from PIL import Image

from alexnet_tf import datasets, evaluation, input_pipeline, model_dir as model_dir_lib
from alexnet_tf import preprocessing
from alexnet_tf.errors import UserError
from alexnet_tf.model import AlexNet

from conftest import encode_image, smooth_image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVALUATE_PY = os.path.join(ROOT, "evaluate.py")

CLASSES = ("apple", "banana", "cherry")
SIZE = 227
FIXED = 256
# (height, width): shorter side 256 (exact reference) and a few others (odd, up- and downscaled).
SIZES = ((256, 256), (256, 301), (333, 256), (256, 257), (200, 331), (389, 517))
NUM_VALIDATION = 13  # 5 + 4 + 4: batches of 3 on 2 replicas end with 1 image and none.
NUM_TRAIN = 37       # 13 + 12 + 12: not divisible by batch 8 x 2 replicas.


# ----------------------------------------------------------------------------------------------
# Data, models and the independent reference.
# ----------------------------------------------------------------------------------------------

def _per_class(total: int) -> list[int]:
  base, extra = divmod(total, len(CLASSES))
  return [base + (1 if c < extra else 0) for c in range(len(CLASSES))]


def write_dataset(root: str, seed: int = 0) -> dict[str, list[tuple[str, int]]]:
  """ROOT/{train,validation}/<class>/NNN.png; returns {split: [(path, label)]} in the order the
  folder source must read them (class by class, file names sorted)."""
  rng = np.random.default_rng(seed)
  listing: dict[str, list[tuple[str, int]]] = {}
  for split, total in (("train", NUM_TRAIN), ("validation", NUM_VALIDATION)):
    listing[split] = []
    k = 0
    for label, (name, count) in enumerate(zip(CLASSES, _per_class(total))):
      d = os.path.join(root, split, name)
      os.makedirs(d, exist_ok=True)
      for i in range(count):
        h, w = SIZES[k % len(SIZES)]
        k += 1
        # Smooth colour fields plus a little noise: crops of one image differ visibly.
        image = smooth_image(rng, h, w).astype(np.int16)
        image = np.clip(image + rng.integers(-20, 21, size=image.shape), 0, 255)
        path = os.path.join(d, f"{i:03d}.png")
        with open(path, "wb") as f:
          f.write(encode_image(image.astype(np.uint8), "PNG"))
        listing[split].append((path, label))
  return listing


def fixed_resolution_256(path: str) -> np.ndarray:
  """float32 [256, 256, 3]: shorter side 256, central 256x256 patch."""
  image = np.asarray(Image.open(path).convert("RGB"))
  h, w = image.shape[:2]
  if min(h, w) == FIXED:  # No resampling: the central slice, by numpy.
    top, left = (h - FIXED) // 2, (w - FIXED) // 2
    return image[top:top + FIXED, left:left + FIXED].astype(np.float32)
  with open(path, "rb") as f:
    return preprocessing.decode_crop_and_resize(tf.constant(f.read()), FIXED).numpy()


def centre_crop_np(image: np.ndarray) -> np.ndarray:
  c = (FIXED - SIZE) // 2
  return image[c:c + SIZE, c:c + SIZE]


def ten_crops_np(image: np.ndarray) -> np.ndarray:
  """The paper's ten crops by numpy slicing: 4 corners + centre, and of the mirror image."""
  crops = []
  for im in (image, image[:, ::-1]):
    crops += [im[:SIZE, :SIZE], im[:SIZE, -SIZE:], im[-SIZE:, :SIZE], im[-SIZE:, -SIZE:],
              centre_crop_np(im)]
  return np.stack(crops)


def softmax_np(model: keras.Model, images: np.ndarray) -> np.ndarray:
  out = [model(images[i:i + 10], training=False).numpy() for i in range(0, len(images), 10)]
  return np.concatenate(out).astype(np.float64)


def make_model(seed: int, calibration_images: np.ndarray) -> keras.Model:
  """AlexNet(classes=3) with seeded He-normal weights and fc8 scaled so logits vary by ~2."""
  model = AlexNet(classes=len(CLASSES), seed=seed)
  rng = np.random.default_rng(seed)
  for layer in model.layers:
    kernel = getattr(layer, "kernel", None)
    if kernel is None:
      continue
    fan_in = int(np.prod(kernel.shape[:-1]))
    kernel.assign(rng.normal(0.0, math.sqrt(2.0 / fan_in), kernel.shape).astype(np.float32))
    layer.bias.assign(np.zeros(layer.bias.shape, np.float32))
  fc8 = model.get_layer("fc8")
  features = keras.Model(model.inputs, fc8.input)(calibration_images, training=False).numpy()
  logits = features @ fc8.kernel.numpy()
  mean, std = logits.mean(axis=0), logits.std(axis=0).mean()
  fc8.kernel.assign(fc8.kernel.numpy() * (2.0 / std))
  fc8.bias.assign((-mean * (2.0 / std)).astype(np.float32))
  return model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  """The dataset, two saved models (a.keras, b.keras) and the reference probabilities."""
  work = tmp_path_factory.mktemp("evaluation")
  data = str(work / "data")
  listing = write_dataset(data)
  fixed = {split: [fixed_resolution_256(p) for p, _ in items] for split, items in listing.items()}
  centres = {split: np.stack([centre_crop_np(im) for im in images])
             for split, images in fixed.items()}
  models = {name: make_model(seed, centres["validation"])
            for name, seed in (("a", 1), ("b", 2))}
  paths = {}
  for name, model in models.items():
    paths[name] = str(work / f"{name}.keras")
    model.save(paths[name])
  ref = {}
  for name, model in models.items():
    for split in ("train", "validation"):
      ref[name, split, "centre"] = softmax_np(model, centres[split])
  ten = np.concatenate([ten_crops_np(im) for im in fixed["validation"]])
  ref["a", "validation", "ten"] = softmax_np(models["a"], ten).reshape(
      NUM_VALIDATION, 10, len(CLASSES)).mean(axis=1)
  labels = {split: np.array([y for _, y in items]) for split, items in listing.items()}
  return dict(work=work, data=data, listing=listing, fixed=fixed, models=models, paths=paths,
              ref=ref, labels=labels)


def metrics(probs: np.ndarray, labels: np.ndarray) -> dict:
  """The independent top-1 / top-2 / loss of (reference) probabilities."""
  order = np.argsort(-probs, axis=1)
  return dict(top1=float(np.mean(order[:, 0] == labels)),
              top2=float(np.mean((order[:, :2] == labels[:, None]).any(axis=1))),
              loss=float(np.mean(-np.log(probs[np.arange(len(labels)), labels]))),
              predictions=order[:, 0])


def run_evaluate(*args, env=None, check=True, timeout=300):
  env = dict(os.environ, **(env or {}))
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  proc = subprocess.run([sys.executable, EVALUATE_PY, *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(f"evaluate.py {args} failed ({proc.returncode}):\n{proc.stdout}\n"
                         f"{proc.stderr}")
  return proc


def run_json(setup, name, *args):
  out = str(setup["work"] / f"{name}.json")
  proc = run_evaluate("--dataset=folder", f"--data_dir={setup['data']}", f"--output_json={out}",
                      *args)
  with open(out) as f:
    return json.load(f), proc


def in_process_probabilities(model, data, split, ten_crop, batch_size=8):
  source = datasets.load_source("folder", split, data)
  ds = input_pipeline.build_eval_dataset(source, batch_size, SIZE, ten_crop=ten_crop)
  return evaluation.evaluate_model(model, ds, collect_probabilities=True,
                                   collect_predictions=True)


# ----------------------------------------------------------------------------------------------
# The reference itself.
# ----------------------------------------------------------------------------------------------

def test_reference_is_exact_and_discriminating(setup):
  """The pipeline's 256x256 image is the numpy slice for shorter-side-256 images, and the model
  is sensitive enough that centre vs 10-crop and crop geometry mistakes would show."""
  for (path, _), image in zip(setup["listing"]["validation"], setup["fixed"]["validation"]):
    with open(path, "rb") as f:
      pipeline = preprocessing.preprocess_for_eval(tf.constant(f.read()), SIZE, num_crops=10)
    np.testing.assert_allclose(pipeline.numpy(), ten_crops_np(image), atol=1e-3)
  ref = setup["ref"]
  assert np.abs(ref["a", "validation", "ten"] - ref["a", "validation", "centre"]).max() > 1e-2
  centre = ref["a", "train", "centre"]
  assert len(set(centre.argmax(axis=1))) == len(CLASSES)  # Not one class for every image.
  # No near-ties, so top-1 from float32 probabilities is unambiguous.
  for probs in (ref["a", "validation", "ten"], ref["a", "validation", "centre"], centre):
    top2 = np.sort(probs, axis=1)[:, -2:]
    assert (top2[:, 1] - top2[:, 0]).min() > 1e-4


# ----------------------------------------------------------------------------------------------
# Centre crop and 10-crop equal the independent computation.
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ten_crop", [False, True], ids=["centre", "ten_crop"])
def test_probabilities_equal_reference_in_process(setup, ten_crop):
  result = in_process_probabilities(setup["models"]["a"], setup["data"], "validation", ten_crop)
  expected = setup["ref"]["a", "validation", "ten" if ten_crop else "centre"]
  assert result["num_images"] == NUM_VALIDATION
  np.testing.assert_array_equal(result["labels"], setup["labels"]["validation"])
  np.testing.assert_allclose(result["probabilities"], expected, atol=1e-5)
  m = metrics(expected, setup["labels"]["validation"])
  assert result["top1_accuracy"] == pytest.approx(m["top1"], abs=1e-12)
  assert result["top5_accuracy"] == pytest.approx(m["top2"], abs=1e-12)
  assert result["loss"] == pytest.approx(m["loss"], rel=1e-5, abs=1e-6)
  np.testing.assert_array_equal(result["predictions"], m["predictions"])


def test_evaluate_py_ten_crop_equals_reference_and_reports_top2(setup):
  per_class_csv = str(setup["work"] / "per_class.csv")
  confusion_csv = str(setup["work"] / "confusion.csv")
  result, proc = run_json(setup, "ten", f"--model={setup['paths']['a']}", "--ten_crop",
                          "--batch_size=8", f"--per_class_csv={per_class_csv}",
                          f"--confusion_csv={confusion_csv}")
  m = metrics(setup["ref"]["a", "validation", "ten"], setup["labels"]["validation"])
  assert result["num_images"] == NUM_VALIDATION == result["num_examples"]
  assert result["top1_accuracy"] == pytest.approx(m["top1"], abs=1e-12)
  assert result["top1_error"] == pytest.approx(1 - m["top1"], abs=1e-12)
  assert result["loss"] == pytest.approx(m["loss"], rel=1e-5, abs=1e-6)
  # Top-5 on 3 classes is top-2 (top-3 would always be 1.0, as it was reported), and says so.
  assert result["top_k"] == 2
  assert result["top5_accuracy"] == pytest.approx(m["top2"])
  assert result["top5_note"] == ("top-5 is reported as top-2: the model has only 3 classes "
                                 "(top-5 would always be 1.0)")
  assert "top-2 *" in proc.stdout and result["top5_note"] in proc.stdout
  assert result["options"]["ten_crop"] is True and result["options"]["crops"] == 10
  assert result["class_names"] == list(CLASSES)
  assert result["corrupt_images_skipped"] == 0
  confusion = np.zeros((3, 3), int)
  np.add.at(confusion, (setup["labels"]["validation"], m["predictions"]), 1)
  assert result["confusion"] == confusion.tolist()
  per_class = [(r["name"], r["images"], r["top1_correct"]) for r in result["per_class"]]
  assert per_class == [(n, int(confusion[c].sum()), int(confusion[c, c]))
                       for c, n in enumerate(CLASSES)]
  with open(per_class_csv) as f:
    rows = list(csv.reader(f))
  assert rows[0] == ["class", "name", "images", "top1_correct", "top1_accuracy", "top2_correct",
                     "top2_accuracy"]
  assert [(r[1], int(r[2]), int(r[3])) for r in rows[1:]] == per_class
  with open(confusion_csv) as f:
    rows = list(csv.reader(f))
  assert rows[0][1:] == list(CLASSES)
  assert [[int(v) for v in r[1:]] for r in rows[1:]] == confusion.tolist()
  for key in ("num_images", "top1_accuracy", "top5_accuracy", "top1_error", "top5_error",
              "top_k", "loss", "images_per_sec", "seconds", "num_examples", "options"):
    assert key in result, key


def test_mirrored_two_replicas_counts_every_image_once(setup):
  """37 images, global batch 8 over 2 CPU replicas: the last steps are partial."""
  result, _ = run_json(setup, "mirrored", f"--model={setup['paths']['a']}", "--split=train",
                       "--strategy=mirrored", "--cpu_replicas=2", "--batch_size=8")
  m = metrics(setup["ref"]["a", "train", "centre"], setup["labels"]["train"])
  assert result["options"]["num_replicas"] == 2
  assert result["num_images"] == NUM_TRAIN
  assert result["top1_accuracy"] == pytest.approx(m["top1"], abs=1e-12)
  assert result["loss"] == pytest.approx(m["loss"], rel=1e-5, abs=1e-6)
  assert sum(r["images"] for r in result["per_class"]) == NUM_TRAIN
  assert [r["images"] for r in result["per_class"]] == _per_class(NUM_TRAIN)


def test_mirrored_ten_crop_with_an_empty_replica_batch(setup):
  """13 images, 3 per replica on 2 replicas (one input pipeline; its batches of 3, 3, 3, 3, 1
  go to the replicas in turn): in the last step one replica gets 1 image and the other none.
  10-crop must still count 13 and match the reference (TF's oneDNN CPU convolution mishandles
  an empty batch; `average_probabilities` must not run the model on it)."""
  result, _ = run_json(setup, "mirrored_ten", f"--model={setup['paths']['a']}", "--ten_crop",
                       "--strategy=mirrored", "--cpu_replicas=2", "--batch_size=6")
  m = metrics(setup["ref"]["a", "validation", "ten"], setup["labels"]["validation"])
  assert result["options"]["num_replicas"] == 2
  assert result["num_images"] == NUM_VALIDATION
  assert result["top1_accuracy"] == pytest.approx(m["top1"], abs=1e-12)
  assert result["loss"] == pytest.approx(m["loss"], rel=1e-5, abs=1e-6)


def test_model_dir_checkpoint_and_recorded_dataset(setup):
  """A model dir (config.json + checkpoint, as train.py writes) evaluated without --dataset:
  the dataset recorded in config.json is used."""
  model_dir = str(setup["work"] / "trained")
  model_dir_lib.write_config(model_dir, dict(
      model=model_dir_lib.default_model_config(classes=3), class_names=list(CLASSES),
      dataset=dict(name="folder", data_dir=setup["data"])))
  tf.train.CheckpointManager(tf.train.Checkpoint(model=setup["models"]["a"]),
                             model_dir_lib.checkpoint_dir(model_dir), max_to_keep=1,
                             checkpoint_name="ckpt").save()
  result = evaluation.evaluate(evaluation.EvalConfig(model_dir=model_dir, batch_size=8),
                               log=lambda _: None)
  m = metrics(setup["ref"]["a", "validation", "centre"], setup["labels"]["validation"])
  assert result["options"]["dataset"] == "folder"
  assert result["options"]["data_dir"] == setup["data"]
  assert result["num_images"] == NUM_VALIDATION
  assert result["top1_accuracy"] == pytest.approx(m["top1"], abs=1e-12)
  assert result["loss"] == pytest.approx(m["loss"], rel=1e-5, abs=1e-6)
  assert result["options"]["models"] == [f"{model_dir} (ckpt-1)"]


def test_multi_worker_counts_and_per_class_cover_all_workers(setup, worker_envs):
  """Two evaluate.py workers (TF_CONFIG on localhost), 37 images, global batch 12: shards of 19
  and 18 images, so the workers' last steps differ (one replica empty). The chief's result,
  per-class counts and confusion matrix included, covers all 37 images; the other worker writes
  nothing."""
  outputs = [str(setup["work"] / f"worker{i}.json") for i in range(2)]
  procs = []
  for index, env in enumerate(worker_envs(2, dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))):
    procs.append(subprocess.Popen(
        [sys.executable, EVALUATE_PY, f"--model={setup['paths']['a']}", "--dataset=folder",
         f"--data_dir={setup['data']}", "--split=train", "--strategy=multi_worker",
         "--batch_size=12", f"--output_json={outputs[index]}"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  logs = []
  try:
    for p in procs:
      logs.append(p.communicate(timeout=300)[0])
  finally:
    for p in procs:
      p.kill()
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log
  assert not os.path.exists(outputs[1])
  with open(outputs[0]) as f:
    result = json.load(f)
  labels = setup["labels"]["train"]
  m = metrics(setup["ref"]["a", "train", "centre"], labels)
  assert result["options"]["num_replicas"] == 2
  assert result["num_images"] == NUM_TRAIN
  assert result["top1_accuracy"] == pytest.approx(m["top1"], abs=1e-12)
  assert result["loss"] == pytest.approx(m["loss"], rel=1e-5, abs=1e-6)
  assert [r["images"] for r in result["per_class"]] == _per_class(NUM_TRAIN)
  confusion = np.zeros((3, 3), int)
  np.add.at(confusion, (labels, m["predictions"]), 1)
  assert result["confusion"] == confusion.tolist()


# ----------------------------------------------------------------------------------------------
# Ensembles.
# ----------------------------------------------------------------------------------------------

def test_ensemble_is_the_averaged_softmax(setup):
  ref = setup["ref"]
  averaged = (ref["a", "validation", "centre"] + ref["b", "validation", "centre"]) / 2
  labels = setup["labels"]["validation"]
  # In process: per-image probabilities.
  source = datasets.load_source("folder", "validation", setup["data"])
  ds = input_pipeline.build_eval_dataset(source, 8, SIZE)
  result = evaluation.evaluate_model([setup["models"]["a"], setup["models"]["b"]], ds,
                                     collect_probabilities=True)
  np.testing.assert_allclose(result["probabilities"], averaged, atol=1e-5)
  # The command line, from the saved files.
  m = metrics(averaged, labels)
  for single in ("a", "b"):  # The ensemble is not just one of its members.
    assert abs(metrics(ref[single, "validation", "centre"], labels)["loss"] - m["loss"]) > 1e-3
  out, proc = run_json(setup, "ensemble",
                       f"--ensemble={setup['paths']['a']},{setup['paths']['b']}",
                       "--batch_size=8")
  assert out["num_images"] == NUM_VALIDATION
  assert out["options"]["ensemble"] is True and len(out["options"]["models"]) == 2
  assert out["top1_accuracy"] == pytest.approx(m["top1"], abs=1e-12)
  assert out["loss"] == pytest.approx(m["loss"], rel=1e-5, abs=1e-6)
  assert "ensemble of 2" in proc.stdout


def test_average_probabilities_of_logit_models_and_empty_batches():
  """Logit models get a softmax; empty (ten-crop) batches give [0, classes]."""
  inputs = keras.Input((4, 4, 3))
  logits = keras.layers.Dense(3)(keras.layers.Flatten()(inputs))
  model = keras.Model(inputs, logits)
  x = np.random.default_rng(0).uniform(0, 255, (2, 10, 4, 4, 3)).astype(np.float32)
  got = evaluation.average_probabilities([model], tf.constant(x)).numpy()
  want = tf.nn.softmax(model(x.reshape(20, 4, 4, 3))).numpy().reshape(2, 10, 3).mean(axis=1)
  np.testing.assert_allclose(got, want, atol=1e-6)
  empty = evaluation.average_probabilities([model, model], tf.zeros([0, 10, 4, 4, 3]))
  assert empty.shape == (0, 3)


# ----------------------------------------------------------------------------------------------
# Bad input: one sentence on stderr, exit 1, no traceback.
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bad_model_dirs(setup):
  """A model dir without checkpoint, and one whose checkpoint has 5 classes."""
  work = setup["work"]
  no_ckpt = str(work / "no_checkpoint")
  model_dir_lib.write_config(no_ckpt, dict(model=model_dir_lib.default_model_config(classes=3),
                                           class_names=list(CLASSES)))
  five = str(work / "five_classes")
  config = model_dir_lib.default_model_config(classes=5)
  model_dir_lib.write_config(five, dict(model=config))
  model = model_dir_lib.build_model(config)
  tf.train.CheckpointManager(tf.train.Checkpoint(model=model),
                             model_dir_lib.checkpoint_dir(five), max_to_keep=1).save()
  return dict(no_checkpoint=no_ckpt, five_classes=five)


def assert_one_sentence_error(proc, *fragments):
  assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
  assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1, proc.stderr
  for fragment in fragments:
    assert fragment in errors[0], errors[0]
  return errors[0]


# The cases, through the command line (one fresh process each).
BAD_INPUT = {
    "missing_model_dir": (lambda s, d: [f"--model_dir={s['work']}/nope"], ["does not exist"]),
    "no_checkpoint": (lambda s, d: [f"--model_dir={d['no_checkpoint']}"], ["has no checkpoint"]),
    "class_count": (lambda s, d: [f"--model_dir={d['five_classes']}"],
                    ["has 3 classes but the model", "has 5"]),
    "missing_split": (lambda s, d: [f"--model={s['paths']['a']}", "--split=test"],
                      ["no folder for split 'test'"]),
    "conflicting_flags": (lambda s, d: [f"--model={s['paths']['a']}", "--model_dir=x"],
                          ["pass only one of", "--model_dir and --model"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_one_sentence(setup, bad_model_dirs, case):
  make_args, fragments = BAD_INPUT[case]
  proc = run_evaluate("--dataset=folder", f"--data_dir={setup['data']}",
                      *make_args(setup, bad_model_dirs), check=False)
  assert_one_sentence_error(proc, *fragments)


def test_empty_dataset_is_refused(setup, tmp_path):
  """Label folders without images, and a split folder without label folders."""
  root = tmp_path / "empty"
  for name in CLASSES:
    (root / "train" / name).mkdir(parents=True)
    (root / "validation" / name).mkdir(parents=True)
  proc = run_evaluate(f"--model={setup['paths']['a']}", "--dataset=folder",
                      f"--data_dir={root}", check=False)
  assert_one_sentence_error(proc, "has no images")
  for name in CLASSES:
    (root / "validation" / name).rmdir()
  with pytest.raises(UserError, match="is empty"):
    evaluation.evaluate(evaluation.EvalConfig(keras_model=setup["paths"]["a"], dataset="folder",
                                              data_dir=str(root)), log=lambda _: None)


def test_strict_data_names_the_corrupt_file(setup, tmp_path):
  root = tmp_path / "data"
  shutil.copytree(setup["data"], root)
  bad = str(root / "validation" / CLASSES[1] / "bad.jpg")
  with open(bad, "wb") as f:
    f.write(b"not an image")
  config = evaluation.EvalConfig(keras_model=setup["paths"]["a"], dataset="folder",
                                 data_dir=str(root), batch_size=4)
  with pytest.raises(UserError) as e:
    evaluation.evaluate(dataclasses.replace(config, strict_data=True), log=lambda _: None)
  assert str(e.value) == f"corrupt image file {bad} (--strict_data)"
  # Without --strict_data the corrupt file and a broken link are skipped and counted.
  os.symlink(str(root / "nowhere.jpg"), str(root / "validation" / CLASSES[0] / "gone.jpg"))
  result = evaluation.evaluate(config, log=lambda _: None)
  assert result["corrupt_images_skipped"] == 2
  assert result["num_images"] == result["num_examples"] - 2 == NUM_VALIDATION


@pytest.mark.parametrize("overrides, message", [
    (dict(model_dir="a", ensemble=("b", "c")), "pass only one of --model_dir, --saved_model, "
                                               "--model or --ensemble; got --model_dir and "
                                               "--ensemble"),
    (dict(keras_model="model.h5"), "must be a .keras file"),
    (dict(keras_model="KERAS", checkpoint="x/ckpt-1"), "--checkpoint goes with --model_dir"),
    (dict(keras_model="KERAS", batch_size=0), "--batch_size must be positive"),
    (dict(keras_model="WORK/nope.keras"), "does not exist"),
    (dict(saved_model="WORK/nope"), "does not exist"),
    (dict(ensemble=("KERAS", "WORK/nope")), "--ensemble member 'WORK/nope' does not exist."),
    (dict(keras_model="KERAS", split="nope"), "no folder for split 'nope'"),
    (dict(keras_model="KERAS", output_json="WORK/missing/out.json"), "does not exist"),
    (dict(keras_model="KERAS", per_class_csv="/dev/null/x.csv"),
     "--per_class_csv=/dev/null/x.csv: /dev/null is not a folder."),
    (dict(keras_model="KERAS", dataset="folder", data_dir="WORK/nope"), "is not a folder"),
])
def test_in_process_user_errors(setup, overrides, message):
  """More bad input, checked in process (evaluate.py prints these as `error: ...`)."""
  def fill(value):
    if isinstance(value, tuple):
      return tuple(fill(v) for v in value)
    if isinstance(value, str):
      return value.replace("KERAS", setup["paths"]["a"]).replace("WORK", str(setup["work"]))
    return value
  kwargs = dict(dataset="folder", data_dir=setup["data"])
  kwargs.update({k: fill(v) for k, v in overrides.items()})
  with pytest.raises(UserError, match=re.escape(fill(message))):
    evaluation.evaluate(evaluation.EvalConfig(**kwargs), log=lambda _: None)


def test_saved_model_in_a_path_tf_cannot_load_from(setup):
  # Was "cannot be loaded: Unsuccessful TensorSliceReader constructor: Failed to find any
  # matching files for .../variables/variables" (tensorflow#6082).
  path = setup["work"] / "exports[1]" / "1"
  path.mkdir(parents=True)
  (path / "saved_model.pb").write_bytes(b"")
  with pytest.raises(UserError, match=re.escape(
      f"--saved_model {path}: TensorFlow cannot load checkpoints or SavedModels from a path "
      "with '[...]'")):
    evaluation.evaluate(evaluation.EvalConfig(dataset="folder", data_dir=setup["data"],
                                              saved_model=str(path.parent)), log=lambda _: None)


class CountingModel:
  """A model wrapper that counts its Python calls (= traces inside tf.function)."""

  outputs_probabilities = True
  num_classes = len(CLASSES)

  def __init__(self, model):
    self.model, self.calls = model, 0

  def __call__(self, images, training=False):
    self.calls += 1
    return self.model(images, training=training)


def test_tfrecords_counted_from_labels_may_lack_the_last_classes(tmp_path):
  """Without a labels.txt a split's class count is its highest label + 1: a validation split
  without the last class still fits a model trained on all (it was refused: "2 classes but the
  model has 3"); one with more classes than the model does not."""
  label = lambda y: tf.train.Feature(int64_list=tf.train.Int64List(value=[y]))
  image = tf.train.Feature(bytes_list=tf.train.BytesList(
      value=[encode_image(np.zeros((8, 8, 3), np.uint8))]))
  with tf.io.TFRecordWriter(str(tmp_path / "validation-00000-of-00001")) as w:
    for y in (0, 1, 0):
      w.write(tf.train.Example(features=tf.train.Features(
          feature={"image/encoded": image, "image/class/label": label(y)})).SerializeToString())
  source = datasets.load_source("tfrecord", "validation", str(tmp_path))
  assert (source.num_classes, source.classes_from_labels) == (2, True)
  model = lambda classes: [evaluation.LoadedModel(None, "keras", "m.keras", 227, classes)]
  evaluation._check_dataset(source, model(3), "tfrecord")
  evaluation._check_dataset(source, model(2), "tfrecord")
  with pytest.raises(UserError, match="has 2 classes but the model .* has 1;"):
    evaluation._check_dataset(source, model(1), "tfrecord")
  (tmp_path / "labels.txt").write_text("a\nb\n")  # A class list: the count is exact.
  source = datasets.load_source("tfrecord", "validation", str(tmp_path))
  assert (source.num_classes, source.classes_from_labels) == (2, False)
  with pytest.raises(UserError, match="has 2 classes but the model .* has 3;"):
    evaluation._check_dataset(source, model(3), "tfrecord")


def test_repeated_evaluation_does_not_retrace(setup):
  """Training evaluates the same model every epoch: the traced step is reused (two traces: the
  full batch and the relaxed partial one), not rebuilt for every call."""
  model = CountingModel(setup["models"]["a"])
  source = datasets.load_source("folder", "validation", setup["data"])
  results = [evaluation.evaluate_model(model, input_pipeline.build_eval_dataset(source, 8, SIZE))
             for _ in range(3)]  # Batches of 8 and 5.
  assert model.calls <= 2
  assert len({r["loss"] for r in results}) == 1
  m = metrics(setup["ref"]["a", "validation", "centre"], setup["labels"]["validation"])
  assert results[0]["loss"] == pytest.approx(m["loss"], rel=1e-5, abs=1e-6)


# ----------------------------------------------------------------------------------------------
# Checkpoints and output files, from a user-style probe.
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def three_checkpoints(setup):
  """A model dir whose ckpt-1, ckpt-2, ckpt-3 hold the weights of models a, b, a."""
  model_dir = str(setup["work"] / "three_checkpoints")
  config = model_dir_lib.default_model_config(classes=3)
  model_dir_lib.write_config(model_dir, dict(model=config, class_names=list(CLASSES)))
  model = model_dir_lib.build_model(config)
  manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model),
                                       model_dir_lib.checkpoint_dir(model_dir), max_to_keep=5,
                                       checkpoint_name="ckpt")
  for name in ("a", "b", "a"):
    model.set_weights(setup["models"][name].get_weights())
    manager.save()
  return model_dir


def _copy_model_dir(src: str, dst) -> str:
  shutil.copytree(src, dst)
  return str(dst)


def test_a_cut_short_newest_checkpoint_loads_the_one_before_and_says_which(
    setup, three_checkpoints, tmp_path):
  """A data file cut short raised IndexError ("Read less bytes than requested") with a
  traceback; the results named the newest checkpoint even when another one was loaded (the
  name came from a second look at the checkpoint index, which training may have moved on)."""
  model_dir = _copy_model_dir(three_checkpoints, tmp_path / "run")
  data = os.path.join(model_dir, "checkpoints", "ckpt-3.data-00000-of-00001")
  os.truncate(data, 1_000_000)
  warnings = []
  model, _, loaded = model_dir_lib.restore_checkpoint(model_dir, log=warnings.append)
  assert loaded == os.path.join(model_dir, "checkpoints", "ckpt-2")
  assert warnings == [f"checkpoint '{model_dir}/checkpoints/ckpt-3' cannot be read: a data file "
                      "is cut short or damaged (Read less bytes than requested); loading the "
                      f"checkpoint before it, {loaded}, instead."]
  for got, want in zip(model.get_weights(), setup["models"]["b"].get_weights()):
    np.testing.assert_array_equal(got, want)
  result = evaluation.evaluate(evaluation.EvalConfig(
      model_dir=model_dir, dataset="folder", data_dir=setup["data"], batch_size=8),
      log=lambda _: None)
  assert result["options"]["models"] == [f"{model_dir} (ckpt-2)"]
  m = metrics(setup["ref"]["b", "validation", "centre"], setup["labels"]["validation"])
  assert result["loss"] == pytest.approx(m["loss"], rel=1e-5, abs=1e-6)
  # Asked for by name, it is an error, not another checkpoint.
  with pytest.raises(UserError, match=re.escape(
      f"checkpoint '{data[:-len('.data-00000-of-00001')]}' cannot be read: a data file is cut "
      "short or damaged (Read less bytes than requested)")):
    model_dir_lib.restore_checkpoint(model_dir, data[:-len(".data-00000-of-00001")])
  # The `checkpoint` index lost: the checkpoint files still tell (training started over).
  os.remove(data)
  with open(os.path.join(model_dir, "checkpoints", "checkpoint"), "w") as f:
    f.write("garbage {{{")
  assert model_dir_lib.latest_checkpoint(model_dir) == os.path.join(model_dir, "checkpoints",
                                                                      "ckpt-2")
  with pytest.raises(UserError, match=re.escape(
      f"checkpoint '{model_dir}/checkpoints/ckpt-3' cannot be read: 1 of its 1 data file(s) "
      f"{model_dir}/checkpoints/ckpt-3.data-*-of-* are missing")):
    model_dir_lib.restore_checkpoint(model_dir, f"{model_dir}/checkpoints/ckpt-3")


def test_checkpoint_and_config_mistakes_are_one_sentence(setup, three_checkpoints,
                                                         bad_model_dirs, tmp_path):
  """Each was a traceback: a checkpoint of another architecture (ValueError after ~50 TF
  warnings), a config.json with a bad value or an unknown key (ValueError, TypeError)."""
  five = model_dir_lib.latest_checkpoint(bad_model_dirs["five_classes"])
  proc = run_evaluate(f"--model_dir={three_checkpoints}", f"--checkpoint={five}",
                      "--dataset=folder", f"--data_dir={setup['data']}", check=False)
  assert_one_sentence_error(
      proc, f"checkpoint '{five}' does not match the model that {three_checkpoints}/config.json "
      "describes: it has no weight of shape (4096, 3) for fc8/kernel.")
  assert "Value in checkpoint could not be found" not in proc.stderr
  for key, value, reason in [("towers", "two", "towers must be one of [1, 2]; got 'two'"),
                             ("bogus_key", 1, "unexpected keyword argument 'bogus_key'")]:
    model_dir = _copy_model_dir(three_checkpoints, tmp_path / key)
    config = model_dir_lib.read_config(model_dir)
    config["model"][key] = value
    model_dir_lib.write_config(model_dir, config)
    with pytest.raises(UserError, match=re.escape(
        f"{model_dir}/config.json: its 'model' section does not describe an AlexNet (")) as e:
      model_dir_lib.restore_model(model_dir)
    assert reason in str(e.value)
  ckpt = os.path.join(three_checkpoints, "checkpoints", "ckpt-2")
  for given, hint in [(ckpt + ".index", f"pass the path prefix {ckpt}, without the file's "
                                        "ending."),
                      (ckpt + ".data-00000-of-00001", f"pass the path prefix {ckpt}, without "
                                                      "the file's ending."),
                      (os.path.dirname(ckpt), "pass a checkpoint's path prefix, e.g. DIR/ckpt-N "
                                              "for DIR/ckpt-N.index.")]:
    with pytest.raises(UserError, match=re.escape(hint)):
      model_dir_lib.restore_model(three_checkpoints, given)


def test_output_files_never_replace_other_files(setup, three_checkpoints, tmp_path):
  """--output_json=RUN/config.json ruined the model dir, --per_class_csv=an image replaced it,
  the same file for two flags lost one of them, and an output that could not be written
  failed after the evaluation (PermissionError, FileNotFoundError)."""
  model_dir = _copy_model_dir(three_checkpoints, tmp_path / "run")
  config_json = os.path.join(model_dir, "config.json")
  before = open(config_json).read()
  image = setup["listing"]["validation"][0][0]
  image_bytes = open(image, "rb").read()
  base = dict(model_dir=model_dir, dataset="folder", data_dir=setup["data"], batch_size=8)
  for overrides, message in [
      (dict(output_json=config_json), f"--output_json={config_json} already exists and is not "
                                      "an evaluate.py output; choose another file name or "
                                      "remove it first."),
      (dict(per_class_csv=image), f"--per_class_csv={image} already exists and is not an "
                                  "evaluate.py output"),
      (dict(confusion_csv=config_json), "is not an evaluate.py output"),
      (dict(output_json=str(tmp_path / "x"), per_class_csv=str(tmp_path / "x")),
       f"--output_json and --per_class_csv name the same file {tmp_path / 'x'}; give each its "
       "own."),
      (dict(output_json="/proc/alexnet_tf_eval.json"),
       "--output_json '/proc/alexnet_tf_eval.json' cannot be written (in '/proc'): "),
      (dict(split=""), "--split must name a split, e.g. --split=validation."),
      (dict(model_dir=None, checkpoint=f"{model_dir}/checkpoints/ckpt-2"),
       "--checkpoint needs --model_dir, the training directory whose config.json describes the "
       "checkpoint's model."),
  ]:
    with pytest.raises(UserError, match=re.escape(message)):
      evaluation.evaluate(evaluation.EvalConfig(**{**base, **overrides}), log=lambda _: None)
  assert open(config_json).read() == before and open(image, "rb").read() == image_bytes
  assert not os.path.exists(tmp_path / "x")
  # evaluate.py's own outputs, and empty files, are replaced.
  outputs = dict(output_json=str(tmp_path / "r.json"), per_class_csv=str(tmp_path / "p.csv"),
                 confusion_csv=str(tmp_path / "c.csv"))
  open(outputs["confusion_csv"], "w").close()
  for _ in range(2):
    evaluation.evaluate(evaluation.EvalConfig(**base, **outputs), log=lambda _: None)
  with open(outputs["output_json"]) as f:
    assert json.load(f)["options"]["models"] == [f"{model_dir} (ckpt-3)"]
  assert sorted(os.listdir(tmp_path)) == ["c.csv", "p.csv", "r.json", "run"]  # No temp files.
