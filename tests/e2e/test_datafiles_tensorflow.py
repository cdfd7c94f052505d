"""TensorFlow reads the TFRecord files tffprod writes, and the other way round (moved from
unit/test_datafiles.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tffprod.data.files import iter_examples, write_tfrecord
from tests.helpers.records import VECTOR, vector_rows

pytestmark = pytest.mark.e2e


@pytest.fixture
def tfrecord(tmp_path: Path) -> Path:
    path = tmp_path / "data.tfrecord"
    write_tfrecord(path, vector_rows(), VECTOR)
    return path


def test_tensorflow_reads_what_we_write_and_we_read_what_it_writes(tfrecord: Path, tmp_path: Path) -> None:
    tf = pytest.importorskip("tensorflow")
    spec = {
        "pixels": tf.io.FixedLenFeature([2, 3], tf.float32),
        "site": tf.io.FixedLenFeature([], tf.string),
        "digit": tf.io.FixedLenFeature([], tf.int64),
    }
    parsed = [tf.io.parse_single_example(r, spec) for r in tf.data.TFRecordDataset(str(tfrecord))]
    assert len(parsed) == 5
    for got, want in zip(parsed, vector_rows()):
        assert got["pixels"].numpy().ravel().tolist() == pytest.approx([v for r in want["pixels"] for v in r])
        assert got["site"].numpy().decode() == want["site"]
        assert int(got["digit"].numpy()) == want["digit"]

    # And the other way: a file TensorFlow writes validates here.
    path = tmp_path / "by_tf.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as writer:
        for row in vector_rows(3):
            example = tf.train.Example(
                features=tf.train.Features(
                    feature={
                        "pixels": tf.train.Feature(
                            float_list=tf.train.FloatList(value=[v for r in row["pixels"] for v in r])
                        ),
                        "site": tf.train.Feature(bytes_list=tf.train.BytesList(value=[row["site"].encode()])),
                        "digit": tf.train.Feature(int64_list=tf.train.Int64List(value=[row["digit"]])),
                    }
                )
            )
            writer.write(example.SerializeToString())
    assert [r["digit"] for r in iter_examples(path, "tfrecord", VECTOR)] == [r["digit"] for r in vector_rows(3)]
