"""Fault drills of the fine-tuning and test programs (issue "Robustness"): unreadable images and a
decompression bomb skipped and counted, a failing test set that does not stop the others, video
grouping by class folder, user mistakes as one line with exit code 2, the best checkpoint kept on
resume, non-finite weights never saved, foreign normalisation statistics, ignored training flags."""
from __future__ import annotations

import dataclasses
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image

from fsvfm import evaluation, finetune_runner, main_finetune_DfD
from fsvfm.data.finetune import SplitFileError, read_split_file
from fsvfm.finetune_setup import infer_classifier_name
from fsvfm.registry import create_model
from fsvfm.tasks.dfd import DFD_TASK, DFD_TEST_SETS
from fsvfm.util.checkpoint import NonFiniteWeightsError, load_checkpoint
from fsvfm.util.cli import run_cli
from fsvfm.util.norm_stats import STATS_FILENAME, read_mean_std, write_mean_std
from tests.helpers import (
    PRETRAIN_STATS,
    REPO,
    TINY_FSFM,
    eval_argv,
    finetune_argv,
    make_split_tree,
    run_tests_of,
    write_image,
)


def png_bomb(side: int = 20000) -> bytes:
    """A valid 1-bit PNG of side x side pixels (all black): about 48 KB on disk, 400 megapixels decoded."""
    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))
    rows = (b"\x00" + b"\x00" * (side // 8)) * side  # filter byte 0 + packed bits, per row
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 9))
            + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def bomb() -> bytes:
    data = png_bomb()
    assert len(data) < 60_000
    return data


@pytest.fixture(scope="module")
def setup(workspace):
    """(root, pre-training checkpoint, data folder, a fine-tuned checkpoint)."""
    root, pretrained, data = workspace
    main_finetune_DfD.cli(finetune_argv(pretrained, data, root / "ft", "--epochs", "1"))
    return root, pretrained, data, root / "ft" / "checkpoint-0.pth"


def _unreadable(folder: Path, bomb: bytes, kinds: tuple[str, ...] = ("empty", "trunc", "text", "bomb")) -> list[Path]:
    """Unreadable 'images' in ``folder``: empty, truncated, text, decompression bomb."""
    folder.mkdir(parents=True, exist_ok=True)
    good = folder / "good_tmp.png"
    write_image(good, True, 0)
    content = {"empty": b"", "trunc": good.read_bytes()[:60], "text": b"not an image\n", "bomb": bomb}
    good.unlink()
    for kind in kinds:
        (folder / f"{kind}_frame_0.png").write_bytes(content[kind])
    return [folder / f"{kind}_frame_0.png" for kind in kinds]


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]


def test_bad_training_and_validation_images_are_skipped_counted_and_named_once(setup, tmp_path, bomb):
    _, pretrained, _, _ = setup
    data = make_split_tree(tmp_path / "data", "train", videos=2, frames=3)  # 12 readable + 4 bad = 4 batches
    make_split_tree(data, "val", videos=2, frames=2)
    bad = (_unreadable(data / "train" / "fake_four", bomb, ("empty", "trunc"))
           + _unreadable(data / "train" / "real_youtube", bomb, ("text", "bomb")))
    bad_val = data / "val" / "real_youtube" / "bomb_frame_0.png"
    bad_val.write_bytes(bomb)
    out = tmp_path / "out"
    result = main_finetune_DfD.cli(finetune_argv(pretrained, data, out, "--epochs", "2"))
    assert result["last_val"]["n"] == 8  # the unreadable validation image is left out, not replaced
    records = _records(out)
    assert [r["train_skipped_files"] for r in records] == [4, 4]  # files, not reads: 2 epochs read them twice
    assert [r["val_skipped_files"] for r in records] == [1, 1]
    detail = (out / "log_detail.txt").read_text()
    for path in [*bad, bad_val]:
        assert detail.count(f"skipping unreadable image {path}:") == 1, path
    assert "megapixels), over the limit" in detail and "unreadable images skipped: 4 training, 1 validation" in detail


def _folder(name: str) -> str:
    return next(t.folder for t in DFD_TEST_SETS if t.name == name)


