"""LocalResponseNormalization and MeanSubtraction."""

import numpy as np
import pytest
import tensorflow as tf
import keras

from alexnet_tf.layers import (LocalResponseNormalization, MeanSubtraction, caffe_to_paper_lrn,
                               lrn_without_xla)


def lrn_numpy(a, n, k, alpha, beta):
  """The paper's formula, float64: b_c = a_c / (k + alpha * sum_{|c'-c|<=n/2} a_c'^2)^beta."""
  a = a.astype(np.float64)
  channels = a.shape[-1]
  out = np.empty_like(a)
  for c in range(channels):
    lo, hi = max(0, c - n // 2), min(channels - 1, c + n // 2)
    s = np.sum(a[..., lo:hi + 1] ** 2, axis=-1)
    out[..., c] = a[..., c] / (k + alpha * s) ** beta
  return out


@pytest.fixture
def activations():
  # ReLU outputs of conv1 reach the hundreds; use a wide range.
  return np.random.RandomState(0).uniform(0, 300, (2, 7, 5, 48)).astype(np.float32)


@pytest.mark.parametrize("implementation", ["fused", "primitive", "op"])
def test_paper_convention(activations, implementation):
  layer = LocalResponseNormalization(implementation=implementation)
  assert (layer.depth_radius, layer.size, layer.bias, layer.alpha, layer.beta) == (2, 5, 2.0, 1e-4, 0.75)
  expected = lrn_numpy(activations, 5, 2.0, 1e-4, 0.75)
  np.testing.assert_allclose(layer(activations).numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize("implementation", ["fused", "primitive", "op"])
@pytest.mark.parametrize("beta", [0.75, 0.5, 1.0, 0.6])
def test_caffe_convention(activations, implementation, beta):
  layer = LocalResponseNormalization.from_caffe(local_size=5, alpha=1e-4, k=1.0, beta=beta,
                                                implementation=implementation)
  assert layer.alpha == pytest.approx(2e-5) and layer.bias == 1.0
  # Caffe: b = a / (k + alpha/n * sum a^2)^beta.
  expected = lrn_numpy(activations, 5, 1.0, 1e-4 / 5, beta)
  np.testing.assert_allclose(layer(activations).numpy(), expected, rtol=1e-5)


def test_size_argument_and_mapping():
  assert LocalResponseNormalization(size=7).depth_radius == 3
  assert caffe_to_paper_lrn(5, 1e-4, 1.0, 0.75) == dict(depth_radius=2, bias=1.0, alpha=2e-5,
                                                        beta=0.75)
  with pytest.raises(ValueError, match="odd"):
    LocalResponseNormalization(size=4)
  with pytest.raises(ValueError, match="not both"):
    LocalResponseNormalization(size=5, depth_radius=2)
  with pytest.raises(ValueError, match="implementation"):
    LocalResponseNormalization(implementation="fast")


def test_implementations_have_equal_gradients(activations):
  x = tf.constant(activations)
  grads = []
  for impl in ("op", "primitive", "fused"):
    layer = LocalResponseNormalization(implementation=impl)
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = tf.reduce_sum(layer(x) * tf.sin(x))
    grads.append(tape.gradient(y, x).numpy())
  for grad in grads[1:]:
    np.testing.assert_allclose(grad, grads[0], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("depth_radius", [0, 1, 3])
def test_fused_matches_the_formula_for_other_windows(activations, depth_radius):
  x = tf.constant(activations)
  layers = [LocalResponseNormalization(depth_radius=depth_radius, implementation=impl)
            for impl in ("fused", "op")]
  expected = lrn_numpy(activations, 2 * depth_radius + 1, 2.0, 1e-4, 0.75)
  np.testing.assert_allclose(layers[0](x).numpy(), expected, rtol=1e-5)
  grads = []
  for layer in layers:
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = tf.reduce_sum(layer(x) * tf.sin(x))
    grads.append(tape.gradient(y, x).numpy())
  np.testing.assert_allclose(grads[0], grads[1], rtol=1e-4, atol=1e-7)


def test_lrn_without_xla_traces_the_primitive_path_and_restores():
  inputs = keras.Input((7, 5, 48))
  model = keras.Model(inputs, LocalResponseNormalization()(inputs))
  layer = model.layers[-1]
  assert layer.implementation == "fused"
  fn = tf.function(model)
  with lrn_without_xla(model):
    assert layer.implementation == "primitive_float32"
    graph = fn.get_concrete_function(tf.TensorSpec([None, 7, 5, 48])).graph
  assert layer.implementation == "fused"
  library = graph.as_graph_def().library.function
  assert not [f.signature.name for f in library if f.attr["_XlaMustCompile"].b]
  compiled = tf.function(model).get_concrete_function(tf.TensorSpec([None, 7, 5, 48])).graph
  assert [f for f in compiled.as_graph_def().library.function if f.attr["_XlaMustCompile"].b]


def test_across_towers_scope(activations):
  a, b = activations[..., :24], activations[..., 24:]
  layer = LocalResponseNormalization()
  out_a, out_b = layer([tf.constant(a), tf.constant(b)])
  expected = lrn_numpy(activations, 5, 2.0, 1e-4, 0.75)
  np.testing.assert_allclose(np.concatenate([out_a, out_b], -1), expected, rtol=1e-5)
  # Per tower differs at the boundary channels only.
  per_tower = layer(tf.constant(a)).numpy()
  assert np.abs(per_tower[..., -1] - expected[..., 23]).max() > 0
  np.testing.assert_allclose(per_tower[..., :22], expected[..., :22], rtol=1e-5)


@pytest.mark.parametrize("policy,implementation", [
    ("mixed_bfloat16", "fused"), ("mixed_bfloat16", "primitive"),
    ("mixed_bfloat16", "primitive_float32"), ("mixed_float16", "fused"),
    ("mixed_float16", "primitive")])
def test_mixed_precision(activations, policy, implementation):
  x = tf.constant(activations)
  keras.mixed_precision.set_global_policy(policy)
  try:
    layer = LocalResponseNormalization(implementation=implementation)
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = layer(tf.cast(x, layer.compute_dtype))
      loss = tf.reduce_sum(tf.cast(y, tf.float32) * tf.sin(x))
    grad = tape.gradient(loss, x).numpy()
    assert y.dtype == layer.compute_dtype
  finally:
    keras.mixed_precision.set_global_policy("float32")
  expected = lrn_numpy(activations, 5, 2.0, 1e-4, 0.75)
  y = tf.cast(y, tf.float32).numpy()
  if implementation in ("fused", "primitive_float32") or policy == "mixed_float16":
    # Computed in float32, rounded once.
    np.testing.assert_allclose(y, expected, rtol=1e-2, atol=1e-2)
  else:  # Computed in bfloat16 (2^-8 relative rounding per op): a few roundings, no bias.
    relative = (y - expected) / expected
    assert np.abs(relative).max() < 0.025 and abs(relative.mean()) < 0.005
  with tf.GradientTape() as tape:
    tape.watch(x)
    loss = tf.reduce_sum(LocalResponseNormalization()(x) * tf.sin(x))
  reference = tape.gradient(loss, x).numpy()
  scale = np.abs(reference).max()
  assert np.abs(grad - reference).max() < 0.03 * scale
  assert np.abs(grad - reference).mean() < 0.003 * scale


def test_keras_round_trip(tmp_path, activations):
  inputs = keras.Input((7, 5, 48))
  outputs = LocalResponseNormalization.from_caffe(local_size=5, alpha=1e-4, name="lrn")(inputs)
  outputs = MeanSubtraction(mean=[1.0, 2.0, 3.0])(outputs[..., :3])
  model = keras.Model(inputs, outputs)
  path = str(tmp_path / "lrn.keras")
  model.save(path)
  loaded = keras.models.load_model(path)
  np.testing.assert_array_equal(model(activations).numpy(), loaded(activations).numpy())
  assert loaded.get_layer("lrn").get_config()["alpha"] == pytest.approx(2e-5)


def test_mean_image_layer_and_errors():
  image = np.arange(6 * 6 * 3, dtype=np.float32).reshape(6, 6, 3)
  layer = MeanSubtraction(mean_image_shape=(6, 6, 3))
  layer.build((None, 4, 4, 3))
  layer.set_mean_image(image)
  x = np.ones((1, 4, 4, 3), np.float32)
  np.testing.assert_array_equal(layer(x).numpy()[0], 1.0 - image[1:5, 1:5])
  assert layer.count_params() == 108
  with pytest.raises(ValueError, match="exactly one"):
    MeanSubtraction()
  with pytest.raises(ValueError, match="3 values"):
    MeanSubtraction(mean=[1.0])
  with pytest.raises(ValueError, match="smaller than the model input"):
    MeanSubtraction(mean_image_shape=(2, 2, 3)).build((None, 4, 4, 3))
