"""Face anti-spoofing (FAS) as a task of the one fine-tuning runner: ``FAS_TASK``, its flags, its experiment
(``FASExperiment``) and hooks.

``--runs`` independent runs (seed ``--seed + run``), each: a fresh model from ``--pt_model`` (encoder into
``backbone.vit``), Adam at a constant ``--lr``, and ``--iters // --eval_freq`` evaluation intervals. After an
interval the target domain's test set is scored (``METRIC_MODES['fas']``); the evaluation with the lowest
target HTER (ties: the later) is the run's result and checkpoint. Beside it, the HTER at the EER threshold of
the training sources' own test lists (held-out source data) is reported.

Outputs in ``--op_dir``: ``{target}_vit_0_shot_checkpoint_run_{i}.pth.tar`` (original keys, ``state_dict``),
``log_detail.txt`` (a table row per evaluation), ``log.txt`` (JSON lines), TensorBoard ``run_{i}/``, the
``--report_logger_path`` CSV (``Run, HTER, AUC, TPR@FPR=1%`` + the source-threshold HTER, ``Mean``, ``Std dev``),
and for resuming: ``fas_experiment.json`` (the flags of the experiment), ``run_{i}_result.json`` (a finished
run) and ``run_{i}_last.pth`` (an unfinished run's last interval). Rerunning the same command keeps finished
runs, resumes an interrupted one and rebuilds the report; another experiment's folder is refused unless
``--overwrite``.

* model: ``fsvfm.models_fas`` (``--model vit_*`` full fine-tuning, ``--model vit_*_fs_adapter`` FS-Adapter,
 ); the pre-trained encoder loads into ``backbone.vit``.
* data: the leave-one-out protocol table and list files of ``fsvfm.data.fas``; the training "loader"
  yields ``--eval_freq`` balanced batches (``--batch_size`` real and fake frames per source domain), so the
  engine's ``train_one_epoch`` runs one evaluation interval.
* loss hook: cross-entropy on the token-0 logits (+ ``--weight_cl`` x ``RealAnchorConLoss`` on the adapter
  features, live = class 1), with the batch accuracy as a logged component.
* evaluation: P(live) per frame from the engine's ``predict``, then ``METRIC_MODES['fas']`` on video means.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import Dataset

from fsvfm.data.fas import (
    PROTOCOLS,
    BalancedSourceBatches,
    Protocol,
    build_test_set,
    build_train_sets,
    check_protocol_lists,
    fas_mean_std,
    fas_training_mean_std,
    fas_transform,
    get_protocol,
    source_test_domains,
)
from fsvfm.data.finetune import dataset_video_names
from fsvfm.engine_finetune import LossFn, make_eval_loader, predict
from fsvfm.finetune_setup import infer_classifier_name, load_pretrained_encoder
from fsvfm.losses import RealAnchorConLoss
from fsvfm.metrics import METRIC_MODES, ScoredSet
from fsvfm.models_fas import EMBED_NORMS, add_embedder_aliases, create_fas_model, fas_registry_name
from fsvfm.models_vit import is_fs_adapter
from fsvfm.registry import list_models
from fsvfm.tasks import FinetuneTask
from fsvfm.util import dist
from fsvfm.util.args import (
    adapter_parser,
    classifier_parser,
    distributed_parser,
    input_parser,
    parse_model_kwargs,
)
from fsvfm.util.checkpoint import (
    CheckpointError,
    args_dict,
    build_for_weights,
    check_model_kwargs,
    drop_log_records,
    load_checkpoint,
    load_model_weights,
    load_optimizer_state,
    model_state_from,
    resolve_checkpoint_path,
    save_checkpoint,
)
from fsvfm.util.errors import UsageError
from fsvfm.util.fileio import append_json_line, atomic_write_text
from fsvfm.util.images import unreadable_files
from fsvfm.util.log import summary_writer
from fsvfm.util.lr_sched import Schedule
from fsvfm.util.naming import FAS_VOCABULARY, ClassVocabulary
from fsvfm.util.norm_stats import record_mean_std
from fsvfm.util.train_step import StepConfig
from fsvfm.util.trainable import apply_trainable_modules, count_parameters

logger = logging.getLogger(__name__)

# Defaults of the original's two copies (S10): full fine-tuning / FS-Adapter.
RUNS = {False: 5, True: 3}
BATCH_PER_SOURCE_CLASS = {False: 12, True: 24}
CSV_COLUMNS = ("Run", "HTER", "AUC", "TPR@FPR=1%")
EXPERIMENT_FILE = "fas_experiment.json"
# flags that do not change what an experiment computes: a rerun may change them
_NOT_EXPERIMENT = {"output_dir", "log_dir", "report_logger_path", "device", "num_workers", "print_freq",
                   "test_batch_size", "overwrite", "world_size", "local_rank", "dist_url", "dist_on_itp",
                   "dist_timeout", "rank", "gpu", "distributed", "dist_backend", "runs", "pin_mem"}

DEFAULT_FAS_DATA_ROOT = "datasets/finetune_datasets/face_anti_spoofing/data"



# ------------------------------------------------------------------------------------ model
def build_fas_model(args: argparse.Namespace) -> nn.Module:
    """The FAS network of ``--model`` (``--drop_path``, ``--embed_norm``, ``--model_kwargs``; ``img_size``
    defaults to ``--input_size``; adapter models take ``--adapter_reduction``)."""
    kwargs = {"img_size": args.input_size, **parse_model_kwargs(args.model_kwargs)}
    if is_fs_adapter(args.model):
        kwargs["adapter_reduction"] = args.adapter_reduction
    return create_fas_model(args.model, drop_path=args.drop_path, embed_norm=args.embed_norm, **kwargs)


def load_fas_encoder(model: nn.Module, path: str | os.PathLike,
                     state: Mapping[str, torch.Tensor] | None = None) -> dict[str, list[str]]:
    """Load a pre-training checkpoint's encoder into ``model.backbone.vit`` (``fc_norm`` and the
    adapter's new modules are the only keys it may miss); MCF checkpoints prefix the encoder ``target_encoder.``.
    ``state``: the file's weights when the caller has already read them (``path`` then only names them)."""
    return load_pretrained_encoder(model.backbone.vit, path, strip_prefix="target_encoder.", state=state)


