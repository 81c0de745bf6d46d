"""Tests of alexnet_tf.preprocessing: crops, decode, resize, flips, PCA lighting."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from alexnet_tf import preprocessing as pp
from conftest import encode_image, smooth_image


@pytest.fixture(scope="module")
def decoded_256():
  """A decoded JPEG at the paper's fixed resolution (exact crops are taken of it)."""
  rng = np.random.default_rng(1)
  data = encode_image(rng.integers(0, 256, (300, 340, 3)).astype(np.uint8))
  image = pp.fixed_resolution(pp.decode_rgb(tf.constant(data)))
  assert image.shape == (256, 256, 3) and image.dtype == tf.float32
  return image.numpy()


@pytest.mark.parametrize("size", [227, 224, 255, 256])
def test_center_crop_is_exact_slice(decoded_256, size):
  out = pp.center_crop(decoded_256, size).numpy()
  t = (256 - size) // 2
  np.testing.assert_array_equal(out, decoded_256[t:t + size, t:t + size])


def test_center_crop_non_square_uint8():
  image = np.arange(300 * 401 * 3, dtype=np.int64).reshape(300, 401, 3).astype(np.uint8)
  out = pp.center_crop(image, 227)
  assert out.dtype == tf.uint8
  np.testing.assert_array_equal(out.numpy(), image[36:263, 87:314])


@pytest.mark.parametrize("size", [227, 224])
def test_ten_crop_order_and_values(decoded_256, size):
  out = pp.ten_crop(decoded_256, size).numpy()
  assert out.shape == (10, size, size, 3)
  x, s, c = decoded_256, size, (256 - size) // 2
  expected = [x[:s, :s], x[:s, -s:], x[-s:, :s], x[-s:, -s:], x[c:c + s, c:c + s]]
  m = x[:, ::-1]
  expected += [m[:s, :s], m[:s, -s:], m[-s:, :s], m[-s:, -s:], m[c:c + s, c:c + s]]
  for k in range(10):
    np.testing.assert_array_equal(out[k], expected[k], err_msg=f"crop {k}")
  # The mirrored top-left crop is the mirror of the top-right crop.
  np.testing.assert_array_equal(out[5], out[1][:, ::-1])


def test_ten_crop_larger_non_square_image():
  image = np.random.default_rng(0).integers(0, 255, (260, 300, 3)).astype(np.uint8)
  out = pp.ten_crop(image, 227).numpy()
  np.testing.assert_array_equal(out[3], image[33:, 73:])
  np.testing.assert_array_equal(out[4], image[16:243, 36:263])


@pytest.mark.parametrize("crop", [pp.center_crop, pp.ten_crop])
def test_crop_misuse_fails_clearly(crop):
  # Known statically: at once, saying what is wrong (a batch read "image smaller than the crop").
  with pytest.raises(ValueError, match=r"^image 200x300 is smaller than the crop size 227$"):
    crop(tf.zeros([200, 300, 3]), 227)
  with pytest.raises(ValueError, match=r"one \[H, W, C\] image; got shape \(2, 256, 256, 3\)"):
    crop(tf.zeros([2, 256, 256, 3]), 227)
  for size in (0, 2.5, True):
    with pytest.raises(ValueError, match=r"^crop size must be a positive integer"):
      crop(tf.zeros([256, 256, 3]), size)
  assert crop(tf.zeros([256, 256, 3]), np.int64(227)).shape[-3:] == (227, 227, 3)
  # Known only when it runs (decoded images in a tf.function): TF's assertion.
  traced = tf.function(lambda image: crop(image, 227),
                       input_signature=[tf.TensorSpec([None, None, 3], tf.float32)])
  with pytest.raises(tf.errors.InvalidArgumentError, match="image smaller than the crop size 227"):
    traced(tf.zeros([200, 300, 3]))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "CMYK", "GRAY", "GRAYPNG", "RGBA", "PALETTE"])
def test_decode_rgb_formats(fmt):
  array = np.zeros((37, 53, 3), np.uint8)
  array[..., 0], array[..., 1], array[..., 2] = 200, 60, 100
  image = pp.decode_rgb(tf.constant(encode_image(array, fmt)))
  assert image.dtype == tf.uint8 and image.shape == (37, 53, 3)
  centre = image.numpy()[18, 26].astype(int)
  if fmt in ("GRAY", "GRAYPNG"):
    assert centre[0] == centre[1] == centre[2]
  else:
    np.testing.assert_allclose(centre, [200, 60, 100], atol=6)


@pytest.mark.parametrize("shape,expected", [((100, 150), (256, 384)), ((600, 400), (384, 256)),
                                            ((256, 256), (256, 256))])
