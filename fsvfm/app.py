"""A local web app over ``fsvfm.predict`` and ``fsvfm.visualize`` (Gradio; ``pip install -e .[app]``).

    python -m fsvfm.app --detector DfD.pth [--detector DiFF.pth ...] [--pretrained checkpoint-1.pth]
                        [--host 127.0.0.1 --port 7860] [--max_file_mb 100]

Tabs: **Detect** (an image or a video in; every face boxed with its score, the mean over faces and
frames as the video score; one column per detector checkpoint, labelled ``task: folder/file``; a binary
detector reads P(real) (FAS: P(live)), an N-class one such as the unified real / deepfake / diffusion /
spoof detector also shows one bar per class) and
**Facial masking** (a face in; its LaPa parsing map, the CRFR-P mask of each region and, with
``--pretrained``, the online network's reconstruction). The app adds no model code: every picture and
score comes from the two modules. It binds to 127.0.0.1 unless ``--host`` says otherwise, sends no
analytics, and keeps every file it receives or makes in one temporary folder, deleted at exit; within
it, each request's pictures and uploads are removed once served (after ``SERVED_FILES_MAX_AGE_S``).
Uploads that are not images/videos, exceed ``--max_file_mb`` or declare more than ``--max_megapixels``
in their header (a small file that decodes to a huge image) get a message in the page.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from fsvfm.predict import Detector, reading, save_visualisations
from fsvfm.preprocess.parsing import BACKENDS
from fsvfm.preprocess.video import VIDEO_EXTENSIONS
from fsvfm.util.checkpoint import CheckpointError
from fsvfm.util.cli import run_cli
from fsvfm.util.errors import UsageError
from fsvfm.util.images import (
    ImageTooLargeError,
    add_max_pixels_flag,
    apply_max_pixels_flag,
    header_size,
    max_pixels,
    open_image,
)
from fsvfm.util.naming import DFD_VOCABULARY, IMAGE_EXTENSIONS, ClassVocabulary
from fsvfm.visualize import (
    REGION_NAMES,
    Pretrained,
    VisualizeError,
    load_pretrained,
    masking_figure,
    prepare_face,
)

logger = logging.getLogger(__name__)

DEFAULT_MAX_FILE_MB = 100.0
# a request's files (upload, pictures) are served within this time, then removed (Gradio's delete_cache
# for the uploads and its copies, prune_served for the app's own pictures)
SERVED_FILES_MAX_AGE_S = 120
OUTPUT_PREFIX = "detect-"
MIB = 1024 * 1024
TITLE = "FS-VFM"


# ------------------------------------------------------------------------------------ checks
def upload_problem(path: str | os.PathLike | None, max_bytes: int, suffixes: Sequence[str]) -> str | None:
    """The message for an upload the app refuses (none, wrong type, too large), else None."""
    if not path:
        return "Upload a file first."
    p = Path(path)
    if p.suffix.lower() not in suffixes:
        kinds = ", ".join(sorted(suffixes))
        return f"**{p.name}** is not a file this tab reads; upload one of: {kinds}."
    size = p.stat().st_size
    if size > max_bytes:
        return (f"**{p.name}** is {size / MIB:.1f} MB; this app takes files up to {max_bytes / MIB:.3g} MB "
                "(`--max_file_mb`).")
    if p.suffix.lower() in IMAGE_EXTENSIONS:
        try:  # the readers' pixel guard, from the header: nothing is decoded here
            open_image(p).close()
        except ImageTooLargeError:
            w, h = header_size(p.read_bytes())
            return (f"**{p.name}** is a {w}x{h} image ({w * h / 1e6:.0f} megapixels); this app takes images up to "
                    f"{max_pixels() / 1e6:.0f} megapixels (`--max_megapixels`).")
        except (OSError, ValueError, SyntaxError):
            pass  # unreadable: the handler's reader says so
    return None


def prune_served(workdir: Path, max_age_s: float = SERVED_FILES_MAX_AGE_S, now: float | None = None) -> int:
    """Remove the app's picture folders of earlier requests (older than ``max_age_s``: served by then);
    returns how many were removed."""
    now = time.time() if now is None else now
    removed = 0
    for folder in workdir.glob(f"{OUTPUT_PREFIX}*"):
        with contextlib.suppress(OSError):
            if now - folder.stat().st_mtime > max_age_s:
                shutil.rmtree(folder)
                removed += 1
    return removed


def hide_path(text: str | None, path: str | os.PathLike) -> str | None:
    """``text`` with the upload's temporary path (and folder) shown as its file name: the page and the
    API name files as the user knows them."""
    if not text:
        return text
    p = Path(path)
    for where in dict.fromkeys((str(path), str(p), str(p.resolve()))):
        text = text.replace(where, p.name)
    if p.is_absolute():  # the rest of the folder, e.g. in a message that names a neighbour
        for folder in dict.fromkeys((str(p.parent), str(p.resolve().parent))):
            text = text.replace(folder + os.sep, "")
    return text


def detector_labels(paths: Sequence[str], tasks: Sequence[str]) -> list[str]:
    """``task: folder/file`` per checkpoint, made unique with ``#k`` when two would read the same."""
    labels = [f"{task}: {Path(p).parent.name}/{Path(p).name}" for p, task in zip(paths, tasks)]
    return [f"{lab} #{i + 1}" if labels.count(lab) > 1 else lab for i, lab in enumerate(labels)]


