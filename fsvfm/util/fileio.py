"""File writing: atomic outputs (complete or not at all, with the user's umask) and the JSON-lines
appender of `log.txt`."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from fsvfm.util.errors import OutputError

TEMP_MARK = ".tmp"
# errno values that mean "this output cannot be written here", which the user fixes (space, quota, mount).
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
READ_ONLY = (errno.EROFS,)


def _free_space(path: Path) -> str:
    """Free bytes of the file system holding ``path`` (its nearest existing folder), e.g. ``'1.2 MB'``."""
    folder = path if path.is_dir() else path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = float(shutil.disk_usage(folder).free)
    except OSError:
        return "unknown space"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if free < 1024 or unit == "TB":
            return f"{free:.0f} B" if unit == "B" else f"{free:.1f} {unit}"
        free /= 1024
    return ""  # unreachable


def _with_errno(number: int, message: str) -> OutputError:
    error = OutputError(message)  # one argument: str() is the message alone, without "[Errno N]"
    error.errno = number
    return error


def output_error(error: BaseException, path: str | os.PathLike | None = None) -> OutputError | None:
    """The one-line ``OutputError`` for a full disk or a read-only folder while writing ``path`` (default:
    the file the error names), None for any other error. The ``OSError`` may be the cause or context of
    ``error``: torch's zip writer masks a failed write with "unexpected pos" at its end of file."""
    if isinstance(error, OutputError):
        return error
    seen = set()
    while error is not None and id(error) not in seen and not (
            isinstance(error, OSError) and error.errno in (*DISK_FULL, *READ_ONLY)):
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    if error is None or id(error) in seen:
        return None
    target = Path(path if path is not None else (error.filename or "the output"))
    if error.errno in DISK_FULL:
        return _with_errno(error.errno, f"no space left on device while writing {target} ({_free_space(target)} "
                           "free); free some space or choose another output folder, then rerun (older files "
                           "there are intact)")
    if error.errno in READ_ONLY:
        folder = target.parent if not target.is_dir() else target
        return _with_errno(error.errno, f"{folder} is read-only (writing {target.name}); choose a writable "
                           "output folder or remount it read-write")
    return None


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
    On error the temporary file is removed and ``path`` is left untouched; a full disk or a read-only
    folder becomes an ``OutputError`` naming ``path`` (see ``output_error``). ``durable``: the
    temporary file is fsynced before the rename and the folder after it, so that after a crash or a
    power loss ``path`` holds the old or the new content, complete (checkpoints).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _create_temp(path)
    except OSError as e:
        fault = output_error(e, path)
        if fault is None:
            raise
        raise fault from e
    try:
        yield tmp
        if durable:
            fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(e, Exception) and (fault := output_error(e, path)) is not None and fault is not e:
            raise fault from e
        raise
    if durable:
        fsync_path(path.parent)


def writable_folder_problem(folder: str | os.PathLike) -> str | None:
    """Why files cannot be written in ``folder`` (created when missing), or None: checked by creating
    and removing a temporary file, so read-only mounts and full quotas show too."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        os.remove(_create_temp(folder / "write-check"))
    except OSError as e:
        reason = "it is a file, not a folder" if folder.exists() and not folder.is_dir() else e.strerror or str(e)
        return f"cannot write in {folder} ({reason}); choose a writable folder"
    return None


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
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
    except OSError as e:
        fault = output_error(e, path)
        if fault is None:
            raise
        raise fault from e