def test_resize_shorter_side(shape, expected):
  out = pp.resize_shorter_side(tf.zeros(shape + (3,), tf.uint8), 256)
  assert tuple(out.shape[:2]) == expected and out.dtype == tf.float32


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("shape", [(300, 450), (480, 320), (120, 90)])
def test_fused_decode_matches_resize_then_crop(fmt, shape):
  """The fused window decode equals resize-256 + crop up to resampling (module docstring)."""
  data = tf.constant(encode_image(smooth_image(np.random.default_rng(2), *shape), fmt))
  reference = pp.fixed_resolution(pp.decode_rgb(data))
  for offset in [(0, 0), (29, 29), (0, 29), (14, 3)]:
    fused = pp.decode_crop_and_resize(data, 227, offset).numpy()
    ref = reference[offset[0]:offset[0] + 227, offset[1]:offset[1] + 227].numpy()
    assert fused.shape == (227, 227, 3) and fused.dtype == np.float32
    assert np.abs(fused - ref).mean() < 2.0, offset
  full = pp.decode_crop_and_resize(data, 256).numpy()
  assert np.abs(full - reference.numpy()).mean() < 2.0


@pytest.mark.parametrize("fmt,subsampling", [("JPEG", 2), ("JPEG", 1), ("JPEG", 0), ("GRAY", 0),
                                              ("CMYK", 0)])
def test_jpeg_window_decode_is_tf_decode_and_crop(fmt, subsampling):
  """The window decode that starts at an MCU column gives TF's cropped decode, pixel for pixel.

  4:2:0, 4:2:2 and 4:4:4 chroma, greyscale and CMYK; windows starting on, just after and just
  before an MCU column, and one ending at the image's right edge.
  """
  array = np.random.default_rng(3).integers(0, 256, (120, 170, 3)).astype(np.uint8)
  data = tf.constant(encode_image(array, fmt, quality=90, subsampling=subsampling))
  decode_window = pp._decode_jpeg_window  # pylint: disable=protected-access
  for window in [(0, 0, 100, 100), (5, 16, 90, 101), (7, 17, 60, 90), (1, 31, 99, 77),
                 (3, 47, 64, 123)]:
    expected = tf.image.decode_and_crop_jpeg(data, window, channels=3).numpy()
    got = decode_window(data, tf.constant(window)).numpy()
    assert got.shape == (window[2], window[3], 3), window
    np.testing.assert_array_equal(got, expected, err_msg=str(window))


@pytest.mark.parametrize("options", [dict(progressive=True), dict(progressive=True, subsampling=0),
                                     dict(restart_marker_blocks=3), dict(restart_marker_rows=1)])
def test_jpeg_window_decode_of_progressive_and_restart_marker_jpegs(options):
  """The same for JPEGs laid out otherwise: progressive scans, restart markers."""
  array = np.random.default_rng(5).integers(0, 256, (120, 170, 3)).astype(np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, "JPEG", quality=90, **options)
  data = tf.constant(buffer.getvalue())
  decode_window = pp._decode_jpeg_window  # pylint: disable=protected-access
  for window in [(0, 0, 100, 100), (5, 16, 90, 101), (7, 17, 60, 90), (3, 47, 64, 123)]:
    np.testing.assert_array_equal(
        decode_window(data, tf.constant(window)).numpy(),
        tf.image.decode_and_crop_jpeg(data, window, channels=3).numpy(), err_msg=str(window))


def test_unresized_jpeg_decode_is_decode_for_train():
  """Branch-free decode of a JPEG at the fixed resolution = `decode_for_train`, pixel for pixel."""
  rng = np.random.default_rng(4)
  for height, width, size in [(256, 341, 227), (300, 256, 227), (256, 256, 224)]:
    data = tf.constant(encode_image(rng.integers(0, 256, (height, width, 3)), quality=90))
    assert bool(pp.crop_needs_no_resize(tf.constant(height), tf.constant(width), size))
    for offset in [(0, 0), (29, 17), (13, 29), (3, 1)]:
      offset = tf.constant([min(o, 256 - size) for o in offset])
      for flip in (None, tf.constant(True), tf.constant(False)):
        np.testing.assert_array_equal(
            pp.decode_unresized_jpeg_for_train(data, offset, flip, size).numpy(),
            pp.decode_for_train(data, offset, flip, size).numpy())
  # Any other size needs the resize: refused, not silently wrong.
  data = tf.constant(encode_image(rng.integers(0, 256, (257, 300, 3))))
  with pytest.raises(tf.errors.InvalidArgumentError):
    pp.decode_unresized_jpeg_for_train(data, tf.constant([0, 0]))


def test_crop_needs_no_resize():
  heights = tf.constant([256, 256, 255, 257, 512, 0, 300], tf.int64)
  widths = tf.constant([256, 400, 300, 300, 256, 0, 256], tf.int64)
  assert pp.crop_needs_no_resize(heights, widths, 227).numpy().tolist() == [
      True, True, False, False, True, False, True]
  assert pp.crop_needs_no_resize(heights, widths, 224).numpy().tolist() == [
      True, True, False, False, True, False, True]


