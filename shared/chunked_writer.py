"""Append rows to chunked arrays in order, writing whole chunks only.

A chunk written in pieces is read back, decoded, patched and re-encoded once per piece; a
writer that only ever hands the array whole chunks (and the last, partial chunk once at the
end) writes every chunk exactly once. Used by the store build (frame arrays) and by
train.export (latent and decoded arrays). Works on anything with `shape`, `chunks` and slice
assignment along the first axis (a Zarr array, a NumPy-backed fake in tests); it imports no
storage library, so the trainer can use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np


class RowArray(Protocol):
    """The part of a Zarr array the writer uses."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def chunks(self) -> tuple[int, ...]: ...

    def __setitem__(self, key: Any, value: np.ndarray) -> None: ...


class ChunkedRowWriter:
    """Appends rows to arrays that share their first (row) axis and its chunking.

    Every `append` takes one block per array, all with the same number of rows; rows are
    buffered until whole chunks are ready and then written at the current position. `close`
    writes the rest and checks that every row of the arrays was written. `rows_written`
    continues an interrupted writer: its first append goes to that (chunk-aligned) row.
    """

    def __init__(self, arrays: Mapping[str, RowArray], rows_written: int = 0) -> None:
        if not arrays:
            raise ValueError("ChunkedRowWriter needs at least one array")
        rows = {name: (int(a.shape[0]), int(a.chunks[0])) for name, a in arrays.items()}
        if len(set(rows.values())) != 1:
            raise ValueError(
                f"arrays must share their row count and row chunking, found "
                f"(rows, chunk rows) {rows}"
            )
        self.arrays = dict(arrays)
        self.num_rows, self.chunk_rows = next(iter(rows.values()))
        if not (0 <= rows_written <= self.num_rows) or (
            rows_written % self.chunk_rows and rows_written != self.num_rows
        ):
            raise ValueError(
                f"rows_written must be a whole number of {self.chunk_rows}-row chunks (or all "
                f"{self.num_rows} rows), found {rows_written}"
            )
        self.position = rows_written  # rows written (by this writer or, resuming, an earlier one)
        self.pending: dict[str, list[np.ndarray]] = {name: [] for name in arrays}
        self.pending_rows = 0

    def append(self, blocks: Mapping[str, np.ndarray]) -> None:
        if blocks.keys() != self.arrays.keys():
            raise ValueError(f"expected blocks for {sorted(self.arrays)}, found {sorted(blocks)}")
        lengths = {name: len(block) for name, block in blocks.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"blocks must have the same number of rows, found {lengths}")
        rows = next(iter(lengths.values()))
        if self.position + self.pending_rows + rows > self.num_rows:
            raise ValueError(
                f"{', '.join(self.arrays)}: {self.position + self.pending_rows + rows} rows "
                f"appended to arrays of {self.num_rows} rows"
            )
        for name, block in blocks.items():
            self.pending[name].append(block)
        self.pending_rows += rows
        whole = self.pending_rows // self.chunk_rows * self.chunk_rows
        if whole:
            self._flush(whole)

    def close(self) -> None:
        if self.pending_rows:
            self._flush(self.pending_rows)
        if self.position != self.num_rows:
            names = ", ".join(self.arrays)
            raise RuntimeError(f"{names}: wrote {self.position} rows of {self.num_rows}")

    def _flush(self, rows: int) -> None:
        for name, parts in self.pending.items():
            joined = np.concatenate(parts)
            array = self.arrays[name]
            try:
                array[self.position : self.position + rows] = joined[:rows]
            except OSError as error:  # e.g. a full disk: say which array (stores often do not)
                if error.filename is None:
                    where = str(getattr(array, "store_path", name)).removeprefix("file://")
                    error.filename = f"{where} (rows {self.position}-{self.position + rows})"
                raise
            self.pending[name] = [joined[rows:]] if rows < len(joined) else []
        self.position += rows
        self.pending_rows -= rows
