"""The training loop: distribution equivalence, the paper's optimiser, dropout per replica,
resume, multi-worker on localhost, and the train.py command line.

Runs that need logical CPU devices or TF_CONFIG start fresh Python processes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
import keras

from alexnet_tf import shapes
from alexnet_tf.errors import UserError, check_tf_can_read_back
from alexnet_tf.model_dir import restore_model
from alexnet_tf.optimization import (PaperSGD, PlateauState, ScheduleConfig, learning_rate_at)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_PY = os.path.join(ROOT, "train.py")


def run(args, env=None, timeout=600, check=True, cwd=ROOT):
  env = dict(os.environ, **(env or {}))
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  proc = subprocess.run([sys.executable] + args, cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
  return proc


def read_weights(model_dir):
  """The model weights of the latest checkpoint (by layer/variable path), and a reader."""
  model, _ = restore_model(model_dir)
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(
      os.path.join(model_dir, "checkpoints")))
  return {v.path: v.numpy() for v in model.weights}, reader


def optimizer_slots(reader):
  return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
          if k.startswith("optimizer/_variables/")}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
  """8 train and 8 validation shapes JPEGs: one global batch of 8."""
  root = str(tmp_path_factory.mktemp("tiny"))
  return shapes.generate(root, num_train=8, num_validation=8, seed=3)


def train_args(model_dir, data_dir, *extra):
  return [TRAIN_PY, f"--model_dir={model_dir}", "--dataset=folder", f"--data_dir={data_dir}",
          "--batch_size=8", "--seed=7", "--log_steps=1", "--learning_rate=0.01",
          "--lr_schedule=constant", "--noexport", *extra]


NO_RANDOMNESS = ("--dropout=0", "--norandom_crop", "--norandom_flip", "--nopca_lighting",
                 "--deterministic")


# ----------------------------------------------------------------------------------------------
# The optimiser and schedules (in process).
# ----------------------------------------------------------------------------------------------

def test_paper_sgd_update_rule_matches_numpy():
  """v <- mu v - eps wd w - eps g ; w <- w + v, on kernels; biases without decay."""
  layer = keras.layers.Dense(3, kernel_initializer="glorot_uniform", bias_initializer="ones")
  layer.build((None, 4))
  opt = PaperSGD(learning_rate=0.1, momentum=0.9, coupled_weight_decay=0.05)
  w, b = layer.kernel.numpy().astype(np.float64), layer.bias.numpy().astype(np.float64)
  vw, vb = np.zeros_like(w), np.zeros_like(b)
  rng = np.random.RandomState(0)
  for _ in range(3):
    gw, gb = rng.normal(size=w.shape), rng.normal(size=b.shape)
    opt.apply_gradients([(tf.constant(gw, tf.float32), layer.kernel),
                         (tf.constant(gb, tf.float32), layer.bias)])
    vw = 0.9 * vw - 0.1 * 0.05 * w - 0.1 * gw
    w = w + vw
    vb = 0.9 * vb - 0.1 * gb
    b = b + vb
  np.testing.assert_allclose(layer.kernel.numpy(), w, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(layer.bias.numpy(), b, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="coupled_weight_decay"):
    PaperSGD(weight_decay=1e-4)


def test_schedules():
  step = ScheduleConfig(name="step", base_lr=0.1, step_boundaries=(10, 20))
  assert [learning_rate_at(step, s) for s in (0, 9, 10, 25)] == pytest.approx(
      [0.1, 0.1, 0.01, 0.001])
  cosine = ScheduleConfig(name="cosine", base_lr=1.0, total_steps=100, warmup_steps=10)
  assert learning_rate_at(cosine, 0) == pytest.approx(0.1)
  assert learning_rate_at(cosine, 9) == pytest.approx(1.0)
  assert learning_rate_at(cosine, 55) == pytest.approx(0.5)
  assert learning_rate_at(cosine, 100) == pytest.approx(0.0)
  plateau = PlateauState(ScheduleConfig(name="plateau", plateau_patience=2,
                                        plateau_max_reductions=1))
  errors = [0.5, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4]
  reduced = [plateau.update(e) for e in errors]
  assert reduced == [False, False, False, True, False, False, False]  # at most 1 reduction
  assert float(plateau.scale.numpy()) == pytest.approx(0.1)


# ----------------------------------------------------------------------------------------------
# Distribution (subprocesses).
# ----------------------------------------------------------------------------------------------

DROPOUT_SCRIPT = textwrap.dedent("""
    import numpy as np, tensorflow as tf
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)
    from alexnet_tf import AlexNet
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
      model = AlexNet(classes=3, seed=0)
    layer = model.get_layer("drop6_a")
    @tf.function
    def step():
      return strategy.run(lambda: layer(tf.ones([2, 2048]), training=True))
    masks = [r.numpy() != 0 for r in strategy.experimental_local_results(step())]
    print("FRACTION", masks[0].mean(), masks[1].mean())
    print("DIFFERENT", bool((masks[0] != masks[1]).any()))
