"""Released FSFM / FS-VFM weights on the Hugging Face hub (spec 10), and ``hf://`` checkpoint paths.

    python -m fsvfm.hub list                       # the released files (sizes of local copies; --remote asks the hub)
    python -m fsvfm.hub download FS-VFM_ViT-B_VF2_600e [--target] [--dir checkpoint]
    python -m fsvfm.hub download DfD_ViT-B         # a fine-tuned folder
    python -m fsvfm.hub download Unified-detector_ViT-B   # real / deepfake / diffusion / spoof (4 classes)

Files are fetched with ``huggingface_hub.hf_hub_download`` into the hub cache (``HF_HUB_CACHE`` /
``HF_HOME``; interrupted downloads resume, a progress bar is shown) and then placed at
``<dir>/<path in the repository>`` (a hard link to the cached file where the file system allows, a copy
otherwise), which is the layout the scripts expect: ``checkpoint/pretrained_models/...`` and
``checkpoint/finetuned_models/...``. ``HF_ENDPOINT`` selects a mirror and ``HF_HUB_OFFLINE=1`` serves
files from the hub cache only; both are read by ``huggingface_hub`` when it is imported.

Every program that takes a checkpoint path also accepts ``hf://Wolowolo/fsfm-3c/<path>``: see
``fsvfm.util.checkpoint.resolve_checkpoint_path``, which calls :func:`resolve_hub_uri` here.
"""
from __future__ import annotations

import argparse
import contextlib
import difflib
import filecmp
import functools
import hashlib
import logging
import os
import re
import shutil
import sys
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fsvfm.util.cli import run_cli
from fsvfm.util.errors import UserError
from fsvfm.util.fileio import atomic_path
from fsvfm.util.naming import UNIFIED_RELEASE_PATH, UNIFIED_VOCABULARY
from fsvfm.util.norm_stats import STATS_FILENAME

logger = logging.getLogger(__name__)

REPO_ID = "Wolowolo/fsfm-3c"
HUB_SCHEME = "hf://"
DEFAULT_DIR = "checkpoint"


class HubError(UserError, RuntimeError):
    """A hub file or folder cannot be resolved (the message names the repository and the path)."""


@dataclass(frozen=True)
class Release:
    """One released artefact: either ``files`` (online network first, then its statistics file) with an
    optional EMA ``target`` network, or a whole ``folder`` of the repository."""

    name: str
    description: str
    files: tuple[str, ...] = ()
    target: str | None = None
    folder: str | None = None

    def paths(self, target: bool = False) -> tuple[str, ...]:
        return self.files + ((self.target,) if target and self.target else ())


def _pretrained(name: str, description: str, epoch: int) -> Release:
    folder = f"pretrained_models/{name}"
    return Release(name, description, files=(f"{folder}/checkpoint-{epoch}.pth", f"{folder}/{STATS_FILENAME}"),
                   target=f"{folder}/checkpoint-te-{epoch}.pth")


def _finetuned_table() -> list[Release]:
    ext = "finetuned_models/FS-VFM_extensions"
    rows = []
    for size in ("S", "B", "L"):
        run = f"ViT-{size}_VF2_600e"
        rows += [
            Release(f"DfD_ViT-{size}", f"FS-VFM ViT-{size} fine-tuned on FF++ c23 (DfD)",
                    folder=f"{ext}/cross_dataset_DFD_and_DiFF/{run}/FT_on_FF++_c23_32frames"),
            Release(f"DiFF_ViT-{size}", f"FS-VFM ViT-{size} fine-tuned on FF++ DeepFakes c23 (DiFF)",
                    folder=f"{ext}/cross_dataset_DFD_and_DiFF/{run}/FT_on_FF++_DF_c23_32frames"),
            Release(f"FAS_ViT-{size}", f"FS-VFM ViT-{size} fine-tuned for FAS, MCIO protocol",
                    folder=f"{ext}/cross_domain_FAS/{run}/MCIO_protocol"),
            Release(f"FS-Adapter_FAS_ViT-{size}", f"FS-VFM ViT-{size} FS-Adapter for FAS, MCIO protocol",
                    folder=f"{ext}/finetune_fs-adapter/cross_domain_FAS/{run}/MCIO_protocol"),
        ]
    rows += [
        Release("FS-Adapter_DfD_DiFF", "FS-VFM FS-Adapters for DfD and DiFF (all sizes)",
                folder=f"{ext}/finetune_fs-adapter/cross_dataset_DfD_and_DiFF"),
        Release("FSFM_DfD_ViT-B", "FSFM ViT-B (CVPR'25) fine-tuned on FF++ c23 (DfD)",
                folder="finetuned_models/FF++_c23_32frames"),
        Release("FSFM_DiFF_ViT-B", "FSFM ViT-B (CVPR'25) fine-tuned on FF++ DeepFakes c23 (DiFF)",
                folder="finetuned_models/FF++_DF_c23_32frames/correct_version"),
        Release("FSFM_FAS_ViT-B", "FSFM ViT-B (CVPR'25) fine-tuned for FAS, MCIO protocol",
                folder="finetuned_models/MCIO_protocol"),
        Release("Unified-detector_ViT-B", "FSFM ViT-B unified detector, 4 classes: "
                + ", ".join(UNIFIED_VOCABULARY.display_names), folder=UNIFIED_RELEASE_PATH.rsplit("/", 1)[0]),
    ]
    return rows