def load_pt_model(path: str | os.PathLike) -> tuple[Path, Mapping[str, torch.Tensor]]:
    """``(local file, weights)`` of ``--pt_model`` (``hf://`` is fetched): resolved and read once per command.
    ``UsageError`` when it is a fine-tuned detector (a classifier head, a task or class names, FAS network
    weights) rather than a pre-training checkpoint: its head would be dropped silently."""
    try:
        local = resolve_checkpoint_path(path)
        checkpoint = load_checkpoint(local)
        state = model_state_from(checkpoint, path)
    except CheckpointError as e:
        raise CheckpointError(f"--pt_model: {e}") from e
    signs = [s for s, found in (
        ("a classifier head", any(k.startswith(("head.", "backbone.vit.head.")) for k in state)),
        (f"task {checkpoint.get('task') or args_dict(checkpoint).get('task')}",
         bool(checkpoint.get("task") or args_dict(checkpoint).get("task"))),
        ("class names", bool(checkpoint.get("classes"))),
        ("FAS network weights", "backbone.vit.cls_token" in state)) if found]
    if signs:
        raise UsageError(f"--pt_model {path} is a fine-tuned detector ({', '.join(signs)}), not a pre-training "
                         "checkpoint: give main_pretrain.py's checkpoint (e.g. FS-VFM_ViT-B_VF2_600e/checkpoint-600.pth)")
    return local, state


def configure_fas_model(model: nn.Module, args: argparse.Namespace) -> None:
    """``--trainable_modules fs-adapter``: inside ``backbone.vit`` only ``adapter``/``projector`` train
    (``fc_norm`` too with ``--train_fc_norm``); the embedder and classifier always train."""
    if args.trainable_modules == "fs-adapter":
        apply_trainable_modules(model.backbone.vit, "fs-adapter-fas", train_fc_norm=args.train_fc_norm)


def fas_optimizer(model: nn.Module, args: argparse.Namespace) -> torch.optim.Adam:
    """Adam over the trainable parameters, ``--lr`` constant, ``--wd`` weight decay."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.Adam([{"params": params, "lr": args.lr}], lr=args.lr, weight_decay=args.wd)


def token0(logits: torch.Tensor) -> torch.Tensor:
    """The prediction logits [B, 2]: token 0 of the full model's [B, 1+L, 2], the adapter model's as they are."""
    return logits[:, 0] if logits.dim() == 3 else logits


def fas_output(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Evaluation forward (``norm_flag=True``): [B, 3, H, W] -> logits [B, 2]."""
    return token0(model(images, norm_flag=True)[0])


