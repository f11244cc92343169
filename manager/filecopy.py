"""Placing artifact files into a staged version: copies (copy-on-write clones where the
filesystem can), or hard links on request.

Also the content hash recorded as provenance.
"""

from __future__ import annotations

import compileall
import errno
import fcntl
import hashlib
import logging
import os
import shutil
import sys
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

from manager.errors import ArtifactError

log = logging.getLogger(__name__)

CHUNK = 4 * 1024 * 1024
Progress = Callable[[int], None]  # called with the number of bytes just placed


def iter_files(root: Path) -> list[tuple[str, Path]]:
    """Files under ``root`` as (relative posix path, path), sorted.

    A symlink to a regular file is followed wherever the file is (a Hugging Face cache
    snapshot links every file to ``../../blobs/``): the version gets the file's bytes,
    copied (or hard-linked with ``--link``), never the link. A symlink to a folder is
    followed only when the folder is inside ``root``: one outside would pull a tree the
    artifact does not hold into the version. A dangling link, a link loop and a link to
    anything but a regular file or folder are refused.
    """
    if root.is_file():
        return [(root.name, root)]
    real_root = root.resolve()
    found: list[tuple[str, Path]] = []
    _walk(root, root, real_root, (real_root,), found)
    return sorted(found)


def _walk(
    folder: Path,
    root: Path,
    real_root: Path,
    through: tuple[Path, ...],
    found: list[tuple[str, Path]],
) -> None:
    """Add the files under ``folder`` (``root`` or a folder link inside it) to ``found``;
    ``through`` holds the real folders the walk entered by links (and the root)."""
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        here = Path(dirpath)
        for d in list(dirnames):
            p = here / d
            if p.is_symlink():
                dirnames.remove(d)
                target = link_target(p)
                if target != real_root and real_root not in target.parents:
                    raise ArtifactError(
                        f"{p} is a symlink to the folder {target}, outside the artifact "
                        f"{real_root}: refusing to publish a folder from out of the artifact "
                        "(copy the folder in, or link its files one by one)"
                    )
                real_here = here.resolve()
                if target in through or target == real_here or target in real_here.parents:
                    raise ArtifactError(
                        f"{p} is a symlink to {target}, a folder it is itself reached "
                        "through: the artifact would never end"
                    )
                _walk(p, root, real_root, (*through, target), found)
            elif d == "__pycache__":
                dirnames.remove(d)
        for f in filenames:
            p = here / f
            if p.is_symlink():
                link_target(p)
            if not p.is_file():
                raise ArtifactError(f"{p} is not a regular file")
            found.append((p.relative_to(root).as_posix(), p))


def link_target(link: Path) -> Path:
    """Where the symlink ``link`` leads in the end; a dangling link or a loop is refused."""
    try:
        return link.resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise ArtifactError(
            f"{link} is a symlink to {os.readlink(link)!r}, which does not exist "
            f"(a dangling link, or a loop): {getattr(exc, 'strerror', None) or exc}"
        ) from exc


def sha256_of(path: Path, *, progress: Progress | None = None) -> str:
    """sha256 of a file, or of a folder (over its sorted relative paths and contents);
    ``progress`` is called with the bytes hashed."""
    digest = hashlib.sha256()
    if path.is_file() and not path.is_dir():
        _hash_file(path, digest, progress)
        return digest.hexdigest()
    for rel, p in iter_files(path):
        digest.update(rel.encode() + b"\0")
        _hash_file(p, digest, progress)
        digest.update(b"\0")
    return digest.hexdigest()


def _hash_file(path: Path, digest: hashlib._Hash, progress: Progress | None = None) -> None:
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            if progress:
                progress(len(chunk))


def total_bytes(path: Path) -> int:
    return sum(p.stat().st_size for _, p in iter_files(path))


def room_needed(sources: Iterable[Path], folder: Path, *, link: bool = False) -> int:
    """Bytes that placing the files ``sources`` into ``folder`` takes on its filesystem: a
    file on that filesystem takes none where it is hard-linked (``link``) or cloned (where
    the filesystem makes copy-on-write clones); every other file takes its size."""
    device = folder.stat().st_dev
    shares: bool | None = True if link else None  # None: not probed yet
    needed = 0
    for path in sources:
        st = path.stat()
        if st.st_dev == device:
            if shares is None:
                shares = can_clone(folder)
            if shares:
                continue
        needed += st.st_size
    return needed


def can_clone(folder: Path) -> bool:
    """Whether the filesystem of ``folder`` makes copy-on-write clones (tried on two small
    files of its own there)."""
    probe = folder / f".clone-probe-{uuid.uuid4().hex[:8]}"
    clone = probe.with_name(probe.name + ".clone")
    try:
        probe.write_bytes(b"\0")
        with probe.open("rb") as fin, clone.open("xb") as fout:
            return _clone(fin.fileno(), fout.fileno())
    except OSError:
        return False
    finally:
        probe.unlink(missing_ok=True)
        clone.unlink(missing_ok=True)


