"""Placing artifact files into a staged version: hard links where possible, else copies.

Also the content hash recorded as provenance.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from manager.errors import ArtifactError

log = logging.getLogger(__name__)

CHUNK = 4 * 1024 * 1024
Progress = Callable[[int], None]  # called with the number of bytes just placed


def iter_files(root: Path) -> list[tuple[str, Path]]:
    """Files under ``root`` as (relative posix path, path), sorted.

    Symlinks are followed only when they point inside ``root``; one pointing outside
    is refused, since the repository would then serve a file it does not hold.
    """
    if root.is_file():
        return [(root.name, root)]
    real_root = root.resolve()
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        for d in list(dirnames):
            p = here / d
            if p.is_symlink():
                check_link_inside(p, real_root)
                found.extend(
                    ((p.relative_to(root) / rel).as_posix(), sub) for rel, sub in iter_files(p)
                )
                dirnames.remove(d)
            elif d == "__pycache__":
                dirnames.remove(d)
        for f in filenames:
            p = here / f
            if p.is_symlink():
                check_link_inside(p, real_root)
            if not p.is_file():
                raise ArtifactError(f"{p} is not a regular file")
            found.append((p.relative_to(root).as_posix(), p))
    return sorted(found)


def check_link_inside(link: Path, real_root: Path) -> None:
    target = link.resolve()
    if target != real_root and real_root not in target.parents:
        raise ArtifactError(
            f"{link} is a symlink to {target}, outside the artifact {real_root}: refusing to "
            "publish a link out of the repository"
        )


def sha256_of(path: Path) -> str:
    """sha256 of a file, or of a folder (over its sorted relative paths and contents)."""
    digest = hashlib.sha256()
    if path.is_file() and not path.is_dir():
        _hash_file(path, digest)
        return digest.hexdigest()
    for rel, p in iter_files(path):
        digest.update(rel.encode() + b"\0")
        _hash_file(p, digest)
        digest.update(b"\0")
    return digest.hexdigest()


def _hash_file(path: Path, digest: hashlib._Hash) -> None:
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)


def total_bytes(path: Path) -> int:
    return sum(p.stat().st_size for _, p in iter_files(path))


def place(src: Path, dst: Path, *, link: bool = True, progress: Progress | None = None) -> str:
    """Put ``src`` (file or folder) at ``dst``; return "link" or "copy" (the last used)."""
    how = "link"
    items = iter_files(src) if src.is_dir() else [("", src)]
    for rel, p in items:
        target = dst / rel if rel else dst
        target.parent.mkdir(parents=True, exist_ok=True)
        how = _place_file(p, target, link=link, progress=progress)
    if src.is_dir() and not items:
        dst.mkdir(parents=True, exist_ok=True)
    return how


def _place_file(src: Path, dst: Path, *, link: bool, progress: Progress | None) -> str:
    size = src.stat().st_size
    if link:
        try:
            os.link(src.resolve(), dst)
        except OSError as exc:
            log.debug("hard link %s -> %s failed (%s); copying", src, dst, exc)
        else:
            if progress:
                progress(size)
            return "link"
    with src.open("rb") as fin, dst.open("wb") as fout:
        while chunk := fin.read(CHUNK):
            fout.write(chunk)
            if progress:
                progress(len(chunk))
        fout.flush()
        os.fsync(fout.fileno())
    shutil.copymode(src, dst)
    return "copy"
