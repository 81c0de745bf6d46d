"""The built-in `shapes` dataset: real JPEGs of coloured shapes, generated locally.

`generate(root)` writes ROOT/train/<class>/*.jpg and ROOT/validation/<class>/*.jpg: one shape per
image (circle, square, triangle, star, cross, ring) in a random colour, size, position and
rotation on a random background (flat, gradient or noisy), images of random size with the shorter
side in 256..320 and aspect ratio up to 1.5, JPEG quality 90. The shape always lies inside the
central square of the image (the part the paper's fixed-resolution step keeps) and covers roughly
15–55% of its side, so it survives a random 227 crop of the 256×256 patch. The classes are
visually distinct, so AlexNet learns them to > 90% validation accuracy in a few epochs.

Generation is deterministic (each image from its own RNG seeded by (seed, split, index)) and
idempotent: the images are written into a temporary sibling folder, a marker file
(`MARKER`, with the generation parameters) is written last and the folder is renamed into place,
so a half-written cache is never used and is regenerated; a complete cache with the same
parameters is reused. The default size (3000 train + 600 validation) takes ~10–20 s.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import uuid

import numpy as np
from PIL import Image, ImageDraw

from alexnet_tf.errors import UserError

CLASS_NAMES = ("circle", "cross", "ring", "square", "star", "triangle")
MARKER = ".alexnet_tf_shapes.json"
VERSION = 1
DEFAULT_NUM_TRAIN = 3000
DEFAULT_NUM_VALIDATION = 600
CACHE_ENV = "ALEXNET_TF_CACHE"


def cache_root() -> str:
  """The package's cache folder: $ALEXNET_TF_CACHE, else ~/.cache/alexnet_tf."""
  return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "alexnet_tf")


def default_dir() -> str:
  """The default cache folder: $ALEXNET_TF_CACHE/shapes, else ~/.cache/alexnet_tf/shapes."""
  return os.path.join(cache_root(), "shapes")


def _params(num_train: int, num_validation: int, seed: int) -> dict:
  return {"version": VERSION, "num_train": num_train, "num_validation": num_validation,
          "seed": seed, "classes": list(CLASS_NAMES)}


def is_complete(root: str, num_train: int = DEFAULT_NUM_TRAIN,
                num_validation: int = DEFAULT_NUM_VALIDATION, seed: int = 0) -> bool:
  """Whether ROOT holds a complete dataset generated with these parameters."""
  try:
    with open(os.path.join(root, MARKER)) as f:
      return json.load(f) == _params(num_train, num_validation, seed)
  except (OSError, ValueError):
    return False


def ensure(root: str | None = None) -> str:
  """ROOT if it holds a complete shapes dataset of this version (any size), else `generate(root)`.

  This is what `--dataset=shapes --data_dir=ROOT` uses, so a smaller or larger set generated
  with `generate(ROOT, num_train, num_validation)` beforehand is used as is.
  """
  root = os.path.abspath(os.path.expanduser(root or default_dir()))
  try:
    with open(os.path.join(root, MARKER)) as f:
      params = json.load(f)
    if params.get("version") == VERSION and params.get("classes") == list(CLASS_NAMES):
      return root
  except (OSError, ValueError, AttributeError):
    pass
  return generate(root)


