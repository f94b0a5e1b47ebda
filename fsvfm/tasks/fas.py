"""Face anti-spoofing (FAS) as a task of the fine-tuning core: the hooks ``fsvfm.tasks.FAS_TASK`` names.

* model: ``fsvfm.models_fas`` (``--model vit_*`` full fine-tuning, ``--model vit_*_fs_adapter`` FS-Adapter,
  spec 6.4 / 7.5); the pre-trained encoder loads into ``backbone.vit``.
* data: the leave-one-out protocol table and list files of ``fsvfm.data.fas``; the training "loader"
  yields ``--eval_freq`` balanced batches (``--batch_size`` real and fake frames per source domain), so the
  engine's ``train_one_epoch`` runs one evaluation interval.
* loss hook: cross-entropy on the token-0 logits (+ ``--weight_cl`` x ``RealAnchorConLoss`` on the adapter
  features, live = class 1), with the batch accuracy as a logged component.
* evaluation: P(live) per frame from the engine's ``predict``, then ``METRIC_MODES['fas']`` on video means.
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from fsvfm.data.fas import (
    BalancedSourceBatches,
    build_test_set,
    build_train_sets,
    check_protocol_lists,
    fas_mean_std,
    fas_transform,
    get_protocol,
    source_test_domains,
)
from fsvfm.data.finetune import dataset_video_names
from fsvfm.engine_finetune import LossFn, make_eval_loader, predict
from fsvfm.finetune_setup import infer_classifier_name, load_pretrained_encoder
from fsvfm.losses import RealAnchorConLoss
from fsvfm.metrics import ScoredSet
from fsvfm.models_fas import add_embedder_aliases, create_fas_model, fas_registry_name
from fsvfm.models_vit import is_fs_adapter
from fsvfm.registry import list_models
from fsvfm.util.args import parse_model_kwargs
from fsvfm.util.checkpoint import (
    CheckpointError,
    args_dict,
    build_for_weights,
    check_model_kwargs,
    load_checkpoint,
    model_state_from,
)
from fsvfm.util.naming import FAS_VOCABULARY, ClassVocabulary
from fsvfm.util.trainable import apply_trainable_modules

DEFAULT_FAS_DATA_ROOT = "datasets/finetune_datasets/face_anti_spoofing/data"



# ------------------------------------------------------------------------------------ model
def build_fas_model(args: argparse.Namespace) -> nn.Module:
    """The FAS network of ``--model`` (``--drop_path``, ``--embed_norm``, ``--model_kwargs``; ``img_size``
    defaults to ``--input_size``; adapter models take ``--adapter_reduction``)."""
    kwargs = {"img_size": args.input_size, **parse_model_kwargs(args.model_kwargs)}
    if is_fs_adapter(args.model):
        kwargs["adapter_reduction"] = args.adapter_reduction
    return create_fas_model(args.model, drop_path=args.drop_path, embed_norm=args.embed_norm, **kwargs)


def load_fas_encoder(model: nn.Module, path: str | os.PathLike) -> dict[str, list[str]]:
    """Load a pre-training checkpoint's encoder into ``model.backbone.vit`` (spec 6.4: ``fc_norm`` and the
    adapter's new modules are the only keys it may miss); MCF checkpoints prefix the encoder ``target_encoder.``."""
    return load_pretrained_encoder(model.backbone.vit, path, strip_prefix="target_encoder.")


def configure_fas_model(model: nn.Module, args: argparse.Namespace) -> None:
    """``--trainable_modules fs-adapter``: inside ``backbone.vit`` only ``adapter``/``projector`` train
    (``fc_norm`` too with ``--train_fc_norm``); the embedder and classifier always train (spec 7.5)."""
    if args.trainable_modules == "fs-adapter":
        apply_trainable_modules(model.backbone.vit, "fs-adapter-fas", train_fc_norm=args.train_fc_norm)


