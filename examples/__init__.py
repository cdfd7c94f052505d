"""Ready-made example tasks and datasets (``tffprod.examples``).

* ``digits``: scikit-learn's 8x8 handwritten digits, split label-skewed across three hospitals
  (TFRecord, a vector feature).
* ``fraud``: synthetic card transactions at three banks with different fraud rates (CSV, scalars).

Each module holds a ``task`` (refer to it as ``tffprod.examples.digits:task``) and a
``prepare(out_dir, ...)`` that writes per-site files. Importing them does not import TensorFlow.
"""