def load_detectors(paths: Sequence[str], device: str | None) -> dict[str, Detector]:
    """The detectors of ``--detector`` checkpoints, keyed by their labels (insertion order = given order)."""
    detectors = []
    for path in paths:
        try:
            detectors.append(Detector.from_checkpoint(path, device))
        except ValueError as e:  # e.g. a pre-training checkpoint given as a detector
            raise UsageError(f"--detector {path}: {e}; give a fine-tuned (main_finetune_DfD.py) checkpoint") from e
    return dict(zip(detector_labels(paths, [d.info["task"] for d in detectors]), detectors))


# ------------------------------------------------------------------------------------ handlers
def warnings_note(det: Detector) -> str:
    """Markdown of the detector's ``model_warnings`` (a demo or near-chance model), or ''."""
    return "".join(f"> **Warning**: {w}\n\n" for w in det.info.get("warnings", []))


def score_table(label: str, record: dict, vocab: ClassVocabulary = DFD_VOCABULARY) -> str:
    """Markdown of one detector's record: verdict line and one row per face. Binary: P(positive class)
    decided at 0.5 (DfD: P(real), FAS: P(live)); N classes: the argmax class and every class's P."""
    head = f"#### {label}\n"
    if record["label"] is None:
        return head + f"No score: {record['error']}."
    what = "video score (mean over faces and frames)" if record["type"] == "video" else "image score (mean over faces)"
    if vocab.binary:
        pos = vocab.names[vocab.positive]
        order, extra = [pos, vocab.names[vocab.negative]], []
        verdict = f"**P({pos}) = {record['scores'][pos]:.4f}** ({record['label']})"
    else:
        order, extra = list(vocab.names), ["class"]
        verdict = f"**{record['label']}** (P({record['label']}) = {record['scores'][record['label']]:.4f})"
    columns = [f"P({c})" for c in order] + extra

    def cells(face: dict) -> list[str]:
        return [f"{face['scores'][c]:.4f}" for c in order] + ([face["label"]] if extra else [])
    rows = [f"| {i} | {'-' if f['frame'] is None else f['frame']} | {', '.join(map(str, f['box']))} | "
            + " | ".join(cells(f)) + " |" for i, f in enumerate(record["faces"], start=1)]
    return (head + f"{verdict}, {what}, {len(record['faces'])} face(s)\n\n"
            f"| face | frame | box x1, y1, x2, y2 | {' | '.join(columns)} |\n"
            f"|---:|---:|---|{'---:|' * len(columns)}\n" + "\n".join(rows))