def place(src: Path, dst: Path, *, link: bool = False, progress: Progress | None = None) -> str:
    """Put ``src`` (file or folder) at ``dst``; return how the last file was placed:
    "clone", "copy" or "link".

    By default every file is copied, so the version owns its bytes: a source rewritten in
    place later (``torch.onnx.export`` to the same path truncates and rewrites the same
    inode) cannot change a published version. The copy is a copy-on-write clone where the
    filesystem can (btrfs, XFS, ...: instant, no extra space until either side changes),
    else an in-kernel ``copy_file_range``, else a plain chunked copy. ``link=True`` hard-links
    instead where the filesystem allows: the version then shares the source's inode, and
    the source must never be modified in place.
    """
    how = "copy"
    items = iter_files(src) if src.is_dir() else [("", src)]
    for rel, p in items:
        target = dst / rel if rel else dst
        target.parent.mkdir(parents=True, exist_ok=True)
        how = _place_file(p, target, link=link, progress=progress)
    if src.is_dir() and not items:
        dst.mkdir(parents=True, exist_ok=True)
    return how


def _place_file(src: Path, dst: Path, *, link: bool, progress: Progress | None) -> str:
    if link:
        try:
            os.link(src.resolve(), dst)
        except OSError as exc:
            log.debug("hard link %s -> %s failed (%s); copying", src, dst, exc)
        else:
            if progress:
                progress(src.stat().st_size)
            return "link"
    try:
        how = copy_file(src, dst, progress=progress)
    except OSError as exc:
        if exc.filename is not None or exc.errno is None:
            raise
        # copy_file_range and write name no file: say where (a full disk is the target's)
        raise OSError(exc.errno, exc.strerror, str(dst)) from exc
    shutil.copymode(src, dst)
    return how


# ioctl(dst, FICLONE, src) from linux/fs.h; fcntl.FICLONE exists from Python 3.12 on.
FICLONE = getattr(fcntl, "FICLONE", 0x40049409)
# errno values meaning "this filesystem/kernel cannot do that here": fall back.
_UNSUPPORTED = {
    errno.EOPNOTSUPP,
    errno.ENOTSUP,
    errno.ENOTTY,
    errno.EXDEV,
    errno.EINVAL,
    errno.ENOSYS,
    errno.EBADF,
    errno.EPERM,
}


def copy_file(src: Path, dst: Path, *, progress: Progress | None = None) -> str:
    """Copy the bytes of ``src`` into a new file ``dst`` and sync it; return "clone" when
    the filesystem made a copy-on-write clone, else "copy"."""
    size = src.stat().st_size
    with src.open("rb") as fin, dst.open("xb") as fout:
        if _clone(fin.fileno(), fout.fileno()):
            if progress:
                progress(size)
            how = "clone"
        else:
            done = _copy_file_range(fin.fileno(), fout.fileno(), size, progress)
            fin.seek(done)
            fout.seek(done)
            while chunk := fin.read(CHUNK):
                fout.write(chunk)
                if progress:
                    progress(len(chunk))
            how = "copy"
        fout.flush()
        os.fsync(fout.fileno())
    return how


def _clone(fd_in: int, fd_out: int) -> bool:
    if sys.platform != "linux":
        return False
    try:
        fcntl.ioctl(fd_out, FICLONE, fd_in)
    except OSError as exc:
        if exc.errno not in _UNSUPPORTED:
            raise
        return False
    return True


def _copy_file_range(fd_in: int, fd_out: int, size: int, progress: Progress | None) -> int:
    """Copy with ``os.copy_file_range`` (in the kernel; a clone on some filesystems) as far
    as it goes; return the bytes copied, from where a plain copy takes over."""
    copy_range = getattr(os, "copy_file_range", None)
    done = 0
    if copy_range is None:
        return done
    while done < size:
        try:
            n = copy_range(fd_in, fd_out, min(CHUNK, size - done), done, done)
        except OSError as exc:
            if exc.errno not in _UNSUPPORTED:
                raise
            break
        if n == 0:
            break
        done += n
        if progress:
            progress(n)
    return done


def precompile(folder: Path) -> None:
    """Write the bytecode of the ``.py`` files under ``folder`` (a version folder about to
    be served by the Python backend) into their ``__pycache__``, with this interpreter.

    The Python-backend stub caches the bytecode of ``model.py`` on its first import, in the
    version folder, while Triton loads the model; Triton then finds the model modified
    and loads every version of it again at the next poll (loading an ensemble that calls
    it polls it: an endpoint switch loads the target twice, each new stub beside the old).
    Written before the first load, the cache is valid for a stub of this Python version,
    which reads it and writes nothing. A file that does not compile is left to the load
    to report.
    """
    if not any(folder.rglob("*.py")):
        return
    if not compileall.compile_dir(str(folder), quiet=2, workers=1):
        log.debug("some Python files under %s do not compile", folder)