def test_random_flip_about_half(decoded_256):
  image = decoded_256[:8, :8]
  flipped = 0
  for i in range(400):
    out = pp.random_flip(image, tf.constant([7, i])).numpy()
    if np.array_equal(out, image[:, ::-1]):
      flipped += 1
    else:
      np.testing.assert_array_equal(out, image)
  assert 160 <= flipped <= 240, flipped


@pytest.mark.parametrize("drawn", ["one_by_one", "as_a_group"])
def test_pca_lighting_covariance(drawn):
  """The per-image shift has covariance 255² · alphastd² · V diag(λ²) Vᵀ (SPEC §1.4), whether
  drawn per image (`pca_lighting`) or for a group (`draw_train_augmentation`, the pipeline's)."""
  n = 3000
  if drawn == "one_by_one":
    image = tf.fill([2, 2, 3], 128.0)
    shifts = np.stack([pp.pca_lighting(image, 0.1, seed=tf.constant([3, i])).numpy()[0, 0]
                       - 128.0 for i in range(n)])
  else:
    shifts = pp.draw_train_augmentation(tf.constant([3, 0]), n, crop=False,
                                        flip=False)["shift"].numpy()
  ev = np.array(pp.IMAGENET_EIGVAL)
  vec = np.array(pp.IMAGENET_EIGVEC)
  expected = 255.0**2 * 0.01 * vec @ np.diag(ev**2) @ vec.T
  measured = np.cov(shifts, rowvar=False)
  assert np.abs(shifts.mean(0)).max() < 0.1 * np.sqrt(expected[0, 0])
  # Variance along each eigenvector is (255·0.1·λ_i)², the directions are uncorrelated.
  for i in range(3):
    var = vec[:, i] @ measured @ vec[:, i]
    assert var == pytest.approx(expected_var := (25.5 * ev[i])**2, rel=0.1), (i, expected_var)
  np.testing.assert_allclose(measured, expected, atol=0.05 * expected.max())


def test_pca_lighting_scale_invariance_and_clipping():
  image = tf.fill([3, 3, 3], 100.0)
  seed = tf.constant([1, 2])
  unit = pp.pca_lighting(image, eigval=pp.IMAGENET_EIGVAL, seed=seed)
  scaled = pp.pca_lighting(image, eigval=[v * 255.0**2 for v in pp.IMAGENET_EIGVAL], seed=seed)
  np.testing.assert_allclose(unit.numpy(), scaled.numpy(), rtol=1e-5)
  assert not np.allclose(unit.numpy(), 100.0)
  white = pp.pca_lighting(tf.fill([2, 2, 3], 255.0), alphastd=5.0, seed=seed).numpy()
  assert white.min() >= 0.0 and white.max() <= 255.0


def test_add_per_channel_is_plain_broadcasting_bitwise():
  rng = np.random.default_rng(4)
  batch = rng.uniform(0, 255, (3, 5, 7, 3)).astype(np.float32)
  per_image = rng.normal(0, 30, (3, 3)).astype(np.float32)
  one = np.float32([-123.68, -116.78, -103.94])
  np.testing.assert_array_equal(pp.add_per_channel(batch, per_image).numpy(),
                                batch + per_image[:, None, None, :])
  np.testing.assert_array_equal(pp.add_per_channel(batch, one).numpy(), batch + one)
  np.testing.assert_array_equal(pp.add_per_channel(batch[0], one).numpy(), batch[0] + one)
  # Unknown width (traced): plain broadcasting.
  traced = tf.function(pp.add_per_channel,
                       input_signature=[tf.TensorSpec([None, None, None, 3]), tf.TensorSpec([3])])
  np.testing.assert_array_equal(traced(batch, one).numpy(), batch + one)


def test_draw_train_augmentation():
  n = 4000
  draws = pp.draw_train_augmentation(tf.constant([8, 9]), n, 227)
  offsets, flips = draws["offset"].numpy(), draws["flip"].numpy()
  assert offsets.shape == (n, 2) and flips.shape == (n,) and draws["shift"].shape == (n, 3)
  # Every offset of the 256-pixel patch, uniformly; flips half of the time.
  assert offsets.min() == 0 and offsets.max() == 256 - 227
  assert np.bincount(offsets.ravel(), minlength=30).min() > 0.5 * 2 * n / 30
  assert 0.45 < flips.mean() < 0.55
  again = pp.draw_train_augmentation(tf.constant([8, 9]), n, 227)
  np.testing.assert_array_equal(again["offset"].numpy(), offsets)
  off = pp.draw_train_augmentation(tf.constant([8, 9]), 5, 224, crop=False, flip=False,
                                   lighting=False)
  np.testing.assert_array_equal(off["offset"].numpy(), np.full((5, 2), 16))
  assert not off["flip"].numpy().any() and not off["shift"].numpy().any()