def class_bars(record: dict, vocab: ClassVocabulary) -> dict[str, float] | None:
    """``{class: mean probability}`` of an N-class detector's record (a ``gr.Label``'s bars), None
    without a score."""
    if vocab.binary or record.get("scores") is None:
        return None
    return {name: float(record["scores"][name]) for name in vocab.names}


def detect(path: str | None, detectors: dict[str, Detector], max_bytes: int, workdir: Path
           ) -> tuple[str, dict[str, dict], list[list[str]], list[str]]:
    """One upload through every detector.

    Returns ``(status markdown, {label: record}, [annotated image paths per detector], [score markdown
    per detector])``, the records as ``Detector.predict`` gives them with ``file`` (the upload's name) in
    place of ``path``; a refused upload gives the message and empty results.
    """
    problem = upload_problem(path, max_bytes, IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)
    if problem is None and not detectors:
        problem = "No detector loaded: start the app with `--detector CHECKPOINT`."
    if problem is not None:
        return problem, {}, [[] for _ in detectors], ["" for _ in detectors]
    prune_served(workdir)
    records, galleries, tables = {}, [], []
    for k, (label, det) in enumerate(detectors.items()):
        record = det.predict(path)
        record.update({key: hide_path(record[key], path) for key in ("error", "warning")})
        out = Path(tempfile.mkdtemp(dir=workdir, prefix=OUTPUT_PREFIX))
        galleries.append([str(p) for p in save_visualisations(record, out, k, det.classes)])
        tables.append(warnings_note(det) + score_table(label, record, det.classes))
        # the upload's temp path stays private; a "path" key would also read as a file to Gradio's client
        records[label] = {"file": Path(path).name, **{key: v for key, v in record.items() if key != "path"}}
    return f"**{Path(path).name}**: {next(iter(records.values()))['type']}", records, galleries, tables


def masking(path: str | None, region: str, is_crop: bool, seed: int | None, pretrained: Pretrained | None,
            max_bytes: int, backend: str = "auto") -> tuple[str, np.ndarray | None]:
    """``(status markdown, masking figure (H, W, 3) uint8 or None)`` of an uploaded face photo."""
    problem = upload_problem(path, max_bytes, IMAGE_EXTENSIONS)
    if problem is not None:
        return problem, None
    try:
        face, parsing_map = prepare_face(path, backend, crop=not is_crop)
    except VisualizeError as e:
        return f"**{Path(path).name}**: {hide_path(str(e), path)}", None
    seed = int(seed or 0)  # an emptied number box arrives as None
    figure = masking_figure(face, parsing_map, region, pretrained, seed=seed)
    recon = f"reconstructions by {Path(pretrained.source).name}" if pretrained else "no `--pretrained`: masks only"
    return f"**{Path(path).name}**: region {region}, seed {seed}, {recon}", figure


# ------------------------------------------------------------------------------------ page
def _import_gradio():
    try:
        import gradio as gr
    except ImportError as e:
        raise SystemExit(f"error: the web app needs Gradio ({e}); install it with pip install -e '.[app]'") from e
    return gr