""")


def test_native_bfloat16_follows_the_cpu_flags():
  from alexnet_tf import distribute
  if tf.config.list_physical_devices("GPU"):
    pytest.skip("with GPUs the compute capability decides")
  native, reason = distribute.native_bfloat16()
  cpu_flags = open("/proc/cpuinfo").read().split() if os.path.exists("/proc/cpuinfo") else []
  assert native == ("avx512_bf16" in cpu_flags or "amx_bf16" in cpu_flags)
  assert reason.startswith("CPU ")


def test_dropout_masks_differ_between_replicas():
  out = run(["-c", DROPOUT_SCRIPT]).stdout
  assert "DIFFERENT True" in out, out
  fractions = [float(x) for x in out.split("FRACTION")[1].split()[:2]]
  assert all(0.4 < f < 0.6 for f in fractions), fractions


def test_mirrored_two_replicas_equals_default(tiny_data, tmp_path):
  """One step on the same global batch: 2 replicas == no strategy, to 1e-5."""
  one, two = str(tmp_path / "default"), str(tmp_path / "mirrored")
  run(train_args(one, tiny_data, "--max_steps=1", "--strategy=default", *NO_RANDOMNESS))
  run(train_args(two, tiny_data, "--max_steps=1", "--strategy=mirrored", "--cpu_replicas=2",
                 *NO_RANDOMNESS))
  w1, r1 = read_weights(one)
  w2, _ = read_weights(two)
  assert int(r1.get_tensor("global_step/.ATTRIBUTES/VARIABLE_VALUE")) == 1
  assert w1.keys() == w2.keys() and len(w1) == 30  # 15 layers (tower a/b split)
  for k in w1:
    np.testing.assert_allclose(w1[k], w2[k], atol=1e-5, rtol=1e-5, err_msg=k)


def test_multi_worker_two_processes_on_localhost(tiny_data, tmp_path, worker_envs):
  """Two train.py processes with TF_CONFIG: both finish with identical weights, equal to a
  one-process run on the same global batch (the 8 images are the whole training set)."""
  model_dir = str(tmp_path / "mw")
  procs = []
  for env in worker_envs(2, dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")):
    # The non-chief writes its (discarded) checkpoint elsewhere; both read data from tiny_data.
    procs.append(subprocess.Popen(
        [sys.executable] + train_args(model_dir, tiny_data, "--max_steps=1",
                                      "--strategy=multi_worker", "--collective_timeout=120",
                                      "--steps_per_epoch=1", "--epochs=1", *NO_RANDOMNESS),
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  outputs = []
  try:
    for p in procs:
      outputs.append(p.communicate(timeout=420)[0])
  finally:
    for p in procs:
      p.kill()
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out
  assert all("epoch 1/1" in out for out in outputs), outputs
  # Workers print the same global loss; the chief's checkpoint holds the weights.
  losses = [[l for l in out.splitlines() if l.startswith("step 1/")][0].split()[3]
            for out in outputs]
  assert losses[0] == losses[1]
  single = str(tmp_path / "single")
  run(train_args(single, tiny_data, "--max_steps=1", "--steps_per_epoch=1", "--epochs=1",
                 *NO_RANDOMNESS))
  w_mw, _ = read_weights(model_dir)
  w_one, _ = read_weights(single)
  for k in w_one:
    np.testing.assert_allclose(w_mw[k], w_one[k], atol=1e-5, rtol=1e-5, err_msg=k)


# ----------------------------------------------------------------------------------------------
# Resume and the command line.
# ----------------------------------------------------------------------------------------------

def test_resume_continues_from_checkpoint_and_matches_uninterrupted(tiny_data, tmp_path):
  """Stopped after 2 steps and rerun: same final weights and momentum as 4 steps in one go.

  With a cosine schedule: --max_steps only stops the run (it used to be the schedule's end, so
  the stopped run decayed to 0 at step 2 and the rerun followed another curve)."""
  # "run*" also matched run-straight's checkpoint files, and a rerun started over.
  straight, resumed = str(tmp_path / "run-straight"), str(tmp_path / "run*")
  common = ("--batch_size=4", "--steps_per_epoch=2", "--epochs=2", "--checkpoint_steps=1",
            "--deterministic", "--validation_steps=1", "--lr_schedule=cosine")
  run(train_args(straight, tiny_data, *common))
  run(train_args(resumed, tiny_data, *common, "--max_steps=2"))
  second = run(train_args(resumed, tiny_data, *common)).stdout
  assert "Resumed from" in second and "step 2" in second
  assert "step 3/4" in second and "step 1/4" not in second
  w_a, reader_a = read_weights(straight)
  w_b, reader_b = read_weights(resumed)
  for k in w_a:
    np.testing.assert_allclose(w_a[k], w_b[k], rtol=1e-6, atol=1e-7, err_msg=k)
  slots_a, slots_b = optimizer_slots(reader_a), optimizer_slots(reader_b)
  assert len(slots_a) == 30, "a momentum slot per variable is checkpointed"
  for k in slots_a:
    assert np.abs(slots_a[k]).max() > 0
    np.testing.assert_allclose(slots_a[k], slots_b[k], rtol=1e-6, atol=1e-7, err_msg=k)


@pytest.mark.parametrize("name", ["lr[0.01]", "run[x", "a*b?c", "back\\slash", "a]b"])
def test_paths_refused_are_those_tf_cannot_load_a_checkpoint_from(name, tmp_path):
  # A --model_dir of "lr[0.01]" saved checkpoints that TF could never load (tensorflow#6082):
  # a rerun started over. The rule is checked against TF's own reader.
  variable = tf.Variable(1.0)
  checkpoint = tf.train.Checkpoint(v=variable)
  prefix = checkpoint.write(str(tmp_path / name / "ckpt"))
  variable.assign(2.0)
  try:
    checkpoint.read(prefix).assert_consumed()
    loads = variable.numpy() == 1.0
  except (tf.errors.NotFoundError, FileNotFoundError):
    loads = False
  try:
    check_tf_can_read_back("--model_dir", str(tmp_path / name))
    accepted = True
  except UserError:
    accepted = False
  assert accepted == loads, (name, loads)


def test_cleanup_of_a_model_dir_named_like_a_glob_stays_in_it(tmp_path):
  # Unescaped, --model_dir=run* deleted the checkpoint being written in run-a next to it.
  from alexnet_tf import model_dir as model_dir_lib
  for run_dir in ("run-a", "run*"):
    os.makedirs(model_dir_lib.checkpoint_dir(str(tmp_path / run_dir)))
    with open(os.path.join(model_dir_lib.checkpoint_dir(str(tmp_path / run_dir)),
                           "ckpt-3_temp"), "w") as f:
      f.write("a write in progress")
  removed = model_dir_lib.remove_incomplete_checkpoints(str(tmp_path / "run*"))
  assert removed == [os.path.join(model_dir_lib.checkpoint_dir(str(tmp_path / "run*")),
                                  "ckpt-3_temp")]
  assert os.listdir(model_dir_lib.checkpoint_dir(str(tmp_path / "run-a"))) == ["ckpt-3_temp"]


def test_validation_on_the_training_files_is_noted(tiny_data, tmp_path):
  from alexnet_tf import datasets, training
  from alexnet_tf.tools import make_tfrecords
  dst = str(tmp_path / "records")
  make_tfrecords.convert(tiny_data, dst, num_shards=1, log=lambda _: None)
  for data_dir, noted in [(f"{dst}/train-*", True), (dst + "/{split}-*", False), (dst, False)]:
    train, val = (datasets.load_source("tfrecord", split, data_dir)
                  for split in ("train", "validation"))
    note = training.validation_overlap_note(train, val, data_dir)
    assert (note == f"Note: validation reads the training files (--data_dir={data_dir} names "
            "no {split}), so val_top1 is not held out and the plateau schedule follows it."
            if noted else note is None), (data_dir, note)
  shapes_train, shapes_val = (datasets.load_source("shapes", split, tiny_data)
                              for split in ("train", "validation"))
  assert training.validation_overlap_note(shapes_train, shapes_val, tiny_data) is None


def test_validation_labels_beyond_the_training_classes_are_refused(tmp_path):
  """TFRecords without a labels.txt: classes = highest label + 1 of the training split. A
  validation label beyond it stopped validation with a traceback after the first epoch (a NaN
  loss on a GPU); now one sentence before training."""
  label = lambda y: tf.train.Feature(int64_list=tf.train.Int64List(value=[y]))
  image = tf.train.Feature(bytes_list=tf.train.BytesList(
      value=[tf.io.encode_jpeg(tf.zeros([8, 8, 3], tf.uint8)).numpy()]))
  for split, labels in (("train", (0, 1, 0, 1)), ("validation", (0, 2))):
    with tf.io.TFRecordWriter(str(tmp_path / f"{split}-00000-of-00001")) as w:
      for y in labels:
        w.write(tf.train.Example(features=tf.train.Features(
            feature={"image/encoded": image, "image/class/label": label(y)})).SerializeToString())
  out = run([TRAIN_PY, f"--model_dir={tmp_path / 'run'}", "--dataset=tfrecord",
             f"--data_dir={tmp_path}", "--batch_size=2", "--noexport"], check=False)
  assert out.returncode == 1 and out.stderr.strip().splitlines()[-1] == (
      "error: --dataset=tfrecord: the validation split has labels up to 2 but the training "
      "split only up to 1; put a labels.txt naming every class (line i = label i) beside the "
      "TFRecords"), out.stderr[-2000:]
  assert not os.path.exists(tmp_path / "run")


def test_train_py_mirrored_end_to_end(tmp_path, shapes_root):
  # A relative --model_dir, as in the README's `python train.py --strategy=mirrored`.
  args = [TRAIN_PY, "--strategy=mirrored", "--cpu_replicas=2", "--dataset=shapes",
          f"--data_dir={shapes_root}", "--model_dir=run", "--batch_size=8",
          "--steps_per_epoch=3", "--validation_steps=2", "--log_steps=3"]
  out = run(args + ["--epochs=2"], cwd=tmp_path).stdout
  assert "epoch 2/2" in out and "val_top1" in out
  # The shapes preset picks bfloat16 where it is native (and says so), else float32.
  assert "--mixed_precision=auto: " in out
  model_dir = str(tmp_path / "run")
  config = json.load(open(os.path.join(model_dir, "config.json")))
  assert config["model"]["classes"] == 6 and config["class_names"][0] == "circle"
  records = [json.loads(l) for l in open(os.path.join(model_dir, "metrics.jsonl"))]
  assert [r["epoch"] for r in records] == [1, 2]
  assert {"loss", "top1", "top5", "val_top1", "val_top5", "learning_rate",
          "images_per_sec"} <= set(records[0])
  assert os.listdir(os.path.join(model_dir, "logs", "train"))
  assert os.path.isfile(os.path.join(model_dir, "export", "1", "saved_model.pb"))
  # Rerunning the command (here with one more epoch) resumes from the checkpoint.
  out = run(args + ["--epochs=3", "--export_dir=exports"], cwd=tmp_path).stdout
  assert "Resumed from" in out and "step 6" in out, out
  assert "epoch 3/3" in out and "epoch 1/3" not in out, out
  assert os.path.isfile(tmp_path / "exports" / "1" / "saved_model.pb")
  # Once more, with nothing left to train: no second, identical export (each rerun wrote one).
  out = run(args + ["--epochs=3", "--export_dir=exports"], cwd=tmp_path).stdout
  assert "Nothing left to train: run has finished its 3 epochs (--epochs=3)." in out, out
  assert ("Not exported again: exports already holds version 1; python -m alexnet_tf.export "
          "exports the model dir anew.") in out, out
  assert sorted(os.listdir(tmp_path / "exports")) == ["1"]


def test_resume_refusals_say_where_the_setting_comes_from():
  """A shapes run resumed on --dataset=folder was told "this run asks for input_scale=1.0",
  which the user never passed: it comes with the dataset's preset."""
  from alexnet_tf import training  # pylint: disable=g-import-not-at-top
  with pytest.raises(UserError) as e:
    training.check_compatible({"input_scale": 1 / 58}, {"input_scale": 1.0}, "run")
  assert str(e.value) == (
      f"--model_dir 'run' holds a model with input_scale={1 / 58!r}, but this run asks for "
      f"input_scale=1.0 (--input_scale={1 / 58!r} resumes it; when not given, it comes from "
      "the dataset's preset: 1/58 for --dataset=shapes, 1 for the others); use a new "
      "--model_dir or the same settings.")
  with pytest.raises(UserError, match=r"asks for towers=1 \(--towers\);"):
    training.check_compatible({"towers": 2}, {"towers": 1}, "run")