def generate(root: str | None = None, num_train: int = DEFAULT_NUM_TRAIN,
             num_validation: int = DEFAULT_NUM_VALIDATION, seed: int = 0) -> str:
  """Generates the shapes dataset into ROOT (once) and returns ROOT.

  Args:
    root: the dataset folder; default `default_dir()`. It must be absent, empty, or a shapes
      dataset written by this function (it is replaced when its parameters differ).
    num_train: images in ROOT/train, spread evenly over the classes (class = index % classes).
    num_validation: images in ROOT/validation.
    seed: all pixels are a function of (seed, split, index).
  """
  root = os.path.abspath(os.path.expanduser(root or default_dir()))
  if num_train < len(CLASS_NAMES) or num_validation < len(CLASS_NAMES):
    raise UserError(f"shapes needs at least {len(CLASS_NAMES)} images per split "
                    f"(got num_train={num_train}, num_validation={num_validation})")
  if is_complete(root, num_train, num_validation, seed):
    return root
  # Only this function's own files are ever replaced (a cache of other parameters): anything
  # else, such as a train/ and validation/ of the user's own images, is the user's data.
  foreign = _foreign_files(root)
  if foreign:
    raise UserError(f"--data_dir={root} holds files that are not the built-in shapes dataset's "
                    f"(e.g. {', '.join(foreign)}); for your own images pass --dataset=folder "
                    "(or tfrecord), for shapes an empty or new folder")
  try:
    _write(root, num_train, num_validation, seed)
  except OSError as e:  # A read-only or full disk, a file where a folder should be.
    raise UserError(f"cannot write the shapes dataset to {root}: {e.strerror or e} "
                    f"({e.filename or root}); pass --data_dir (or set ${CACHE_ENV}) to a "
                    "writable folder") from None
  return root


def _foreign_files(root: str, limit: int = 2) -> list[str]:
  """Up to `limit` paths under ROOT (relative) that `generate` would not have written.

  Without the marker file every file is foreign: `generate` writes the folder whole (renamed
  into place with the marker in it), so image files alone are a copy, such as a user's subset.
  """
  owned = os.path.isfile(os.path.join(root, MARKER))
  foreign = []
  for top, folders, files in os.walk(root):
    rel = os.path.relpath(top, root)
    depth = 0 if rel == "." else rel.count(os.sep) + 1
    if depth == 0:
      expected_folders, expected_file = {"train", "validation"}, lambda f: f == MARKER
    elif depth == 1:
      expected_folders, expected_file = set(CLASS_NAMES), lambda f: False
    else:
      split = rel.split(os.sep)[0]
      expected_folders = set()
      expected_file = (re.compile(rf"{split}_\d{{6}}\.jpg").fullmatch if owned
                       else lambda f: False)
    foreign += [os.path.join(rel, f) for f in sorted(folders) if f not in expected_folders]
    foreign += [os.path.join(rel, f) for f in sorted(files) if not expected_file(f)]
    folders[:] = [f for f in folders if f in expected_folders]
    if len(foreign) >= limit:
      break
  return [os.path.normpath(f) for f in foreign[:limit]]


def _write(root: str, num_train: int, num_validation: int, seed: int) -> None:
  """Renders the dataset into a temporary folder beside ROOT, then renames it to ROOT."""
  parent = os.path.dirname(root)
  os.makedirs(parent, exist_ok=True)
  tmp = f"{root}.partial-{uuid.uuid4().hex[:8]}"
  try:
    for split, count in (("train", num_train), ("validation", num_validation)):
      for name in CLASS_NAMES:
        os.makedirs(os.path.join(tmp, split, name))
      for index in range(count):
        label = index % len(CLASS_NAMES)
        image = render(seed, split, index)
        path = os.path.join(tmp, split, CLASS_NAMES[label], f"{split}_{index:06d}.jpg")
        image.save(path, "JPEG", quality=90)
    with open(os.path.join(tmp, MARKER), "w") as f:  # Written last.
      json.dump(_params(num_train, num_validation, seed), f)
    if os.path.isdir(root):
      if is_complete(root, num_train, num_validation, seed):  # Another process won the race.
        return
      shutil.rmtree(root, ignore_errors=True)
    try:
      os.rename(tmp, root)
    except OSError:
      if not is_complete(root, num_train, num_validation, seed):
        raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
  return np.random.default_rng([seed, 0 if split == "train" else 1, index, VERSION])


def _colour(rng: np.random.Generator) -> np.ndarray:
  return rng.integers(0, 256, size=3)


def _distinct_colour(rng: np.random.Generator, background: np.ndarray) -> tuple[int, int, int]:
  """A random colour far enough from the background's mean colour to be clearly visible."""
  for _ in range(100):
    c = _colour(rng)
    if np.abs(c - background).sum() > 180:
      break
  else:  # Fall back to the complement.
    c = 255 - background
  return tuple(int(v) for v in c)


