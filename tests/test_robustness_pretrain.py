"""Pre-training robustness (issue 14): checkpoint pairs that survive kill -9, non-finite weights never
saved, bad images skipped and counted once, one-line user errors, statistics tied to their data set."""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from fsvfm import main_pretrain
from fsvfm.data.pretrain import FaceParsingDataset, PretrainTransform
from fsvfm.registry import create_model
from fsvfm.util import checkpoint as ckpt
from fsvfm.util.errors import DataError, UsageError
from fsvfm.util.images import unreadable_files
from fsvfm.util.norm_stats import STATS_FILENAME, read_mean_std, resolve_pretrain_mean_std, write_mean_std
from tests.helpers import REPO, TINY_VIT, pretrain_argv
from tools.synthetic_data import make_synthetic_pretrain_dataset


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_synthetic_pretrain_dataset(tmp_path_factory.mktemp("faces"), 8, size=32, seed=0)


@pytest.fixture(scope="module")
def first_epoch(data_root, tmp_path_factory):
    """An output folder after a finished one-epoch run: the complete pair 0."""
    out = tmp_path_factory.mktemp("epoch0")
    main_pretrain.cli(pretrain_argv(data_root, out, "--epochs", "1"))
    return out


def _epochs(out: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (out / "log.txt").read_text().splitlines()]


def _run_id(out: Path, tag) -> str:
    return json.loads((out / f"checkpoint-{tag}.set.json").read_text())["run_id"]