@pytest.mark.parametrize("args, message", [
    (["--strategy=bogus"], "--strategy"),
    (["--batch_size=7", "--strategy=mirrored", "--cpu_replicas=2"], "divisible"),
    (["--strategy=multi_worker"], "TF_CONFIG"),
    (["--batch_size=0"], "--batch_size must be a positive integer"),
    (["--learning_rate=-1"], "--learning_rate must be a positive number"),
    (["--dataset=folder", "--data_dir=/nonexistent/dir"], "/nonexistent/dir"),
    (["--model_dir=/proc/forbidden/run"], "--model_dir"),
    (["--export_dir=/dev/null/export"], "--export_dir '/dev/null/export' cannot be created: "
                                        "'/dev/null' is not a directory."),
    (["--cpu_replicas=2"], "--cpu_replicas > 1 needs --strategy=mirrored"),
    (["--input_scale=0"], "--input_scale must be a positive number"),
    (["--dropout=1.5"], "--dropout must be in [0, 1)"),
    (["--model_dir=runs/lr[0.01]"], "--model_dir runs/lr[0.01] ("),
    (["--export_dir=exports[2]"], "--export_dir exports[2] ("),
    (["--stats_mean=image"], "--stats_mean=image needs --stats=FILE"),
    (["--batch_size=64"], "--batch_size 64 is larger than the train split (8 images)."),
    # Accepted before: a negative epoch divided the learning rate from step 0, an empty list
    # made the step schedule constant, a negative patience cut it every epoch, and nccl was
    # ignored with one replica.
    (["--lr_schedule=step", "--lr_step_epochs=-5"], "--lr_step_epochs must list the epochs"),
    (["--lr_schedule=step", "--lr_step_epochs="], "--lr_step_epochs must list the epochs"),
    (["--lr_schedule=plateau", "--plateau_patience=-1"], "--plateau_patience must be at least"),
    (["--warmup_epochs=100", "--epochs=1"], "--warmup_epochs=100 is longer than the run"),
    (["--strategy=one_device", "--all_reduce=nccl"], "--all_reduce=nccl applies to "
                                                     "--strategy=mirrored or multi_worker"),
])
def test_bad_flags_fail_with_one_line(args, message, tmp_path, tiny_data):
  base = [TRAIN_PY, f"--model_dir={tmp_path / 'run'}", "--dataset=folder",
          f"--data_dir={tiny_data}", "--max_steps=1", "--batch_size=8"]
  proc = run(base + args, check=False, timeout=120)
  assert proc.returncode != 0
  assert message in proc.stderr, proc.stderr
  assert "Traceback" not in proc.stderr, proc.stderr
  assert not os.path.exists(tmp_path / "run")  # Validation failed: nothing left behind.


