"""Command-line tools: `python -m alexnet_tf.tools.<name>` (make_tfrecords, dataset_stats, import_weights)."""
