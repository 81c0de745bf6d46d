"""Fault tolerance of train.py, in real subprocesses: kill -9 and resume, SIGTERM, a kill
during a checkpoint write, a worker lost in a two-process multi-worker job, NaN, corrupt
data, an unwritable checkpoint directory.

Each run is tiny (16 images, batch 4, a few steps), so the suite stays CI-sized.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from alexnet_tf import model_dir as model_dir_lib
from alexnet_tf import shapes
from alexnet_tf.model_dir import restore_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_PY = os.path.join(ROOT, "train.py")
ENV = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")

# 16 train images, batch 4: epochs of 3 steps (capped), 2 epochs = 6 steps. Dropout, random
# crops, flips and PCA lighting stay on, so resuming must restore every RNG and data position.
RUN = ("--dataset=folder", "--batch_size=4", "--steps_per_epoch=3", "--epochs=2",
       "--validation_steps=1", "--seed=11", "--deterministic", "--learning_rate=0.005",
       "--lr_schedule=constant", "--log_steps=1", "--keep_checkpoints=2", "--noexport")
TOTAL_STEPS = 6


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("reliability_data"))
  return shapes.generate(root, num_train=16, num_validation=6, seed=5)


def args_for(model_dir, data_dir, *extra):
  return [sys.executable, TRAIN_PY, f"--model_dir={model_dir}", f"--data_dir={data_dir}",
          *RUN, *extra]


def run(args, timeout=300, env=None):
  return subprocess.run(args, cwd=ROOT, env=env or ENV, capture_output=True, text=True,
                        timeout=timeout)


class Spawned:
  """A train.py process whose output lines can be waited for while it runs."""

  def __init__(self, args, env=None):
    self.proc = subprocess.Popen(args, cwd=ROOT, env=env or ENV, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
    self.lines: list[str] = []
    self._queue: queue.Queue = queue.Queue()
    threading.Thread(target=self._read, daemon=True).start()

  def _read(self):
    for line in self.proc.stdout:
      self._queue.put(line)
    self._queue.put(None)

  def wait_for(self, pattern: str, timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
      try:
        line = self._queue.get(timeout=0.05)
      except queue.Empty:
        continue
      if line is None:
        break
      self.lines.append(line)
      if re.search(pattern, line):
        return line
    raise AssertionError(f"no line matching {pattern!r}:\n{self.output()}")

  def finish(self, timeout: float = 300) -> int:
    try:
      code = self.proc.wait(timeout=timeout)
    finally:
      self.proc.kill()
    while True:
      try:
        line = self._queue.get(timeout=5)
      except queue.Empty:
        break
      if line is None:
        break
      self.lines.append(line)
    return code

  def output(self) -> str:
    return "".join(self.lines)


def final_weights(model_dir):
  model, _ = restore_model(model_dir)
  return {v.path: v.numpy() for v in model.weights}


def checkpoint_step(path: str) -> int:
  return int(path.rsplit("-", 1)[1])


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
  """The uninterrupted run every interrupted one must reproduce."""
  model_dir = str(tmp_path_factory.mktemp("reference") / "run")
  proc = run(args_for(model_dir, data, "--checkpoint_steps=1"))
  assert proc.returncode == 0, proc.stdout + proc.stderr
  return final_weights(model_dir)


def assert_same_weights(a, b):
  """Bitwise: --deterministic makes the CPU kernels deterministic."""
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_kill_9_mid_epoch_then_resume_matches_uninterrupted(data, reference, tmp_path):
  model_dir = str(tmp_path / "run")
  job = Spawned(args_for(model_dir, data, "--checkpoint_steps=1"))
  job.wait_for(r"^step 2/6")  # Inside the first epoch (3 steps).
  job.proc.send_signal(signal.SIGKILL)
  assert job.finish() == -signal.SIGKILL
  saved = model_dir_lib.latest_checkpoint(model_dir)
  assert saved is not None and checkpoint_step(saved) in (1, 2)

  resumed = run(args_for(model_dir, data, "--checkpoint_steps=1"))
  assert resumed.returncode == 0, resumed.stdout + resumed.stderr
  assert f"Resumed from {saved}" in resumed.stdout
  assert "step 6/6" in resumed.stdout and "step 1/6" not in resumed.stdout
  assert_same_weights(final_weights(model_dir), reference)


def test_sigterm_saves_a_checkpoint_then_resumes(data, reference, tmp_path):
  model_dir = str(tmp_path / "run")
  # No periodic checkpoints: the one after SIGTERM is the only one before epoch end.
  job = Spawned(args_for(model_dir, data, "--checkpoint_steps=1000"))
  job.wait_for(r"^step 1/6")
  job.proc.send_signal(signal.SIGTERM)
  code = job.finish()
  out = job.output()
  assert code == 143, out
  match = re.search(r"Checkpoint saved at step (\d+); exiting on the preemption signal", out)
  assert match, out
  step = int(match.group(1))
  assert step < TOTAL_STEPS
  saved = model_dir_lib.latest_checkpoint(model_dir)
  assert checkpoint_step(saved) == step

  resumed = run(args_for(model_dir, data, "--checkpoint_steps=1000"))
  assert resumed.returncode == 0, resumed.stdout + resumed.stderr
  assert f"Resumed from {saved}: step {step}" in resumed.stdout
  assert_same_weights(final_weights(model_dir), reference)


def test_kill_during_checkpoint_write_keeps_the_previous_checkpoint(data, tmp_path):
  model_dir = str(tmp_path / "run")
  ckpt_dir = model_dir_lib.checkpoint_dir(model_dir)
  job = Spawned(args_for(model_dir, data, "--checkpoint_steps=1"))
  job.wait_for(r"^step 1/6")
  # A checkpoint is ~0.5 GB (weights + momentum): poll for its temporary files, kill then.
  writing = None
  deadline = time.monotonic() + 300
  while writing is None and job.proc.poll() is None and time.monotonic() < deadline:
    if os.path.isdir(ckpt_dir):
      temps = [n for n in os.listdir(ckpt_dir) if "_temp" in n]
      # The `checkpoint` index, not latest_checkpoint: without an index, that lists the ckpt-N
      # files, and the first checkpoint's are complete before its temporary files are gone.
      if temps and os.path.isfile(os.path.join(ckpt_dir, "checkpoint")):
        writing = temps[0]
        job.proc.send_signal(signal.SIGKILL)
        break
    time.sleep(0.002)
  job.finish()
  assert writing is not None, "never caught a checkpoint write in progress:\n" + job.output()
  writing_step = int(re.match(r"ckpt-(\d+)", writing).group(1))
  previous = model_dir_lib.latest_checkpoint(model_dir)
  assert checkpoint_step(previous) < writing_step
  tf.train.load_checkpoint(previous)  # Readable.

  resumed = run(args_for(model_dir, data, "--checkpoint_steps=1",
                         f"--max_steps={checkpoint_step(previous) + 1}"))
  assert resumed.returncode == 0, resumed.stdout + resumed.stderr
  assert f"Resumed from {previous}" in resumed.stdout
  assert "a checkpoint write that was interrupted" in resumed.stdout
  assert not [n for n in os.listdir(ckpt_dir) if "_temp" in n]


def test_newest_unreadable_checkpoint_falls_back_to_previous(data, tmp_path):
  model_dir = str(tmp_path / "run")
  proc = run(args_for(model_dir, data, "--checkpoint_steps=1", "--max_steps=2"))
  assert proc.returncode == 0, proc.stdout + proc.stderr
  newest = model_dir_lib.latest_checkpoint(model_dir)
  assert checkpoint_step(newest) == 2
  data_file = [os.path.join(os.path.dirname(newest), name)
               for name in os.listdir(os.path.dirname(newest)) if name.startswith("ckpt-2.data")]
  # A data file cut short (a partial copy, a full disk): the resume stopped with IndexError's
  # traceback ("Read less bytes than requested"); now it resumes from the one before.
  assert len(data_file) == 1
  os.truncate(data_file[0], os.path.getsize(data_file[0]) // 2)
  previous = newest[:-1] + "1"
  resumed = run(args_for(model_dir, data, "--checkpoint_steps=1000", "--max_steps=2"))
  assert resumed.returncode == 0, resumed.stdout + resumed.stderr
  assert "Traceback" not in resumed.stderr
  assert (f"Checkpoint {newest} cannot be read: a data file is cut short or damaged (Read less "
          "bytes than requested); trying the one before it.") in resumed.stdout, resumed.stdout
  assert f"Resumed from {previous}: step 1" in resumed.stdout
  os.remove(data_file[0])  # A lost data file (damaged disk).
  assert model_dir_lib.latest_checkpoint(model_dir) == previous
  # A resume that would count steps otherwise, or not read the checkpoints, is refused: a larger
  # batch "finished" the run at once, float16 made good checkpoints look damaged, and the
  # checkpoints/ folder as --model_dir started a new run inside it.
  for extra, message in [
      (("--batch_size=2",), f"error: --model_dir {model_dir!r} was trained with --batch_size=4, "
                            "but this run asks for 2: its steps, epochs and learning-rate "
                            "schedule count batches of 4; resume with --batch_size=4, or use a "
                            "new --model_dir."),
      (("--steps_per_epoch=2",), f"error: --model_dir {model_dir!r} has epochs of 3 steps, but "
                                 "this run's have 2"),
      (("--mixed_precision=float16",), f"error: --model_dir {model_dir!r} was trained with no "
                                       "float16, and float16's loss scaling changes what a "
                                       "checkpoint holds; resume with --mixed_precision=none, "
                                       "bfloat16 or auto, or use a new --model_dir.")]:
    refused = run(args_for(model_dir, data, "--max_steps=3", *extra))
    assert refused.returncode == 1 and message in refused.stderr, refused.stderr
  # A resume records the run's --initialization, not this command's (which changed nothing).
  resumed = run(args_for(model_dir, data, "--max_steps=3", "--initialization=he"))
  assert resumed.returncode == 0, resumed.stdout + resumed.stderr
  assert model_dir_lib.read_config(model_dir)["model"]["initialization"] == "paper"
  inside = os.path.join(model_dir, "checkpoints")
  refused = run(args_for(inside, data, "--max_steps=3"))
  assert refused.returncode == 1 and (
      f"error: --model_dir {inside!r} holds checkpoint files but no config.json: is it a run's "
      "checkpoints/ folder?") in refused.stderr, refused.stderr
  assert not os.path.exists(os.path.join(inside, "config.json"))


def test_lost_worker_stops_the_other_then_the_job_resumes(data, tmp_path, worker_envs):
  model_dir = str(tmp_path / "run")
  extra = ("--strategy=multi_worker", "--checkpoint_steps=1", "--collective_timeout=60",
           "--epochs=20")
  workers = [Spawned(args_for(model_dir, data, *extra), env=env)
             for env in worker_envs(2, ENV)]
  try:
    workers[0].wait_for(r"^step 2/")
    workers[1].proc.send_signal(signal.SIGKILL)
    start = time.monotonic()
    code = workers[0].finish(timeout=150)
    waited = time.monotonic() - start
  finally:
    for w in workers:
      w.proc.kill()
  out = workers[0].output()
  assert code not in (0, None), out
  assert waited < 150
  assert "Traceback" not in out, out
  assert re.search(r"lost contact with another worker|worker.*(failed|unavailable)", out,
                   re.IGNORECASE), out
  saved = model_dir_lib.latest_checkpoint(model_dir)
  assert saved is not None

  # Restarting the whole job (both workers, new ports) resumes from the chief's checkpoint.
  extra_short = (*extra[:-1], "--epochs=1")
  workers = [Spawned(args_for(model_dir, data, *extra_short), env=env)
             for env in worker_envs(2, ENV)]
  codes = [w.finish(timeout=300) for w in workers]
  assert codes == [0, 0], [w.output() for w in workers]
  for w in workers:
    assert f"Resumed from {saved}" in w.output(), w.output()


def test_nan_stops_with_the_step_and_keeps_the_last_good_checkpoint(data, tmp_path):
  model_dir = str(tmp_path / "run")
  proc = run(args_for(model_dir, data, "--checkpoint_steps=1", "--learning_rate=1e12",
                      "--lr_schedule=constant"))
  assert proc.returncode == 1, proc.stdout + proc.stderr
  match = re.search(r"NaN/Inf at step (\d+); the last good checkpoint is (\S+)\.", proc.stderr)
  assert match, proc.stderr
  assert "Traceback" not in proc.stderr
  bad_step, last_good = int(match.group(1)), match.group(2)
  assert checkpoint_step(last_good) == bad_step - 1
  assert model_dir_lib.latest_checkpoint(model_dir) == last_good
  model, _ = restore_model(model_dir)
  assert all(np.isfinite(v.numpy()).all() for v in model.weights)


def test_nan_recovery_restores_and_lowers_the_learning_rate(data, tmp_path):
  model_dir = str(tmp_path / "run")
  proc = run(args_for(model_dir, data, "--checkpoint_steps=1", "--learning_rate=1e12",
                      "--nan_recovery", "--max_steps=4"))
  out = proc.stdout + proc.stderr
  assert "divided the learning rate by 10" in out, out
  assert "Traceback" not in out


def _corrupt(path, how):
  if how == "truncated":
    data = open(path, "rb").read()
    open(path, "wb").write(data[:len(data) // 3])
  else:
    open(path, "wb").write(b"this is not an image")


def _split_files(root, split="train"):
  folder = os.path.join(root, split)
  return sorted(os.path.join(folder, c, f) for c in sorted(os.listdir(folder))
                for f in sorted(os.listdir(os.path.join(folder, c))))


def test_ten_percent_corrupt_jpegs_are_skipped_and_counted(tmp_path):
  root = shapes.generate(str(tmp_path / "data"), num_train=20, num_validation=6, seed=9)
  files = _split_files(root)
  _corrupt(files[3], "truncated")
  _corrupt(files[11], "garbage")
  os.remove(files[15])  # A broken link counts too.
  os.symlink(os.path.join(root, "moved", "x.jpg"), files[15])
  _corrupt(_split_files(root, "validation")[0], "garbage")  # In the one validation batch.
  model_dir = str(tmp_path / "run")
  proc = run(args_for(model_dir, root, "--epochs=1", "--steps_per_epoch=4"))
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert "corrupt skipped 3  val corrupt skipped 1" in proc.stdout, proc.stdout
  record = json.loads(open(os.path.join(model_dir, "metrics.jsonl")).readline())
  assert record["corrupt_images_skipped"] == 3 and record["val_corrupt_images_skipped"] == 1

  # Strict: the broken link, known from the listing, stops the run before training.
  strict = run(args_for(str(tmp_path / "strict"), root, "--epochs=1", "--strict_data"))
  assert strict.returncode != 0 and "Traceback" not in strict.stderr
  assert f"{files[15]} is a broken link" in strict.stderr, strict.stderr
  os.remove(files[15])
  strict = run(args_for(str(tmp_path / "strict"), root, "--epochs=1", "--strict_data"))
  assert strict.returncode != 0 and "Traceback" not in strict.stderr
  assert os.path.basename(files[3]) in strict.stderr or \
      os.path.basename(files[11]) in strict.stderr, strict.stderr


@pytest.mark.parametrize("strict", [True, False])
def test_validation_files_broken_mid_run(tmp_path, strict):
  """Before training a sample of each split is decoded (`check_source`); a file that breaks
  after it (or one outside the sample, of 256 records) stops a --strict_data run where the
  pipeline meets it, with one line naming it and no traceback. Without --strict_data, a
  validation split of which no image can be read stops the run too, rather than report NaN
  accuracies. Either way the epoch's checkpoint stays."""
  root = shapes.generate(str(tmp_path / "data"), num_train=40, num_validation=6, seed=9)
  validation = _split_files(root, "validation")
  broken = validation[:1] if strict else validation
  model_dir = str(tmp_path / "run")
  job = Spawned(args_for(model_dir, root, "--epochs=1", "--steps_per_epoch=10",
                         "--checkpoint_steps=5", *(["--strict_data"] if strict else [])))
  job.wait_for(r"^step 1/10")
  originals = {path: open(path, "rb").read() for path in broken}
  for path in broken:
    _corrupt(path, "truncated")
  code = job.finish()
  out = job.output()
  assert code == 1 and "Traceback" not in out and "step 10/10" in out, out
  expected = (f"error: corrupt image file {broken[0]} (--strict_data)" if strict else
              "error: no image of the validation split could be read (6 corrupt or "
              "unreadable); check --data_dir")
  assert [line for line in out.splitlines() if line.startswith("error:")] == [expected], out
  assert checkpoint_step(model_dir_lib.latest_checkpoint(model_dir)) == 10
  if strict:
    return
  # "A rerun only validates": with the files repaired it did not. The epoch's steps were all
  # done, so the rerun said "finished its 0 epochs" without validating (--epochs=1), or failed
  # with UnboundLocalError ('lr') when epochs were left (as after a kill during validation).
  for path, data in originals.items():
    open(path, "wb").write(data)
  rerun = run(args_for(model_dir, root, "--epochs=2", "--steps_per_epoch=10", "--max_steps=11",
                       "--checkpoint_steps=5"))
  assert rerun.returncode == 0 and "Traceback" not in rerun.stderr, rerun.stdout + rerun.stderr
  lines = rerun.stdout.splitlines()
  epoch_line = next(i for i, line in enumerate(lines) if line.startswith("epoch 1/2"))
  assert lines[epoch_line + 1].startswith("step 11/11"), rerun.stdout
  records = [json.loads(line) for line in open(os.path.join(model_dir, "metrics.jsonl"))]
  assert [(r["epoch"], r["step"]) for r in records] == [(1, 10)]
  assert records[0]["learning_rate"] == pytest.approx(0.005)
  assert records[0]["loss"] is None and records[0]["val_top1"] is not None


