"""Image ops of the paper (SPEC §1.4): decode, fixed resolution, crops, flips, PCA lighting.

All functions work on one image (no batch dimension; `apply_lighting` and `flip_and_light` also
take a batch) and return float32 RGB in 0..255 (NOT mean-subtracted: the model subtracts the mean
in its first layer), except the decode functions and `augment_for_train`, which return uint8 images.

The paper's fixed-resolution step is "rescale so the shorter side is 256, then take the central
256×256 patch" (`resize_shorter_side` + `center_crop`, or `fixed_resolution`). Training then takes
a random `image_size` (227 or 224) crop of that 256×256 image, flips it horizontally half of the
time and adds PCA lighting noise. Evaluation takes the centre crop or the ten crops.

Fused fast path (`decode_crop_and_resize`): resizing the whole photo to 256 and then cropping
discards most of the decoded pixels. For an image of size H×W with shorter side m = min(H, W), the
central 256×256 patch is the central m×m square of the original image, and a crop of c×c pixels at
offset (oy, ox) of the 256×256 patch is the window of side c·m/256 at
((H−m)/2 + oy·m/256, (W−m)/2 + ox·m/256) of the original (each rounded to whole pixels). The fused
path decodes only that window (`tf.image.decode_and_crop_jpeg`, which skips the IDCT of the rest;
see `_decode_jpeg_window` for why it starts the decode a few columns early) and resizes it to c×c
with one bilinear resize. This is equivalent to resize-then-crop up to resampling: the window is
rounded to whole source pixels (≤ 1 source pixel of shift/size) and the bilinear weights are those
of one resize from the window instead of two steps. Images smaller than 256 (m < 256) are upscaled
in the same way. Non-JPEG inputs (PNG, GIF, BMP, WebP) are decoded fully and the same window is
sliced out.

Randomness is stateless: every random op takes a `seed` tensor of shape [2] (int32/int64), so the
same (seed, image) gives the same augmentation; the input pipeline derives one seed per group of
elements from the user's `--seed`, the input-pipeline id and the group's index
(`draw_train_augmentation` draws a whole group's crops, flips and lighting shifts at once).

PCA lighting ("fancy PCA"): for each image, `shift = eigvec @ (alpha * eigval)` with
alpha ~ N(0, alphastd²) drawn once per image, added to every pixel. The common ImageNet constants
(`IMAGENET_EIGVAL`, `IMAGENET_EIGVEC`) are for pixels in [0, 1]; our pixels are in 0..255, so the
shift is computed in [0, 1] units and multiplied by 255 (the ecosystem convention: fb.resnet.torch,
timm). Eigenvalues of a covariance of 0..255 pixel values (what `alexnet_tf.tools.dataset_stats`
writes) are λ' = 255²·λ; `pca_lighting` recognises them (any eigenvalue > 1 cannot come from [0, 1]
pixels, whose total variance is at most 0.75) and divides them by 255², so both scales give the
same shift. The result is clipped to 0..255. Because the shift is one RGB offset per image,
drawing it (`lighting_shift`) and adding it (`apply_lighting`) can happen in different places: the
training pipeline draws it per image and adds it to the whole batch, or, in train.py, leaves
it and the flips to the training step (`flip_and_light`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

# SPEC §1.4: ImageNet RGB covariance eigen-pairs for pixels in [0, 1], eigenvectors as columns.
IMAGENET_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)
# The common per-channel substitute for the paper's per-pixel mean (0..255, RGB).
IMAGENET_MEAN_RGB = (123.68, 116.78, 103.94)
# The paper's fixed resolution.
FIXED_SIZE = 256
# Width in pixels of a JPEG's column of MCUs (minimum coded units) with 4:2:0 or 4:2:2 chroma
# (the usual photo JPEG); 4:4:4 and greyscale JPEGs have 8, which divides it.
_JPEG_MCU_WIDTH = 16


def decode_rgb(image_bytes: tf.Tensor) -> tf.Tensor:
  """Decodes one encoded image (JPEG, PNG, GIF, BMP, WebP) to RGB uint8 [H, W, 3].

  Gray, gray+alpha and RGBA images are converted to RGB (alpha dropped); CMYK JPEGs are
  converted to RGB by libjpeg; of an animated GIF the first frame is used. An animated WebP
  raises InvalidArgumentError (TF 2.21 cannot decode one to RGB).

  Args:
    image_bytes: scalar tf.string.
  """
  image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def image_shape(image_bytes: tf.Tensor) -> tf.Tensor:
  """Returns [height, width] (int32) of an encoded image, reading only the header for JPEG."""
  return tf.cond(
      tf.io.is_jpeg(image_bytes),
      lambda: tf.image.extract_jpeg_shape(image_bytes)[:2],
      lambda: tf.shape(decode_rgb(image_bytes))[:2],
  )


def _window_for_crop(image_shape: tf.Tensor, offset: tf.Tensor, crop_size: int,
                     fixed_size: int = FIXED_SIZE) -> tf.Tensor:
  """The window [y, x, h, w] of an [H, W] image that a crop of the fixed_size² patch covers.

  See the module docstring: the fixed_size² centre patch of the resized image is the central
  m×m square of the original (m = min(H, W)), and one pixel of the patch is m / fixed_size
  pixels of the original. `offset` is the crop's (y, x) in the patch. Computed on (y, x) pairs:
  it runs once per training image, where every op counts.
  """
  size = tf.cast(image_shape, tf.float32)
  m = tf.reduce_min(size)
  scale = m / float(fixed_size)
  corner = tf.floor((size - m) / 2.0)
  side = _window_side(m, crop_size, fixed_size)
  # Inside the central square: rounding could push the window out by a pixel.
  origin = tf.clip_by_value(corner + tf.round(tf.cast(offset, tf.float32) * scale), 0.0,
                            corner + m - side)
  return tf.cast(tf.concat([origin, tf.stack([side, side])], 0), tf.int32)


def _window_side(shorter_side: tf.Tensor, crop_size: int, fixed_size: int = FIXED_SIZE
                 ) -> tf.Tensor:
  """Side (float32, whole source pixels) of the window that a crop_size crop of the
  fixed_size² patch covers in images of that shorter side (any shape)."""
  return tf.maximum(tf.round(crop_size * (tf.cast(shorter_side, tf.float32) / float(fixed_size))),
                    1.0)


def crop_needs_no_resize(height: tf.Tensor, width: tf.Tensor, crop_size: int) -> tf.Tensor:
  """Whether the training crop of an image of this size is a window of exactly crop_size²
  pixels (bool, elementwise): true for a shorter side of 256, the fixed resolution that
  `make_tfrecords` stores. False where the size is unknown (0)."""
  m = tf.minimum(height, width)
  return tf.logical_and(m > 0, tf.equal(_window_side(m, crop_size), float(crop_size)))


def decode_crop_and_resize(image_bytes: tf.Tensor, crop_size: int,
                           offset: tf.Tensor | Sequence[int] | None = None,
                           fixed_size: int = FIXED_SIZE,
                           dtype: tf.DType = tf.float32) -> tf.Tensor:
  """Fused decode + fixed-resolution step + crop (see the module docstring).

  Computes, up to resampling, `fixed_resolution(decode_rgb(image_bytes))` cropped to
  crop_size × crop_size at `offset` (default: the centre crop), decoding only the window needed
  for JPEGs.

  Args:
    image_bytes: scalar tf.string, an encoded JPEG/PNG/GIF/BMP/WebP.
    crop_size: side of the output (≤ fixed_size).
    offset: (y, x) offset of the crop inside the fixed_size² patch, each in
      [0, fixed_size − crop_size]; None for the centre.
    fixed_size: the paper's fixed resolution, 256.
    dtype: float32 (default), or uint8 (resized pixels rounded to whole values).

  Returns:
    [crop_size, crop_size, 3] in 0..255, of `dtype`.
  """
  if not 0 < crop_size <= fixed_size:
    raise ValueError(f"crop_size must be in 1..{fixed_size}, got {crop_size}")
  if offset is None:
    c = (fixed_size - crop_size) // 2
    offset = (c, c)
  offset = tf.convert_to_tensor(offset)

  # Each branch also returns the window's [h, w], so the resize need not measure the image.
  def _jpeg() -> tuple[tf.Tensor, tf.Tensor]:
    shape = tf.image.extract_jpeg_shape(image_bytes)[:2]
    window = _window_for_crop(shape, offset, crop_size, fixed_size)
    return _decode_jpeg_window(image_bytes, window), window[2:]

  def _other() -> tuple[tf.Tensor, tf.Tensor]:
    image = decode_rgb(image_bytes)
    window = _window_for_crop(tf.shape(image)[:2], offset, crop_size, fixed_size)
    return image[window[0]:window[0] + window[2], window[1]:window[1] + window[3]], window[2:]

  image, window_size = tf.cond(tf.io.is_jpeg(image_bytes), _jpeg, _other)
  image.set_shape([None, None, 3])
  return _resize_to(image, crop_size, crop_size, dtype, image_size=window_size)


def _decode_jpeg_window(image_bytes: tf.Tensor, window: tf.Tensor) -> tf.Tensor:
  """`tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3)`, pixel for pixel, faster.

  libjpeg-turbo starts a cropped decode at a column of MCUs. When the window starts inside one,
  TF decodes every row into a scratch row and copies the window's part out; on ~500×375 photos
  that made the window decode barely cheaper than the full decode (1.01–1.07 ms against
  1.07–1.11 on one core). Decoding from the MCU column's first pixel writes the rows in place
  (0.95–0.96 ms), and slicing the few extra columns off costs less than TF's copy
  (benchmarks/RESULTS.md). The pixels are the same: both decode the same MCU columns. JPEGs with
  wider MCUs (4:1:1) still decode correctly, through TF's copy.
  """
  extra = window[1] % _JPEG_MCU_WIDTH
  image = tf.image.decode_and_crop_jpeg(image_bytes, window - tf.stack([0, extra, 0, -extra]),
                                        channels=3)
  return image[:, extra:extra + window[3]]


def _resize_to(image: tf.Tensor, height: int | tf.Tensor, width: int | tf.Tensor,
               dtype: tf.DType = tf.float32, image_size: tf.Tensor | None = None) -> tf.Tensor:
  """Bilinear resize to `dtype` (0..255 values); antialiased only when shrinking by more than 2×.

  Plain bilinear interpolation reads every source pixel when shrinking by less than 2× (the
  usual case here: a 256-pixel patch from a ~375-pixel photo), so it barely aliases; the
  antialiasing kernel costs ~3× a JPEG decode there. Beyond 2× it would skip pixels, so the
  antialiased kernel is used. Sizes that already match are only cast: even an identity resize
  costs more than decoding a small JPEG (e.g. a 227 crop of a 256-pixel TFRecord image).
  For uint8 output, resized values are rounded. `image_size`: the image's [H, W] when the
  caller knows it already.
  """
  shape = tf.shape(image)[:2] if image_size is None else image_size
  size = tf.stack([height, width])

  def _resize(antialias: bool) -> tf.Tensor:
    # TF's bilinear kernel runs ~1.4× faster on a float32 image than on uint8 (same result).
    out = tf.image.resize(tf.cast(image, tf.float32), size, method="bilinear",
                          antialias=antialias)
    if dtype == tf.uint8:
      # Both kernels average with non-negative weights summing to 1, so rounding alone lands
      # in 0..255: no clip needed (one pass fewer over the pixels).
      return tf.cast(tf.round(out), dtype)
    return tf.cast(tf.clip_by_value(out, 0.0, 255.0), dtype)

  # One three-way branch: 0 sizes match, 1 plain bilinear, 2 shrinking by more than 2×.
  kind = tf.where(tf.reduce_all(tf.equal(shape, size)), 0,
                  tf.where(tf.reduce_any(shape > 2 * size), 2, 1))
  resized = tf.switch_case(kind, [lambda: tf.cast(image, dtype), lambda: _resize(False),
                                  lambda: _resize(True)])
  static = [d if isinstance(d, int) else None for d in (height, width)]
  resized.set_shape(static + [image.shape[-1]])
  return resized


def resize_shorter_side(image: tf.Tensor, size: int = FIXED_SIZE) -> tf.Tensor:
  """Resizes [H, W, 3] so that min(H, W) == size (keeping the aspect ratio; upscales too).

  Bilinear, antialiased when shrinking by more than 2× (see `_resize_to`). Returns float32 in the
  input's value range.
  """
  shape = tf.shape(image)
  h = tf.cast(shape[0], tf.float32)
  w = tf.cast(shape[1], tf.float32)
  scale = float(size) / tf.minimum(h, w)
  new_h = tf.maximum(tf.cast(tf.round(h * scale), tf.int32), size)
  new_w = tf.maximum(tf.cast(tf.round(w * scale), tf.int32), size)
  return _resize_to(image, new_h, new_w)


def center_crop(image: tf.Tensor, size: int) -> tf.Tensor:
  """The central size×size crop of [H, W, C] (H, W ≥ size); offsets ((H−size)//2, (W−size)//2).

  Returns the same dtype as the input (exact slicing, no resampling).
  """
  image = tf.convert_to_tensor(image)
  size = _crop_size(size)
  shape = tf.shape(image)
  with tf.control_dependencies([_assert_at_least(image, shape, size)]):
    top = (shape[0] - size) // 2
    left = (shape[1] - size) // 2
  out = image[top:top + size, left:left + size]
  out.set_shape([size, size, image.shape[-1]])
  return out


def _crop_size(size: int) -> int:
  if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
    raise ValueError(f"crop size must be a positive integer; got {size!r}")
  return int(size)


def _assert_at_least(image: tf.Tensor, shape: tf.Tensor, size: int) -> tf.Operation:
  """Checks that a size×size crop fits in `image` (`shape` its dynamic shape): at once where
  its static shape tells (a batch, a small image), else when the returned op runs."""
  if image.shape.rank is not None:
    if image.shape.rank != 3:
      raise ValueError(f"image must be one [H, W, C] image; got shape {image.shape} (map a "
                       "batch with tf.map_fn)")
    if any(d is not None and d < size for d in image.shape[:2]):
      raise ValueError(f"image {image.shape[0]}x{image.shape[1]} is smaller than the crop "
                       f"size {size}")
  return tf.debugging.assert_greater_equal(
      tf.reduce_min(shape[:2]), size, message=f"image smaller than the crop size {size}")


def five_crop(image: tf.Tensor, size: int) -> tf.Tensor:
  """[5, size, size, C]: top-left, top-right, bottom-left, bottom-right, centre."""
  image = tf.convert_to_tensor(image)
  size = _crop_size(size)
  shape = tf.shape(image)
  with tf.control_dependencies([_assert_at_least(image, shape, size)]):
    h, w = shape[0], shape[1]
  crops = [
      image[:size, :size],
      image[:size, w - size:],
      image[h - size:, :size],
      image[h - size:, w - size:],
      center_crop(image, size),
  ]
  out = tf.stack(crops)
  out.set_shape([5, size, size, image.shape[-1]])
  return out


def ten_crop(image: tf.Tensor, size: int) -> tf.Tensor:
  """The paper's ten test crops, [10, size, size, C] (SPEC §1.4; torchvision `TenCrop` order).

  Order: top-left, top-right, bottom-left, bottom-right, centre of `image`, then the same five
  of the horizontally mirrored image.

  Args:
    image: [H, W, C], already at 256×256 (or larger).
    size: crop side (227 or 224).
  """
  image = tf.convert_to_tensor(image)
  return tf.concat([five_crop(image, size), five_crop(image[:, ::-1], size)], axis=0)


def fixed_resolution(image: tf.Tensor, size: int = FIXED_SIZE) -> tf.Tensor:
  """The paper's fixed-resolution step: shorter side to `size`, then the central size² patch."""
  return center_crop(resize_shorter_side(image, size), size)


def random_crop(image: tf.Tensor, size: int, seed: tf.Tensor) -> tf.Tensor:
  """A uniformly placed size×size crop of [H, W, C], stateless in `seed` ([2] ints)."""
  image = tf.convert_to_tensor(image)
  out = tf.image.stateless_random_crop(image, [size, size, image.shape[-1]], seed=seed)
  return out


def random_flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Mirrors [H, W, C] left-right with probability 1/2, stateless in `seed` ([2] ints)."""
  return tf.image.stateless_random_flip_left_right(image, seed=seed)


def _unit_eigval(eigval: tf.Tensor) -> tf.Tensor:
  """Eigenvalues on the [0, 1] pixel scale; 0..255-scale ones (any value > 1) are divided by 255²."""
  return tf.where(tf.reduce_max(eigval) > 1.0, eigval / (255.0 * 255.0), eigval)


def _shifts_from_alpha(alpha: tf.Tensor, eigval, eigvec) -> tf.Tensor:
  """`255 · eigvec @ (alpha * eigval)` for alpha [..., 3]: PCA lighting shifts (0..255 RGB)."""
  eigval = tf.constant(IMAGENET_EIGVAL if eigval is None else eigval, tf.float32)
  eigvec = tf.constant(IMAGENET_EIGVEC if eigvec is None else eigvec, tf.float32)
  eigval = _unit_eigval(tf.reshape(eigval, [3]))
  return 255.0 * tf.linalg.matvec(tf.reshape(eigvec, [3, 3]), alpha * eigval)


def lighting_shift(seed: tf.Tensor | None = None, alphastd: float = 0.1,
                   eigval: Sequence[float] | np.ndarray | tf.Tensor | None = None,
                   eigvec: Sequence[Sequence[float]] | np.ndarray | tf.Tensor | None = None
                   ) -> tf.Tensor:
  """One image's PCA lighting shift: `255 · eigvec @ (alpha * eigval)`, float32 [3] (RGB, 0..255).

  alpha ~ N(0, alphastd²) (3 values). See `pca_lighting` for the arguments; `apply_lighting`
  adds the shift to the image.
  """
  if seed is None:
    alpha = tf.random.normal([3], stddev=alphastd)
  else:
    alpha = tf.random.stateless_normal([3], seed=seed, stddev=alphastd)
  return _shifts_from_alpha(alpha, eigval, eigvec)


def draw_train_augmentation(seed: tf.Tensor, count: int | tf.Tensor, image_size: int = 227, *,
                            crop: bool = True, flip: bool = True, lighting: bool = True,
                            alphastd: float = 0.1, eigval=None, eigvec=None
                            ) -> dict[str, tf.Tensor]:
  """The random part of the training augmentation, drawn for `count` images at once.

  Returns {"offset": int32 [count, 2], the crop's (y, x) in the 256×256 patch (the centre when
  `crop` is False); "flip": bool [count] (all False when `flip` is False); "shift": float32
  [count, 3], the PCA lighting shifts (zeros when `lighting` is False)}. `decode_for_train` and
  `apply_lighting` apply them. Drawing a group at once costs a few ops per group instead of a
  dozen per image, which is a visible share of a small image's decode. Stateless in `seed`
  ([2] ints); see `lighting_shift` for alphastd, eigval and eigvec.
  """
  seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 3)
  room = FIXED_SIZE - image_size
  if crop:
    offset = tf.random.stateless_uniform([count, 2], seeds[0], minval=0, maxval=room + 1,
                                         dtype=tf.int32)
  else:
    offset = tf.fill([count, 2], room // 2)
  if flip:
    flips = tf.random.stateless_uniform([count], seeds[1]) < 0.5
  else:
    flips = tf.zeros([count], tf.bool)
  if lighting:
    alpha = tf.random.stateless_normal([count, 3], seeds[2], stddev=alphastd)
    shift = _shifts_from_alpha(alpha, eigval, eigvec)
  else:
    shift = tf.zeros([count, 3], tf.float32)
  return {"offset": offset, "flip": flips, "shift": shift}


def decode_for_train(image_bytes: tf.Tensor, offset: tf.Tensor, flip: tf.Tensor | None = None,
                     image_size: int = 227) -> tf.Tensor:
  """One training image from its draws: uint8 [image_size, image_size, 3].

  The fused decode + fixed resolution + crop at `offset` ((y, x) in the 256×256 patch; see
  `decode_crop_and_resize`), kept in uint8 (a resized window is rounded to whole values, which
  JPEG pixels are anyway), mirrored left-right when `flip` (scalar bool). With `flip=None` the
  image is not mirrored here: the training step mirrors it (`flip_and_light`).
  """
  image = decode_crop_and_resize(image_bytes, image_size, offset, dtype=tf.uint8)
  if flip is not None:
    image = tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image)
  image.set_shape([image_size, image_size, 3])
  return image


def decode_unresized_jpeg_for_train(image_bytes: tf.Tensor, offset: tf.Tensor,
                                    flip: tf.Tensor | None = None,
                                    image_size: int = 227) -> tf.Tensor:
  """`decode_for_train` for a JPEG whose crop needs no resize (`crop_needs_no_resize`): the
  same uint8 [image_size, image_size, 3] pixels, mirrored when `flip`.

  Such a JPEG's crop window is exactly image_size² pixels, so `decode_for_train` only decodes
  it; this does the same without its branches (image format, resize or not), which the training
  pipeline's per-record map pays for in every record (benchmarks/RESULTS.md). Raises
  InvalidArgumentError when the window is not image_size² (a JPEG of another size) or the
  bytes are not a JPEG.
  """
  window = _window_for_crop(tf.image.extract_jpeg_shape(image_bytes)[:2], offset, image_size)
  image = tf.ensure_shape(_decode_jpeg_window(image_bytes, window), [image_size, image_size, 3])
  if flip is not None:
    image = tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image)
  return image


def add_per_channel(images: tf.Tensor, values: tf.Tensor) -> tf.Tensor:
  """`images + values` with values broadcast per channel: [C] to every image, or [B, C] per image.

  Adding a 3-vector along the innermost axis vectorises badly in TensorFlow's CPU kernels;
  adding the vector tiled W times to rows of W·C values is the same arithmetic (bitwise) in
  about half the time (a batch of 128 227² images: 42 → 22 ms), which matters because the
  mean subtraction and the lighting run on every pixel of every step.

  Args:
    images: [H, W, C] or [B, H, W, C], float.
    values: [C], or [B, C] for a batch; cast to the images' dtype.
  """
  images = tf.convert_to_tensor(images)
  values = tf.convert_to_tensor(values, images.dtype)
  width, channels = images.shape[-2], images.shape[-1]
  if width is None or channels is None:
    return images + values[..., None, None, :]
  multiples = [1] * (values.shape.rank - 1) + [width]
  rows = tf.reshape(images, tf.concat([tf.shape(images)[:-2], [width * channels]], 0))
  rows += tf.tile(values, multiples)[..., None, :]  # [..., 1, W·C], broadcast over H.
  out = tf.reshape(rows, tf.shape(images))
  out.set_shape(images.shape)
  return out


def apply_lighting(images: tf.Tensor, shifts: tf.Tensor) -> tf.Tensor:
  """Adds per-image RGB shifts to images and clips to 0..255; float32 out.

  Args:
    images: [H, W, 3] or [B, H, W, 3], values in 0..255, any numeric dtype.
    shifts: [3] or [B, 3] float32, from `lighting_shift` (zeros leave the image as it is).
  """
  lit = add_per_channel(tf.cast(images, tf.float32), tf.convert_to_tensor(shifts, tf.float32))
  return tf.clip_by_value(lit, 0.0, 255.0)


def flip_and_light(images: tf.Tensor, flips: tf.Tensor, shifts: tf.Tensor) -> tf.Tensor:
  """Mirrors left-right the images whose flip is set, then `apply_lighting`; float32 out.

  The last two steps of the training augmentation, for a training step that finishes the
  images (`input_pipeline.build_train_dataset(..., finish_in_step=True)`): on an accelerator
  they cost the step next to nothing and the CPU pipeline neither mirrors nor lights.

  Args:
    images: [H, W, 3] or [B, H, W, 3], values in 0..255, any numeric dtype (uint8 from the
      training pipeline with `finish_in_step=True`).
    flips: bool, [] or [B]: mirror this image.
    shifts: [3] or [B, 3] float32, from `lighting_shift` (zeros leave the image as it is).
  """
  images = tf.convert_to_tensor(images)
  shape = tf.shape(images)
  # As rows of pixels ([N, W, C]) tf.reverse takes its fast path on CPU: 2.4x faster than
  # reversing axis 2 of a 4-D batch.
  rows = tf.reshape(images, tf.stack([-1, shape[-2], shape[-1]]))
  mirrored = tf.reshape(tf.reverse(rows, [1]), shape)
  # The v1 where picks whole images by a [B] condition; TF2's broadcasting where is 3x slower.
  chosen = tf.compat.v1.where(tf.convert_to_tensor(flips, tf.bool), mirrored, images)
  chosen.set_shape(images.shape)
  return apply_lighting(chosen, shifts)


def pca_lighting(image: tf.Tensor, alphastd: float = 0.1,
                 eigval: Sequence[float] | np.ndarray | tf.Tensor | None = None,
                 eigvec: Sequence[Sequence[float]] | np.ndarray | tf.Tensor | None = None,
                 seed: tf.Tensor | None = None) -> tf.Tensor:
  """The paper's PCA lighting noise on an RGB image in 0..255 (see the module docstring).

  Adds `255 · eigvec @ (alpha * eigval)` to every pixel, alpha ~ N(0, alphastd²) (3 values, drawn
  once per call), then clips to 0..255: `apply_lighting(image, lighting_shift(...))`.

  Args:
    image: [H, W, 3], values in 0..255 (any numeric dtype; returned as float32).
    alphastd: standard deviation of alpha (the paper's 0.1).
    eigval: 3 eigenvalues of the RGB covariance, on the [0, 1] pixel scale (SPEC) or the 0..255
      scale (as written by `dataset_stats`); default ImageNet's.
    eigvec: 3×3, one unit eigenvector per column; default ImageNet's.
    seed: [2] ints for a stateless draw; None draws from the global generator.
  """
  return apply_lighting(image, lighting_shift(seed, alphastd, eigval, eigvec))


def augment_for_train(image_bytes: tf.Tensor, seed: tf.Tensor, image_size: int = 227, *,
                      crop: bool = True, flip: bool = True, lighting: bool = True,
                      alphastd: float = 0.1, eigval=None, eigvec=None
                      ) -> tuple[tf.Tensor, tf.Tensor]:
  """One image's training augmentation: (uint8 [size, size, 3] image, float32 [3] shift).

  Fused decode + fixed resolution + random crop (centre crop when `crop` is False) + random
  horizontal flip (`flip`), kept in uint8, and the image's PCA lighting shift (`lighting`; zeros
  when off): `draw_train_augmentation` for one image, then `decode_for_train`.
  `apply_lighting(image, shift)` finishes the image; `preprocess_for_train` does both. The
  input pipeline does the same per group of images (see `input_pipeline.build_train_dataset`).
  Stateless in `seed` ([2] ints).
  """
  draws = draw_train_augmentation(seed, 1, image_size, crop=crop, flip=flip, lighting=lighting,
                                  alphastd=alphastd, eigval=eigval, eigvec=eigvec)
  image = decode_for_train(image_bytes, draws["offset"][0], draws["flip"][0], image_size)
  return image, draws["shift"][0]


def preprocess_for_train(image_bytes: tf.Tensor, seed: tf.Tensor, image_size: int = 227, *,
                         crop: bool = True, flip: bool = True, lighting: bool = True,
                         alphastd: float = 0.1, eigval=None, eigvec=None) -> tf.Tensor:
  """Encoded bytes → one augmented training image, float32 [image_size, image_size, 3] in 0..255.

  `augment_for_train` (decode, fixed resolution, random crop, flip, lighting shift) followed by
  `apply_lighting`; see there for the arguments. Stateless in `seed` ([2] ints).
  """
  image, shift = augment_for_train(image_bytes, seed, image_size, crop=crop, flip=flip,
                                   lighting=lighting, alphastd=alphastd, eigval=eigval,
                                   eigvec=eigvec)
  return apply_lighting(image, shift)


def preprocess_for_eval(image_bytes: tf.Tensor, image_size: int = 227, *,
                        num_crops: int = 1) -> tf.Tensor:
  """Encoded bytes → eval input: centre crop [size, size, 3] or ten crops [10, size, size, 3].

  `num_crops`: 1 (centre crop) or 10 (`ten_crop`). The fixed-resolution step (shorter side
  256, central 256² patch) decodes only the central square of a JPEG and resizes it to
  256×256 (same as resize-then-crop up to resampling); the crops are then exact slices
  (`center_crop` / `ten_crop`). float32 in 0..255.
  """
  if num_crops not in (1, 10):
    raise ValueError(f"num_crops must be 1 or 10, got {num_crops}")
  image = decode_crop_and_resize(image_bytes, FIXED_SIZE)
  if num_crops == 10:
    return ten_crop(image, image_size)
  return center_crop(image, image_size)