def test_incompatible_model_dir_is_refused(tmp_path, tiny_data):
  model_dir = str(tmp_path / "run")
  run(train_args(model_dir, tiny_data, "--max_steps=1", "--validation_steps=1"))
  proc = run(train_args(model_dir, tiny_data, "--max_steps=2", "--towers=1"), check=False)
  assert proc.returncode == 1
  assert "towers=2" in proc.stderr and "Traceback" not in proc.stderr


def test_a_model_dir_records_its_data_and_resumes_only_on_its_classes(tmp_path, tiny_data):
  """config.json kept a relative --data_dir (evaluate.py elsewhere read another folder or
  none); `--model_dir=~/run` wrote a folder named '~'; a resume on other classes of the same
  count was accepted and renamed the model's classes; a --max_steps stop said nothing; one
  class trained to a meaningless 100%."""
  home = tmp_path / "home"
  home.mkdir()
  shutil.copytree(tiny_data, tmp_path / "data")
  proc = run(train_args("~/run", "data", "--epochs=2", "--max_steps=1", "--validation_steps=1"),
             env={"HOME": str(home)}, cwd=str(tmp_path))
  assert "Stopped at step 1 (--max_steps=1), 1 of 2 epochs done; rerun with a larger " \
         "--max_steps to go on." in proc.stdout, proc.stdout
  with open(home / "run" / "config.json") as f:
    assert json.load(f)["dataset"]["data_dir"] == str(tmp_path / "data")
  for split in ("train", "validation"):
    os.rename(tmp_path / "data" / split / "star", tmp_path / "data" / split / "start")
  proc = run(train_args(home / "run", tmp_path / "data", "--max_steps=2"), check=False)
  assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
  assert (f"error: --model_dir '{home / 'run'}' holds a model trained on other classes than "
          f"--dataset=folder --data_dir={tmp_path / 'data'} has (class 4 is 'star' there and "
          "'start' here); use a new --model_dir") in proc.stderr, proc.stderr
  for split in ("train", "validation"):
    for name in os.listdir(tmp_path / "data" / split):
      if name != "circle":
        shutil.rmtree(tmp_path / "data" / split / name)
  proc = run(train_args(tmp_path / "one", tmp_path / "data", "--batch_size=1"), check=False)
  assert proc.returncode == 1 and (
      f"error: --dataset=folder --data_dir={tmp_path / 'data'}: the train split has 1 class "
      "(circle); a classifier needs at least 2") in proc.stderr, proc.stderr
  assert not os.path.exists(tmp_path / "one")