def test_decode_for_train_crops_and_flips():
  data = tf.constant(encode_image(smooth_image(np.random.default_rng(5), 256, 300)))
  offset = tf.constant([3, 20])
  plain = pp.decode_for_train(data, offset, tf.constant(False), 227).numpy()
  mirrored = pp.decode_for_train(data, offset, tf.constant(True), 227).numpy()
  assert plain.dtype == np.uint8 and plain.shape == (227, 227, 3)
  np.testing.assert_array_equal(mirrored, plain[:, ::-1])
  # Shorter side already 256: the crop is an exact window of the decoded image.
  full = pp.decode_rgb(data).numpy()
  np.testing.assert_array_equal(plain, full[3:230, 22 + 20:22 + 20 + 227])
  np.testing.assert_array_equal(pp.decode_for_train(data, offset, image_size=227).numpy(), plain)


def test_flip_and_light_mirrors_the_flagged_images_of_a_batch():
  images = np.random.default_rng(7).integers(0, 256, (3, 5, 4, 3)).astype(np.uint8)
  flips = tf.constant([True, False, True])
  shifts = tf.constant([[1.5, -2.0, 0.0], [0.0, 0.0, 0.0], [-300.0, 4.0, 300.0]])
  out = pp.flip_and_light(images, flips, shifts)
  assert out.dtype == tf.float32 and out.shape == (3, 5, 4, 3)
  for i, flip in enumerate([True, False, True]):
    expected = pp.apply_lighting(images[i, :, ::-1] if flip else images[i], shifts[i])
    np.testing.assert_array_equal(out[i].numpy(), expected.numpy())
  # One image, as the single-image functions take it.
  np.testing.assert_array_equal(pp.flip_and_light(images[0], True, shifts[0]).numpy(),
                                out[0].numpy())


@pytest.mark.parametrize("height,width", [(375, 500), (700, 620), (120, 90)])
def test_decode_crop_and_resize_uint8_is_the_rounded_float_result(height, width):
  # Resized windows: plain bilinear (375×500), antialiased (shrinking > 2×), upscaled (120×90).
  # The uint8 path skips the clip; rounding alone must give the same pixels, also where the
  # image is saturated (a white and a black band).
  image = smooth_image(np.random.default_rng(6), height, width).copy()
  image[height // 3:height // 2] = 255
  image[height // 2:2 * height // 3] = 0
  data = tf.constant(encode_image(image))
  offset = tf.constant([11, 25])
  as_float = pp.decode_crop_and_resize(data, 227, offset).numpy()
  as_uint8 = pp.decode_crop_and_resize(data, 227, offset, dtype=tf.uint8).numpy()
  assert as_float.min() == 0.0 and as_float.max() == 255.0
  np.testing.assert_array_equal(as_uint8, np.round(as_float).astype(np.uint8))


def test_preprocess_for_train_reproducible():
  data = tf.constant(encode_image(smooth_image(np.random.default_rng(3), 280, 350)))
  a = pp.preprocess_for_train(data, tf.constant([5, 6]))
  b = pp.preprocess_for_train(data, tf.constant([5, 6]))
  c = pp.preprocess_for_train(data, tf.constant([5, 7]))
  assert a.shape == (227, 227, 3) and a.dtype == tf.float32
  np.testing.assert_array_equal(a.numpy(), b.numpy())
  assert not np.array_equal(a.numpy(), c.numpy())
  assert 0.0 <= float(tf.reduce_min(a)) and float(tf.reduce_max(a)) <= 255.0
  image, shift = pp.augment_for_train(data, tf.constant([5, 6]))
  assert image.dtype == tf.uint8 and shift.shape == (3,)
  np.testing.assert_array_equal(pp.apply_lighting(image, shift).numpy(), a.numpy())
  plain = pp.preprocess_for_train(data, tf.constant([5, 6]), 224, crop=False, flip=False,
                                  lighting=False)
  # Same centre crop, computed by one fused resize instead of resize-256 + slice.
  assert np.abs(plain.numpy() - pp.preprocess_for_eval(data, 224).numpy()).mean() < 1.5


def test_preprocess_for_eval_shapes():
  data = tf.constant(encode_image(smooth_image(np.random.default_rng(4), 200, 330), "PNG"))
  assert pp.preprocess_for_eval(data).shape == (227, 227, 3)
  assert pp.preprocess_for_eval(data, 224, num_crops=10).shape == (10, 224, 224, 3)
  with pytest.raises(ValueError):
    pp.preprocess_for_eval(data, num_crops=5)
