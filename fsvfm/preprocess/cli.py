"""Command lines of the thin entry scripts under ``datasets/*/preprocess/`` (one parent parser)."""
from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable
from pathlib import Path

from fsvfm.preprocess.config import load_config
from fsvfm.preprocess.faces import FACE_SELECT
from fsvfm.preprocess.fas import FAS_DATASETS, fas_custom_stages
from fsvfm.preprocess.finetune_layouts import FINETUNE_DATASETS
from fsvfm.preprocess.jobs import REFUSED, Options
from fsvfm.preprocess.layouts import (
    PARSE_SOURCES,
    custom_parse_stages,
    custom_stages,
    parse_stages,
    pretrain_stages,
    run_name_for,
)
from fsvfm.preprocess.parsing import BACKENDS
from fsvfm.preprocess.runner import Summary, check_backend, run_stages
from fsvfm.preprocess.shards import merge_shards, parse_shard, shard_jobs, shard_run_name
from fsvfm.preprocess.video import VIDEO_EXTENSIONS
from fsvfm.util.cli import run_cli
from fsvfm.util.errors import DataError, UsageError
from fsvfm.util.log import setup_logging
from fsvfm.util.naming import IMAGE_EXTENSIONS

logger = logging.getLogger(__name__)

PRETRAIN_DATASETS = ("VF2", "YTF", "FF++_o")


def common_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("preprocessing")
    g.add_argument("--config", default=None, help="yacs YAML merged over config/default.py")
    g.add_argument("--opts", nargs="+", default=[], metavar="KEY VALUE", help="config overrides")
    g.add_argument("--src", default=None, help="custom mode: folder of images or videos")
    g.add_argument("--dst", default=None, help="custom mode: output folder")
    g.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes")
    g.add_argument("--log_dir", default=None,
                   help="summary and failures list (default: datasets/preprocess_logs, or --dst in custom mode)")
    g.add_argument("--face_select", choices=FACE_SELECT, default="first",
                   help="first = the detector's highest-scoring face (original), or the largest box")
    g.add_argument("--shard", default=None, metavar="K/N",
                   help="run only part K of N (1 <= K <= N) of the work, e.g. one task of a cluster array job; "
                        "each part resumes on its own and writes {run}_shardKofN_summary.json")
    g.add_argument("--merge_shards", action="store_true",
                   help="do no work: merge the N shard summaries of this run (same --dataset and --log_dir) "
                        "into its {run}_summary.json and {run}_failures.txt")
    return p


def crop_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("dlib face crops")
    g.add_argument("--upsample", type=int, default=1, help="dlib HOG upsampling count")
    g.add_argument("--align", action="store_true", help="5-point aligned face_size crops instead of native")
    g.add_argument("--num_frames", default=None,
                   help="custom mode: frames per video (int or 'all'; default FF_num_frames)")
    g.add_argument("--max_faces", type=int, default=1,
                   help="faces kept per photo, in --face_select order (1: one, as the original; 0: all); "
                        "the k-th extra face is saved as NAME_face{k}; video frames keep one face")
    g.add_argument("--full_res_detect", action="store_true",
                   help="videos: search every sampled frame for faces of every size, as the original (default: "
                        "from the second sampled frame on, faces down to 0.7x the last frame's smallest one)")
    return p


def parse_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("face parsing")
    g.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="facer (FaRL, needs weights) | landmarks (offline) | auto (facer if available)")
    g.add_argument("--facer_model_dir", default=None, help="folder holding the FACER weight files")
    g.add_argument("--device", default=None, help="facer device (default cuda if available)")
    g.add_argument("--save_vis", action="store_true", help="also write vis_parsing_maps/ (cfg.save_vis_ps)")
    g.add_argument("--crop", action="store_true", help="custom mode: crop faces from photos first")
    g.add_argument("--skip_crop_check", action="store_true",
                   help="custom mode without --crop: parse every photo whole, even one that is not a face crop "
                        "(no face, several faces, a face far smaller than the frame); default: refuse those")
    return p


def _options(cfg, args, save_vis: bool = False) -> Options:
    return Options(face_scale=cfg.face_scale, face_size=cfg.face_size, img_format=cfg.img_format,
                   upsample=args.upsample, face_select=args.face_select, align=args.align,
                   backend=getattr(args, "backend", "landmarks"),
                   facer_model_dir=getattr(args, "facer_model_dir", None),
                   device=getattr(args, "device", None), save_vis=save_vis, max_faces=args.max_faces,
                   full_res_detect=getattr(args, "full_res_detect", False))