RELEASES: tuple[Release, ...] = (
    _pretrained("VF2_ViT-B", "FSFM ViT-B/16, VGGFace2, 400 epochs (CVPR'25)", 400),
    _pretrained("FS-VFM_ViT-S_VF2_600e", "FS-VFM ViT-S/16, VGGFace2, 600 epochs", 599),
    _pretrained("FS-VFM_ViT-B_VF2_600e", "FS-VFM ViT-B/16, VGGFace2, 600 epochs", 600),
    _pretrained("FS-VFM_ViT-L_VF2_600e", "FS-VFM ViT-L/16, VGGFace2, 600 epochs", 599),
    *_finetuned_table(),
)


def find_release(name: str) -> Release:
    by_name = {r.name: r for r in RELEASES}
    if name not in by_name:
        close = difflib.get_close_matches(name, list(by_name), n=1, cutoff=0.6)
        raise HubError(f"unknown release {name!r}{f' (did you mean {close[0]}?)' if close else ''}; "
                       "`python -m fsvfm.hub list` shows the names "
                       "(a path inside the repository, e.g. pretrained_models/VF2_ViT-B/checkpoint-400.pth, works too)")
    return by_name[name]


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


def _fix_for(name: str) -> str:
    return f"run `python -m fsvfm.hub download {name} --force` to fetch it again"


def hub_file(path: str, repo_id: str = REPO_ID, force: bool = False) -> Path:
    """Local path (in the hub cache) of one repository file, downloaded when missing (``force``: again). ``HubError``
    names the repository and the path when it cannot be had."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import HfHubHTTPError
    try:
        with _bounded_hub_calls():
            return Path(hf_hub_download(repo_id=repo_id, filename=path, force_download=force))
    except (HfHubHTTPError, OSError, ValueError) as e:  # LocalEntryNotFoundError is an OSError
        raise _hub_error(repo_id, path, e) from e
    except Exception as e:
        if not _is_network_error(e):
            raise
        raise _hub_error(repo_id, path, e) from e


def hub_folder(folder: str, repo_id: str = REPO_ID, force: bool = False) -> list[tuple[str, Path]]:
    """``(path in the repository, cached file)`` for every file under ``folder`` (downloaded when missing)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import HfHubHTTPError
    folder = folder.strip("/")
    try:
        with _bounded_hub_calls():
            root = Path(snapshot_download(repo_id=repo_id, allow_patterns=[f"{folder}/*"], force_download=force))
    except (HfHubHTTPError, OSError, ValueError) as e:
        raise _hub_error(repo_id, folder + "/", e) from e
    except Exception as e:
        if not _is_network_error(e):
            raise
        raise _hub_error(repo_id, folder + "/", e) from e
    files = sorted(p for p in (root / folder).rglob("*") if p.is_file())
    if not files:
        raise HubError(f"no files under {folder + '/'!r} of the Hugging Face repository {repo_id} "
                       "(or, offline, none in the hub cache)")
    return [(p.relative_to(root).as_posix(), p) for p in files]


@functools.lru_cache(maxsize=64)
def resolve_hub_uri(uri: str) -> Path:
    """Local path of ``hf://owner/repo/path``. The statistics file next to it is fetched too when the
    repository has one, so the look-ups "next to the checkpoint" (spec 4.4) work on the cached copy."""
    repo_id, path = parse_hub_uri(uri)
    local = hub_file(path, repo_id)
    check_cached(path, local, _fix_for(path) if repo_id == REPO_ID else "delete it to fetch it again")
    if local.name != STATS_FILENAME:
        sibling = f"{path.rsplit('/', 1)[0]}/{STATS_FILENAME}" if "/" in path else STATS_FILENAME
        try:
            hub_file(sibling, repo_id)
        except HubError as e:
            logger.info("no statistics file beside %s on the hub (%s)", uri, e)
    return local


# ---------------------------------------------------------------------------- local folder
def place(cached: Path, dest: Path, force: bool = False) -> Path:
    """Put the cached file at ``dest``: a hard link when possible, else a copy; atomic. An identical
    file already there is kept (``force``: replaced)."""
    source = Path(os.path.realpath(cached))
    if not force and dest.is_file() and (os.path.samefile(dest, source) or filecmp.cmp(dest, source, shallow=False)):
        return dest
    with atomic_path(dest) as tmp:
        os.remove(tmp)
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
    return dest


