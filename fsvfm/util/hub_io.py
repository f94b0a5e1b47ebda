"""Files of a Hugging Face repository in the local hub cache, and ``hf://owner/repo/path`` checkpoint paths:
fetched with ``huggingface_hub`` (its cache, resume and offline mode), hub faults turned into one-line
``HubError`` messages, cached copies checked against the hub's hashes. The release table and the
``python -m fsvfm.hub`` command live in ``fsvfm.hub``; this module is the part the checkpoint loader needs.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

from fsvfm.util.errors import UserError
from fsvfm.util.naming import STATS_FILENAME

logger = logging.getLogger(__name__)

REPO_ID = "Wolowolo/fsfm-3c"
HUB_SCHEME = "hf://"


class HubError(UserError, RuntimeError):
    """A hub file or folder cannot be resolved (the message names the repository and the path)."""


# ------------------------------------------------------------------------------ hub access
def parse_hub_uri(uri: str) -> tuple[str, str]:
    """``hf://owner/repo/path/in/repo`` -> ``('owner/repo', 'path/in/repo')``."""
    parts = uri[len(HUB_SCHEME):].strip("/").split("/", 2) if uri.startswith(HUB_SCHEME) else []
    if len(parts) < 3 or not all(parts):
        raise HubError(f"{uri!r} is not a hub path; expected {HUB_SCHEME}{REPO_ID}/<path in the repository>")
    return f"{parts[0]}/{parts[1]}", parts[2]


def _http_status(err: BaseException) -> int | None:
    """The HTTP status behind a hub error (huggingface_hub wraps a failed HEAD call in its cause), else None."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        response = getattr(err, "response", None)
        if getattr(response, "status_code", None):
            return int(response.status_code)
        err = err.__cause__
    return None


def _timed_out(err: BaseException) -> bool:
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if "Timeout" in type(err).__name__:
            return True
        err = err.__cause__
    return False


def _is_network_error(err: BaseException) -> bool:
    """An error of the HTTP client under huggingface_hub (httpx, httpx2 or requests, by its version)."""
    return type(err).__module__.split(".")[0].rstrip("0123456789") in ("httpx", "httpcore", "requests", "urllib")


def _hub_error(repo_id: str, path: str, err: Exception) -> HubError:
    from huggingface_hub import constants
    from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError
    where = f"{path!r} of the Hugging Face repository {repo_id}"
    status = _http_status(err)
    local = isinstance(err, LocalEntryNotFoundError)  # a subclass of EntryNotFoundError in huggingface_hub 1+
    if (not local and isinstance(err, (EntryNotFoundError, RepositoryNotFoundError))) or status == 404:
        what = (f"repository {repo_id} not found (or private)" if isinstance(err, RepositoryNotFoundError)
                else f"{where} does not exist")
        return HubError(f"{what}: HTTP 404 from {constants.ENDPOINT}; `python -m fsvfm.hub list` shows the released "
                        "files (HF_ENDPOINT selects another mirror)")
    if status is not None and status >= 400:
        return HubError(f"{where}: the hub at {constants.ENDPOINT} answered HTTP {status}"
                        f"{' (a server fault; try again later)' if status >= 500 else ''} and the file is not in the "
                        f"hub cache {constants.HF_HUB_CACHE}; set HF_ENDPOINT to another mirror or retry later")
    if local:
        why = ("HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else
               f"{constants.ENDPOINT} did not answer within {constants.HF_HUB_ETAG_TIMEOUT} s (HF_HUB_ETAG_TIMEOUT)"
               if _timed_out(err) else f"{constants.ENDPOINT} cannot be reached")
        return HubError(f"{where} is not in the hub cache {constants.HF_HUB_CACHE} and {why}; download it "
                        "once online, or set HF_ENDPOINT to a reachable mirror")
    if _is_network_error(err):
        why = (f"did not answer within {constants.HF_HUB_ETAG_TIMEOUT} s (HF_HUB_ETAG_TIMEOUT)" if _timed_out(err)
               else f"cannot be reached ({type(err).__name__}: {err})")
        return HubError(f"{where}: {constants.ENDPOINT} {why}; retry later, or set HF_ENDPOINT to a reachable mirror")
    return HubError(f"cannot fetch {where}: {type(err).__name__}: {err}")


class _FirstWarningOnly(logging.Filter):
    """huggingface_hub logs two lines per retry (about 20 for one file); let the first through, with its count."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        self.seen += 1
        if self.seen == 1:
            record.msg = f"{record.getMessage()} (huggingface_hub retries up to 5 times; further retry lines hidden)"
            record.args = ()
        return self.seen == 1


_RETRY_LOGGERS = ("huggingface_hub.utils._http", "huggingface_hub.file_download", "huggingface_hub._snapshot_download")


