"""The one fine-tuning runner: a ``FinetuneTask`` (``fsvfm.tasks``) plus parsed arguments in, the task's
checkpoints, logs and report out.

    result = run(args, task)        # the task's report (DfD/DiFF: {'min_val_loss', 'last_val', 'output_dir'};
                                    # FAS: {'runs', 'mean', 'std', 'output_dir'}); never calls exit

The runner loops runs x intervals and asks the task's ``experiment`` (``Experiment``) for everything
task-specific: the schedule (epochs with warm-up cosine, or ``--eval_freq``-iteration intervals at a constant
lr), the number of runs and their seeds, normalisation and data, the pre-trained encoder, the optimizer, what
is evaluated after an interval and how the best is selected and saved, resume, and the report. Per interval:
``engine_finetune.train_one_epoch`` with the task's loss hook, then weights with NaN/inf stop the run before
any save (``NonFiniteWeightsError``), then the experiment's ``end_of_interval``. Stale temp files of killed
saves are removed at start.
"""
from __future__ import annotations

import argparse
import datetime
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

from fsvfm.data.finetune import check_folder_flags
from fsvfm.engine_finetune import train_one_epoch
from fsvfm.tasks import FinetuneTask, get_task
from fsvfm.util import dist
from fsvfm.util.amp import NativeScalerWithGradNormCount, resolve_amp
from fsvfm.util.args import downstream_parents
from fsvfm.util.checkpoint import check_finite_state
from fsvfm.util.cli import entry_cli
from fsvfm.util.lr_sched import Schedule
from fsvfm.util.seeding import seed_everything
from fsvfm.util.startup import start_run
from fsvfm.util.train_step import SkipStreak, StepConfig

logger = logging.getLogger(__name__)


def task_parents(task: FinetuneTask, also: Sequence[FinetuneTask] = ()) -> list[argparse.ArgumentParser]:
    """The own flags of ``task`` and of the tasks ``--task`` may choose instead (each parent once)."""
    makers = list(dict.fromkeys(m for t in (task, *also) for m in t.extra_parsers))
    return [make() for make in makers]


def add_task_flag(p: argparse.ArgumentParser, task: FinetuneTask, also: Sequence[FinetuneTask]) -> None:
    if also:
        p.add_argument("--task", default=task.name, choices=[t.name for t in (task, *also)],
                       help=f"task table entry (default {task.name}; Unified: an N-class detector from class folders)")


def chosen_task(args: argparse.Namespace, task: FinetuneTask) -> FinetuneTask:
    """The table entry ``--task`` names (the program's own task, as given, without the flag)."""
    name = getattr(args, "task", None)
    return task if name in (None, task.name) else get_task(name)


class Experiment(Protocol):
    """The task side of a fine-tuning experiment, built once per command (``task.experiment(args, task,
    device)``): data, normalisation and the output folder's state are its own."""

    runs: int
    schedule: Schedule
    step: StepConfig
    diverged_hint: str

    def seeds(self, run: int) -> tuple[int, int | None]:
        """(seed before the model is built, seed after DDP wrapping or None)."""

    def load_encoder(self, model: torch.nn.Module) -> None: ...
    def optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer: ...
    def ddp_options(self) -> dict[str, Any]: ...
    def criterion(self) -> tuple[Callable | None, torch.nn.Module]:
        """(mixup function or None, criterion matching it)."""

    def train_loader(self, run: int): ...

    def finished(self, run: int) -> dict | None:
        """The result of ``run`` when an earlier command finished it, else None."""

    def resume(self, run: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               scaler: NativeScalerWithGradNormCount) -> int:
        """Restore an interrupted run's state; the first interval to train."""

    def writer(self, run: int, start: int): ...
    def end_of_interval(self, run: int, interval: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        scaler: NativeScalerWithGradNormCount, train: dict[str, float], writer) -> None: ...
    def finish_run(self, run: int, model: torch.nn.Module) -> dict: ...
    def report(self, results: list[dict]) -> dict: ...


