"""End-to-end CPU demo on real photos: faces -> crops -> parsing maps -> a short FS-VFM pre-training.

    python -m fsvfm.demo                       # what ``make demo`` runs
    DEMO_FACES=/path/to/photos python -m fsvfm.demo --epochs 3

Steps: scikit-image's astronaut photo (shipped with the package, no download) plus every photo in
``$DEMO_FACES`` -> varied copies (scale, shift, rotation, colour) -> dlib detection and the square
x1.3 crop -> offline landmark face parsing -> ``fsvfm/main_pretrain.py`` for a few epochs on CPU,
printing the losses of every epoch. Outputs go to ``--out`` (default ``demo_output/``).

``--stage finetune`` (what ``make app`` runs once, after ``make demo``) then fine-tunes a toy DfD
detector from that checkpoint: the demo's face crops are the real class, and the same crops with
the inner face of another crop blended in along its parsing map (a crude face swap) the fake class.
It only gives the web app a detector to show; its scores mean nothing. ``--stage all`` runs both.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import cv2
import numpy as np
from skimage import data as skdata

from fsvfm import main_finetune_DfD, main_pretrain
from fsvfm.preprocess import prepare_pretrain_dataset
from fsvfm.preprocess.augment import make_variants
from fsvfm.util.args import parse_model_kwargs
from fsvfm.util.fileio import atomic_write_image, disk_usage
from fsvfm.util.log import setup_logging
from fsvfm.util.naming import IMAGE_EXTENSIONS

logger = logging.getLogger("fsvfm.demo")
INNER_FACE = np.arange(2, 10)   # LaPa brows, eyes, nose, lips, inner mouth: what the toy fakes swap


def _write_rgb(path: Path, rgb: np.ndarray) -> None:
    if not path.exists():
        atomic_write_image(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def collect_photos(photo_dir: Path, faces_dir: str | None, variants: int, seed: int) -> int:
    """Write the source photos and their varied copies into ``photo_dir``; returns the file count."""
    sources = [("astronaut", skdata.astronaut())]
    if faces_dir:
        folder = Path(faces_dir)
        if not folder.is_dir():
            raise SystemExit(f"DEMO_FACES={faces_dir} is not a folder")
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                bgr = cv2.imread(str(path))
                if bgr is None:
                    logger.warning("skipping unreadable photo %s", path)
                    continue
                sources.append((path.stem, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
    count = 0
    for k, (stem, rgb) in enumerate(sources):
        _write_rgb(photo_dir / f"{stem}.png", rgb)
        # The astronaut gets the most copies: it is the one photo every machine has.
        n = variants if k == 0 else max(variants // 4, 1)
        for i, variant in enumerate(make_variants(rgb, n, seed=seed + k)):
            _write_rgb(photo_dir / f"{stem}_v{i}.png", variant)
        count += 1 + n
    logger.info("%d source photo(s) -> %d photos in %s", len(sources), count, photo_dir)
    return count


def pretrain_args(data_dir: Path, out_dir: Path, args: argparse.Namespace) -> argparse.Namespace:
    """Arguments of a short CPU pre-training with the paper's losses and masking."""
    return main_pretrain.get_args_parser().parse_args([
        "--pretrain_data_path", str(data_dir), "--output_dir", str(out_dir),
        "--model", args.model, "--device", "cpu", "--epochs", str(args.epochs),
        "--warmup_epochs", "1", "--batch_size", str(args.batch_size), "--num_workers", "0",
        "--blr", "1.5e-4", "--mask_ratio", "0.75", "--norm_pix_loss", "--weight_sfr", "0.007",
        "--weight_cl", "0.1", "--cl_loss", "SimSiam", "--save_freq", str(args.epochs), "--print_freq", "1",
        "--model_kwargs", args.model_kwargs, "--seed", str(args.seed),
    ])


def toy_deepfakes(data_dir: Path, out: Path, val_every: int = 4) -> dict[str, int]:
    """``out/{train,val}/{real,fake}/<stem>.png`` from the crops and parsing maps of ``data_dir``
    (``prepare_pretrain_dataset``'s layout). Fake k = crop k with the inner face of crop k+1 blended
    in (feathered parsing-map mask); every ``val_every``-th face goes to ``val``. Returns the counts."""
    stems = sorted(p.stem for p in (data_dir / "images").glob("*.png"))
    counts: dict[str, int] = {}
    for k, stem in enumerate(stems):
        rgb = cv2.imread(str(data_dir / "images" / f"{stem}.png"))
        donor = cv2.imread(str(data_dir / "images" / f"{stems[(k + 1) % len(stems)]}.png"))
        donor = cv2.resize(donor, rgb.shape[1::-1], interpolation=cv2.INTER_AREA)
        labels = np.load(data_dir / "parsing_maps" / f"{stems[(k + 1) % len(stems)]}.npy").reshape(donor.shape[:2])
        inner = cv2.dilate(np.isin(labels, INNER_FACE).astype(np.uint8), np.ones((9, 9), np.uint8))
        alpha = cv2.GaussianBlur(inner.astype(np.float32), (15, 15), 0)[..., None]
        fake = (alpha * donor + (1 - alpha) * rgb).round().astype(np.uint8)
        split = "val" if k % val_every == 0 else "train"
        for cls, img in (("real", rgb), ("fake", fake)):
            atomic_write_image(out / split / cls / f"{stem}.png", img)  # creates the folders
            counts[f"{split}/{cls}"] = counts.get(f"{split}/{cls}", 0) + 1
    return counts