class FASLogits(nn.Module):
    """A FAS network seen as a plain classifier (``forward(x) -> logits [B, 2]``), for ``fsvfm.predict``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fas_output(self.model, x)


# ------------------------------------------------------------------------------------- loss
def fas_loss(criterion: nn.Module, args: argparse.Namespace, vocabulary: ClassVocabulary = FAS_VOCABULARY) -> LossFn:
    """CE on the token-0 logits; adapter models add ``--weight_cl`` x ``RealAnchorConLoss``
    (``--temperature``, anchor = live) on the projected adapter features. Components: ``acc``
    (batch top-1, percent) and, for the adapter, ``cls_loss``/``con_loss``."""
    con = (RealAnchorConLoss(args.temperature, pos_class_index=vocabulary.positive)
           if is_fs_adapter(args.model) else None)
    weight = args.weight_cl

    def loss_fn(model, samples, targets, *, labels):
        out = model(samples, norm_flag=True)
        logits = token0(out[0])
        cls_loss = criterion(logits, targets)
        parts = {"acc": (logits.argmax(dim=-1) == labels).float().mean() * 100}
        if con is None:
            return cls_loss, parts
        con_loss = con(out[2][:, None, :].float(), labels)
        return cls_loss + weight * con_loss, {"cls_loss": cls_loss, "con_loss": con_loss, **parts}
    return loss_fn


# ------------------------------------------------------------------------------------- data
def build_fas_datasets(args: argparse.Namespace, protocol: Protocol, train_transform,
                       test_transform) -> tuple[list, Dataset]:
    """``([(domain, real set, fake set)] of the training sources, target test set)`` of ``protocol`` (the
    one ``--config`` names) under ``--fas_data_root``. Errors (``FASDataError``) name the list file and line."""
    check_protocol_lists(protocol, args.fas_data_root)
    return (build_train_sets(protocol, args.fas_data_root, transform=train_transform,
                             saturation_wrap=getattr(args, "saturation_wrap", False)),
            build_test_set(protocol.target, args.fas_data_root, transform=test_transform))


def build_source_test_set(protocol: Protocol, root: str | os.PathLike, test_transform,
                          domains: list[str] | None = None) -> tuple[Dataset | None, list[str]]:
    """The held-out source data a threshold is chosen on: the test lists of ``protocol``'s training sources
    under ``root`` (not the target; CelebA-Spoof has none). ``(None, [])`` when no source has test lists.
    ``domains``: ``source_test_domains`` when the caller has already found them."""
    domains = source_test_domains(protocol, root) if domains is None else domains
    if not domains:
        return None, []
    return build_test_set(domains, root, transform=test_transform), domains


class IterationChunks:
    """``length`` batches per pass from an endless batch iterator: one evaluation interval of the
    iteration-based FAS loop, with ``len()`` as the engine's epoch loop needs it."""

    def __init__(self, batches: Iterator, length: int):
        self.batches, self.length = batches, length

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator:
        for _ in range(self.length):
            yield next(self.batches)


def fas_train_loader(train_sets: Sequence, args: argparse.Namespace, device: torch.device) -> IterationChunks:
    """``--eval_freq`` balanced batches per pass: ``--batch_size`` live and spoof frames of every source
    domain, ``[src1 live, src1 spoof, src2 live, ...]``."""
    batches = BalancedSourceBatches(train_sets, args.batch_size, args.num_workers, pin_memory=device.type == "cuda")
    return IterationChunks(batches, args.eval_freq)


# --------------------------------------------------------------------------------- evaluation
def score_fas_set(model: nn.Module, dataset: Dataset, args: argparse.Namespace, device: torch.device,
                  header: str = "Test:") -> tuple[ScoredSet, float]:
    """Per-frame P(live) of a whole set (sharded and gathered when distributed), grouped by video name;
    returns ``(scored set, mean frame cross-entropy)``."""
    shard = bool(getattr(args, "distributed", False))
    loader = make_eval_loader(dataset, args, shard, batch_size=args.test_batch_size)
    pred = predict(model, loader, device, amp=args.amp, output_fn=fas_output, gather=shard, header=header,
                   print_freq=args.print_freq)
    names = dataset_video_names(dataset)
    return ScoredSet(pred.labels, pred.scores, pred.preds, [names[i] for i in pred.indices]), pred.loss


# ------------------------------------------------------------------------------ rebuilding
def infer_fas_model_name(state: dict[str, torch.Tensor]) -> str:
    """The ``--model`` of a FAS state dict without recorded arguments (released ``.pth.tar``): the classifier
    name its ``backbone.vit.*`` weights match (``finetune_setup.infer_classifier_name``)."""
    prefix = "backbone.vit."
    vit = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not vit:
        raise CheckpointError("not a FAS checkpoint: no backbone.vit.* weights")
    name = infer_classifier_name(vit)
    if name is None:
        raise CheckpointError("cannot tell the FAS model from its ViT's patch size, width and depth; pass the "
                         "checkpoint of a known size")
    return name


def load_fas_from_checkpoint(path: str | os.PathLike, device: torch.device | str = "cpu", *,
                             checkpoint: dict | None = None, local: Path | None = None,
                             **overrides: Any) -> tuple[nn.Module, Any, dict[str, Any]]:
    """Rebuild a FAS checkpoint (ours or a released ``.pth.tar``) for inference: ``(FASLogits(model) in eval
    mode, eval transform PIL -> [3, S, S], info)``; weights load strictly; normalisation from the
    checkpoint's ``norm_stats``, else the statistics file beside it, else those training used (``fas_mean_std``).
    ``checkpoint`` / ``local``: the file's content / the file ``path`` resolved to, when the caller has them
    (read and resolved once)."""
    local = resolve_checkpoint_path(path) if local is None else local
    checkpoint = load_checkpoint(local) if checkpoint is None else checkpoint
    state = model_state_from(checkpoint, path)
    stored = args_dict(checkpoint)
    name = overrides.get("model") or stored.get("model") or infer_fas_model_name(state)
    size = int(overrides.get("input_size") or stored.get("input_size") or 224)
    kwargs = {"img_size": size, **parse_model_kwargs(overrides.get("model_kwargs") or stored.get("model_kwargs"))}
    if is_fs_adapter(name):
        kwargs["adapter_reduction"] = int(overrides.get("adapter_reduction") or stored.get("adapter_reduction") or 4)
    if fas_registry_name(name) not in list_models(family="fas"):
        raise CheckpointError(f"{path}: model {name!r} is not a registered FAS model; known: {list_models(family='fas')}")
    check_model_kwargs(kwargs, path)
    add_embedder_aliases(state, "embedder.")  # released files may hold either name of the embedder layer
    model = build_for_weights(lambda: create_fas_model(name, embed_norm=stored.get("embed_norm") or "tokens", **kwargs),
                              state, path, name)
    mean, std, source = fas_mean_std(path, bool(overrides.get("normalize_from_IMN")), checkpoint.get("norm_stats"),
                                     finetuned=True, local=local)
    info = {"model": fas_registry_name(name), "input_size": size, "mean": mean, "std": std, "norm_source": source,
            "eval_transform": f"bicubic resize to {size}"}
    return FASLogits(model).to(device).eval(), fas_transform(False, mean, std, size), info


