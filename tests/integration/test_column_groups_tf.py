"""TensorFlow's CSV readers read a group of columns as the vector the TF-free reader reads: the per-file
``tf.data`` reader (training, evaluation) and the vectorized many-file reader (user-level DP)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tffprod.data.files import iter_examples
from tffprod.data.formats.csv import CSV
from tests.unit.test_column_groups import GROUPED

NUMERIC = type(GROUPED)(features=GROUPED.features[:1], label=GROUPED.label)  # string columns stay out of tf


def write_files(tmp_path: Path) -> list[Path]:
    files = {
        "a.csv": "heart_rate,systolic,diastolic,ward,readmitted\n60,120.5,80.25,a,1\n61,121,79,b,0\n",
        "b.csv": " readmitted , diastolic,ward,systolic,heart_rate,extra\r\n1,70,c,110,55.5,x\r\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return [tmp_path / name for name in files]


def test_the_tf_readers_read_a_group_as_the_python_reader_does(tmp_path: Path) -> None:
    import tensorflow as tf

    paths = write_files(tmp_path)
    expected = [row for path in paths for row in iter_examples(path, "csv", NUMERIC)]
    assert [row["vitals"] for row in expected] == [[60.0, 120.5, 80.25], [61.0, 121.0, 79.0], [55.5, 110.0, 70.0]]
    per_file = [row for path in paths for row in CSV.tf_dataset(str(path), NUMERIC).as_numpy_iterator()]
    columns, file = CSV.tf_columns(tf.constant([str(p) for p in paths]), NUMERIC)
    assert columns["vitals"].shape == (3, 3) and columns["vitals"].dtype == tf.float32
    assert file.numpy().tolist() == [0, 0, 1]
    for i, row in enumerate(expected):
        np.testing.assert_array_equal(per_file[i]["vitals"], np.float32(row["vitals"]))
        np.testing.assert_array_equal(columns["vitals"][i].numpy(), np.float32(row["vitals"]))
        assert per_file[i]["readmitted"] == row["readmitted"] == columns["readmitted"][i].numpy()