def _detect_tab(gr, detectors: dict[str, Detector], max_bytes: int, workdir: Path) -> None:
    gr.Markdown("Upload an image or a video. Every face is boxed with its score; the record's score is the mean "
                "over faces and sampled frames. " + " ".join(f"*{label}*: {reading(det.classes)}."
                                                             for label, det in detectors.items()))
    file = gr.File(label="image or video", type="filepath", elem_id="detect-file")
    button = gr.Button("Detect", variant="primary")
    status = gr.Markdown(label="status", show_label=False, elem_id="detect-status")
    galleries, tables, bars = [], [], []
    with gr.Row():
        for k, (label, det) in enumerate(detectors.items()):
            with gr.Column():
                galleries.append(gr.Gallery(label=label, columns=1, format="png"))
                if not det.classes.binary:  # one bar per class, as the online demo of the unified detector
                    bars.append((label, gr.Label(label=f"classes: {label}", num_top_classes=len(det.classes.names),
                                                 elem_id=f"detect-classes-{k}")))
                tables.append(gr.Markdown(label=f"scores: {label}", show_label=False, elem_id=f"detect-scores-{k}"))
    records = gr.JSON(label="records (fsvfm.predict)")

    def run(image_or_video):
        message, recs, gals, tabs = detect(image_or_video, detectors, max_bytes, workdir)
        return [message, recs, *gals, *tabs,
                *(class_bars(recs[label], detectors[label].classes) if label in recs else None for label, _ in bars)]
    button.click(run, file, [status, records, *galleries, *tables, *(bar for _, bar in bars)], api_name="detect",
                 api_description="An image or video through every detector: status, the records (JSON), per detector "
                                 "its annotated pictures, then its score table, then per N-class detector its class "
                                 "bars ({class: probability}).")


def _masking_tab(gr, pretrained: Pretrained | None, max_bytes: int, backend: str) -> None:
    gr.Markdown("Upload a face photo: its parsing map, the CRFR-P mask of a facial region (or all six)"
                + (" and the pre-trained network's reconstruction." if pretrained else
                   ". Start with `--pretrained CHECKPOINT` for reconstructions."))
    file = gr.File(label="face photo", type="filepath", elem_id="masking-file")
    with gr.Row():
        region = gr.Dropdown(["all", *REGION_NAMES], value="all", label="region")
        is_crop = gr.Checkbox(False, label="already a face crop (skip detection)")
        seed = gr.Number(0, precision=0, label="mask seed")
    button = gr.Button("Show masking", variant="primary")
    status = gr.Markdown(label="status", show_label=False, elem_id="masking-status")
    figure = gr.Image(label="CRFR-P masking", format="png", type="numpy", interactive=False)

    def show(face_photo, region, already_cropped, mask_seed):  # Gradio's API names the inputs after these
        return masking(face_photo, region, already_cropped, mask_seed, pretrained, max_bytes, backend)
    button.click(show, [file, region, is_crop, seed], [status, figure], api_name="masking",
                 api_description="A face photo's parsing map and CRFR-P masks: status and the figure.")


def build_app(detectors: dict[str, Detector], pretrained: Pretrained | None, workdir: Path,
              max_bytes: int = int(DEFAULT_MAX_FILE_MB * MIB), backend: str = "auto"):
    """The Gradio Blocks of both tabs. API names: ``/detect`` (image_or_video -> status, records JSON,
    then a gallery per detector, a score table per detector and the class bars ``{class: P}`` of each
    N-class detector) and ``/masking`` (face_photo, region, already_cropped, mask_seed -> status, figure).
    Call inside ``app_workdir()`` so that Gradio's cache lands in ``workdir``."""
    gr = _import_gradio()
    with gr.Blocks(title=TITLE, analytics_enabled=False,
                   delete_cache=(SERVED_FILES_MAX_AGE_S, SERVED_FILES_MAX_AGE_S)) as blocks:
        gr.Markdown(f"# {TITLE}: face security foundation model\nFiles up to {max_bytes / MIB:.3g} MB; "
                    "nothing leaves this machine.")
        with gr.Tab("Detect"):
            _detect_tab(gr, detectors, max_bytes, workdir)
        with gr.Tab("Facial masking"):
            _masking_tab(gr, pretrained, max_bytes, backend)
    return blocks


@contextlib.contextmanager
def app_workdir() -> Iterator[Path]:
    """A fresh temporary folder that holds Gradio's cache (uploads, outputs) and the app's pictures;
    Gradio's environment points there (and analytics off) while it lasts; deleted afterwards."""
    workdir = Path(tempfile.mkdtemp(prefix="fsvfm-app-"))
    saved = {k: os.environ.get(k) for k in ("GRADIO_TEMP_DIR", "GRADIO_ANALYTICS_ENABLED")}
    os.environ.update(GRADIO_TEMP_DIR=str(workdir), GRADIO_ANALYTICS_ENABLED="False")
    try:
        yield workdir
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(workdir, ignore_errors=True)


