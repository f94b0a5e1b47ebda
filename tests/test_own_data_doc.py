"""docs/OWN_DATA.md's worked examples, run as written: each ``own-data-layout:NAME`` block's files are
generated (tiny images, parsing maps), the ``own-data-commands:NAME`` block runs in-process with tiny-model
flags appended (argparse: the last value wins), and every ``own-data-prints:NAME`` line must appear in what
the programs printed (``...`` = anything)."""
from __future__ import annotations

import itertools
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fsvfm import (
    main_finetune_DfD,
    main_finetune_FAS,
    main_pretrain,
    main_test_DfD,
    main_test_DiFF,
)
from fsvfm.preprocess import fas_lists
from fsvfm.util.cli import run_cli
from tests.helpers import MODEL_KWARGS, PRETRAIN_OVERRIDES_JSON, REPO, write_pretrain_checkpoint
from tools.synthetic_data import draw_parsing_map, render_face, render_fas_face

DOC = REPO / "docs" / "OWN_DATA.md"
EXAMPLES = ("dfd", "diff", "fas", "pretrain", "unified")
TINY_FINETUNE = ["--model", "vit_small_patch16", "--model_kwargs", MODEL_KWARGS, "--input_size", "32",
                 "--batch_size", "2", "--epochs", "1", "--warmup_epochs", "0", "--num_workers", "0"]


# program as the doc names it -> (run(argv), tiny flags appended)
PROGRAMS = {
    "fsvfm/main_finetune_DfD.py": (main_finetune_DfD.cli, TINY_FINETUNE),
    "fsvfm/main_test_DfD.py": (main_test_DfD.cli, ["--batch_size", "4", "--num_workers", "0"]),
    "fsvfm/main_test_DiFF.py": (main_test_DiFF.cli, ["--batch_size", "4", "--num_workers", "0"]),
    "fsvfm/main_finetune_FAS.py": (main_finetune_FAS.cli, [
        "--model", "vit_small_patch16", "--model_kwargs", MODEL_KWARGS, "--input_size", "32", "--iters", "2",
        "--eval_freq", "2", "--runs", "1", "--batch_size", "2", "--test_batch_size", "4"]),
    "fsvfm/main_pretrain.py": (main_pretrain.cli, [
        "--model", "fsfm_vit_small_patch16", "--model_kwargs", PRETRAIN_OVERRIDES_JSON, "--input_size", "32", "--batch_size", "2",
        "--num_workers", "0", "--warmup_epochs", "1"]),
    "-m fsvfm.preprocess.fas_lists": (lambda argv: run_cli(fas_lists.main, fas_lists.get_args_parser(), argv), []),
}


def blocks(kind: str) -> dict[str, str]:
    """``{example: block text}`` of the fenced blocks tagged ``own-data-{kind}:NAME``."""
    text = DOC.read_text(encoding="utf-8")
    return dict(re.findall(rf"^```\w+ own-data-{kind}:(\w+)\n(.*?)^```", text, flags=re.M | re.S))


def expand_braces(pattern: str) -> list[str]:
    """Bash brace expansion of ``{a,b}`` and ``{1..3}`` (no nesting)."""
    parts = re.split(r"(\{[^{}]*\})", pattern)
    choices = []
    for part in parts:
        inner = part[1:-1] if part.startswith("{") and part.endswith("}") else None
        if inner is not None and re.fullmatch(r"\d+\.\.\d+", inner):
            lo, hi = map(int, inner.split(".."))
            choices.append([str(i) for i in range(lo, hi + 1)])
        elif inner is not None and "," in inner:
            choices.append(inner.split(","))
        else:
            choices.append([part])
    return ["".join(c) for c in itertools.product(*choices)]


def make_file(path: Path, seed: int) -> None:
    """A 32x32 face-like image (spoof-looking under a spoof folder, darker under fake/spoof folders) or a
    LaPa parsing map ``(1, 32, 32)`` int8."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npy":
        np.save(path, draw_parsing_map(rng, 32).astype(np.int8)[None])
        return
    low = str(path).lower()
    if "fas" in low:
        rgb = render_fas_face(rng, 32, "spoof" in low, np.ones(3))
    else:
        rgb = render_face(draw_parsing_map(rng, 32), rng)
        if any(w in low for w in ("fake", "deepfake", "diffusion", "spoof")):
            rgb = (rgb * 0.5).astype(np.uint8)
    Image.fromarray(rgb).save(path)


def commands(text: str) -> list[tuple[str, list[str]]]:
    """``[(program, argv)]`` of a commands block (``\\`` continuations joined)."""
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        words = shlex.split(line)
        if not words:
            continue
        assert words[0] == "python", line
        program, argv = (" ".join(words[1:3]), words[3:]) if words[1] == "-m" else (words[1], words[2:])
        assert program in PROGRAMS, f"docs/OWN_DATA.md runs {program}, unknown to this test"
        out.append((program, argv))
    return out


def test_doc_has_every_example():
    for kind in ("layout", "commands", "prints"):
        assert sorted(blocks(kind)) == sorted(EXAMPLES), kind


@pytest.mark.slow
@pytest.mark.parametrize("name", EXAMPLES)
def test_worked_example_runs_as_documented(name, tmp_path, monkeypatch, caplog, capsys):
    monkeypatch.chdir(tmp_path)
    for k, (_, text) in enumerate(sorted(blocks("layout").items())):  # every layout: examples may share data
        for i, f in enumerate(f for line in text.splitlines() if line.strip() for f in expand_braces(line.strip())):
            make_file(tmp_path / f, seed=1000 * k + i)
    steps = commands(blocks("commands")[name])
    for _, argv in steps:    # the released pre-trained checkpoint the doc names: a tiny one in its place
        for flag in ("--finetune", "--pt_model"):
            if flag in argv and "out/" not in argv[argv.index(flag) + 1]:
                target = tmp_path / argv[argv.index(flag) + 1]
                if not target.exists():
                    made = write_pretrain_checkpoint(tmp_path / "tiny_pre")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(made, target)
                    shutil.copy(made.parent / "pretrain_ds_mean_std.txt", target.parent)
    caplog.set_level("INFO")
    for program, argv in steps:
        run, tiny = PROGRAMS[program]
        run([*argv, *tiny, "--debug"])
    printed = caplog.text + "\n".join(capsys.readouterr())
    missing = [line for line in blocks("prints")[name].splitlines() if line.strip() and not re.search(
        ".*".join(re.escape(p) for p in line.strip().split("...")), printed)]
    assert not missing, f"docs/OWN_DATA.md '{name}' prints lines not printed: {missing}"
