"""The Nymeria clip HDF5 input format, in one place: key names, shapes, file and sequence naming.

A clip file is `<sequence_name>_<datapoint_id>.h5` (datapoint_id: 5 digits, e.g.
`20230607_s0_james_johnson_act0_e72nhq_00003.h5`), one per atomic action, LZ4-compressed,
readable only after `import hdf5plugin`. All poses are in the recording's world frame (Z up,
metres); rotation matrices map local to world (`p_world = R @ p_local + t`).

What the exporter (`extract_antego_data.py` in a fork of the Nymeria API) writes, and so what
the reader expects:
- `start_idx`, `end_idx` index the recording's 30 fps grid and are **both inclusive**:
  `num_frames == end_idx - start_idx + 1`. Clip lengths vary (an action's duration).
- `timestamp_ns` steps by `EXPORTER_FRAME_PERIOD_NS` = `int(1e9 / 30)` ns.
- Frames whose extraction fails are skipped silently: a file may hold fewer frames than
  `num_frames`, with holes in `timestamp_ns`. **Timestamps are the truth; the three int
  attributes are descriptions** (a disagreement is recorded, never a reason to reject a file).
- `egoview_RGB` (the video) may be absent: later versions keep it in an MP4 beside the file and
  name it in the attribute `egoview_mp4_filename`. The pipeline reads neither.
- `contact_information` channels: `shared.skeleton.CONTACT_CHANNELS` (order unconfirmed).

This module only names things; it does no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Literal

import numpy as np

from shared.skeleton import CONTACT_CHANNELS, NUM_JOINTS

# --- file attributes --------------------------------------------------------------------------
ATTR_SEQUENCE_NAME = "sequence_name"
ATTR_ATOMIC_ACTION = "atomic_action"
ATTR_START_IDX = "start_idx"
ATTR_END_IDX = "end_idx"
ATTR_NUM_FRAMES = "num_frames"
ATTR_EGOVIEW_MP4 = "egoview_mp4_filename"  # later exporter versions: the video file beside the clip
STRING_ATTRS: tuple[str, ...] = (ATTR_SEQUENCE_NAME, ATTR_ATOMIC_ACTION)
INT_ATTRS: tuple[str, ...] = (ATTR_START_IDX, ATTR_END_IDX, ATTR_NUM_FRAMES)

# --- datasets ---------------------------------------------------------------------------------
KEY_TIMESTAMP_NS = "timestamp_ns"
KEY_ROOT_TRANSLATION = "root_translation"  # pelvis position, world, metres
KEY_ROOT_ORIENTATION = "root_orientation"  # R_world_pelvis
KEY_CPF_TRANSLATION = "cpf_translation"  # head (Aria central pupil frame) position, world, metres
KEY_CPF_ORIENTATION = "cpf_orientation"  # R_world_cpf
KEY_JOINT_TRANSLATION = "joint_translation"  # XSens segment origins, world, metres
KEY_JOINT_ORIENTATION = "joint_orientation"  # R_world_segment
KEY_CONTACT_INFORMATION = "contact_information"  # foot contacts, shared.skeleton.CONTACT_CHANNELS
KEY_EGOVIEW = "egoview_RGB"  # (N, 3, H, W) uint8 video; optional, never read by the pipeline

NUM_CONTACTS = len(CONTACT_CHANNELS)
EXPORTER_FPS = 30
EXPORTER_FRAME_PERIOD_NS = int(1e9 / EXPORTER_FPS)  # 33_333_333: the exporter's timestamp step
EGOVIEW_CHANNELS = 3
EGOVIEW_DTYPE = np.dtype(np.uint8)

# HDF5 filter id registered for LZ4 (what `hdf5plugin.LZ4()` writes).
LZ4_FILTER_ID = 32004

DtypeKind = Literal["float", "int64"]


@dataclass(frozen=True)
class DatasetSpec:
    """Per-frame shape and dtype of one motion dataset; its full shape is `(N, *frame_shape)`."""

    frame_shape: tuple[int, ...]
    dtype_kind: DtypeKind

    def accepts_dtype(self, dtype: np.dtype) -> bool:
        """Any floating type is accepted for "float"; "int64" accepts only int64."""
        dtype = np.dtype(dtype)
        if self.dtype_kind == "float":
            return dtype.kind == "f"
        return dtype == np.dtype(np.int64)


MOTION_DATASETS: MappingProxyType[str, DatasetSpec] = MappingProxyType(
    {
        KEY_TIMESTAMP_NS: DatasetSpec((), "int64"),
        KEY_ROOT_TRANSLATION: DatasetSpec((3,), "float"),
        KEY_ROOT_ORIENTATION: DatasetSpec((3, 3), "float"),
        KEY_CPF_TRANSLATION: DatasetSpec((3,), "float"),
        KEY_CPF_ORIENTATION: DatasetSpec((3, 3), "float"),
        KEY_JOINT_TRANSLATION: DatasetSpec((NUM_JOINTS, 3), "float"),
        KEY_JOINT_ORIENTATION: DatasetSpec((NUM_JOINTS, 3, 3), "float"),
        KEY_CONTACT_INFORMATION: DatasetSpec((NUM_CONTACTS,), "float"),
    }
)


def num_frames_of_index_range(start_idx: int, end_idx: int) -> int:
    """Frames a clip covers on the recording's grid: both indices are inclusive."""
    return end_idx - start_idx + 1


