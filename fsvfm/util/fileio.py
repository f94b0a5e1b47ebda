"""File writing: atomic outputs (complete or not at all, with the user's umask) and the JSON-lines
appender of `log.txt`."""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

TEMP_MARK = ".tmp"


def _create_temp(path: Path) -> str:
    """Create an empty, hidden, unique temporary file next to ``path`` and return its name
    (``x.png`` -> ``.x.png.<rand>.tmp``).

    ``os.open`` with mode 0o666 lets the kernel apply the umask, as for any file a program creates
    (``tempfile.mkstemp`` always makes 0600 files, and ``os.replace`` keeps that mode).
    """
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}{TEMP_MARK}"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return str(tmp)
    raise FileExistsError(f"no free temporary name next to {path}")


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's (or a folder's entries') data to the disk; a folder fsync the OS refuses is skipped."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        if not os.path.isdir(path):
            raise
    finally:
        os.close(fd)


def disk_usage(root: str | os.PathLike) -> int:
    """Bytes of the files under ``root``, each hard-linked file counted once."""
    seen, total = set(), 0
    for p in Path(root).rglob("*"):
        st = p.lstat()
        if p.is_file() and not p.is_symlink() and (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return total


def atomic_link(src: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Make ``path`` a hard link of ``src`` (a copy where the file system has no hard links), atomically:
    a reader sees the old ``path`` or the complete new one. Replacing ``path`` later (``atomic_path``)
    leaves ``src`` untouched: only the name is rebound."""
    with atomic_path(path, durable=True) as tmp:
        os.remove(tmp)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
    return Path(path)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, durable: bool = False) -> Iterator[str]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``.

    The temporary name ends in ``.tmp``, so a file left by a killed process is never listed as an
    image or a checkpoint by an extension filter; writers must name the format themselves
    (``atomic_write_image``, ``savefig(format=...)``, ``PIL.Image.save(format=...)``).
    On error the temporary file is removed and ``path`` is left untouched. ``durable``: the
    temporary file is fsynced before the rename and the folder after it, so that after a crash or a
    power loss ``path`` holds the old or the new content, complete (checkpoints).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temp(path)
    try:
        yield tmp
        if durable:
            fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    if durable:
        fsync_path(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def atomic_write_image(path: str | os.PathLike, bgr) -> None:
    """Encode a BGR (H, W, 3) uint8 image in the format of ``path``'s suffix and write it atomically."""
    import cv2
    ok, buf = cv2.imencode(Path(path).suffix, bgr)
    if not ok:
        raise OSError(f"cv2.imencode failed for {path}")
    atomic_write_bytes(path, buf.tobytes())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def append_json_line(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON object as a line (``log.txt``); flushed immediately."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
