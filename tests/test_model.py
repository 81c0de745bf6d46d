"""The two-tower AlexNet: parameter counts, shapes, topology, options, errors."""

import numpy as np
import pytest
import tensorflow as tf
import keras

from alexnet_tf import AlexNet

# SPEC §1: output shape of every per-tower layer at 227 (and, via padding, 224).
TOWER_SHAPES = {
    "conv1": (55, 55, 48), "norm1": (55, 55, 48), "pool1": (27, 27, 48),
    "conv2": (27, 27, 128), "norm2": (27, 27, 128), "pool2": (13, 13, 128),
    "conv3": (13, 13, 192), "conv4": (13, 13, 192), "conv5": (13, 13, 128),
    "pool5": (6, 6, 128), "fc6": (2048,), "fc7": (2048,),
}
LAYER_PARAMS = {"conv1": 34944, "conv2": 307456, "conv3": 885120, "conv4": 663936,
                "conv5": 442624, "fc6": 37752832, "fc7": 16781312, "fc8": 4097000}


@pytest.fixture(scope="module")
def model():
  return AlexNet(seed=0)


def test_parameter_counts(model):
  assert model.count_params() == 60_965_224
  for name, count in LAYER_PARAMS.items():
    layers = [l for l in model.layers if l.name in (name, f"{name}_a", f"{name}_b")]
    assert sum(l.count_params() for l in layers) == count, name
  assert AlexNet(towers=1).count_params() == 62_378_344


@pytest.mark.parametrize("size", [227, 224])
def test_tower_shapes(size):
  m = AlexNet(input_shape=(size, size, 3))
  assert m.count_params() == 60_965_224
  for name, shape in TOWER_SHAPES.items():
    for tower in "ab":
      assert tuple(m.get_layer(f"{name}_{tower}").output.shape[1:]) == shape, (name, size)
  assert tuple(m.get_layer("conv3_input").output.shape[1:]) == (13, 13, 256)
  assert tuple(m.get_layer("flatten").output.shape[1:]) == (9216,)
  assert tuple(m.output.shape[1:]) == (1000,)


def test_one_tower_shapes():
  m = AlexNet(towers=1, classes=10)
  assert tuple(m.get_layer("conv1").output.shape[1:]) == (55, 55, 96)
  assert tuple(m.get_layer("conv5").output.shape[1:]) == (13, 13, 256)
  assert tuple(m.get_layer("fc7").output.shape[1:]) == (4096,)
  assert not any(isinstance(l, keras.layers.Conv2D) and l.groups != 1 for l in m.layers)


def test_no_grouped_convolutions(model):
  convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
  assert len(convs) == 10 and all(l.groups == 1 for l in convs)


def _submodel(model, layer):
  return keras.Model(model.input, model.get_layer(layer).output)


def test_towers_independent_except_conv3_and_fc():
  """Zeroing tower b's conv1 changes nothing in tower a before conv3, everything after."""
  m = AlexNet(seed=1, dropout=0.0)
  x = np.random.RandomState(0).uniform(0, 255, (2, 227, 227, 3)).astype("float32")
  names = ["conv2_a", "pool2_a", "conv3_a", "conv2_b", "fc6_a"]
  before = {n: _submodel(m, n)(x).numpy() for n in names}
  kernel = m.get_layer("conv1_b").kernel
  kernel.assign(tf.zeros_like(kernel))
  after = {n: _submodel(m, n)(x).numpy() for n in names}
  np.testing.assert_array_equal(before["conv2_a"], after["conv2_a"])
  np.testing.assert_array_equal(before["pool2_a"], after["pool2_a"])
  assert np.abs(before["conv2_b"] - after["conv2_b"]).max() > 1e-3
  assert np.abs(before["conv3_a"] - after["conv3_a"]).max() > 1e-3  # conv3 sees both towers
  assert np.abs(before["fc6_a"] - after["fc6_a"]).max() > 1e-3  # fc6 sees both towers


def test_conv4_conv5_per_tower():
  m = AlexNet(seed=2)
  x = np.random.RandomState(1).uniform(0, 255, (1, 227, 227, 3)).astype("float32")
  before = _submodel(m, "conv5_a")(x).numpy()
  for layer in ("conv4_b", "conv5_b"):
    k = m.get_layer(layer).kernel
    k.assign(tf.zeros_like(k))
  np.testing.assert_array_equal(before, _submodel(m, "conv5_a")(x).numpy())