@pytest.mark.parametrize("split", ["train", "validation"])
def test_mostly_broken_dataset_stops_before_training(tmp_path, split):
  root = shapes.generate(str(tmp_path / "data"), num_train=12, num_validation=6, seed=9)
  for path in _split_files(root, split)[:{"train": 9, "validation": 5}[split]]:
    _corrupt(path, "garbage")
  model_dir = str(tmp_path / "run")
  proc = run(args_for(model_dir, root))
  assert proc.returncode != 0
  assert "Traceback" not in proc.stderr and "--data_dir" in proc.stderr, proc.stderr
  assert not os.path.exists(model_dir)


def test_unwritable_checkpoint_directory_is_reported(data, tmp_path):
  model_dir = tmp_path / "run"
  model_dir.mkdir()
  (model_dir / "checkpoints").write_text("a file where the checkpoint folder should be")
  proc = run(args_for(str(model_dir), data, "--max_steps=1"))
  assert proc.returncode != 0
  assert "Traceback" not in proc.stderr, proc.stderr
  assert "could not write a checkpoint" in proc.stderr.strip().splitlines()[-1], proc.stderr


def test_keep_checkpoints_bounds_the_disk_use(data, tmp_path):
  model_dir = str(tmp_path / "run")
  proc = run(args_for(model_dir, data, "--checkpoint_steps=1", "--max_steps=4"))
  assert proc.returncode == 0, proc.stdout + proc.stderr
  indexes = [n for n in os.listdir(model_dir_lib.checkpoint_dir(model_dir))
             if n.endswith(".index")]
  assert sorted(indexes) == ["ckpt-3.index", "ckpt-4.index"]