# ------------------------------------------------------------------------------------ flags
def _bool(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "y", "on"):
        return True
    if value.lower() in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {value!r}")


def fas_parser(task: FinetuneTask | None = None) -> argparse.ArgumentParser:
    """The original's flags plus its hard-coded values as flags (S10), over the shared parents."""
    task = task or FAS_TASK
    parents = [input_parser("vit_base_patch16"), classifier_parser("spoof 0, live 1"), distributed_parser(),
               *(make() for make in task.extra_parsers)]
    p = argparse.ArgumentParser("main_finetune_FAS.py", description=task.description, parents=parents)
    p.set_defaults(drop_path=0.0, pin_mem=True, amp="none")  # fp32 as the original, also on CUDA
    g = p.add_argument_group("face anti-spoofing")
    g.add_argument("--config", required=True, choices=list(PROTOCOLS),
                   help="target domain; trained on the protocol's other domains (M = OCI->M, C = OMI->C, ...)")
    g.add_argument("--pt_model", default=None, help="pre-training checkpoint (path or hf://Wolowolo/fsfm-3c/...)")
    g.add_argument("--scratch", type=_bool, nargs="?", const=True, default=False,
                   help="random initialisation when no --pt_model is given (--scratch, --scratch True/False)")
    g.add_argument("--lr", default=1e-4, type=float, help="Adam learning rate (constant)")
    g.add_argument("--wd", default=1e-6, type=float, help="Adam weight decay")
    g.add_argument("--op_dir", "--output_dir", dest="output_dir", default="", help="output folder")
    g.add_argument("--report_logger_path", default=None, help="results CSV (default: {op_dir}/performance.csv)")
    g.add_argument("--fas_data_root", default=DEFAULT_FAS_DATA_ROOT, help="folder with MCIO/{frame,txt} and WCS/")
    g.add_argument("--embed_norm", default="tokens", choices=EMBED_NORMS,
                   help="embedding normalisation: across tokens (the original, S1) or per vector")
    g.add_argument("--saturation_wrap", action="store_true", help="wrap jittered colours past 0/255 as the original (default: clip)")
    g.add_argument("--overwrite", action="store_true",
                   help="start afresh in an --op_dir that holds another experiment's results (they are removed)")
    g = p.add_argument_group("schedule (hard-coded in the original)")
    g.add_argument("--iters", default=4001, type=int, help="training iterations per run")
    g.add_argument("--eval_freq", default=100, type=int, help="evaluate every N iterations")
    g.add_argument("--runs", default=None, type=int, help="independent runs (default 5; 3 for *_fs_adapter)")
    g.add_argument("--batch_size", default=None, type=int,
                   help="frames per source domain and class per iteration (default 12; 24 for *_fs_adapter)")
    g.add_argument("--test_batch_size", default=512, type=int)
    g.add_argument("--num_workers", default=0, type=int, help="loader workers (per source and class)")
    g.add_argument("--print_freq", default=20, type=int)
    g.add_argument("--log_dir", default="", help="TensorBoard folder (default: --op_dir)")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Fill the model-dependent defaults; ``UsageError`` on a usage mistake."""
    adapter = is_fs_adapter(args.model)
    args.runs = RUNS[adapter] if args.runs is None else args.runs
    args.batch_size = BATCH_PER_SOURCE_CLASS[adapter] if args.batch_size is None else args.batch_size
    for name in ("runs", "batch_size", "eval_freq", "test_batch_size"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be at least 1")
    if args.iters < args.eval_freq:
        raise UsageError(f"--iters {args.iters} < --eval_freq {args.eval_freq}: no evaluation would run")
    if args.trainable_modules == "fs-adapter" and not adapter:
        raise UsageError(f"--trainable_modules fs-adapter needs a *_fs_adapter --model, got {args.model}")
    if not args.pt_model and not args.scratch:
        raise UsageError("give --pt_model (a pre-training checkpoint) or --scratch (random initialisation); "
                         "ImageNet-initialised backbones are not provided")
    if args.nb_classes != 2 or not args.global_pool:
        raise UsageError("FAS models have 2 classes and global pooling; drop --nb_classes/--cls_token")
    if getattr(args, "apply_simple_augment", False):
        logger.warning("--apply_simple_augment has no effect on FAS (its transforms are the original's)")
    args.report_logger_path = args.report_logger_path or str(Path(args.output_dir or ".") / "performance.csv")


# ------------------------------------------------------------------------------- experiment
@dataclass
class _Data:
    train: list
    test: Dataset
    source: Dataset | None
    source_domains: list[str]
    norm_stats: dict[str, list[float]]


@dataclass
class _Best:
    """The run's selected evaluation (lowest target HTER, ties: the later) and its model weights."""

    hter: float = 1.0
    metrics: dict[str, float] = field(default_factory=dict)
    test: ScoredSet | None = None
    state: dict[str, torch.Tensor] | None = None