def test_paper_initialisation(model):
  for name in ("conv1_a", "conv3_b", "fc8"):
    assert np.all(model.get_layer(name).bias.numpy() == 0.0), name
  for name in ("conv2_a", "conv4_b", "conv5_a", "fc6_b", "fc7_a"):
    assert np.all(model.get_layer(name).bias.numpy() == 1.0), name
  kernel = model.get_layer("fc6_a").kernel.numpy()
  assert abs(kernel.std() - 0.01) < 2e-4 and abs(kernel.mean()) < 2e-4
  caffe = AlexNet(initialization="caffe", seed=0)
  assert abs(caffe.get_layer("fc7_a").kernel.numpy().std() - 0.005) < 1e-4
  assert np.all(caffe.get_layer("fc6_b").bias.numpy() == 0.1)
  assert np.all(caffe.get_layer("conv1_a").bias.numpy() == 0.0)


def test_he_initialisation():
  he = AlexNet(initialization="he", seed=0, classes=6)
  for name, fan_in in (("conv1_a", 11 * 11 * 3), ("conv3_b", 3 * 3 * 256), ("fc7_a", 4096)):
    kernel = he.get_layer(name).kernel.numpy()
    assert abs(kernel.std() / np.sqrt(2.0 / fan_in) - 1) < 0.05, name
    assert np.all(he.get_layer(name).bias.numpy() == 0.0), name
  # The classifier starts small, so the first loss is about log(classes).
  assert abs(he.get_layer("fc8").kernel.numpy().std() - 0.01) < 5e-4


def test_seed_reproducible_and_towers_differ():
  a, b = AlexNet(seed=3, classes=5), AlexNet(seed=3, classes=5)
  np.testing.assert_array_equal(a.get_layer("conv1_a").kernel.numpy(),
                                b.get_layer("conv1_a").kernel.numpy())
  assert not np.array_equal(a.get_layer("conv1_a").kernel.numpy(),
                            a.get_layer("conv1_b").kernel.numpy())


def test_logits_and_softmax():
  logits_model = AlexNet(classes=7, classifier_activation=None, seed=4, dropout=0.0)
  softmax_model = AlexNet(classes=7, seed=4, dropout=0.0)
  x = np.random.RandomState(2).uniform(0, 255, (3, 227, 227, 3)).astype("float32")
  logits = logits_model(x).numpy()
  probs = softmax_model(x).numpy()
  np.testing.assert_allclose(probs, tf.nn.softmax(logits).numpy(), atol=1e-6)
  np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)


def test_mean_subtraction_is_inside_the_model():
  mean = (10.0, 20.0, 30.0)
  m = AlexNet(classes=4, mean=mean, seed=5, dropout=0.0)
  no_mean = AlexNet(classes=4, mean=None, seed=5, dropout=0.0)
  x = np.random.RandomState(3).uniform(0, 255, (2, 227, 227, 3)).astype("float32")
  np.testing.assert_allclose(m(x).numpy(), no_mean(x - np.array(mean, "float32")).numpy(),
                             rtol=1e-5, atol=1e-7)
  image = np.random.RandomState(4).uniform(0, 255, (256, 256, 3)).astype("float32")
  m_img = AlexNet(classes=4, mean=image, seed=5, dropout=0.0)
  np.testing.assert_allclose(m_img(x).numpy(), no_mean(x - image[14:241, 14:241]).numpy(),
                             rtol=1e-5, atol=1e-7)


def test_include_top_false_and_pooling():
  m = AlexNet(include_top=False)
  assert tuple(m.output.shape[1:]) == (6, 6, 256)
  assert m.count_params() == 60_965_224 - 37752832 - 16781312 - 4097000
  assert tuple(AlexNet(include_top=False, pooling="avg").output.shape[1:]) == (256,)
  assert tuple(AlexNet(include_top=False, pooling="max",
                       input_shape=(300, 400, 3)).output.shape[1:]) == (256,)


@pytest.mark.parametrize("pooling_mode", ["overlapping", "non_overlapping"])
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_ablation_switches(pooling_mode, activation):
  m = AlexNet(pooling_mode=pooling_mode, activation=activation, lrn="none", dropout=0.0,
              classes=3)
  assert m.count_params() == 60_965_224 - 4_097_000 + 4096 * 3 + 3
  assert m.get_layer("conv1_a").activation.__name__ == activation
  assert m.get_layer("pool1_a").pool_size == ((3, 3) if pooling_mode == "overlapping" else (2, 2))
  assert not any("norm" in l.name for l in m.layers)