def finetune_parser(task: FinetuneTask, also: Sequence[FinetuneTask] = ()) -> argparse.ArgumentParser:
    """The fine-tuning flags of the classifier tasks: shared parent groups plus the task's own (and those of
    the tasks in ``also``, which ``--task`` may choose)."""
    parents = [*downstream_parents("vit_base_patch16"), *task_parents(task, also)]
    p = argparse.ArgumentParser(description=task.description or f"FS-VFM fine-tuning ({task.name})",
                                parents=parents)
    add_task_flag(p, task, also)
    g = p.add_argument_group("fine-tuning")
    g.add_argument("--layer_decay", default=0.75, type=float, help="layer-wise lr decay")
    g.add_argument("--clip_grad", default=None, type=float, help="gradient norm clipping (default off)")
    g.add_argument("--finetune", default="", help="pre-training checkpoint to start from")
    return p


def task_parser(task: FinetuneTask) -> argparse.ArgumentParser:
    """The fine-tuning program's parser of ``task``."""
    return (task.parser or finetune_parser)(task)


def entry_points(task: FinetuneTask, also: Sequence[FinetuneTask] = ()) -> tuple[Callable, Callable, Callable]:
    """``(get_args_parser, main, cli)`` of the fine-tuning program of ``task`` (``--task`` may choose one of
    ``also``): ``main(args)`` propagates errors (the library entry); ``cli(argv)`` is ``util.cli.run_cli``'s
    boundary (a user mistake: one line, exit code 2)."""
    def get_args_parser() -> argparse.ArgumentParser:
        return finetune_parser(task, also) if also else task_parser(task)

    def main(args: argparse.Namespace) -> dict:
        """Fine-tune; returns the task's report. Never calls ``exit``."""
        return run(args, chosen_task(args, task))

    return get_args_parser, main, entry_cli(main, get_args_parser)


def run(args: argparse.Namespace, task: FinetuneTask) -> dict:
    """Fine-tune; returns the task's report (``{}`` with ``--eval``)."""
    if task.check_args is not None:  # before the start-up log: a wrong flag is one line
        task.check_args(args)
    check_folder_flags(args)
    return start_run(args, task.output_kind, _train, task)


def _train(args: argparse.Namespace, task: FinetuneTask) -> dict:
    if getattr(args, "eval", False):
        logger.info("--eval: test a fine-tuned checkpoint with main_test_DfD.py or main_test_DiFF.py")
        return {}
    device = torch.device(args.device)
    args.amp = resolve_amp(args.amp, device)
    experiment = task.experiment(args, task, device)
    results = []
    for i in range(experiment.runs):
        done = experiment.finished(i)
        results.append(done if done is not None else _one_run(args, task, experiment, i, device))
    return experiment.report(results)


def _one_run(args: argparse.Namespace, task: FinetuneTask, exp: Experiment, run_index: int,
             device: torch.device) -> dict:
    """Model (pre-trained encoder loaded, task configuration applied, DDP-wrapped once), optimizer, scaler,
    the resumed state, then the interval loop."""
    build_seed, train_seed = exp.seeds(run_index)
    seed_everything(build_seed)
    model = task.build_model(args)
    exp.load_encoder(model)
    if task.configure_model is not None:
        task.configure_model(model, args)
    model.to(device)
    optimizer = exp.optimizer(model)
    scaler = NativeScalerWithGradNormCount(device, enabled=args.amp == "fp16")
    wrapped = dist.wrap_model(model, args, **exp.ddp_options())
    if train_seed is not None:  # same initial model on every rank, different batches
        seed_everything(train_seed)
    start_interval = exp.resume(run_index, model, optimizer, scaler)
    mixup_fn, criterion = exp.criterion()
    logger.info("criterion %s, mixup %s", criterion.__class__.__name__, mixup_fn is not None)
    loss_fn = task.make_loss(criterion, args)
    loader = exp.train_loader(run_index)
    writer = exp.writer(run_index, start_interval)
    streak = SkipStreak()  # non-finite batches in a row, across intervals
    schedule, start = exp.schedule, time.time()
    for interval in range(start_interval, schedule.intervals):
        if hasattr(getattr(loader, "sampler", None), "set_epoch"):
            loader.sampler.set_epoch(interval)
        train = train_one_epoch(wrapped, loss_fn, loader, optimizer, device, interval, scaler, exp.step,
                                lr_at=schedule.lr, mixup_fn=mixup_fn, log_writer=writer, streak=streak)
        check_finite_state(model, f"the model after {schedule.unit} {interval}", hint=exp.diverged_hint)
        exp.end_of_interval(run_index, interval, model, optimizer, scaler, train, writer)
    logger.info("Training time %s", datetime.timedelta(seconds=int(time.time() - start)))
    if writer is not None:
        writer.close()
    return exp.finish_run(run_index, model)
