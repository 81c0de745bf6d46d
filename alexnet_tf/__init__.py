"""alexnet_tf: the original two-tower AlexNet in TensorFlow/Keras."""

from alexnet_tf.layers import LocalResponseNormalization, MeanSubtraction
from alexnet_tf.model import AlexNet, IMAGENET_MEAN_RGB
from alexnet_tf import weights

__version__ = "0.1.0"

__all__ = ["AlexNet", "LocalResponseNormalization", "MeanSubtraction", "IMAGENET_MEAN_RGB",
           "weights", "__version__"]
