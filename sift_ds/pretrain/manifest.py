"""The checkpoint manifest: the files a complete checkpoint holds, with their sizes and sha256 digests.

DeepSpeed checkpoints are pickles, and unpickling runs the code inside them. A checkpoint tag is
*complete* when its manifest (``sift_manifest.json``, written last, atomically, after every rank's
files are flushed) exists and every listed file has its recorded size; it is *verified* when every
sha256 digest matches too, which is checked before anything in it is unpickled. The digests detect
a truncated, corrupted or swapped file; they do not make a checkpoint from an untrusted source safe
(whoever writes the files can write a matching manifest).

Hashing is shared out between the ranks (rank r takes every world-th file), so no rank reads more
than its share of the checkpoint.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch.distributed as dist

MANIFEST = "sift_manifest.json"
FORMAT = 1
CHUNK_BYTES = 1 << 20
TMP_SUFFIX = ".tmp"


def file_digest(path: str, flush: bool = False) -> str:
    """sha256 of a file; ``flush`` also fsyncs it (its writer may be another process)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if flush:
            os.fsync(f.fileno())
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tag_files(tag_dir: str) -> List[str]:
    """Every file under ``tag_dir`` (relative paths, sorted), except the manifest and temporary files."""
    found = []
    for root, _, files in os.walk(tag_dir):
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), tag_dir)
            if rel != MANIFEST and not rel.endswith(TMP_SUFFIX):
                found.append(rel)
    return sorted(found)


_HOST_GROUP: List[Any] = []  # a gloo group for object collectives (created once, collectively)


def host_group():
    """The world as a gloo group: object collectives without a device (before the engine has set
    each rank's GPU, NCCL would put every rank's buffer on GPU 0)."""
    if dist.get_backend() == "gloo":
        return dist.group.WORLD
    if not _HOST_GROUP:
        _HOST_GROUP.append(dist.new_group(backend="gloo"))
    return _HOST_GROUP[0]


def shared_map(fn: Callable[[str], Any], items: Sequence[str]) -> Dict[str, Any]:
    """``{item: fn(item)}`` with the work split between the ranks (a collective when distributed)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return {item: fn(item) for item in items}
    rank, world = dist.get_rank(), dist.get_world_size()
    mine = {item: fn(item) for item in items[rank::world]}
    parts: List[Optional[dict]] = [None] * world
    dist.all_gather_object(parts, mine, group=host_group())
    return {k: v for part in parts for k, v in part.items()}


def atomic_write(path: str, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one, durably."""
    tmp = path + TMP_SUFFIX
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(path) or ".")


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(tag_dir: str, tag: str, step: int, run: Optional[dict] = None) -> dict:
    """Collective, after every rank has written its files: flush and hash them (shared out), then
    rank 0 writes the manifest. Returns it."""
    files = tag_files(tag_dir)
    digests = shared_map(lambda rel: file_digest(os.path.join(tag_dir, rel), flush=True), files)
    manifest = {
        "format": FORMAT, "tag": tag, "step": step, "run": run or {},
        "files": {rel: {"bytes": os.path.getsize(os.path.join(tag_dir, rel)), "sha256": digests[rel]}
                  for rel in files},
    }
    if not dist.is_initialized() or dist.get_rank() == 0:
        atomic_write(os.path.join(tag_dir, MANIFEST), json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


def remove_manifest(tag_dir: str) -> None:
    """Mark a tag incomplete before it is (re)written."""
    try:
        os.remove(os.path.join(tag_dir, MANIFEST))
    except FileNotFoundError:
        pass


def read_json_object(path: str) -> Optional[dict]:
    """The JSON object in ``path``, or None when it is missing, unreadable or not an object."""
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def read_manifest(tag_dir: str) -> Optional[dict]:
    """The tag's manifest, or None when it is missing or unreadable."""
    manifest = read_json_object(os.path.join(tag_dir, MANIFEST))
    ok = manifest is not None and isinstance(manifest.get("files"), dict) and manifest.get("format") == FORMAT
    return manifest if ok else None


def incomplete_reason(tag_dir: str) -> Optional[str]:
    """None when the tag is complete (a manifest, every listed file present with its size); else why not."""
    if not os.path.isfile(os.path.join(tag_dir, MANIFEST)):
        return f"no {MANIFEST} (its save was interrupted, or an older sift_ds wrote it)"
    manifest = read_manifest(tag_dir)
    if manifest is None:
        return f"{MANIFEST} is unreadable"
    if not manifest["files"]:
        return f"{MANIFEST} lists no files"
    for rel, entry in sorted(manifest["files"].items()):
        path = os.path.join(tag_dir, rel)
        if not os.path.isfile(path):
            return f"{rel} is missing"
        size = os.path.getsize(path)
        if size != entry.get("bytes"):
            return f"{rel} has {size} bytes, the manifest says {entry.get('bytes')}"
    return None


def digest_mismatches(tag_dir: str, manifest: dict) -> List[str]:
    """Files whose sha256 differs from the manifest's, that are missing, or that the manifest does not
    list (DeepSpeed finds some files by pattern); a collective."""
    files = sorted(manifest["files"])
    unlisted = [rel for rel in tag_files(tag_dir) if rel not in manifest["files"]]

    def check(rel: str) -> bool:
        path = os.path.join(tag_dir, rel)
        return os.path.isfile(path) and file_digest(path) == manifest["files"][rel].get("sha256")

    ok = shared_map(check, files)
    return [rel for rel in files if not ok[rel]] + [f"{rel} (not in the manifest)" for rel in unlisted]
