"""Chunked row writer: rows land in order, only whole chunks are written, and a short or
mismatched append is refused."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from shared.chunked_writer import ChunkedRowWriter


class RecordingArray:
    """A NumPy-backed array that records every slice written to it."""

    def __init__(self, shape: tuple[int, ...], chunk_rows: int) -> None:
        self.data = np.zeros(shape, dtype=np.float32)
        self.shape, self.chunks = shape, (chunk_rows, *shape[1:])
        self.writes: list[tuple[int, int]] = []

    def __setitem__(self, key: slice, value: np.ndarray) -> None:
        self.writes.append((key.start, key.stop))
        self.data[key] = value


def test_row_writer_writes_whole_chunks_in_order(tmp_path):
    array = zarr.create_array(
        str(tmp_path / "a.zarr"), shape=(23, 2), chunks=(5, 2), dtype="float32"
    )
    writer = ChunkedRowWriter({"a": array})
    rows = np.arange(46, dtype=np.float32).reshape(23, 2)
    for lo, hi in [(0, 3), (3, 4), (4, 16), (16, 23)]:
        writer.append({"a": rows[lo:hi]})
    writer.close()
    np.testing.assert_array_equal(array[:], rows)
    short = ChunkedRowWriter(
        {
            "b": zarr.create_array(
                str(tmp_path / "b.zarr"), shape=(4, 2), chunks=(5, 2), dtype="float32"
            )
        }
    )
    short.append({"b": rows[:3]})
    with pytest.raises(RuntimeError, match="wrote 3 rows of 4"):
        short.close()


def test_arrays_advance_together_and_every_write_is_whole_chunks():
    rows = np.arange(23 * 3, dtype=np.float32).reshape(23, 3)
    arrays = {"x": RecordingArray((23, 3), 5), "y": RecordingArray((23,), 5)}
    writer = ChunkedRowWriter(arrays)
    for lo, hi in [(0, 3), (3, 4), (4, 4), (4, 16), (16, 23)]:
        writer.append({"x": rows[lo:hi], "y": rows[lo:hi, 0]})
    writer.close()
    np.testing.assert_array_equal(arrays["x"].data, rows)
    np.testing.assert_array_equal(arrays["y"].data, rows[:, 0])
    for array in arrays.values():
        # 3, 4, 4 rows pending; 16 -> chunks 0-2 written; 8 -> chunk 3; the partial chunk 4 at
        # close.
        assert array.writes == [(0, 15), (15, 20), (20, 23)]


def test_mismatched_blocks_and_arrays_are_refused():
    with pytest.raises(ValueError, match="share their row count and row chunking"):
        ChunkedRowWriter({"x": RecordingArray((10, 2), 5), "y": RecordingArray((10,), 4)})
    writer = ChunkedRowWriter({"x": RecordingArray((10, 2), 5), "y": RecordingArray((10,), 5)})
    with pytest.raises(ValueError, match="same number of rows"):
        writer.append({"x": np.zeros((3, 2)), "y": np.zeros(2)})
    with pytest.raises(ValueError, match=r"expected blocks for \['x', 'y'\], found \['x'\]"):
        writer.append({"x": np.zeros((3, 2))})
    with pytest.raises(ValueError, match="11 rows appended to arrays of 10 rows"):
        writer.append({"x": np.zeros((11, 2)), "y": np.zeros(11)})