def _background(rng: np.random.Generator, height: int,
                width: int) -> tuple[Image.Image, np.ndarray]:
  """A flat, gradient or noisy background and its mean colour.

  Gradients and noise are drawn on a coarse grid (one cell per 16 pixels) and upsampled by PIL,
  which keeps generation fast.
  """
  kind = rng.integers(3)
  c1 = _colour(rng).astype(np.float32)
  gh, gw = height // 16 + 1, width // 16 + 1
  if kind == 0:
    small = np.broadcast_to(c1, (1, 1, 3))
    resample = Image.NEAREST
  elif kind == 1:
    c2 = c1 + np.clip(_colour(rng) - c1, -90, 90)  # Gentle, so the mean colour is meaningful.
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:gh, 0:gw].astype(np.float32)
    t = np.cos(angle) * xx / gw + np.sin(angle) * yy / gh
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    small = c1 + t[..., None] * (c2 - c1)
    resample = Image.BILINEAR
  else:
    small = c1 + rng.normal(0.0, 25.0, size=(gh, gw, 3)).astype(np.float32)
    resample = Image.NEAREST
  small = np.clip(small, 0, 255).astype(np.uint8)
  image = Image.fromarray(np.ascontiguousarray(small)).resize((width, height), resample)
  return image, small.reshape(-1, 3).mean(axis=0)


def _polygon(cx: float, cy: float, radii: list[float], angles: list[float]) -> list[tuple]:
  return [(cx + r * math.cos(a), cy + r * math.sin(a)) for r, a in zip(radii, angles)]


def _draw(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, rot: float,
          colour: tuple[int, int, int], background: tuple[int, int, int]) -> None:
  """Draws one shape of 'radius' r (half its extent) centred at (cx, cy), rotated by rot."""
  if shape == "circle":
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
  elif shape == "ring":
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=colour, width=max(3, int(r * 0.3)))
  elif shape == "square":
    s = r * math.sqrt(2) * 0.9
    draw.polygon(_polygon(cx, cy, [s] * 4, [rot + math.pi / 4 + k * math.pi / 2 for k in range(4)]),
                 fill=colour)
  elif shape == "triangle":
    draw.polygon(_polygon(cx, cy, [r] * 3, [rot + k * 2 * math.pi / 3 for k in range(3)]),
                 fill=colour)
  elif shape == "star":
    radii = [r if k % 2 == 0 else r * 0.42 for k in range(10)]
    draw.polygon(_polygon(cx, cy, radii, [rot + k * math.pi / 5 for k in range(10)]), fill=colour)
  elif shape == "cross":
    w = r * 0.34  # Half the bar width.
    pts = [(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w),
           (-r, w), (-r, -w), (-w, -w)]
    c, s = math.cos(rot), math.sin(rot)
    draw.polygon([(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts], fill=colour)
  else:
    raise ValueError(shape)
  del background


def render(seed: int, split: str, index: int) -> Image.Image:
  """The PIL image of example `index` of `split` (class `CLASS_NAMES[index % 6]`)."""
  rng = _rng(seed, split, index)
  shape = CLASS_NAMES[index % len(CLASS_NAMES)]
  short = int(rng.integers(256, 321))
  long = int(short * rng.uniform(1.0, 1.5))
  height, width = (short, long) if rng.random() < 0.5 else (long, short)
  image, mean = _background(rng, height, width)
  draw = ImageDraw.Draw(image)
  colour = _distinct_colour(rng, mean)
  # Geometry in the central short×short square, which the fixed-resolution step keeps.
  r = short * rng.uniform(0.15, 0.28)
  margin = short * 0.06
  half = short / 2
  cx = width / 2 + rng.uniform(-1, 1) * max(half - r - margin, 0)
  cy = height / 2 + rng.uniform(-1, 1) * max(half - r - margin, 0)
  rot = rng.uniform(0, 2 * math.pi)
  _draw(draw, shape, cx, cy, r, rot, colour, tuple(int(v) for v in mean))
  return image