def _user_error(capsys, argv: list[str]) -> str:
    """Run the program, expect exit code 2 and no traceback; return the one error line."""
    with pytest.raises(SystemExit) as exit_info:
        main_pretrain.cli(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


# ----------------------------------------------------------------------------- 1. checkpoint pairs
def _kill_at_pair_2(out: Path, argv: list[str], stage: str) -> None:
    """Run ``main_pretrain`` in a subprocess that pauses at ``stage`` of every pair save; SIGKILL it at the
    pause of pair 2 (earlier pauses, of the min-loss pair, last 2 s and are let through)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", ckpt.DRILL_ENV: stage,
           "FSVFM_DRILL_PAUSE_S": "2"}
    proc = subprocess.Popen([sys.executable, "fsvfm/main_pretrain.py", *argv], cwd=REPO, env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:
            if f"checkpoint drill: pausing at {stage}" in line and any("-2.pth" in p.name for p in out.iterdir()):
                proc.send_signal(signal.SIGKILL)
                break
        else:
            pytest.fail(f"the run never paused while writing pair 2 (exit code {proc.wait()})")
    finally:
        proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["between-renames", "before-manifest"])
def test_kill_while_writing_a_pair_then_auto_resume_finishes(first_epoch, data_root, tmp_path, stage):
    """Pair 0 is complete; a resumed run (epochs 1-3, pairs every 3 epochs) is killed while it writes
    pair 2, after logging epoch 1. ``--auto_resume`` falls back to pair 0, removes the temp file,
    drops the epoch-1 log line it logs again, keeps the run id and finishes."""
    out = tmp_path / "run"
    shutil.copytree(first_epoch, out)
    argv = pretrain_argv(data_root, out, "--auto_resume", "--epochs", "4", "--save_freq", "3")
    _kill_at_pair_2(out, argv, stage)
    assert not (out / "checkpoint-2.set.json").exists() and _epochs(out) == [0, 1]
    temp_files = [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    assert len(temp_files) == {"between-renames": 1, "before-manifest": 0}[stage]

    main_pretrain.cli(argv)
    assert _epochs(out) == [0, 1, 2, 3]
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    found = ckpt.load_latest_checkpoint_set(out)
    assert found.epoch == 3 and found.tag == "3"
    assert _run_id(out, 0) == _run_id(out, 2) == _run_id(out, 3) == found.checkpoints["target"]["run_id"]
    pair2 = ckpt.load_checkpoint_set({"online": out / "checkpoint-2.pth", "target": out / "checkpoint-te-2.pth"})
    assert pair2.epoch == 2
    detail = (out / "log_detail.txt").read_text()
    assert "resumed from" in detail and "checkpoint-0.pth" in detail
    if stage == "between-renames":
        assert f"removed stale temp file {out / temp_files[0]}" in detail
    else:
        assert "skipping checkpoint set 2: no checkpoint-2.set.json: the save of this set was interrupted" in detail


def test_auto_resume_skips_a_truncated_newest_pair(first_epoch, data_root, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(first_epoch, out)
    main_pretrain.cli(pretrain_argv(data_root, out, "--auto_resume", "--epochs", "2"))
    online1 = out / "checkpoint-1.pth"
    online1.write_bytes(online1.read_bytes()[:1000])  # the newest file is truncated
    main_pretrain.cli(pretrain_argv(data_root, out, "--auto_resume", "--epochs", "2"))
    assert _epochs(out) == [0, 1]
    assert torch.load(online1, weights_only=True)["epoch"] == 1
    assert "skipping checkpoint set 1: checkpoint-1.pth is 1000 bytes" in (out / "log_detail.txt").read_text() \
        .replace(str(out) + "/", "")


def test_released_pair_without_manifest_auto_resumes(first_epoch, data_root, tmp_path):
    """Pairs saved before manifests existed (no run id, no set file) still resume; the run draws an id."""
    out = tmp_path / "run"
    out.mkdir()
    for name in ("checkpoint-0.pth", "checkpoint-te-0.pth"):
        content = torch.load(first_epoch / name, weights_only=True)
        for key in ("run_id", "set_role"):
            content.pop(key)
        torch.save(content, out / name)
    shutil.copy(first_epoch / STATS_FILENAME, out / STATS_FILENAME)
    main_pretrain.cli(pretrain_argv(data_root, out, "--auto_resume", "--epochs", "2"))
    assert _epochs(out) == [1] and len(_run_id(out, 1)) == 32


def test_resume_refuses_a_pair_of_two_saves_and_names_a_missing_file(first_epoch, data_root, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(first_epoch, out)
    main_pretrain.cli(pretrain_argv(data_root, out, "--auto_resume", "--epochs", "2"))
    line = _user_error(capsys, pretrain_argv(data_root, tmp_path / "x", "--resume", str(out / "checkpoint-1.pth"),
                                             "--resume_target_network", str(out / "checkpoint-te-0.pth")))
    assert "do not belong together" in line and "checkpoint-1.pth has epoch 1" in line
    line = _user_error(capsys, pretrain_argv(data_root, tmp_path / "x", "--resume", str(out / "checkpoint-7.pth")))
    assert line.endswith(f"error: --resume checkpoint not found: {out / 'checkpoint-7.pth'}")


# ----------------------------------------------------------------------------- 2. non-finite
def test_divergent_lr_stops_with_a_message_and_saves_nothing(data_root, tmp_path, capsys):
    out = tmp_path / "blr"
    line = _user_error(capsys, pretrain_argv(data_root, out, "--blr", "1e6", "--epochs", "5", "--warmup_epochs", "0"))
    assert "the online network after epoch 0 holds non-finite weights" in line
    assert "training diverged and epoch 0 is not saved: lower --blr" in line
    assert not [p.name for p in out.iterdir() if p.name.startswith("checkpoint") or ".tmp" in p.name]
    assert not (out / "log.txt").exists()


def test_constant_images_are_refused_without_a_statistics_file(tmp_path, capsys):
    data = make_synthetic_pretrain_dataset(tmp_path / "flat", 8, size=32, seed=0)
    for image in (data / "images").iterdir():
        Image.new("RGB", (32, 32), (120, 80, 60)).save(image)
    line = _user_error(capsys, pretrain_argv(data, tmp_path / "out"))
    assert f"the 8 images under {data / 'images'} have standard deviation [0.0, 0.0, 0.0]" in line
    assert "--normalize_from_IMN" in line and not (tmp_path / "out" / STATS_FILENAME).exists()


# ----------------------------------------------------------------------------- 3. bad files
def write_bomb_png(path: Path, side: int = 20000) -> None:
    """A valid 1-bit grey PNG of ``side`` x ``side`` black pixels: about 48 KB on disk, 400 megapixels decoded."""
    stream = zlib.compressobj(9)
    row = b"\0" * (1 + side // 8)  # filter byte + packed bits
    data = b"".join(stream.compress(row) for _ in range(side)) + stream.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def _spoil(data: Path, count: int) -> list[str]:
    """Make the first ``count`` images unusable (a decompression bomb, an empty file, garbage, a
    mis-shaped map, in turn); returns their image paths."""
    images = sorted((data / "images").iterdir())[:count]
    for i, image in enumerate(images):
        kind = i % 4
        if kind == 0:
            write_bomb_png(image)
        elif kind == 1:
            image.write_bytes(b"")
        elif kind == 2:
            image.write_bytes(b"\x89PNG\r\n\x1a\n not really")
        else:
            np.save(data / "parsing_maps" / f"{image.stem}.npy", np.zeros((1, 8, 8), np.int8))
    return [str(p) for p in images]


def test_bomb_png_is_48_kb_and_decodes_to_400_megapixels(tmp_path):
    write_bomb_png(tmp_path / "bomb.png")
    assert 40_000 < (tmp_path / "bomb.png").stat().st_size < 56_000
    with pytest.raises(Image.DecompressionBombError, match="400000000 pixels"):
        Image.open(tmp_path / "bomb.png")


@pytest.mark.slow
def test_ten_bad_files_count_as_ten_and_are_named_once(tmp_path, caplog):
    data = make_synthetic_pretrain_dataset(tmp_path / "ds", 14, size=32, seed=1)
    bad = _spoil(data, 10)
    ds = FaceParsingDataset(data, PretrainTransform(32))
    with caplog.at_level(logging.WARNING):
        for _ in range(3):  # three epochs: every bad file is drawn 3 times, some also while skipping ahead
            items = [ds[i] for i in range(len(ds))]
    assert len(items) == 14 and all(item["image"].shape == (3, 32, 32) for item in items)
    assert sorted(str(p) for p in unreadable_files(ds)) == sorted(bad)
    warnings = [r.getMessage() for r in caplog.records if "skipping sample" in r.getMessage()]
    assert len(warnings) == 10 and all(sum(Path(b).stem in w for w in warnings) == 1 for b in bad)
    assert any("megapixels), over the limit" in w for w in warnings)
    # loader worker processes share the flags: two epochs over 2 workers still give 10 distinct files
    shared = FaceParsingDataset(data, PretrainTransform(32))
    for _ in range(2):
        for _ in DataLoader(shared, batch_size=4, num_workers=2):
            pass
    assert len(unreadable_files(shared)) == 10


def test_training_skips_a_bomb_and_counts_files_not_retries(tmp_path):
    data = make_synthetic_pretrain_dataset(tmp_path / "ds", 8, size=32, seed=2)
    bad = _spoil(data, 2)  # a decompression bomb and an empty file
    out = tmp_path / "out"
    main_pretrain.cli(pretrain_argv(data, out, "--epochs", "3", "--normalize_from_IMN"))
    log = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert [r["train_skipped_files"] for r in log] == [2, 2, 2]
    detail = (out / "log_detail.txt").read_text()
    assert all(detail.count(f"skipping sample: unreadable image {b}") == 1 for b in bad)


# ----------------------------------------------------------------------------- 4. user mistakes
def _wrong_pairs(folder: Path) -> dict[str, Path]:
    """A pair of another size, and a fine-tuned (classifier) checkpoint, as --resume files."""
    from fsvfm.main_pretrain import get_args_parser
    from fsvfm.pretrain_runner import build_networks
    args = get_args_parser().parse_args(["--input_size", "32", "--model_overrides", json.dumps(
        {"patch_size": 8, "embed_dim": 64, "depth": 1, "num_heads": 2, "decoder_embed_dim": 32, "decoder_depth": 1,
         "decoder_num_heads": 2, "projection_size": 16, "projection_hidden_size": 32})])
    model, target = build_networks(args, torch.device("cpu"))
    (folder / "size").mkdir(parents=True)
    (folder / "family").mkdir()
    for name, net in (("checkpoint-0.pth", model), ("checkpoint-te-0.pth", target)):
        torch.save({"model": net.state_dict(), "epoch": 0}, folder / "size" / name)
        vit = create_model("vit_base_patch16", num_classes=2, **TINY_VIT)
        torch.save({"model": vit.state_dict(), "epoch": 0, "model_name": "vit_base_patch16"}, folder / "family" / name)
    return {"size": folder / "size" / "checkpoint-0.pth", "family": folder / "family" / "checkpoint-0.pth"}


@pytest.mark.parametrize("case", ["no_data", "missing_root", "no_parsing_maps", "wrong_model", "wrong_size",
                                  "wrong_family", "target_without_resume", "mask_ratio", "input_size"])
def test_user_mistakes_end_with_one_line_and_exit_code_2(case, data_root, tmp_path, capsys):
    argv = pretrain_argv(data_root, tmp_path / "out")
    if case == "no_data":
        argv = argv[2:]
    elif case == "missing_root":
        argv[1] = str(tmp_path / "nowhere")
    elif case == "no_parsing_maps":
        shutil.copytree(data_root / "images", tmp_path / "photos" / "images")
        argv[1] = str(tmp_path / "photos")
    elif case == "wrong_model":
        argv += ["--model", "fsfm_vit_tiny_patch16"]
    elif case in ("wrong_size", "wrong_family"):
        argv += ["--resume", str(_wrong_pairs(tmp_path / "pairs")[case.split("_")[1]])]
    elif case == "mask_ratio":
        argv += ["--mask_ratio", "1.5"]
    elif case == "input_size":
        argv[argv.index("--input_size") + 1] = "33"
    else:
        argv += ["--resume_target_network", str(tmp_path / "te.pth")]
    expected = {
        "no_data": "no pre-training data: give at least one --pretrain_data_path",
        "missing_root": f"--pretrain_data_path {tmp_path / 'nowhere'} does not exist",
        "no_parsing_maps": f"{tmp_path / 'photos'} has no parsing_maps/ folder; make images/ and parsing_maps/ "
                           "with: python datasets/pretrain/preprocess/face_parse.py --dataset custom",
        "wrong_model": "unknown pretrain model 'fsfm_vit_tiny_patch16'; choose from ['fsfm_vit_base_patch16'",
        "wrong_size": f"checkpoint {tmp_path / 'pairs' / 'size' / 'checkpoint-0.pth'} does not fit FSFMViT:; "
                      "49 shape mismatch(es): cls_token: file (1, 1, 64) vs model (1, 1, 48)",
        "wrong_family": "holds a vit_base_patch16 model (classifier checkpoint), not a pre-training one; --resume takes",
        "target_without_resume": "--resume_target_network needs --resume",
        "mask_ratio": "--mask_ratio must be in [0, 1), got 1.5; e.g. --mask_ratio 0.75",
        "input_size": "--input_size 33 is not a multiple of --patch_size 8",
    }[case]
    line = _user_error(capsys, argv)
    assert line.startswith("FS-VFM pre-training: error: ") and expected in line
    if case == "wrong_size":
        assert "resume with the --model and --model_kwargs it was trained with (see its args)" in line


# ----------------------------------------------------------------------------- 5. statistics of another data set
def test_statistics_of_another_data_set_are_refused_on_a_fresh_run(data_root, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    other = tmp_path / "other_faces"
    write_mean_std(out / STATS_FILENAME, [0.5] * 3, [0.25] * 3, data_paths=[str(other)])
    line = _user_error(capsys, pretrain_argv(data_root, out))
    assert f"{out / STATS_FILENAME} holds the statistics of the data {other}, not of this run's data " \
           f"{Path(data_root).resolve()}; give a new --output_dir" in line
    assert read_mean_std(out / STATS_FILENAME) == ([0.5] * 3, [0.25] * 3)  # left as it was


def test_a_resumed_run_keeps_its_statistics_with_a_warning(data_root, tmp_path, caplog):
    out = tmp_path / "out"
    out.mkdir()
    write_mean_std(out / STATS_FILENAME, [0.5] * 3, [0.25] * 3, data_paths=[str(tmp_path / "moved")])
    paths = sorted((data_root / "images").iterdir())
    with pytest.raises(UsageError, match="holds the statistics of the data"):
        resolve_pretrain_mean_std(out, paths, 32, False, data_paths=[data_root])
    with caplog.at_level(logging.WARNING):
        stats = resolve_pretrain_mean_std(out, paths, 32, False, data_paths=[data_root], resumed=True)
    assert stats == ([0.5] * 3, [0.25] * 3) and "the resumed run keeps them" in caplog.text
    # a file without a data record (older runs, released folders) is reused as before
    write_mean_std(out / STATS_FILENAME, [0.4] * 3, [0.2] * 3)
    assert resolve_pretrain_mean_std(out, paths, 32, False, data_paths=[data_root]) == ([0.4] * 3, [0.2] * 3)
    with pytest.raises(DataError, match="no readable image"):
        resolve_pretrain_mean_std(tmp_path / "empty", [tmp_path / "gone.png"], 32, False)
