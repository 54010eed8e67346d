"""What a store holds: sizes, splits, sequences, problems (`preprocess info`)."""

from __future__ import annotations

import shared.store
from shared.remote import store_size_bytes
from shared.store import FeatureStore


def store_info(store: FeatureStore, storage_options: dict | None = None) -> dict:
    """JSON-ready summary of a store (`storage_options`: those it was opened with)."""
    splits = {}
    for split in shared.store.SPLITS:
        records = store.split(split)
        splits[split] = {
            "sequences": len(records),
            "frames": sum(r.length for r in records),
            "participants": sorted({r.participant for r in records}),
        }
    size = store_size_bytes(store.url, storage_options)
    features = store.zarr_arrays[shared.store.FEATURES]
    codecs = [c.to_dict()["name"] for c in features.metadata.codecs]
    attrs = store.attrs
    return {
        "url": store.url,
        "schema": attrs[shared.store.ATTR_SCHEMA],
        "fingerprint": store.fingerprint,
        "created": attrs.get(shared.store.ATTR_CREATED),
        "package_version": attrs.get(shared.store.ATTR_PACKAGE_VERSION),
        "git_revision": attrs.get(shared.store.ATTR_GIT_REVISION),
        "frames": store.num_frames,
        "fps": store.fps,
        "source_fps": attrs.get(shared.store.ATTR_SOURCE_FPS),
        "hours": store.num_frames / store.fps / 3600,
        "sequences": len(store.sequences),
        "participants": len({r.participant for r in store.sequences}),
        "splits": splits,
        "stats": {"count": store.stats.count, "window_frames": store.stats.window_frames},
        "source": attrs.get(shared.store.ATTR_SOURCE),
        "stitching": attrs.get(shared.store.ATTR_STITCHING),
        "problems": attrs.get(shared.store.ATTR_PROBLEMS, []),
        "discrepancies": attrs.get(shared.store.ATTR_DISCREPANCIES, []),
        "chunk_frames": store.chunk_frames,
        "codecs": codecs,
        "memory_mapped": store.is_memory_mapped,
        "size_bytes": size,
        "bytes_per_frame": size / max(store.num_frames, 1),
    }


def format_info(info: dict) -> str:
    """Human-readable `info`."""
    lines = [
        f"store        {info['url']}",
        shared.store.describe_schema(info),
        f"fingerprint  {info['fingerprint']}",
        (
            f"frames       {info['frames']} at {info['fps']:g} fps = {info['hours']:.3f} h "
            f"(source {info['source_fps']} fps)"
        ),
        f"sequences    {info['sequences']} from {info['participants']} participants",
    ]
    for split, values in info["splits"].items():
        lines.append(
            f"  {split:<6}     {values['sequences']} sequences, {values['frames']} frames, "
            f"{len(values['participants'])} participants"
        )
    source = info["source"] or {}
    lines += [
        (
            f"source       {source.get('root')}: {source.get('files_used')} of "
            f"{source.get('file_count')} files used"
        ),
        (
            f"on disk      {info['size_bytes'] / 1e6:.2f} MB, "
            f"{info['bytes_per_frame']:.0f} bytes/frame; "
            f"chunks of {info['chunk_frames']} frames, codecs {info['codecs']}"
        ),
        (
            f"stats        {info['stats']['count']} frame vectors of "
            f"{info['stats']['window_frames']}-frame canonical train windows"
        ),
        f"problems     {len(info['problems'])}",
    ]
    lines += [f"  {p['file']}: [{p['kind']}] {p['reason']}" for p in info["problems"]]
    notes = info["discrepancies"]
    kinds = sorted({d["kind"] for d in notes})
    counts = ", ".join(f"{sum(d['kind'] == k for d in notes)} {k}" for k in kinds)
    listed = f" ({counts}; --json lists them)" if notes else ""
    lines.append(f"notes        {len(notes)} on used files{listed}")
    ignored = source.get("ignored", [])
    lines.append(f"not read     {len(ignored)} candidates")
    lines += [f"  {i['path']}: {i['reason']}" for i in ignored]
    return "\n".join(lines)
