"""Downstream tasks as data: what a task is (``FinetuneTask``) and the table of tasks, one module per task.

A task names its class vocabulary, how its data sets, training loader and model are built, its loss hook,
its evaluation output and metric mode, its test-set table, and its ``experiment``: the object the one
fine-tuning runner (``fsvfm.finetune_runner``) asks for everything that differs between tasks (schedule,
number of runs, normalisation, transforms, what is evaluated and how the best is selected, checkpoint names
and keys, resume, report). The test runner (``fsvfm.evaluation``) rebuilds a checkpoint with ``rebuild``.

The entries live in ``tasks/dfd.py`` (DfD, DiFF) and ``tasks/fas.py``; ``get_task`` imports only the module
of the task asked for (the DiFF test program loads no FAS code). See docs/FINETUNE.md "Adding a task".
"""
from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import torch
from torch.utils.data import DataLoader, Dataset

from fsvfm.data.finetune import build_finetune_datasets, split_file_classes
from fsvfm.engine_finetune import LossFn, OutputFn, criterion_loss, logits_output, make_train_loader
from fsvfm.finetune_setup import build_classifier, load_classifier_from_checkpoint
from fsvfm.util.errors import UsageError
from fsvfm.util.naming import DFD_VOCABULARY, ClassVocabulary

# (args, train transform, val transform, vocabulary) -> (train set, val set); items (image, label, ...)
DatasetBuilder = Callable[[argparse.Namespace, Callable, Callable, ClassVocabulary], "tuple[Dataset, Dataset]"]
# (train set, args, device) -> a loader of (images [N, 3, S, S], labels [N], ...) batches with len()
LoaderBuilder = Callable[[Dataset, argparse.Namespace, torch.device], DataLoader]
# (criterion matching mixup/smoothing, args) -> loss hook
LossFactory = Callable[[torch.nn.Module, argparse.Namespace], LossFn]
# (checkpoint path, device, checkpoint=<its content when already loaded>, local=<the file the path resolved
#  to (hf:// fetched) when already resolved>, **overrides)
#   -> (model in eval mode returning logits [N, C], eval transform, info)
Rebuilder = Callable[..., "tuple[torch.nn.Module, Callable, dict]"]


def plain_loss(criterion: torch.nn.Module, args: argparse.Namespace) -> LossFn:
    """The default loss factory: ``criterion(model(samples), targets)`` (reads no flag)."""
    return criterion_loss(criterion)