def _num_frames(value, default):
    if value is None:
        return default
    return None if str(value).lower() in ("all", "none") else int(value)


def _log_dir(args, default_file: Path) -> Path:
    if args.log_dir:
        return Path(args.log_dir)
    if args.dataset == "custom":
        return Path(args.dst)
    return (Path(default_file).resolve().parent.parent / "../../preprocess_logs").resolve()


def _cli(parser: argparse.ArgumentParser, argv, default_file, body: Callable[..., Summary]) -> Summary:
    """Parse, check the arguments, load the config and return ``body(args, cfg)``; a user mistake (a
    missing folder, split or list file or FACER weights, a bad ``--config``/``--opts``) ends with one
    line and exit code 2 (``util.cli.run_cli``)."""
    def main(args: argparse.Namespace) -> Summary:
        setup_logging()
        if args.dataset == "custom" and not (args.src and args.dst):
            parser.error("--dataset custom needs --src and --dst")
        if getattr(args, "max_faces", 1) < 0:
            parser.error("--max_faces must be >= 0 (0 keeps every face)")
        if args.dataset == "custom" and not Path(args.src).is_dir():
            raise UsageError(f"--src {args.src}: no such folder (give the folder of images or videos to process)")
        try:
            cfg = load_config(default_file, args.config, args.opts)
        except (ValueError, KeyError) as e:   # --config / --opts
            raise UsageError(str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)) from e
        args.shard = parse_shard(args.shard) if args.shard is not None else None
        if args.merge_shards and args.shard:
            parser.error("--merge_shards merges every shard: give it without --shard")
        return body(args, cfg)
    return run_cli(main, parser, argv)


def _merge(args, default_file, run_name: str) -> Summary | None:
    """``--merge_shards``: the merged summary of the run's shards (None without the flag)."""
    if not args.merge_shards:
        return None
    summary, n = merge_shards(_log_dir(args, default_file), run_name)
    logger.info("merged %d shards of %s: %s", n, run_name, summary)
    return summary


def _run(stages, opts: Options, args, default_file, run_name: str, summary: Summary) -> Summary:
    """``run_stages`` (on shard ``args.shard`` of every stage's jobs); a ``DataError`` when the run found
    no input at all (counted before the split, so an empty shard of a real run is not an error)."""
    listed, kept = [], []

    def part(make):
        def make_part():
            jobs = make()
            mine = shard_jobs(jobs, args.shard)
            listed.append(len(jobs))
            kept.append(len(mine))
            return mine
        return make_part
    stages = [(name, part(make)) for name, make in stages]
    run_stages(stages, opts, args.workers, _log_dir(args, default_file), shard_run_name(run_name, args.shard),
               summary)
    if args.shard:
        logger.info("shard %d/%d: %d of the %d jobs listed", *args.shard, sum(kept), sum(listed))
    if summary.total() == 0 and sum(listed) == 0:
        if args.dataset == "custom":
            raise UsageError(f"--src {args.src} holds no image ({' '.join(IMAGE_EXTENSIONS)}) "
                             f"or video ({' '.join(VIDEO_EXTENSIONS)})")
        raise DataError(f"nothing to process for --dataset {args.dataset}: its input folders are missing or empty "
                        "(see the warnings above; paths come from config/default.py, --config and --opts)")
    return summary


def main_dataset_preprocess(default_file: str | Path, task: str, argv=None) -> Summary:
    """``datasets/{pretrain,finetune}/preprocess/dataset_preprocess.py``: crop faces of a data set."""
    names = PRETRAIN_DATASETS if task == "pretrain" else tuple(FINETUNE_DATASETS)
    parser = argparse.ArgumentParser(description=f"{task} face extraction", parents=[common_parser(), crop_parser()])
    parser.add_argument("--dataset", choices=(*names, "custom"),
                        **({"default": "VF2"} if task == "pretrain" else {"required": True}))

    def crop(args: argparse.Namespace, cfg) -> Summary:
        if (merged := _merge(args, default_file, run_name_for(args.dataset))) is not None:
            return merged
        summary = Summary()
        if args.dataset == "custom":
            stages = custom_stages(args.src, args.dst, _num_frames(args.num_frames, cfg.FF_num_frames))
        elif task == "pretrain":
            stages = pretrain_stages(cfg, args.dataset, summary)
        else:
            stages = FINETUNE_DATASETS[args.dataset](cfg, summary)
        return _run(stages, _options(cfg, args), args, default_file, run_name_for(args.dataset), summary)
    return _cli(parser, argv, default_file, crop)