def experiment_record(args: argparse.Namespace) -> dict[str, Any]:
    """The flags that decide what the experiment computes, as JSON values."""
    flags = {k: v for k, v in sorted(vars(args).items()) if k not in _NOT_EXPERIMENT}
    return json.loads(json.dumps(flags, default=str))


def _own_outputs(out: Path) -> list[Path]:
    patterns = ("*_vit_0_shot_checkpoint_run_*.pth.tar", "run_*_result.json", "run_*_last.pth", EXPERIMENT_FILE,
                "log.txt", "performance.csv")
    return sorted({p for pattern in patterns for p in out.glob(pattern)})


def check_experiment_folder(args: argparse.Namespace) -> None:
    """Refuse an ``--op_dir`` holding another experiment's results (other flags) unless ``--overwrite``, which
    removes them; then record this experiment's flags (rank 0)."""
    out, record = Path(args.output_dir), experiment_record(args)
    path = out / EXPERIMENT_FILE
    stored = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    if stored == record:
        return
    found = _own_outputs(out)
    if found and not args.overwrite:
        if stored is None:
            why = f"it holds FAS results ({found[0].name}) of an unknown experiment"
        else:
            diff = sorted(k for k in set(stored) | set(record) if stored.get(k) != record.get(k))
            why = "it holds another experiment's results (different " + ", ".join(f"--{k}" for k in diff) + ")"
        raise UsageError(f"--op_dir {out}: {why}; use another --op_dir, or --overwrite to remove them")
    if dist.is_main_process():
        for p in found:
            p.unlink()
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(record, indent=1, sort_keys=True) + "\n")
    dist.barrier()


