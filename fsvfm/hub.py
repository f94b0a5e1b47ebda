"""Released FSFM / FS-VFM weights on the Hugging Face hub, and ``hf://`` checkpoint paths.

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
``fsvfm.util.checkpoint.resolve_checkpoint_path``, which calls ``fsvfm.util.hub_io.resolve_hub_uri``.
"""
from __future__ import annotations

import argparse
import difflib
import filecmp
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fsvfm.util.cli import run_cli
from fsvfm.util.fileio import atomic_path
from fsvfm.util.hub_io import (  # noqa: F401 - hub_file, parse_hub_uri, resolve_hub_uri: the hub's API here too
    HUB_SCHEME,
    REPO_ID,
    HubError,
    check_cached,
    fix_for,
    hub_file,
    hub_folder,
    parse_hub_uri,
    resolve_hub_uri,
)
from fsvfm.util.naming import STATS_FILENAME, UNIFIED_RELEASE_PATH, UNIFIED_VOCABULARY

logger = logging.getLogger(__name__)

DEFAULT_DIR = "checkpoint"


@dataclass(frozen=True)
class Release:
    """One released artefact: either ``files`` (online network first, then its statistics file) with an
    optional EMA ``target`` network, or a whole ``folder`` of the repository; ``pretrained``: the pre-trained
    release a fine-tuned folder started from (its statistics normalised the fine-tuning)."""

    name: str
    description: str
    files: tuple[str, ...] = ()
    target: str | None = None
    folder: str | None = None
    pretrained: str | None = None

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
        run, pt = f"ViT-{size}_VF2_600e", f"FS-VFM_ViT-{size}_VF2_600e"
        rows += [
            Release(f"DfD_ViT-{size}", f"FS-VFM ViT-{size} fine-tuned on FF++ c23 (DfD)",
                    folder=f"{ext}/cross_dataset_DFD_and_DiFF/{run}/FT_on_FF++_c23_32frames", pretrained=pt),
            Release(f"DiFF_ViT-{size}", f"FS-VFM ViT-{size} fine-tuned on FF++ DeepFakes c23 (DiFF)",
                    folder=f"{ext}/cross_dataset_DFD_and_DiFF/{run}/FT_on_FF++_DF_c23_32frames", pretrained=pt),
            Release(f"FAS_ViT-{size}", f"FS-VFM ViT-{size} fine-tuned for FAS, MCIO protocol",
                    folder=f"{ext}/cross_domain_FAS/{run}/MCIO_protocol", pretrained=pt),
            Release(f"FS-Adapter_FAS_ViT-{size}", f"FS-VFM ViT-{size} FS-Adapter for FAS, MCIO protocol",
                    folder=f"{ext}/finetune_fs-adapter/cross_domain_FAS/{run}/MCIO_protocol", pretrained=pt),
        ]
    rows += [
        Release("FS-Adapter_DfD_DiFF", "FS-VFM FS-Adapters for DfD and DiFF (all sizes)",
                folder=f"{ext}/finetune_fs-adapter/cross_dataset_DfD_and_DiFF"),
        Release("FSFM_DfD_ViT-B", "FSFM ViT-B (CVPR'25) fine-tuned on FF++ c23 (DfD)",
                folder="finetuned_models/FF++_c23_32frames", pretrained="VF2_ViT-B"),
        Release("FSFM_DiFF_ViT-B", "FSFM ViT-B (CVPR'25) fine-tuned on FF++ DeepFakes c23 (DiFF)",
                folder="finetuned_models/FF++_DF_c23_32frames/correct_version", pretrained="VF2_ViT-B"),
        Release("FSFM_FAS_ViT-B", "FSFM ViT-B (CVPR'25) fine-tuned for FAS, MCIO protocol",
                folder="finetuned_models/MCIO_protocol", pretrained="VF2_ViT-B"),
        Release("Unified-detector_ViT-B", "FSFM ViT-B unified detector, 4 classes: "
                + ", ".join(UNIFIED_VOCABULARY.display_names), folder=UNIFIED_RELEASE_PATH.rsplit("/", 1)[0],
                pretrained="VF2_ViT-B"),
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


def finetuned_release_of(path: str | os.PathLike) -> tuple[Release, str] | None:
    """The fine-tuned release a checkpoint path lies in (``hf://`` or a local copy in a download folder or the
    hub cache, recognised by the release's folder in the path) and the root that holds the repository's
    layout (``''`` for ``hf://``); None when the path is in no release folder."""
    text = str(path)
    if text.startswith(HUB_SCHEME):
        repo_id, text = parse_hub_uri(text)
        if repo_id != REPO_ID:
            return None
        text = "/" + text
    else:
        text = Path(path).absolute().as_posix()  # not resolved: a hub-cache snapshot links into blobs/
    found = [(r, text.index(f"/{r.folder}/")) for r in RELEASES if r.folder and f"/{r.folder}/" in text]
    if not found:
        return None
    release, at = max(found, key=lambda f: len(f[0].folder or ""))
    return release, text[:at]


def pretrained_stats_candidates(path: str | os.PathLike,
                                fetch: bool | None = None) -> tuple[Release | None, list[Path]]:
    """For a checkpoint of a fine-tuned release: the pre-trained release it started from and the places its
    statistics file may be, in order: the same download folder (or hub snapshot), ``checkpoint/`` here, the hub
    cache, and (``fetch``, when the cache has none) the hub itself (a failed fetch is logged and skipped). ``fetch`` None: only for a
    checkpoint that came from the hub (an ``hf://`` path or a file in the hub cache). ``(None, [])`` for other paths."""
    match = finetuned_release_of(path)
    if match is None or match[0].pretrained is None:
        return None, []
    root, pretrained = match[1], find_release(match[0].pretrained)
    rel = next(f for f in pretrained.files if f.endswith(STATS_FILENAME))
    places = [Path(root) / rel] if root else []
    places.append(Path(DEFAULT_DIR) / rel)
    from huggingface_hub import constants, try_to_load_from_cache
    cached = try_to_load_from_cache(REPO_ID, rel)  # the cache only, no network
    if fetch is None:
        hub_cache = Path(constants.HF_HUB_CACHE).absolute() / f"models--{REPO_ID.replace('/', '--')}"
        fetch = str(path).startswith(HUB_SCHEME) or Path(path).absolute().is_relative_to(hub_cache)
    if isinstance(cached, str):  # a cached copy is used as it is: no request to the hub for it
        places.append(Path(cached))
    elif fetch:
        try:
            places.append(hub_file(rel))
        except HubError as e:
            logger.info("cannot fetch the statistics of %s: %s", pretrained.name, e)
    return pretrained, list(dict.fromkeys(places))


# ---------------------------------------------------------------------------- local folder
def place(cached: Path, dest: Path, force: bool = False) -> Path:
    """Put the cached file at ``dest``: a hard link when possible, else a copy; atomic. An identical
    file already there is kept (``force``: replaced). Not ``hf_hub_download(local_dir=)``: that copies
    (no link, so a second copy of every checkpoint), writes the destination in place, and offline does
    not serve a file from the hub cache."""
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
        check_cached(rel, cached, fix_for(name))
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
    p = argparse.ArgumentParser("python -m fsvfm.hub", description=f"Released weights of {REPO_ID}")
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
