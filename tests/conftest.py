"""Shared pytest fixtures: small generated image datasets (no downloads).

- `shapes_root`: a session-wide small `shapes` dataset (60 train / 24 validation JPEGs, the 6
  classes) in a temporary folder; `load_source("shapes", split, data_dir=shapes_root)` uses it.
- `image_folder(root, ...)`: writes ROOT/<split>/<label>/*.jpg|png of random-size images.
- `encode_image(array, fmt)`: PIL-encoded bytes of a uint8 array ("JPEG", "PNG", "CMYK", "GRAY").
- `isolated_cache`: points $ALEXNET_TF_CACHE at a fresh temporary folder for one test.
- `worker_envs(n, base)`: environments of an n-worker TF_CONFIG cluster on free localhost ports.
"""

from __future__ import annotations

import io
import json
import os
import socket

import numpy as np
import pytest
from PIL import Image

SMALL_TRAIN = 60
SMALL_VALIDATION = 24


def encode_image(array: np.ndarray, fmt: str = "JPEG", quality: int = 95,
                 subsampling: int = -1) -> bytes:
  """Encodes a uint8 [H, W, 3] (or [H, W]) array; fmt JPEG, PNG, CMYK (JPEG), GRAY (JPEG),
  GRAYPNG, RGBA (PNG), PALETTE (PNG), WEBP (lossless). `subsampling` (JPEG, PIL's codes):
  2 = 4:2:0, 1 = 4:2:2, 0 = 4:4:4, -1 = PIL's default."""
  image = Image.fromarray(np.asarray(array, np.uint8))
  buf = io.BytesIO()
  jpeg = {"quality": quality, "subsampling": subsampling}
  if fmt == "JPEG":
    image.convert("RGB").save(buf, "JPEG", **jpeg)
  elif fmt == "CMYK":
    image.convert("CMYK").save(buf, "JPEG", **jpeg)
  elif fmt == "GRAY":
    image.convert("L").save(buf, "JPEG", **jpeg)
  elif fmt == "GRAYPNG":
    image.convert("L").save(buf, "PNG")
  elif fmt == "RGBA":
    image.convert("RGBA").save(buf, "PNG")
  elif fmt == "PALETTE":
    image.convert("P", palette=Image.ADAPTIVE).save(buf, "PNG")
  elif fmt == "PNG":
    image.save(buf, "PNG")
  elif fmt == "WEBP":
    image.save(buf, "WEBP", lossless=True)
  else:
    raise ValueError(fmt)
  return buf.getvalue()


def smooth_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """A smooth random RGB image (JPEG-friendly: resampling and compression change it little)."""
  small = rng.integers(0, 256, size=(4, 4, 3)).astype(np.uint8)
  return np.asarray(Image.fromarray(small).resize((width, height), Image.BICUBIC))


def write_image_folder(root: str, classes=("cat", "dog"), per_class: int = 3,
                       splits=("train", "validation"), fmt: str = "JPEG",
                       sizes=((300, 260), (256, 400), (120, 90)), seed: int = 0) -> str:
  """Writes ROOT/<split>/<class>/<i>.jpg (or .png) and returns ROOT."""
  rng = np.random.default_rng(seed)
  ext = "png" if fmt in ("PNG", "RGBA", "GRAYPNG", "PALETTE") else "jpg"
  for split in splits:
    for name in classes:
      d = os.path.join(root, split, name)
      os.makedirs(d, exist_ok=True)
      for i in range(per_class):
        h, w = sizes[i % len(sizes)]
        with open(os.path.join(d, f"{i}.{ext}"), "wb") as f:
          f.write(encode_image(smooth_image(rng, h, w), fmt))
  return root


@pytest.fixture
def image_folder(tmp_path):
  """`image_folder(**kwargs)` writes a folder dataset under tmp_path and returns its root."""
  counter = [0]

  def make(**kwargs) -> str:
    counter[0] += 1
    return write_image_folder(str(tmp_path / f"folder{counter[0]}"), **kwargs)

  return make


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory) -> str:
  from alexnet_tf import shapes
  root = str(tmp_path_factory.mktemp("shapes_cache") / "shapes")
  return shapes.generate(root, num_train=SMALL_TRAIN, num_validation=SMALL_VALIDATION)


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch) -> str:
  cache = str(tmp_path / "cache")
  monkeypatch.setenv("ALEXNET_TF_CACHE", cache)
  return cache


def _free_ports(n: int) -> list[int]:
  # All sockets stay bound until every port is chosen, so the n ports differ.
  socks = [socket.socket() for _ in range(n)]
  try:
    for s in socks:
      s.bind(("localhost", 0))
    return [s.getsockname()[1] for s in socks]
  finally:
    for s in socks:
      s.close()


@pytest.fixture
def worker_envs():
  """`worker_envs(n, base=os.environ)`: one environment per worker of a fresh n-worker
  cluster on localhost, each with its TF_CONFIG (worker i has task index i)."""

  def make(n: int, base: dict | None = None) -> list[dict]:
    cluster = {"worker": [f"localhost:{p}" for p in _free_ports(n)]}
    base = dict(os.environ if base is None else base)
    return [dict(base, TF_CONFIG=json.dumps({"cluster": cluster,
                                             "task": {"type": "worker", "index": i}}))
            for i in range(n)]

  return make