class Tester(Protocol):
    """A task's side of its test program, built once per command from its arguments (``FinetuneTask.tester``),
    so what the task derives from its flags (FAS: the protocol of ``--config``) is derived once."""

    def sets(self, transform: Callable) -> Iterator[tuple[str, str, Callable[[], Dataset]]]:
        """``(name, source, build)`` per set, when they are not the ``test_sets`` folder table."""

    def threshold_data(self, transform: Callable) -> Dataset | None:
        """The data a decision threshold is chosen on, or None."""

    def report(self, report: dict, checkpoint: dict) -> None:
        """The task's own summary file, from ``test_results.json``'s content and the tested checkpoint."""


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

    * ``build_datasets``, ``build_train_loader``: the data hooks (``ClassifierExperiment`` builds its data with
      both; FAS's experiment builds its sets from its protocol and uses ``build_train_loader``).
    * ``build_model(args)``: the classifier (registry name ``--model``); the keys a pre-training
      checkpoint cannot hold (new heads, adapters) are the model's own (``load_pretrained_encoder``).
    * ``configure_model(model, args)``: runs after the encoder is loaded, before DDP (e.g. freezing).
    * ``make_loss(criterion, args) -> loss_fn``: reads the loss flags of ``args`` once and returns the hook
      ``loss_fn(model, samples, targets, *, labels) -> (loss, components)`` (``engine_finetune.LossFn``).
    * ``output_fn(model, images) -> logits [N, C]``: evaluation forward.
    * ``extra_parsers``: argparse parents with the task's own flags, for its fine-tuning and test programs.
    * ``parser(task)``: the fine-tuning program's parser (None: ``finetune_runner.finetune_parser``).
    * ``check_args(args)``: fills the task's argument defaults and refuses usage mistakes (``UsageError``).
    * ``experiment(args, task, device)``: the runner's task side (``finetune_runner.Experiment``).
    * ``output_kind``: the default output folder is ``./checkpoint/$USER/experiments_{output_kind}/``.
    * ``rebuild(path, device, checkpoint=, local=, **overrides)``: a fine-tuned checkpoint of the task, ready
      for inference (``fsvfm.predict``, the test programs); a caller that has read (``checkpoint``) or resolved
      (``local``) the file passes it on, so it is read and resolved once.
    * ``crop_mode``: how ``fsvfm.predict`` cuts faces out of a photo for this task's models.
    * ``test_flags(parser)``: adds the test program's own flags; ``tester(args)``: the task's side of the test
      program (a ``Tester``: its sets when they are not the ``test_sets`` folder table, the data a decision
      threshold is chosen on, its own summary file), built once per command.
    * ``multiclass``: N classes named by ``--classes`` (``vocabulary`` is the default), ``--nb_classes``
      follows them.
    """

    name: str
    vocabulary: ClassVocabulary = DFD_VOCABULARY
    build_datasets: DatasetBuilder = build_finetune_datasets
    build_train_loader: LoaderBuilder = make_train_loader
    build_model: Callable[[argparse.Namespace], torch.nn.Module] = build_classifier
    configure_model: Callable[[torch.nn.Module, argparse.Namespace], None] | None = None
    make_loss: LossFactory = plain_loss
    output_fn: OutputFn = logits_output
    test_sets: tuple[TestSet, ...] = ()
    metric_mode: str = "image"
    extra_parsers: tuple[Callable[[], argparse.ArgumentParser], ...] = ()
    description: str = ""
    rebuild: Rebuilder = load_classifier_from_checkpoint
    parser: Callable[[FinetuneTask], argparse.ArgumentParser] | None = None
    experiment: Callable | None = None
    check_args: Callable[[argparse.Namespace], None] | None = None
    output_kind: str = "finetune"
    crop_mode: str = "dlib_square"
    test_flags: Callable[[argparse.ArgumentParser], None] | None = None
    tester: Callable[[argparse.Namespace], Tester] | None = None
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


# name -> "module:attribute"; imported on first use
TASK_ENTRIES: dict[str, str] = {
    "DfD": "fsvfm.tasks.dfd:DFD_TASK",
    "DiFF": "fsvfm.tasks.dfd:DIFF_TASK",
    "FAS": "fsvfm.tasks.fas:FAS_TASK",
    "Unified": "fsvfm.tasks.dfd:UNIFIED_TASK",
}


# name -> a state-dict key only that task's networks hold: how a file that names no task (a released
# ``.pth.tar``) is recognised; anything else is DfD
WEIGHT_FINGERPRINTS: dict[str, str] = {"FAS": "backbone.vit.cls_token"}
DEFAULT_TASK = "DfD"


def task_of_weights(checkpoint: dict) -> str:
    """The task whose networks hold ``checkpoint``'s weights (``WEIGHT_FINGERPRINTS``), else ``DEFAULT_TASK``."""
    state = checkpoint.get("state_dict", checkpoint.get("model"))
    if isinstance(state, dict):
        for name, key in WEIGHT_FINGERPRINTS.items():
            if key in state:
                return name
    return DEFAULT_TASK


def get_task(name: str) -> FinetuneTask:
    """The task entry ``name`` (a key of ``TASK_ENTRIES``), importing its module only."""
    module, attr = TASK_ENTRIES[name].split(":")
    return getattr(importlib.import_module(module), attr)


def __getattr__(name: str):
    """``fsvfm.tasks.DFD_TASK`` etc. (and ``TASKS``, every entry) resolve lazily."""
    by_attr = {entry.split(":")[1]: key for key, entry in TASK_ENTRIES.items()}
    if name in by_attr:
        return get_task(by_attr[name])
    if name == "TASKS":
        return {key: get_task(key) for key in TASK_ENTRIES}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