def finetune_args(data_dir: Path, pretrained: Path, out_dir: Path, args: argparse.Namespace) -> argparse.Namespace:
    """A short CPU DfD fine-tuning of the demo's pre-trained encoder (the classifier of ``--model``)."""
    overrides = parse_model_kwargs(args.model_kwargs)
    kwargs = {k: overrides[k] for k in ("embed_dim", "depth", "num_heads", "patch_size") if k in overrides}
    ns = main_finetune_DfD.get_args_parser().parse_args([
        "--finetune", str(pretrained), "--finetune_data_path", str(data_dir), "--output_dir", str(out_dir),
        "--model", args.model.removeprefix("fsfm_"), "--model_kwargs", json.dumps(kwargs), "--device", "cpu",
        "--epochs", str(args.finetune_epochs), "--warmup_epochs", "0", "--batch_size", str(args.batch_size),
        "--blr", "5e-4", "--layer_decay", "0.65", "--apply_simple_augment", "--num_workers", "0",
        "--print_freq", "1", "--seed", str(args.seed)])
    ns.demo = True   # stored in the checkpoint's args: predict, the app and the test programs say so
    return ns


def run_finetune(out: Path, args: argparse.Namespace) -> Path:
    """The toy detector of ``--stage finetune``; returns its ``checkpoint-min_val_loss.pth``."""
    pretrained = out / "pretrain" / f"checkpoint-{args.epochs - 1}.pth"
    if not pretrained.is_file():
        raise SystemExit(f"{pretrained} is missing: run the pre-training stage first (python -m fsvfm.demo "
                         f"--out {out} --epochs {args.epochs})")
    logger.info("toy deepfakes: %s", toy_deepfakes(out / "pretrain_data", out / "finetune_data"))
    run_dir = out / "finetune"
    (run_dir / "log.txt").unlink(missing_ok=True)
    for stale in run_dir.glob("checkpoint-*.pth"):
        stale.unlink()
    result = main_finetune_DfD.main(finetune_args(out / "finetune_data", pretrained, run_dir, args))
    print(f"toy DfD detector: val AUC {result['last_val']['auc']:.1f}%, val loss {result['min_val_loss']:.4f} "
          f"-> {run_dir / 'checkpoint-min_val_loss.pth'}")
    return run_dir / "checkpoint-min_val_loss.pth"


def run_pretrain(out: Path, args: argparse.Namespace) -> None:
    collect_photos(out / "photos", args.faces, args.variants, args.seed)
    summary = prepare_pretrain_dataset(out / "photos", out / "pretrain_data", backend="landmarks",
                                       workers=args.workers)
    logger.info("face crops + parsing maps: %s", summary)
    n_faces = len(list((out / "pretrain_data" / "images").glob("*.png")))
    if n_faces < args.batch_size:
        raise SystemExit(f"only {n_faces} faces were parsed; need at least --batch_size {args.batch_size}")

    run_dir = out / "pretrain"
    (run_dir / "log.txt").unlink(missing_ok=True)  # a re-run starts a fresh log
    for stale in run_dir.glob("checkpoint-*.pth"):
        stale.unlink()
    main_pretrain.main(pretrain_args(out / "pretrain_data", run_dir, args))
    print(f"\nFS-VFM demo: {n_faces} parsed faces from real photos, model {args.model}, CPU")
    for line in (run_dir / "log.txt").read_text().splitlines():
        rec = json.loads(line)
        print(f"epoch {rec['epoch']}: loss {rec['train_loss']:.4f}  rec_all {rec['train_loss_rec_all']:.4f}  "
              f"rec_sfr {rec['train_loss_rec_sfr']:.4f}  cl {rec['train_loss_cl']:.4f}  lr {rec['train_lr']:.2e}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser("FS-VFM end-to-end CPU demo")
    parser.add_argument("--out", default="demo_output", help="output folder")
    parser.add_argument("--stage", default="pretrain", choices=("pretrain", "finetune", "all"),
                        help="pretrain (make demo); finetune: a toy DfD detector from its checkpoint (make app)")
    parser.add_argument("--faces", default=os.environ.get("DEMO_FACES"),
                        help="extra folder of face photos (default: $DEMO_FACES)")
    parser.add_argument("--variants", default=16, type=int, help="varied copies of the astronaut photo")
    parser.add_argument("--model", default="fsfm_vit_small_patch16")
    parser.add_argument("--model_kwargs", "--model_overrides", dest="model_kwargs", default="",
                        help="JSON model constructor overrides (tests; --model_overrides is the former name)")
    parser.add_argument("--epochs", default=2, type=int)
    parser.add_argument("--finetune_epochs", default=1, type=int)
    parser.add_argument("--batch_size", default=8, type=int)
    parser.add_argument("--workers", default=min(2, os.cpu_count() or 1), type=int)
    parser.add_argument("--seed", default=0, type=int)
    args = parser.parse_args(argv)
    out = Path(args.out)
    setup_logging(out)
    start = time.time()
    if args.stage in ("pretrain", "all"):
        run_pretrain(out, args)
    if args.stage in ("finetune", "all"):
        run_finetune(out, args)
    print(f"outputs in {out.resolve()}: {disk_usage(out) / 1e6:,.1f} MB on disk (hard links counted once), "
          f"{time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