# --- naming -----------------------------------------------------------------------------------
CLIP_SUFFIX = ".h5"
DATAPOINT_ID_DIGITS = 5
_CLIP_STEM_RE = re.compile(rf"^(?P<sequence>.+)_(?P<datapoint>\d{{{DATAPOINT_ID_DIGITS}}})$")

SEQUENCE_NAME_PATTERN = "<YYYYMMDD>_s<N>_<first>_<last>_act<N>_<id>"
_SEQUENCE_RE = re.compile(
    r"^(?P<date>\d{8})_s(?P<session>\d+)_(?P<participant>[a-z]+(?:_[a-z]+)*)"
    r"_act(?P<act>\d+)_(?P<uid>[a-z0-9]+)$",
    re.IGNORECASE,
)


def clip_file_name(sequence_name: str, datapoint_id: int) -> str:
    """`<sequence_name>_<datapoint_id:05d>.h5`."""
    max_id = 10**DATAPOINT_ID_DIGITS - 1
    if not 0 <= datapoint_id <= max_id:
        raise ValueError(f"datapoint_id must be in [0, {max_id}], found {datapoint_id}")
    return f"{sequence_name}_{datapoint_id:0{DATAPOINT_ID_DIGITS}d}{CLIP_SUFFIX}"


def parse_clip_file_name(path: str | Path) -> tuple[str, int]:
    """`.../<sequence_name>_<ddddd>.h5` -> (sequence_name, datapoint_id as int)."""
    path = Path(path)
    match = _CLIP_STEM_RE.match(path.stem)
    if path.suffix != CLIP_SUFFIX or match is None:
        raise ValueError(
            f"clip file name must look like <sequence_name>_<{DATAPOINT_ID_DIGITS} digits>"
            f"{CLIP_SUFFIX}, found {path.name!r} ({path})"
        )
    return match["sequence"], int(match["datapoint"])


def participant_from_sequence_name(sequence_name: str) -> str:
    """Participant of a recording: `20230607_s0_james_johnson_act0_e72nhq` -> `james_johnson`."""
    match = _SEQUENCE_RE.match(sequence_name)
    if match is None:
        raise ValueError(
            f"sequence name {sequence_name!r} does not match the Nymeria pattern "
            f"{SEQUENCE_NAME_PATTERN!r} (e.g. '20230607_s0_james_johnson_act0_e72nhq')"
        )
    return match["participant"]