@pytest.mark.parametrize("kwargs, message", [
    (dict(towers=3), "towers must be one of [1, 2]"),
    (dict(input_shape=(100, 100, 3)), "(227, 227, 3) or (224, 224, 3)"),
    (dict(input_shape=(227, 227)), "(height, width, 3)"),
    (dict(lrn="fancy"), "lrn must be one of ['paper', 'caffe', 'none']"),
    (dict(activation="gelu"), "activation must be one of"),
    (dict(pooling_mode="avg"), "pooling_mode must be one of"),
    (dict(dropout=1.5), "dropout must be in [0, 1)"),
    (dict(classes=0), "classes must be a positive integer"),
    (dict(initialization="glorot"), "initialization must be one of"),
    (dict(mean=(1.0, 2.0)), "mean must be 3 floats"),
    (dict(lrn_scope="across_towers", towers=1), "needs towers=2"),
])
def test_bad_arguments(kwargs, message):
  with pytest.raises(ValueError) as e:
    AlexNet(**kwargs)
  assert message in str(e.value)


def test_keras_save_load_identical(tmp_path):
  m = AlexNet(classes=6, seed=6, lrn="caffe")
  path = str(tmp_path / "m.keras")
  m.save(path)
  loaded = keras.models.load_model(path)  # safe_mode on: no Lambda layers.
  x = np.random.RandomState(5).uniform(0, 255, (2, 227, 227, 3)).astype("float32")
  np.testing.assert_array_equal(m.predict(x, verbose=0), loaded.predict(x, verbose=0))
  assert loaded.get_layer("norm1_a").bias == 1.0


def test_weights_file_round_trip_and_errors(tmp_path):
  m = AlexNet(classes=6, seed=7)
  path = str(tmp_path / "m.weights.h5")
  m.save_weights(path)
  m2 = AlexNet(classes=6, weights=path)
  x = np.random.RandomState(6).uniform(0, 255, (1, 227, 227, 3)).astype("float32")
  np.testing.assert_array_equal(m.predict(x, verbose=0), m2.predict(x, verbose=0))
  with pytest.raises(ValueError, match="does not exist"):
    AlexNet(classes=6, weights=str(tmp_path / "missing.weights.h5"))
  with pytest.raises(ValueError, match="does not match this model"):
    AlexNet(classes=7, weights=path)
  with pytest.raises(ValueError, match=r"\.weights\.h5"):
    bad = tmp_path / "x.bin"
    bad.write_bytes(b"junk")
    AlexNet(weights=str(bad))


def test_bfloat16_policy():
  keras.mixed_precision.set_global_policy("mixed_bfloat16")
  try:
    m = AlexNet(classes=5, seed=8, dropout=0.0)
    x = np.random.RandomState(7).uniform(0, 255, (2, 227, 227, 3)).astype("float32")
    y = m(x)
    assert y.dtype == tf.float32
    assert m.get_layer("conv1_a").compute_dtype == "bfloat16"
    np.testing.assert_allclose(y.numpy().sum(-1), 1.0, atol=1e-5)
  finally:
    keras.mixed_precision.set_global_policy("float32")
  m32 = AlexNet(classes=5, seed=8, dropout=0.0)
  np.testing.assert_allclose(m32(x).numpy(), y.numpy(), atol=0.05)


def test_input_scale_multiplies_the_mean_subtracted_pixels():
  x = np.random.default_rng(0).uniform(0, 255, (2, 227, 227, 3)).astype("float32")
  plain = AlexNet(classes=3, seed=1, include_top=False)
  scaled = AlexNet(classes=3, seed=1, include_top=False, input_scale=0.5)
  scaled.set_weights(plain.get_weights())
  # conv1's input: the mean-subtracted pixels times input_scale.
  np.testing.assert_allclose(
      scaled.get_layer("input_scale")(scaled.get_layer("mean_subtraction")(x)),
      0.5 * plain.get_layer("mean_subtraction")(x), rtol=1e-6)
  with pytest.raises(ValueError, match="input_scale must be a positive number"):
    AlexNet(input_scale=0)
