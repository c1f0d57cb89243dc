"""A checkpoint (or the final model) that cannot be written, said in one line: which directory,
why (the disk is full, a file reached the file-size limit, or the error itself), the bytes a
checkpoint of this run takes when a complete one shows it, and the checkpoint that stays valid.

torch writes checkpoint files through a C++ stream whose error (``basic_ios::clear: iostream
error``) has lost the errno, so the cause is read from the file system after the failure: the free
space against the size of the run's last complete checkpoint, and the largest file written against
``RLIMIT_FSIZE`` (``ulimit -f``)."""
from __future__ import annotations

import errno
import os
import resource
import shutil
from typing import Optional

from .manifest import read_manifest
from .resume import choose_tag

LOW_SPACE = 1 << 20  # free bytes below which a failed write is put down to a full disk when no size is known


class SaveFailed(ValueError):
    """A checkpoint or the final model could not be written; every earlier complete checkpoint is intact."""


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _largest_file(folder: str) -> int:
    sizes = [_size(os.path.join(root, f)) for root, _, files in os.walk(folder) for f in files]
    return max(sizes, default=0)


def _free_bytes(folder: str) -> Optional[int]:
    while folder and not os.path.isdir(folder):
        folder = os.path.dirname(folder)
    try:
        return shutil.disk_usage(folder or ".").free
    except OSError:
        return None


def cause(err: BaseException, written_to: str, needed: Optional[int]) -> str:
    """Why writing under ``written_to`` failed with ``err``."""
    code = getattr(err, "errno", None)
    free = _free_bytes(written_to)
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    largest = _largest_file(written_to) if os.path.isdir(written_to) else 0
    if code in (errno.ENOSPC, errno.EDQUOT) or (free is not None and free < max(needed or 0, LOW_SPACE)):
        need = f"; a checkpoint of this run takes {needed} bytes" if needed else ""
        return f"the disk is full ({free} bytes free{need})"
    if code == errno.EFBIG or (limit != resource.RLIM_INFINITY and largest >= limit):
        return f"a file reached the file-size limit (ulimit -f) of {limit} bytes"
    first = (str(err).strip().splitlines() or [""])[0][:300]
    return f"{type(err).__name__}: {first}"


def checkpoint_failure(err: BaseException, save_dir: str, tag: str) -> SaveFailed:
    """The one-line error of a failed save of ``save_dir/tag``."""
    valid = choose_tag(save_dir)
    valid = valid if valid is not None and valid.tag != tag else None
    manifest = read_manifest(valid.path) if valid is not None else None
    needed = sum(int(e.get("bytes", 0)) for e in manifest["files"].values()) if manifest else None
    tag_dir = os.path.join(save_dir, tag)
    kept = (f"the last valid checkpoint is {valid.path} (--resume auto continues from it)" if valid is not None
            else "no earlier checkpoint of this run is complete")
    return SaveFailed(f"cannot save checkpoint {tag_dir}: {cause(err, tag_dir, needed)}; {kept}; the incomplete "
                      f"{tag_dir} is never resumed: delete it to free its space")


def export_failure(err: BaseException, out_dir: str, save_dir: str) -> SaveFailed:
    """The one-line error of a failed export of the final model to ``out_dir``."""
    valid = choose_tag(save_dir)
    kept = (f"the final checkpoint {valid.path} is complete: --resume auto exports it again" if valid is not None
            else "no checkpoint of this run is complete")
    return SaveFailed(f"cannot write the final model to {out_dir}: {cause(err, out_dir, None)}; {kept}")