def launch(blocks, host: str, port: int, max_bytes: int, block: bool = True) -> str:
    """Serve ``blocks`` on ``host:port`` (no share link, no SSR/MCP); returns the local URL. With
    ``block=False`` it returns at once (tests; stop with ``blocks.close()``)."""
    _, url, _ = blocks.launch(server_name=host, server_port=port, share=False, max_file_size=max_bytes,
                              prevent_thread_lock=not block, ssr_mode=False, mcp_server=False, pwa=False,
                              quiet=not block, show_error=True)
    return url


# ------------------------------------------------------------------------------------ CLI
def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("python -m fsvfm.app", description=__doc__.split("\n")[0])
    p.add_argument("--detector", action="append", default=[], metavar="CKPT",
                   help="fine-tuned checkpoint (DfD, DiFF, FAS, the 4-class unified detector, ...; local or hf://); "
                        "repeat for side-by-side columns")
    p.add_argument("--pretrained", default=None, metavar="CKPT",
                   help="pre-training checkpoint-N.pth: adds reconstructions to the masking tab")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default localhost only)")
    p.add_argument("--port", default=7860, type=int)
    p.add_argument("--max_file_mb", default=DEFAULT_MAX_FILE_MB, type=float, help="largest upload accepted (MB)")
    p.add_argument("--backend", default="auto", choices=BACKENDS, help="face parser of the masking tab")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    add_max_pixels_flag(p)
    return p


def load_models(args: argparse.Namespace) -> tuple[dict[str, Detector], Pretrained | None]:
    """The models of the command line; a missing or wrong checkpoint raises a one-line error."""
    for path in [*args.detector, *([args.pretrained] if args.pretrained else [])]:
        if not str(path).startswith("hf://") and not Path(path).is_file():
            raise CheckpointError(f"{path}: no such checkpoint file; give the path of a .pth file")
    detectors = load_detectors(args.detector, args.device)
    pretrained = load_pretrained(args.pretrained, args.device or "cpu") if args.pretrained else None
    return detectors, pretrained


def check_port(host: str, port: int) -> None:
    """``UsageError`` naming ``--port`` when ``host:port`` cannot be bound (in use, privileged, out of range)."""
    if not 0 < port < 65536:
        raise UsageError(f"--port {port}: a port is a number from 1 to 65535")
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.bind((host, port))
    except OSError as e:
        why = {errno.EADDRINUSE: "is already in use (another app or server?)",
               errno.EACCES: "needs extra privileges (ports below 1024)"}.get(e.errno, f"cannot be bound ({e.strerror})")
        raise UsageError(f"--port {port}: {host}:{port} {why}; choose another --port, e.g. --port {port + 1 if port < 65535 else 7860}") from e


def serve(args: argparse.Namespace) -> int:
    """Load the models, then serve the app until Ctrl-C or SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.max_file_mb <= 0:
        raise UsageError("--max_file_mb must be positive")
    check_port(args.host, args.port)  # before the (long) model loading
    apply_max_pixels_flag(args)
    detectors, pretrained = load_models(args)
    max_bytes = int(args.max_file_mb * MIB)
    # a plain `kill` ends the app like Ctrl-C does, so the temporary folder is removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with app_workdir() as workdir:
        blocks = build_app(detectors, pretrained, workdir, max_bytes, args.backend)
        try:
            launch(blocks, args.host, args.port, max_bytes)
        finally:
            blocks.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Exit code 0, or 2 after one line for a user mistake at start-up (``util.cli.run_cli``)."""
    return run_cli(serve, get_args_parser(), argv, return_code=True)


if __name__ == "__main__":
    raise SystemExit(main())
