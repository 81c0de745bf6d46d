"""The benchmark scripts' quick runs (benchmarks/README.md): they must run and report, in the
formats the package's pipeline and training step take today. The numbers mean nothing here."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(script: str, args: list[str], tmp_path) -> tuple[str, dict]:
  output = tmp_path / "results.json"
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, "benchmarks", script), *args, f"--json={output}"],
      cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
  return proc.stdout, json.loads(output.read_text())


def test_throughput_quick_run(tmp_path, shapes_root):
  stdout, results = _run("throughput.py", [
      "--repeats=1", "--steps=1", "--batch_size=2", "--warmup_steps=1", "--matmul_size=256",
      "--matmul_seconds=0.1", "--pipeline_presteps=1", f"--data_dir={shapes_root}"], tmp_path)
  assert "train step, train.py input" in stdout
  for section in ("train", "inference", "pipeline"):
    for precision in ("float32", "bfloat16"):
      rate = results[section][precision]["images_per_sec"]
      assert rate > 0 and math.isfinite(rate), (section, precision)
  assert math.isfinite(results["train"]["float32"]["last_loss"])


def test_input_pipeline_quick_run(tmp_path):
  stdout, results = _run("input_pipeline.py", [
      "--repeats=1", "--seconds=0.5", "--warmup_seconds=0.2", "--batch_size=4",
      "--num_images=12", "--num_shards=2", f"--work_dir={tmp_path / 'work'}",
      "--train_images_per_sec=10"], tmp_path)
  assert "training pipeline, all" in stdout
  for data in ("full_size_jpeg", "tfrecord_256"):
    for kind in ("pipeline_all_cores", "pipeline_one_core"):
      assert results["results"][data][kind]["images_per_sec"] > 0, (data, kind)