def fas_schedule(args: argparse.Namespace) -> Schedule:
    """``--iters // --eval_freq`` evaluation intervals at the constant ``--lr`` (no warm-up, no decay)."""
    lr = args.lr
    return Schedule(args.iters // args.eval_freq, lambda _: lr, "interval")


class FASExperiment:
    """The runner's FAS side: iteration intervals at a constant lr, several runs, HTER selection, the report."""

    diverged_hint = "; training diverged and this interval is not saved: lower --lr or use --amp bf16"

    def __init__(self, args: argparse.Namespace, task: FinetuneTask, device: torch.device):
        self.args, self.task, self.device = args, task, device
        self.runs = args.runs
        self.schedule = fas_schedule(args)
        self.step = StepConfig(args.amp, 1, None, args.print_freq)
        self.protocol = get_protocol(args.config)
        # --pt_model is resolved and read once; every run starts from these weights
        local, self.pt_state = load_pt_model(args.pt_model) if args.pt_model else (None, None)
        check_experiment_folder(args)
        self.data = self._data(local)

    def _data(self, pt_local: Path | None) -> _Data:
        args, protocol = self.args, self.protocol
        mean, std, source = fas_training_mean_std(args.pt_model, args.normalize_from_IMN, args.output_dir, pt_local)
        logger.info("normalisation: mean %s std %s (from %s)", mean, std, source)
        if dist.is_main_process():
            record_mean_std(args.output_dir, mean, std)
        train_tf, test_tf = (fas_transform(t, mean, std, args.input_size) for t in (True, False))
        train, test = build_fas_datasets(args, protocol, train_tf, test_tf)
        held_out, domains = build_source_test_set(protocol, args.fas_data_root, test_tf)
        logger.info("protocol %s: %s -> %s; %s; target test: %d frames; source threshold from %s", args.config,
                    "+".join(protocol.train_sources), protocol.target,
                    ", ".join(f"{d} {len(r)} live/{len(f)} spoof" for d, r, f in train), len(test),  # type: ignore[arg-type]
                    f"{'+'.join(domains)} test lists ({len(held_out)} frames)" if held_out is not None else "nothing")  # type: ignore[arg-type]
        return _Data(train, test, held_out, domains, {"mean": mean, "std": std})

    # -- building a run
    def seeds(self, run: int) -> tuple[int, int | None]:
        rank = dist.get_rank()
        return self.args.seed + run, (self.args.seed + run + 1000 * rank if rank else None)

    def load_encoder(self, model: nn.Module) -> None:
        args = self.args
        if self.pt_state is not None:
            try:
                load_fas_encoder(model, args.pt_model, self.pt_state)
            except CheckpointError as e:
                raise CheckpointError(f"--pt_model: {e}; give a pre-training checkpoint of --model {args.model}") from e
        elif args.scratch:
            logger.info("--scratch: random initialisation")

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        logger.info("model %s: %s", fas_registry_name(self.args.model), count_parameters(model))
        return fas_optimizer(model, self.args)

    def ddp_options(self) -> dict[str, Any]:
        return {"find_unused_parameters": is_fs_adapter(self.args.model)}

    def criterion(self):
        return None, nn.CrossEntropyLoss()

    def train_loader(self, run: int):
        return self.task.build_train_loader(self.data.train, self.args, self.device)

    # -- resume
    def _out(self, name: str) -> Path:
        return Path(self.args.output_dir) / name

    def _checkpoint(self, run: int) -> Path:
        return checkpoint_path(self.args.output_dir, self.protocol.target, run)

    def finished(self, run: int) -> dict | None:
        path = self._out(f"run_{run}_result.json")
        if not (path.is_file() and self._checkpoint(run).is_file()):
            return None
        result = json.loads(path.read_text(encoding="utf-8"))
        logger.info("run %d: finished earlier (HTER %.2f), kept", run, result["hter"])
        return result

    def resume(self, run: int, model: nn.Module, optimizer, scaler) -> int:
        """An interrupted run continues after its last saved interval; ``log.txt`` records from there go."""
        self.best, self.start = _Best(), time.time()
        last = self._out(f"run_{run}_last.pth")
        start = 0
        if last.is_file():
            ckpt = load_checkpoint(last)
            load_model_weights(model, model_state_from(ckpt, last), strict=True, source=last)
            load_optimizer_state(optimizer, ckpt["optimizer"], last)
            scaler.load_state_dict(ckpt.get("scaler") or {})
            start = int(ckpt["epoch"]) + 1
            best_file = self._checkpoint(run)  # written at or after that interval: the run's best
            best = load_checkpoint(best_file) if best_file.is_file() else {}
            if best.get("metrics"):  # its weights too when the source threshold will score them at the end
                state = model_state_from(best, best_file) if self.data.source is not None else None
                self.best = _Best(best["metrics"]["hter"], dict(best["metrics"]), None, state)
            logger.info("run %d: resumed from %s (next interval %d)", run, last, start)
        first_iteration = start * self.args.eval_freq
        if dist.is_main_process():
            drop_log_records(self._out("log.txt"), lambda r: isinstance(r.get("run"), int) and (
                r["run"] > run or (r["run"] == run and r.get("iteration", -1) >= first_iteration)))
        logger.info("run %d (seed %d): %d iterations, evaluation every %d\n%s", run, self.args.seed + run,
                    self.schedule.intervals * self.args.eval_freq, self.args.eval_freq, ROW_HEADER)
        return start

    def writer(self, run: int, start: int):
        # a resumed or restarted run writes on in its own folder; purge_step drops the events of the intervals it
        # trains again (interval i is logged at step (i + 1) * 1000)
        return summary_writer(self.args, f"run_{run}", purge_step=(start + 1) * 1000)

    # -- one interval
    def _skipped(self) -> dict[str, int]:
        """Distinct unreadable frames found so far (named once in the log when found)."""
        data = self.data
        train = sum(len(unreadable_files(ds, self.device)) for _, real, fake in data.train for ds in (real, fake))
        return {"train_skipped_files": train, "test_skipped_files": len(unreadable_files(data.test, self.device))}

    def end_of_interval(self, run: int, interval: int, model: nn.Module, optimizer, scaler,
                        train: dict[str, float], writer) -> None:
        args, data = self.args, self.data
        test, test_loss = score_fas_set(model, data.test, args, self.device, header=f"Run {run} test:")
        iteration = (interval + 1) * args.eval_freq - 1
        metrics = {**METRIC_MODES[self.task.metric_mode].compute(test, None)["fas"], "loss": test_loss,
                   "iteration": iteration}
        if metrics["hter"] <= self.best.hter:
            # a CPU copy of the weights only when the held-out source data will score them at the end
            state = None if data.source is None else {k: v.detach().to("cpu", copy=True)
                                                      for k, v in model.state_dict().items()}
            self.best = _Best(metrics["hter"], metrics, test, state)
            _save(args, self._checkpoint(run), model, data, run, iteration, test, metrics)
        _log_evaluation(args, run, iteration, train, metrics, self.best, self.start, writer, self._skipped())
        if dist.is_main_process() and interval + 1 < self.schedule.intervals:
            save_checkpoint(self._out(f"run_{run}_last.pth"), model.state_dict(), optimizer=optimizer,
                            epoch=interval, scaler=scaler, run=run)

    def finish_run(self, run: int, model: nn.Module) -> dict:
        """The run's result (percent): the selected evaluation, plus HTER at the held-out source threshold."""
        args, data, best = self.args, self.data, self.best
        m = best.metrics
        hter_src = math.nan
        if data.source is not None:
            model.load_state_dict(best.state)
            if best.test is None:   # its target scores too, for the threshold moved onto them
                best.test, _ = score_fas_set(model, data.test, args, self.device, header=f"Run {run} test:")
            source, _ = score_fas_set(model, data.source, args, self.device, header=f"Run {run} source test:")
            at_src = METRIC_MODES[self.task.metric_mode].compute(best.test, source)["fas"]  # type: ignore[arg-type]
            hter_src = at_src["hter_src"]
            logger.info("run %d: source threshold %.4f (EER threshold of %s test videos) -> target HTER %.2f "
                        "(oracle threshold %.4f: %.2f)", run, at_src["threshold_src"], "+".join(data.source_domains),
                        100 * hter_src, m["threshold"], 100 * m["hter"])
        result = {"run": run, "hter": 100 * m["hter"], "auc": 100 * m["auc"], "tpr": 100 * m["tpr_at_fpr"],
                  "hter_src": 100 * hter_src, "iteration": m["iteration"]}
        logger.info("run %d best: HTER %.2f  AUC %.2f  TPR@FPR=1%% %.2f  HTER@source threshold %.2f", run,
                    result["hter"], result["auc"], result["tpr"], result["hter_src"])
        if dist.is_main_process():
            atomic_write_text(self._out(f"run_{run}_result.json"), json.dumps(result) + "\n")
            self._out(f"run_{run}_last.pth").unlink(missing_ok=True)
        return result

    def report(self, results: list[dict]) -> dict:
        args = self.args
        summary = summarise(results)
        for key in ("mean", "std"):
            logger.info("%s over %d runs: HTER %.2f  AUC %.2f  TPR@FPR=1%% %.2f  HTER@source threshold %.2f",
                        key, len(results), *(summary[key][c] for c in ("hter", "auc", "tpr", "hter_src")))
        if dist.is_main_process():
            write_report(args.report_logger_path, results, self.data.source_domains)
            logger.info("wrote %s", args.report_logger_path)
        return {"runs": results, **summary, "output_dir": args.output_dir}


def checkpoint_path(output_dir: str | os.PathLike, target: str, run: int) -> Path:
    """The original's file name: ``{op_dir}/{target}_vit_0_shot_checkpoint_run_{run}.pth.tar``."""
    return Path(output_dir) / f"{target}_vit_0_shot_checkpoint_run_{run}.pth.tar"


def _save(args: argparse.Namespace, path: Path, model: nn.Module, data: _Data, run: int, iteration: int,
          test: ScoredSet, m: dict[str, float]) -> None:
    """The original's keys (``best_model_EER`` holds the HTER, S7) plus how to rebuild the model."""
    if not dist.is_main_process():
        return
    frame_acc = 100 * float(np.mean(test.preds == test.labels))
    valid_arg = [m["loss"], frame_acc, m["eer"], m["hter"], m["auc"], m["threshold"], 100 * m["acc"], m["tpr_at_fpr"]]
    save_checkpoint(path, model.state_dict(), model_key="state_dict",
                    epoch=(iteration + 1) // args.eval_freq, args=args, model_name=fas_registry_name(args.model),
                    norm_stats=data.norm_stats, task="FAS", valid_arg=valid_arg, best_model_EER=round(m["hter"], 5),
                    best_model_ACER=m["hter"], best_model_ACC=100 * m["acc"], threshold=m["threshold"],
                    run=run, iteration=iteration, metrics=m)


ROW_HEADER = ("  iter | val loss | ACC@thr |  HTER  |  AUC   | TPR@1% | train loss | train acc | "
              "best ACC | best HTER | best AUC |    time")


def _log_evaluation(args: argparse.Namespace, run: int, iteration: int, train: dict[str, float],
                    m: dict[str, float], best: _Best, start: float, writer, skipped: dict[str, int]) -> None:
    """A ``log_detail.txt`` row (percent; train loss/acc are this interval's means, S8), a ``log.txt`` line
    and TensorBoard scalars."""
    b = best.metrics
    minutes = int(time.time() - start) // 60
    logger.info("%6d | %8.4f | %7.2f | %6.2f | %6.2f | %6.2f | %10.4f | %9.2f | %8.2f | %9.2f | %8.2f | %2d hr %02d min",
                iteration, m["loss"], 100 * m["acc"], 100 * m["hter"], 100 * m["auc"], 100 * m["tpr_at_fpr"],
                train["loss"], train.get("acc", math.nan), 100 * b["acc"], 100 * b["hter"], 100 * b["auc"],
                minutes // 60, minutes % 60)
    if not dist.is_main_process():
        return
    append_json_line(Path(args.output_dir) / "log.txt", {
        "run": run, "iteration": iteration, **{f"train_{k}": v for k, v in train.items()},
        **{f"test_{k}": v for k, v in m.items() if k != "iteration"}, **skipped})
    for key in ("hter", "auc", "tpr_at_fpr", "loss"):
        writer.add_scalar(f"perf/test_{key}", m[key], (iteration + 1) // args.eval_freq * 1000)
    writer.flush()


# ----------------------------------------------------------------------------------- report
def summarise(results: list[dict]) -> dict[str, dict[str, float]]:
    """Mean and population standard deviation over runs of each reported figure."""
    table = {c: np.array([r[c] for r in results], dtype=np.float64) for c in ("hter", "auc", "tpr", "hter_src")}
    return {"mean": {c: float(v.mean()) for c, v in table.items()},
            "std": {c: float(v.std()) for c, v in table.items()}}


def write_report(path: str | Path, results: list[dict], source_domains: list[str]) -> None:
    """``Run, HTER, AUC, TPR@FPR=1%, HTER@src_thr(...)`` (percent), one row per run, then ``Mean`` and
    ``Std dev`` (population). The last column names the held-out source data its threshold came from."""
    src = f"HTER@src_thr({'+'.join(source_domains)} test)" if source_domains else "HTER@src_thr(none)"
    summary = summarise(results)
    lines = [", ".join((*CSV_COLUMNS, src))]
    cols = ("hter", "auc", "tpr", "hter_src")
    lines += [",".join([str(r["run"]), *(f"{r[c]:.4f}" for c in cols)]) for r in results]
    lines += [",".join([name, *(f"{summary[key][c]:.4f}" for c in cols)])
              for name, key in (("Mean", "mean"), ("Std dev", "std"))]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "\n".join(lines) + "\n")


# ------------------------------------------------------------------------------------- test
def fas_test_flags(p: argparse.ArgumentParser) -> None:
    """main_test_FAS.py's own flags: whose target domain's test lists, under which root, and the report."""
    g = p.add_argument_group("face anti-spoofing")
    g.add_argument("--config", required=True, choices=list(PROTOCOLS),
                   help="protocol whose target domain's test lists are tested (M = msu, C = casia, ...); its "
                        "training sources' test lists give the source threshold")
    g.add_argument("--fas_data_root", default=DEFAULT_FAS_DATA_ROOT, help="folder with MCIO/{frame,txt} and WCS/")
    g.add_argument("--report_logger_path", default=None,
                   help="results CSV as fine-tuning writes it (default: {output_dir}/performance.csv)")
    p.set_defaults(amp="none")  # fp32 as the original, also on CUDA


class FASTester:
    """main_test_FAS.py's side (``FinetuneTask.tester``), built once per command: ``--config`` becomes its
    protocol here, whose target's test lists are tested and whose sources' test lists give the threshold."""

    def __init__(self, args: argparse.Namespace):
        self.args, self.protocol = args, get_protocol(args.config)

    @cached_property
    def source_domains(self) -> list[str]:
        return source_test_domains(self.protocol, self.args.fas_data_root)

    def sets(self, transform) -> Iterator[tuple[str, str, Any]]:
        """The target domain's test lists: the test program's one set."""
        target, root = self.protocol.target, self.args.fas_data_root
        yield target, str(Path(root)), lambda: build_test_set(target, root, transform=transform)

    def threshold_data(self, transform) -> Dataset | None:
        """The training sources' test lists (the source threshold of fine-tuning's report), or None."""
        return build_source_test_set(self.protocol, self.args.fas_data_root, transform, self.source_domains)[0]

    def report(self, report: dict, checkpoint: dict) -> None:
        """``--report_logger_path``: the fine-tuning report's CSV with the tested checkpoint as its one run."""
        args = self.args
        m = report["results"].get(self.protocol.target, {}).get("fas")
        if m is None:
            return
        result = {"run": int(checkpoint.get("run") or 0), "hter": 100 * m["hter"], "auc": 100 * m["auc"],
                  "tpr": 100 * m["tpr_at_fpr"], "hter_src": 100 * m.get("hter_src", math.nan)}
        path = args.report_logger_path or str(Path(args.output_dir) / "performance.csv")
        write_report(path, [result], self.source_domains)
        logger.info("wrote %s", path)


# ------------------------------------------------------------------------------------ entry
# Leave-one-out over domains, balanced per-source batches, iteration intervals and several runs; tested on
# the held-out domain during training, and by main_test_FAS.py on any target's test lists.
FAS_TASK = FinetuneTask(
    "FAS", vocabulary=FAS_VOCABULARY, build_train_loader=fas_train_loader,
    build_model=build_fas_model, configure_model=configure_fas_model, make_loss=fas_loss, output_fn=fas_output,
    metric_mode="fas", extra_parsers=(adapter_parser,), rebuild=load_fas_from_checkpoint, parser=fas_parser,
    experiment=FASExperiment, check_args=check_args, output_kind="FAS", crop_mode="fas_aligned",
    test_flags=fas_test_flags, tester=FASTester,
    description="FS-VFM cross-domain face anti-spoofing (FAS): leave-one-out MCIO / WCS protocols")