def test_test_program_skips_bad_images_groups_videos_by_folder_and_keeps_going(setup, tmp_path, bomb):
    _, _, _, finetuned = setup
    root = tmp_path / "tests"
    make_split_tree(root / _folder("Celeb-DF-v1"), "test", videos=2, frames=2, classes=("fake", "real"))
    bad = _unreadable(root / _folder("Celeb-DF-v1") / "test" / "fake", bomb, ("bomb", "empty"))
    for cls in ("fake", "others"):  # a class folder without a class word
        write_image(root / _folder("DFDC") / "test" / cls / "a.png", False, 0)
    for cls, real in (("fake", False), ("real", True)):  # the same file names in real/ and fake/
        for v in range(2):
            for f in range(2):
                write_image(root / _folder("DFD") / "test" / cls / f"v{v}_frame_{f}.png", real, seed=10 * v + f)
    out = tmp_path / "out"
    report = run_tests_of(DFD_TASK, boundary=True, argv=eval_argv(finetuned, out, "--test_root", str(root), "--layer_decay", "0.65",
                                                     "--finetune", "x.pth", "--clip_grad", "1", "--data_path", "d"))
    celeb, dfdc, dfd = (report["results"][k] for k in ("Celeb-DF-v1", "DFDC", "DFD"))
    assert celeb["num_images"] == 8 and celeb["skipped_files"] == 2
    assert celeb["unreadable_files"] == [str(p) for p in sorted(bad)] and celeb["video"]["num_videos"] == 4
    assert "cannot tell the class of folder" in dfdc["error"] and "others" in dfdc["error"]
    assert dfd["num_images"] == 8 and dfd["video"]["num_videos"] == 4 and "auc" in dfd["video"]
    assert json.loads((out / "test_results.json").read_text())["results"]["Celeb-DF-v1"]["skipped_files"] == 2
    text = (out / "test_results.txt").read_text()
    assert "8 test images" in text and "2 unreadable image(s) skipped" in text and "DFDC: not evaluated:" in text
    detail = (out / "log_detail.txt").read_text()
    assert "ignored (fine-tuning flags): --layer_decay --clip_grad --finetune --data_path" in detail
    assert {r.split(",")[0] for r in (out / "scores_DFD.csv").read_text().splitlines()[1:]} == {
        "fake/v0", "fake/v1", "real/v0", "real/v1"}

    with pytest.raises(SystemExit) as exit_info:  # only the failing set: nothing could be evaluated
        run_tests_of(DFD_TASK, boundary=True, argv=eval_argv(finetuned, tmp_path / "o2", "--test_root", str(root),
                                                "--test_sets", "DFDC"))
    assert exit_info.value.code == 2


def test_training_flags_are_accepted_and_ignored_by_the_test_parser():
    args = evaluation.test_parser(DFD_TASK).parse_args(["--resume", "r.pth", "--layer_decay", "0.65", "--finetune",
                                                        "p.pth", "--clip_grad", "1.0", "--data_path", "d"])
    assert args.data_path == [] and args.ignored_finetune == "p.pth" and args.ignored_layer_decay == "0.65"