def main_face_parse(default_file: str | Path, argv=None) -> Summary:
    """``datasets/pretrain/preprocess/face_parse.py``: face crops -> ``images/`` + ``parsing_maps/``."""
    parser = argparse.ArgumentParser(description="face parsing -> pre-training data set",
                                     parents=[common_parser(), crop_parser(), parse_parser()])
    parser.add_argument("--dataset", choices=(*PARSE_SOURCES, "custom"), required=True)

    def parse(args: argparse.Namespace, cfg) -> Summary:
        if (merged := _merge(args, default_file, "face_parse_" + run_name_for(args.dataset))) is not None:
            return merged
        if args.dataset == "custom":
            stages = custom_parse_stages(args.src, args.dst, _num_frames(args.num_frames, cfg.FF_num_frames),
                                         crop=args.crop, check_crops=not args.skip_crop_check)
        else:
            stages = parse_stages(cfg, args.dataset)
        opts = _options(cfg, args, save_vis=args.save_vis or cfg.save_vis_ps)
        check_backend(opts)  # before any work: FACER weights
        run_name = "face_parse_" + run_name_for(args.dataset)
        summary = _run(stages, opts, args, default_file, run_name, Summary())
        refused = sorted((item, reason) for status, item, reason in summary.failures if status == REFUSED)
        if refused:
            item, reason = refused[0]
            raise UsageError(f"{len(refused)} photo(s) in --src {args.src} are not face crops ({Path(item).name}: "
                             f"{reason.removeprefix('not a face crop: ')}; all in "
                             f"{_log_dir(args, default_file) / (run_name + '_failures.txt')}); add --crop to detect "
                             "and crop their faces, or --skip_crop_check to parse them whole")
        return summary
    return _cli(parser, argv, default_file, parse)


def main_fas_preprocess(default_file: str | Path, group: str, argv=None) -> Summary:
    """``datasets/finetune/preprocess_FAS/preprocess_{MCIO,WCS}.py``: FAS chips / frames.

    A missing list file ends the run with one line naming it (exit code 2).
    """
    names, make_stages = FAS_DATASETS[group]
    parser = argparse.ArgumentParser(description=f"{group} face anti-spoofing preprocessing",
                                     parents=[common_parser()])
    parser.add_argument("--dataset", choices=(*names, "custom") if group == "MCIO" else names, default="all",
                        help="one data set or all of them (default)"
                        + ("; custom = the images and videos of --src, chips to --dst" if group == "MCIO" else ""))
    parser.add_argument("--device", default="cpu", help="MTCNN device (cpu, cuda, cuda:1)")
    if group == "MCIO":
        parser.add_argument("--max_faces", type=int, default=1,
                            help="custom photos: chips kept per photo in --face_select order (1: one, as the "
                                 "original; 0: all); the k-th extra face is saved as NAME_face{k}; videos keep one")

    def chips(args: argparse.Namespace, cfg) -> Summary:
        if (merged := _merge(args, default_file, run_name_for(f"FAS_{group}_{args.dataset}"))) is not None:
            return merged
        max_faces = getattr(args, "max_faces", 1)
        if max_faces != 1 and args.dataset != "custom":
            parser.error(f"--max_faces {max_faces}: only --dataset custom keeps several faces (the benchmark "
                         "list files name one chip per image)")
        opts = Options(face_size=cfg.face_size, img_format=cfg.img_format, face_select=args.face_select,
                       device=args.device, chip_padding=cfg.chip_padding, max_faces=max_faces)
        summary = Summary()
        stages = (fas_custom_stages(args.src, args.dst, cfg.img_format) if args.dataset == "custom"
                  else make_stages(cfg, args.dataset, summary))
        return _run(stages, opts, args, default_file, run_name_for(f"FAS_{group}_{args.dataset}"), summary)
    return _cli(parser, argv, default_file, chips)