def download(name: str, target: bool = False, dest_dir: str | os.PathLike = DEFAULT_DIR,
             force: bool = False) -> list[Path]:
    """Fetch a release (a name of :data:`RELEASES`, or a path inside the repository) into
    ``dest_dir/<path in the repository>``; returns the local paths. Every file is checked against the hub's
    hash before it is placed (a damaged cached copy is a ``HubError`` naming ``--force``); ``force``
    downloads again what the cache holds."""
    if "/" in name and name not in {r.name for r in RELEASES}:
        pairs = [(name, hub_file(name, force=force))]
    else:
        release = find_release(name)
        pairs = (hub_folder(release.folder, force=force) if release.folder
                 else [(p, hub_file(p, force=force)) for p in release.paths(target)])
    for rel, cached in pairs:  # all checked before any is placed
        check_cached(rel, cached, _fix_for(name))
    return [place(cached, Path(dest_dir) / rel, force) for rel, cached in pairs]


def local_size(path: str, dest_dir: str | os.PathLike = DEFAULT_DIR) -> int | None:
    """Size of a local copy (``dest_dir`` or the hub cache), None when there is none."""
    from huggingface_hub import try_to_load_from_cache
    local = Path(dest_dir) / path
    if local.is_file():
        return local.stat().st_size
    cached = try_to_load_from_cache(REPO_ID, path)
    return Path(cached).stat().st_size if isinstance(cached, str) else None


def remote_sizes(paths: Sequence[str]) -> dict[str, int]:
    """Sizes of repository files (or folders: the sum of their files) as the hub reports them."""
    from huggingface_hub import HfApi, constants
    try:
        files = [f for f in HfApi().list_repo_tree(REPO_ID, recursive=True) if getattr(f, "size", None) is not None]
    except Exception as e:  # noqa: BLE001 - network errors are requests' or httpx's, by hub version
        raise HubError(f"cannot list the files of {REPO_ID} at {constants.ENDPOINT} "
                       f"(HF_HUB_OFFLINE={int(constants.HF_HUB_OFFLINE)}): {type(e).__name__}: {e}") from e
    return {p: sum(f.size for f in files if f.path == p or f.path.startswith(p.rstrip("/") + "/")) for p in paths}


# ------------------------------------------------------------------------------------- CLI
def _human(size: int | None) -> str:
    """``1536`` -> ``'1.5 KB'``; None -> ``'-'``."""
    if size is None:
        return "-"
    value, unit = float(size), "B"
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            break
        value /= 1024
    return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"


def list_rows(dest_dir: str | os.PathLike = DEFAULT_DIR, remote: bool = False) -> list[tuple[str, str, str, str]]:
    """``(name, kind, path in the repository, size)`` for every released file; a fine-tuned folder is
    one row. Sizes are those of local copies (``dest_dir`` or the hub cache), or the hub's with ``remote``."""
    rows = []
    for r in RELEASES:
        if r.folder:
            rows.append((r.name, "fine-tuned folder", r.folder + "/"))
        else:
            rows += list(zip([r.name] * 3, ("online network", "statistics", "target network"), r.paths(target=True)))
    if remote:
        sizes = remote_sizes([p for *_, p in rows])
        return [(*row, _human(sizes[row[2]])) for row in rows]
    return [(*row, _human(None if row[2].endswith("/") else local_size(row[2], dest_dir))) for row in rows]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("python -m fsvfm.hub", description=f"Released weights of {REPO_ID} (spec 10)")
    sub = p.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="print the released files")
    ls.add_argument("--remote", action="store_true", help="ask the hub for the file sizes (network)")
    ls.add_argument("--dir", default=DEFAULT_DIR, help="local folder whose copies are sized")
    dl = sub.add_parser("download", help="fetch releases into --dir/<path in the repository>")
    dl.add_argument("names", nargs="+", metavar="NAME", help="release name from `list`, or a repository path")
    dl.add_argument("--target", action="store_true", help="also the EMA target network (to resume pre-training)")
    dl.add_argument("--dir", default=DEFAULT_DIR, help=f"destination folder (default {DEFAULT_DIR}/)")
    dl.add_argument("--force", action="store_true",
                    help="download again, replacing the hub cache's copy and the placed file (a damaged cache)")
    return p


def run(args: argparse.Namespace) -> int:
    """``list`` or ``download`` (a ``HubError`` names the repository and path)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("huggingface_hub").propagate = False  # it has its own handler: each line once, not twice
    if args.command == "list":
        rows = list_rows(args.dir, args.remote)
        width = [max(len(r[i]) for r in rows) for i in range(3)]
        print(f"repository {REPO_ID} (sizes: {'hub' if args.remote else 'local copies; --remote asks the hub'})")
        for row in rows:
            print("  ".join(c.ljust(w) for c, w in zip(row, width)) + "  " + row[3])
        return 0
    for name in args.names:
        for path in download(name, args.target, args.dir, force=args.force):
            print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Exit code 0, or 2 after one line for a user mistake (``util.cli.run_cli``)."""
    return run_cli(run, get_args_parser(), argv, return_code=True)


if __name__ == "__main__":
    sys.exit(main())