def fas_optimizer(model: nn.Module, args: argparse.Namespace) -> torch.optim.Adam:
    """Adam over the trainable parameters, ``--lr`` constant, ``--wd`` weight decay (spec 6.5)."""
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
    """CE on the token-0 logits (spec 6.5); adapter models add ``--weight_cl`` x ``RealAnchorConLoss``
    (``--temperature``, anchor = live) on the projected adapter features (spec 7.5). Components: ``acc``
    (batch top-1, percent) and, for the adapter, ``cls_loss``/``con_loss``."""
    con = (RealAnchorConLoss(args.temperature, pos_class_index=vocabulary.positive)
           if is_fs_adapter(args.model) else None)

    def loss_fn(model, samples, targets, args, *, labels):
        out = model(samples, norm_flag=True)
        logits = token0(out[0])
        cls_loss = criterion(logits, targets)
        parts = {"acc": (logits.argmax(dim=-1) == labels).float().mean() * 100}
        if con is None:
            return cls_loss, parts
        con_loss = con(out[2][:, None, :].float(), labels)
        return cls_loss + args.weight_cl * con_loss, {"cls_loss": cls_loss, "con_loss": con_loss, **parts}
    return loss_fn


# ------------------------------------------------------------------------------------- data
def build_fas_datasets(args: argparse.Namespace, train_transform, test_transform,
                       vocabulary: ClassVocabulary = FAS_VOCABULARY) -> tuple[list, Dataset]:
    """``([(domain, real set, fake set)] of the training sources, target test set)`` of ``--config``
    under ``--fas_data_root``. Errors (``FASDataError``) name the list file and line."""
    protocol = get_protocol(args.config)
    check_protocol_lists(protocol, args.fas_data_root)
    return (build_train_sets(protocol, args.fas_data_root, transform=train_transform,
                             saturation_wrap=getattr(args, "saturation_wrap", False)),
            build_test_set(protocol.target, args.fas_data_root, transform=test_transform))


def build_source_test_set(args: argparse.Namespace, test_transform) -> tuple[Dataset | None, list[str]]:
    """The held-out source data a threshold is chosen on: the test lists of the training sources (not the
    target; CelebA-Spoof has none). ``(None, [])`` when no source has test lists."""
    domains = source_test_domains(get_protocol(args.config), args.fas_data_root)
    if not domains:
        return None, []
    return build_test_set(domains, args.fas_data_root, transform=test_transform), domains


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
                             checkpoint: dict | None = None, **overrides: Any) -> tuple[nn.Module, Any, dict[str, Any]]:
    """Rebuild a FAS checkpoint (ours or a released ``.pth.tar``) for inference: ``(FASLogits(model) in eval
    mode, eval transform PIL -> [3, S, S], info)``; weights load strictly; normalisation from the
    checkpoint's ``norm_stats``, else the statistics file beside it, else those training used (``fas_mean_std``).
    ``checkpoint``: the file's content when the caller has already loaded it (read once)."""
    checkpoint = load_checkpoint(path) if checkpoint is None else checkpoint
    state = model_state_from(checkpoint, path)
    stored = args_dict(checkpoint)
    name = overrides.get("model") or stored.get("model") or infer_fas_model_name(state)
    size = int(overrides.get("input_size") or stored.get("input_size") or 224)
    kwargs = {"img_size": size, **parse_model_kwargs(stored.get("model_kwargs"))}
    if is_fs_adapter(name):
        kwargs["adapter_reduction"] = int(stored.get("adapter_reduction") or 4)
    if fas_registry_name(name) not in list_models(family="fas"):
        raise CheckpointError(f"{path}: model {name!r} is not a registered FAS model; known: {list_models(family='fas')}")
    check_model_kwargs(kwargs, path)
    add_embedder_aliases(state, "embedder.")  # released files may hold either name of the embedder layer
    model = build_for_weights(lambda: create_fas_model(name, embed_norm=stored.get("embed_norm") or "tokens", **kwargs),
                              state, path, name)
    mean, std, source = fas_mean_std(path, bool(overrides.get("normalize_from_IMN")), checkpoint.get("norm_stats"), finetuned=True)
    info = {"model": fas_registry_name(name), "input_size": size, "mean": mean, "std": std, "norm_source": source,
            "eval_transform": f"bicubic resize to {size}"}
    return FASLogits(model).to(device).eval(), fas_transform(False, mean, std, size), info