@contextlib.contextmanager
def _bounded_hub_calls():
    """One retry line instead of about twenty, and a bounded wait for an endpoint that never answers:
    huggingface_hub retries a failed metadata request 5 times with a fixed 60 s timeout each (about 7 minutes
    in all); that per-retry timeout is lowered to ``HF_HUB_ETAG_TIMEOUT / 2`` (5 s by default, about a minute
    in all). Raise HF_HUB_ETAG_TIMEOUT for a slow mirror."""
    from huggingface_hub import constants, file_download
    only_first = _FirstWarningOnly()
    for name in _RETRY_LOGGERS:  # a logger's filter sees only the records made on it, not its children's
        logging.getLogger(name).addFilter(only_first)
    previous = getattr(file_download, "_ETAG_RETRY_TIMEOUT", None)
    if previous is not None:  # a private setting of huggingface_hub; absent in other versions: left alone
        file_download._ETAG_RETRY_TIMEOUT = min(previous, max(1, constants.HF_HUB_ETAG_TIMEOUT / 2))
    try:
        yield
    finally:
        for name in _RETRY_LOGGERS:
            logging.getLogger(name).removeFilter(only_first)
        if previous is not None:
            file_download._ETAG_RETRY_TIMEOUT = previous


# ------------------------------------------------------------------------- cache checks
def _git_blob_sha1(path: Path) -> str:
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def corrupt_cache_reason(cached: Path) -> str | None:
    """Why a file of the hub cache is not what the hub holds, or None when it checks out. The cache names each
    blob by the hub's hash of the file (sha256 for large files, git's sha1 for small ones), so the check needs
    no network; a blob of another name is checked by loading its structure (a checkpoint's zip directory)."""
    blob = Path(os.path.realpath(cached))
    name, size = blob.name, blob.stat().st_size
    if re.fullmatch(r"[0-9a-f]{64}", name):
        actual, kind = _sha256(blob), "sha256"
    elif re.fullmatch(r"[0-9a-f]{40}", name):
        actual, kind = _git_blob_sha1(blob), "git sha1"
    else:
        if blob.suffix in (".pth", ".tar") or cached.suffix == ".pth":
            try:
                with zipfile.ZipFile(blob) as archive:
                    archive.namelist()
            except (zipfile.BadZipFile, OSError) as e:
                return f"{size} bytes, not a complete checkpoint ({e})"
        return None
    return None if actual == name else f"{size} bytes whose {kind} {actual[:12]}... is not the hub's {name[:12]}..."


def check_cached(rel: str, cached: Path, fix: str) -> None:
    """``HubError`` naming the blob, what is wrong and ``fix`` when the cached copy of ``rel`` is corrupt."""
    reason = corrupt_cache_reason(cached)
    if reason is not None:
        raise HubError(f"the hub cache holds a damaged copy of {rel!r} ({reason}; an interrupted download or a full "
                       f"disk?): {fix} (or delete {os.path.realpath(cached)})")


def fix_for(name: str) -> str:
    return f"run `python -m fsvfm.hub download {name} --force` to fetch it again"


@contextlib.contextmanager
def _hub_call(repo_id: str, what: str) -> Iterator[None]:
    """A bounded hub call whose HTTP, file-system and network failures become one ``HubError`` naming the
    repository and ``what`` was asked for (other exceptions are bugs and propagate)."""
    from huggingface_hub.utils import HfHubHTTPError
    try:
        with _bounded_hub_calls():
            yield
    except (HfHubHTTPError, OSError, ValueError) as e:  # LocalEntryNotFoundError is an OSError
        raise _hub_error(repo_id, what, e) from e
    except Exception as e:
        if not _is_network_error(e):
            raise
        raise _hub_error(repo_id, what, e) from e


def hub_file(path: str, repo_id: str = REPO_ID, force: bool = False) -> Path:
    """Local path (in the hub cache) of one repository file, downloaded when missing (``force``: again). ``HubError``
    names the repository and the path when it cannot be had."""
    from huggingface_hub import hf_hub_download
    with _hub_call(repo_id, path):
        return Path(hf_hub_download(repo_id=repo_id, filename=path, force_download=force))


def hub_folder(folder: str, repo_id: str = REPO_ID, force: bool = False) -> list[tuple[str, Path]]:
    """``(path in the repository, cached file)`` for every file under ``folder`` (downloaded when missing)."""
    from huggingface_hub import snapshot_download
    folder = folder.strip("/")
    with _hub_call(repo_id, folder + "/"):
        root = Path(snapshot_download(repo_id=repo_id, allow_patterns=[f"{folder}/*"], force_download=force))
    files = sorted(p for p in (root / folder).rglob("*") if p.is_file())
    if not files:
        raise HubError(f"no files under {folder + '/'!r} of the Hugging Face repository {repo_id} "
                       "(or, offline, none in the hub cache)")
    return [(p.relative_to(root).as_posix(), p) for p in files]


@functools.lru_cache(maxsize=64)
def resolve_hub_uri(uri: str) -> Path:
    """Local path of ``hf://owner/repo/path``. The statistics file next to it is fetched too when the
    repository has one, so the look-ups "next to the checkpoint" work on the cached copy."""
    repo_id, path = parse_hub_uri(uri)
    local = hub_file(path, repo_id)
    check_cached(path, local, fix_for(path) if repo_id == REPO_ID else "delete it to fetch it again")
    if local.name != STATS_FILENAME:
        sibling = f"{path.rsplit('/', 1)[0]}/{STATS_FILENAME}" if "/" in path else STATS_FILENAME
        try:
            hub_file(sibling, repo_id)
        except HubError as e:
            logger.info("no statistics file beside %s on the hub (%s)", uri, e)
    return local
