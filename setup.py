"""Installs alexnet_tf: the faithful two-tower AlexNet for TensorFlow/Keras."""
import setuptools

setuptools.setup(
    name="alexnet_tf",
    version="0.1.0",
    description=(
        "The original two-tower AlexNet (Krizhevsky, Sutskever, Hinton 2012) in "
        "TensorFlow/Keras: model, paper training recipe, 10-crop evaluation, "
        "TF Serving export."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["alexnet_tf", "alexnet_tf.*"]),
    py_modules=["train", "evaluate"],
    python_requires=">=3.10",
    install_requires=[
        "tensorflow>=2.18,<3",
        "keras>=3.6,<4",
        "tensorflow-datasets>=4.9",
        "absl-py>=1.0",
        "tensorboard",  # tf.summary needs it; TF 2.21 no longer depends on it.
        "numpy",
        "pillow",
        # TFDS builders (ImageFolder, download_and_prepare) import these offline.
        "importlib_resources",
        "etils[epath,epy]",
    ],
    extras_require={
        # python -m alexnet_tf.tools.import_weights (the BVLC reference weights from ONNX).
        "onnx": ["onnx"],
        "test": [
            "pytest>=7",
            "pytest-xdist",
            "onnx",
            "onnxruntime",
            "tensorflow-serving-api",
        ],
    },
    entry_points={
        "console_scripts": [
            "alexnet-train=train:run_main",
            "alexnet-evaluate=evaluate:run_main",
        ],
    },
)
