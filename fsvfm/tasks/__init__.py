"""Downstream tasks as data: what a task is (``FinetuneTask``) and the table of tasks.

A task names its class vocabulary, how its data sets, training loader and model are built, its
loss hook, its evaluation output and metric mode, and its test-set table. The fine-tuning runner
(``fsvfm.finetune_runner``) and the test runner (``fsvfm.evaluation``) take a task and nothing
task-specific else, so a new task (FAS, the FS-Adapter) is an entry here plus its hooks; see
docs/FINETUNE.md "Adding a task".
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset

from fsvfm.data.finetune import build_finetune_datasets, split_file_classes
from fsvfm.engine_finetune import LossFn, OutputFn, criterion_loss, logits_output, make_train_loader
from fsvfm.finetune_setup import build_classifier, load_classifier_from_checkpoint
from fsvfm.tasks import fas as engine_fas
from fsvfm.tasks.classifier import classifier_loss, configure_classifier
from fsvfm.util.args import adapter_parser, classes_parser
from fsvfm.util.errors import UsageError
from fsvfm.util.naming import DFD_VOCABULARY, FAS_VOCABULARY, UNIFIED_VOCABULARY, ClassVocabulary

# (args, train transform, val transform, vocabulary) -> (train set, val set); items (image, label, ...)
DatasetBuilder = Callable[[argparse.Namespace, Callable, Callable, ClassVocabulary], "tuple[Dataset, Dataset]"]
# (train set, args, device) -> a loader of (images [N, 3, S, S], labels [N], ...) batches with len()
LoaderBuilder = Callable[[Dataset, argparse.Namespace, torch.device], DataLoader]
# (criterion matching mixup/smoothing, args) -> loss hook
LossFactory = Callable[[torch.nn.Module, argparse.Namespace], LossFn]
# (checkpoint path, device, checkpoint=<its content when already loaded>, **overrides)
#   -> (model in eval mode returning logits [N, C], eval transform, info)
Rebuilder = Callable[..., "tuple[torch.nn.Module, Callable, dict]"]


@dataclass(frozen=True)
class TestSet:
    """One benchmark: ``folder`` is relative to ``--test_root`` and holds ``{split}/{class folders}/``;
    ``in_default`` sets are tested when present and ``--test_sets`` is not given."""

    __test__ = False  # not a pytest test class

    name: str
    folder: str
    split: str = "test"
    in_default: bool = True


@dataclass(frozen=True)
class FinetuneTask:
    """Everything task-specific of fine-tuning and testing. Defaults = full fine-tuning of a
    ``models_vit`` classifier with cross-entropy (+ mixup) on ``train/`` and ``val/`` folders.

    * ``build_model(args)``: the classifier (registry name ``--model``); the keys a pre-training
      checkpoint cannot hold (new heads, adapters) are the model's own (``load_pretrained_encoder``).
    * ``configure_model(model, args)``: runs after the encoder is loaded, before DDP (e.g. freezing).
    * ``make_loss(criterion, args) -> loss_fn``: see ``engine_finetune.LossFn``.
    * ``output_fn(model, images) -> logits [N, C]``: evaluation forward.
    * ``extra_parsers``: argparse parents with the task's own flags, for its fine-tuning and test programs.
    * ``rebuild(path, device, **overrides)``: a fine-tuned checkpoint of the task, ready for inference
      (``fsvfm.predict``).
    * ``multiclass``: N classes named by ``--classes`` (``vocabulary`` is the default), ``--nb_classes``
      follows them.
    """

    name: str
    vocabulary: ClassVocabulary = DFD_VOCABULARY
    build_datasets: DatasetBuilder = build_finetune_datasets
    build_train_loader: LoaderBuilder = make_train_loader
    build_model: Callable[[argparse.Namespace], torch.nn.Module] = build_classifier
    configure_model: Callable[[torch.nn.Module, argparse.Namespace], None] | None = None
    make_loss: LossFactory = criterion_loss
    output_fn: OutputFn = logits_output
    test_sets: tuple[TestSet, ...] = ()
    metric_mode: str = "image"
    extra_parsers: tuple[Callable[[], argparse.ArgumentParser], ...] = ()
    description: str = ""
    rebuild: Rebuilder = load_classifier_from_checkpoint
    multiclass: bool = False

    def vocabulary_for(self, args: argparse.Namespace, split_file: str | None = None) -> ClassVocabulary:
        """The classes of one run: a ``multiclass`` task takes ``--classes``, else the ``# classes:`` line of
        ``split_file``, else its default vocabulary; other tasks always have theirs."""
        given = getattr(args, "classes", None)
        if not self.multiclass:
            if given:
                raise UsageError(f"--classes names the classes of an N-class detector (--task Unified); the "
                                 f"{self.name} classes are fixed: {', '.join(self.vocabulary.names)}")
            return self.vocabulary
        names = given or (split_file_classes(split_file) if split_file else None)
        return ClassVocabulary.from_names(names) if names else self.vocabulary


_FF = "deepfakes_detection/FaceForensics/32_frames"
DFD_TEST_SETS = (
    TestSet("DFD", f"{_FF}/DS_DFD_binary_cls/raw"),
    TestSet("Celeb-DF-v1", "deepfakes_detection/Celeb-DF/32_frames"),
    TestSet("Celeb-DF-v2", "deepfakes_detection/Celeb-DF-v2/32_frames"),
    TestSet("DFDC", "deepfakes_detection/DFDC/32_frames"),
    TestSet("DFDCP", "deepfakes_detection/DFDCP/32_frames"),
    TestSet("WDF", "deepfakes_detection/deepfake_in_the_wild"),
    TestSet("Celeb-DF++", "deepfakes_detection/Celeb-DF++/32_frames"),
    TestSet("FF++_c23", f"{_FF}/DS_FF++_all_cls/c23", in_default=False),  # intra-dataset, on request
)

_DIFF = "diffusion_facial_forgery_detection/DiFF"
DIFF_TEST_SETS = (
    TestSet("FF_DF", f"{_FF}/DS_FF++_each_cls/c23/DeepFakes"),
    *(TestSet(f"DiFF_{s}", f"{_DIFF}/test_subsets/{s}") for s in ("T2I", "I2I", "FS", "FE")),
    *(TestSet(f"DiFF_{s}_val", f"{_DIFF}/val_subsets/{s}", split="val") for s in ("T2I", "I2I", "FS", "FE")),
)

# DfD and DiFF fine-tune identically (only the training folder differs); they differ in testing. Both take
# a plain ViT (full fine-tuning) or a vit_*_fs_adapter model (FS-Adapter, spec 7) with the adapter flags.
_CLASSIFIER_HOOKS = dict(configure_model=configure_classifier, make_loss=classifier_loss(DFD_VOCABULARY),
                         extra_parsers=(adapter_parser,))
DFD_TASK = FinetuneTask("DfD", test_sets=DFD_TEST_SETS, metric_mode="video", **_CLASSIFIER_HOOKS,
                        description="FS-VFM cross-dataset deepfake detection (DfD)")
DIFF_TASK = FinetuneTask("DiFF", test_sets=DIFF_TEST_SETS, metric_mode="image", **_CLASSIFIER_HOOKS,
                         description="FS-VFM unseen diffusion-face detection (DiFF)")

# FAS (spec 6, 7.5): leave-one-out over domains, balanced per-source batches, an iteration-based loop with
# several runs (``fsvfm.fas_runner``); tested on the held-out domain during training (no test program).
FAS_TASK = FinetuneTask(
    "FAS", vocabulary=FAS_VOCABULARY, build_datasets=engine_fas.build_fas_datasets,
    build_train_loader=engine_fas.fas_train_loader, build_model=engine_fas.build_fas_model,
    configure_model=engine_fas.configure_fas_model, make_loss=engine_fas.fas_loss, output_fn=engine_fas.fas_output,
    metric_mode="fas", extra_parsers=(adapter_parser,), rebuild=engine_fas.load_fas_from_checkpoint,
    description="FS-VFM cross-domain face anti-spoofing (FAS): leave-one-out MCIO / WCS protocols")

# An N-class detector (the released unified detector: real / deepfake / diffusion / spoof) fine-tuned and tested
# like DfD, from class folders (``--classes`` or a split file's ``# classes:`` line name them); tested on
# ``{--test_root}/test/`` or ``--test_split``. Selected with ``--task Unified`` in the DfD programs.
UNIFIED_TASK = FinetuneTask(
    "Unified", vocabulary=UNIFIED_VOCABULARY, test_sets=(TestSet("test", ""),), metric_mode="multiclass",
    configure_model=configure_classifier, make_loss=classifier_loss(UNIFIED_VOCABULARY),
    extra_parsers=(adapter_parser, classes_parser), multiclass=True,
    description="FS-VFM N-class face-security detector (e.g. the unified real / deepfake / diffusion / spoof "
                "detector) from class folders")

TASKS: dict[str, FinetuneTask] = {t.name: t for t in (DFD_TASK, DIFF_TASK, FAS_TASK, UNIFIED_TASK)}