def test_stats_mean_image_is_subtracted_and_a_resume_keeps_the_mean(tmp_path, tiny_data):
  """--stats naming a mean image: the model subtracts it (the paper's per-pixel mean), the model
  dir keeps a copy, and a rerun that would subtract another mean is refused."""
  rows = np.linspace(90.0, 150.0, 256, dtype=np.float32)  # Brighter towards the bottom.
  mean_image = np.broadcast_to(rows[:, None, None], (256, 256, 3)) + np.float32([0, 5, 10])
  np.save(tmp_path / "mean.npy", mean_image)
  stats = {"mean": [120.0, 125.0, 130.0], "eigenvalues": [3.0, 2.0, 1.0],
           "eigenvectors": [[1, 0, 0], [0, 1, 0], [0, 0, 1]], "num_images": 8,
           "mean_image": "mean.npy"}  # Relative to the JSON's folder.
  (tmp_path / "stats.json").write_text(json.dumps(stats))
  model_dir = str(tmp_path / "run")
  with_stats = (f"--stats={tmp_path / 'stats.json'}", "--validation_steps=1")
  out = run(train_args(model_dir, tiny_data, *with_stats, "--max_steps=1")).stdout
  assert f"Subtracting the per-pixel mean image {tmp_path / 'mean.npy'} (256x256" in out, out
  with open(os.path.join(model_dir, "config.json")) as f:
    assert json.load(f)["model"]["mean"] == "mean_image"
  np.testing.assert_array_equal(np.load(os.path.join(model_dir, "mean_image.npy")), mean_image)
  model, _ = restore_model(model_dir)
  np.testing.assert_array_equal(model.get_layer("mean_subtraction").mean_image.numpy(),
                                mean_image)
  image = np.full((1, 227, 227, 3), 200.0, np.float32)  # The mean's central 227 rows.
  np.testing.assert_allclose(model.get_layer("mean_subtraction")(image)[0],
                             200.0 - mean_image[14:241, 14:241], rtol=0, atol=1e-4)

  for extra, subtracts in [((), "ImageNet's per-channel mean (no --stats)"),
                           ((*with_stats, "--stats_mean=channel"),
                            "the per-channel mean [120.00, 125.00, 130.00]")]:
    proc = run(train_args(model_dir, tiny_data, *extra, "--max_steps=2"), check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert (f"error: --model_dir {model_dir!r} holds a model trained with a mean image (its "
            f"mean_image.npy), but this run subtracts {subtracts}; to resume it, pass the same "
            "--stats") in proc.stderr, proc.stderr
  np.save(tmp_path / "mean.npy", mean_image + 1)
  proc = run(train_args(model_dir, tiny_data, *with_stats, "--max_steps=2"), check=False)
  assert proc.returncode == 1 and "this run subtracts another mean image" in proc.stderr
  np.save(tmp_path / "mean.npy", mean_image)
  out = run(train_args(model_dir, tiny_data, *with_stats, "--max_steps=2")).stdout
  assert "Resumed from" in out and "step 1" in out, out


def test_a_resume_with_another_per_channel_mean_is_refused(tmp_path):
  """Without --stats a rerun subtracted ImageNet's mean from a model trained on another."""
  from alexnet_tf.training import check_compatible
  trained = {"towers": 2, "mean": [120.0, 125.0, 130.0]}
  check_compatible(trained, dict(trained), str(tmp_path))
  with pytest.raises(UserError, match=r"trained with the per-channel mean \[120.00, 125.00, "
                     r"130.00\], but this run subtracts ImageNet's per-channel mean \(no "
                     r"--stats\); to resume it, pass the same --stats"):
    check_compatible(trained, dict(trained, mean="imagenet"), str(tmp_path))