def _user_error(capsys, fn, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        fn(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    return lines[0]


def test_user_mistakes_end_with_one_line_and_exit_code_2(setup, tmp_path, capsys):
    root, pretrained, data, finetuned = setup
    test = lambda argv: run_tests_of(DFD_TASK, boundary=True, argv=argv)  # noqa: E731
    train = lambda argv: run_cli(main_finetune_DfD.main, main_finetune_DfD.get_args_parser(), argv)  # noqa: E731
    out = str(tmp_path / "o")
    missing = tmp_path / "nowhere.pth"
    assert f"checkpoint not found: {missing}" in _user_error(capsys, test, ["--resume", str(missing), "--output_dir", out])
    png = tmp_path / "face.png"
    Image.new("RGB", (8, 8)).save(png)
    line = _user_error(capsys, test, ["--resume", str(png), "--output_dir", out])
    assert "is not a PyTorch checkpoint: it is a PNG image" in line and "code" not in line
    line = _user_error(capsys, test, ["--resume", str(pretrained), "--output_dir", out])
    assert "is a pre-training checkpoint (fsfm_vit_small_patch16), not a classifier: fine-tune it first" in line
    line = _user_error(capsys, test, eval_argv(finetuned, tmp_path / "o", "--test_root", str(tmp_path / "empty")))
    assert "none of the test sets" in line and "--test_sets" in line and "--test_split" in line
    split = tmp_path / "list.txt"
    img = next((data / "val").rglob("*.png"))
    split.write_text(f"{img} 0\n{img} 2\n{img} -1\n{img}\n{img} 1\n")
    line = _user_error(capsys, test, eval_argv(finetuned, tmp_path / "o", "--test_split", str(split)))
    assert "3 bad line(s) (lines 2, 3, 4)" in line and "label 2 is outside 0..1" in line
    line = _user_error(capsys, test, eval_argv(finetuned, tmp_path / "o", "--model", "vit_base_patch16",
                                               "--model_kwargs", "{}"))
    assert f"checkpoint {finetuned} does not fit VisionTransformer" in line and "shape mismatch" in line
    line = _user_error(capsys, train, finetune_argv(pretrained, data, tmp_path / "t", "--model", "vit_tiny_nope"))
    assert "unknown classifier model 'vit_tiny_nope'" in line
    nan = load_checkpoint(pretrained)
    nan["model"]["blocks.0.attn.qkv.weight"][0, 0] = float("nan")
    torch.save(nan, tmp_path / "nan.pth")
    line = _user_error(capsys, train, finetune_argv(tmp_path / "nan.pth", data, tmp_path / "t"))
    assert f"checkpoint {tmp_path / 'nan.pth'} holds non-finite weights in 1 of" in line
    assert "blocks.0.attn.qkv.weight (1 NaN, 0 inf" in line
    with pytest.raises(Exception, match="checkpoint not found"):  # --debug keeps the traceback
        test(["--resume", str(missing), "--output_dir", out, "--debug"])


def test_split_file_reports_every_bad_line(tmp_path):
    img = tmp_path / "a.png"
    write_image(img, True, 0)
    split = tmp_path / "train.txt"
    split.write_text(f"{img} 0\n{img} 5\n\n{img} x\n{img} -3\n{tmp_path / 'gone.png'} 1\n")
    with pytest.raises(SplitFileError, match=r"train.txt: 3 bad line\(s\) \(lines 2, 4, 5\): line 2: label 5 is "
                                             r"outside 0..1; line 4: label 'x' is not an integer; line 5: label -3"):
        read_split_file(split, num_classes=2)


@pytest.mark.slow
def test_main_program_prints_one_line_and_exits_2(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "fsvfm" / "main_test_DfD.py"), "--resume",
                           str(tmp_path / "missing.pth"), "--output_dir", str(tmp_path / "o"), "--device", "cpu"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"main_test_DfD.py: error: checkpoint not found: {tmp_path / 'missing.pth'}")


def test_resumed_run_never_replaces_a_better_best_and_logs_each_epoch_once(setup, tmp_path):
    _, pretrained, data, _ = setup
    out = tmp_path / "ft"
    main_finetune_DfD.cli(finetune_argv(pretrained, data, out, "--epochs", "2", "--save_freq", "1"))
    best = out / "checkpoint-min_val_loss.pth"
    payload = load_checkpoint(best)
    payload["min_val_loss"] = 1e-4  # a better best than this re-run can reach
    torch.save(payload, best)
    before = best.read_bytes()
    (out / ".checkpoint-1.pth.a1b2c3d4.tmp").write_bytes(b"left by a killed save")
    result = main_finetune_DfD.cli(finetune_argv(pretrained, data, out, "--epochs", "2", "--save_freq", "1",
                                                 "--resume", str(out / "checkpoint-0.pth")))
    assert result["min_val_loss"] == 1e-4 and best.read_bytes() == before
    assert [r["epoch"] for r in _records(out)] == [0, 1]
    assert not list(out.glob(".*.tmp*"))


def test_non_finite_weights_stop_the_run_before_any_save(setup, tmp_path):
    _, pretrained, data, _ = setup

    def poison(model: torch.nn.Module, args) -> None:
        with torch.no_grad():
            model.head.bias[0] = float("nan")
    task = dataclasses.replace(DFD_TASK, configure_model=poison)
    args = main_finetune_DfD.get_args_parser().parse_args(finetune_argv(pretrained, data, tmp_path / "ft"))
    with pytest.raises(NonFiniteWeightsError, match=r"the model after epoch 0 holds non-finite weights in 1 of \d+ "
                                                    r"tensors, first: head.bias .*lower --blr"):
        finetune_runner.run(args, task)
    assert not list((tmp_path / "ft").glob("checkpoint-*")) and not (tmp_path / "ft" / "log.txt").exists()


def test_output_dir_with_statistics_of_another_data_set(setup, tmp_path, caplog):
    _, pretrained, data, _ = setup
    out = tmp_path / "ft"
    write_mean_std(out / STATS_FILENAME, [0.1, 0.1, 0.1], [0.3, 0.3, 0.3])
    with caplog.at_level("WARNING"):
        main_finetune_DfD.cli(finetune_argv(pretrained, data, out, "--epochs", "1"))
    assert "normalisation statistics differ" in caplog.text and str(out / STATS_FILENAME) in caplog.text
    assert read_mean_std(out / STATS_FILENAME) == PRETRAIN_STATS
    assert load_checkpoint(out / "checkpoint-0.pth")["norm_stats"]["mean"] == PRETRAIN_STATS[0]


def test_model_name_inferred_from_the_weights_when_not_recorded():
    assert infer_classifier_name(create_model("vit_small_patch16", img_size=32).state_dict()) == "vit_small_patch16"
    adapter = create_model("vit_small_patch16_fs_adapter", img_size=32).state_dict()
    assert infer_classifier_name(adapter) == "vit_small_patch16_fs_adapter"
    assert infer_classifier_name({"w": torch.zeros(1)}) is None
    assert infer_classifier_name(create_model("fsfm_vit_small_patch16", **TINY_FSFM).state_dict()) is None
