"""Pre-training data: parsing-map data set, joint transforms, data-set statistics (spec 3.2, 3.11)."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from fsvfm.data.device import DeviceNormalize
from fsvfm.data.pretrain import (
    FaceParsingDataset,
    PretrainTransform,
    build_pretrain_dataset,
    dataset_image_paths,
)
from fsvfm.util.errors import DataError
from fsvfm.util.images import unreadable_files
from fsvfm.util.norm_stats import IMAGENET_MEAN, STATS_FILENAME, compute_mean_std, resolve_pretrain_mean_std
from tools import synthetic_data
from tools.synthetic_data import make_synthetic_pretrain_dataset


@pytest.fixture
def root(tmp_path):
    return make_synthetic_pretrain_dataset(tmp_path / "ds", 6, size=32, seed=0)


def test_synthetic_layout(root):
    stems = sorted(p.stem for p in (root / "images").glob("*.png"))
    assert len(stems) == 6
    m = np.load(root / "parsing_maps" / f"{stems[0]}.npy")
    assert m.dtype == np.int8 and m.shape == (1, 32, 32) and set(np.unique(m)) <= set(range(11))
    assert Image.open(root / "images" / f"{stems[0]}.png").mode == "RGB"


def test_items_keep_uint8_maps_and_accept_both_map_formats(root):
    stem = sorted(p.stem for p in (root / "parsing_maps").glob("*.npy"))[1]
    original = np.load(root / "parsing_maps" / f"{stem}.npy")
    np.save(root / "parsing_maps" / f"{stem}.npy", original[0].astype(np.uint8))  # (H, W) uint8
    ds = FaceParsingDataset(root, PretrainTransform(32))
    a, b = ds[0], ds[1]
    for item in (a, b):
        assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.uint8
        assert item["parsing_map"].shape == (1, 32, 32) and item["parsing_map"].dtype == torch.uint8
        assert set(item) == {"image", "parsing_map"}
    np.testing.assert_array_equal(b["parsing_map"][0].numpy(), original[0])
    pixels = np.asarray(Image.open(ds.samples[1][0]))                  # H, W, 3
    np.testing.assert_array_equal(b["image"].permute(1, 2, 0).numpy(), pixels)


def test_device_normalisation_equals_host_normalisation_bit_for_bit(root):
    mean, std = [0.51, 0.42, 0.37], [0.29, 0.25, 0.24]
    raw = FaceParsingDataset(root, PretrainTransform(32))
    host = FaceParsingDataset(root, PretrainTransform(32, mean, std))
    batch = torch.stack([raw[i]["image"] for i in range(3)])
    on_device = DeviceNormalize(mean, std, "cpu")(batch)
    expected = torch.stack([TF.normalize(TF.to_tensor(Image.open(raw.samples[i][0]).convert("RGB")), mean, std)
                            for i in range(3)])                           # the former host pipeline
    assert on_device.dtype == torch.float32 and torch.equal(on_device, expected)
    assert torch.equal(torch.stack([host[i]["image"] for i in range(3)]), expected)
    assert DeviceNormalize(mean, std, "cpu")(expected) is expected       # float input: moved only


def test_resize_is_nearest_for_maps(root):
    ds = FaceParsingDataset(root, PretrainTransform(input_size=48))
    item = ds[0]
    assert item["image"].shape == (3, 48, 48) and item["parsing_map"].shape == (1, 48, 48)
    src = set(np.unique(np.load(ds.samples[0][1])).tolist())
    assert set(item["parsing_map"].unique().tolist()) <= src


def test_bad_files_are_skipped_and_counted(root, caplog):
    stems = sorted(p.stem for p in (root / "images").glob("*.png"))
    (root / "parsing_maps" / f"{stems[5]}.npy").unlink()                      # missing map
    (root / "images" / f"{stems[1]}.png").write_bytes(b"not a png")           # unreadable image
    np.save(root / "parsing_maps" / f"{stems[2]}.npy", np.zeros((1, 16, 16), np.int8))  # mis-shaped map
    with caplog.at_level(logging.WARNING):
        ds = FaceParsingDataset(root, PretrainTransform(32))
        assert len(ds) == 5 and ds.num_missing_maps == 1
        item = ds[1]
        again = ds[2]  # index 2 is bad: index 3 again; no second warning for file 2
    assert torch.equal(item["image"], again["image"]) and torch.equal(item["image"], ds[3]["image"])
    assert unreadable_files(ds) == [ds.samples[1][0], ds.samples[2][0]]
    text = caplog.text
    assert f"{stems[5]}.png" in text and f"{stems[1]}.png" in text and text.count(f"{stems[2]}.npy") == 1


def test_empty_or_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="--pretrain_data_path .*nowhere does not exist"):
        FaceParsingDataset(tmp_path / "nowhere")
    (tmp_path / "empty" / "images").mkdir(parents=True)
    with pytest.raises(DataError, match=r"has no parsing_maps/ folder; .*datasets/pretrain/preprocess/face_parse.py"):
        FaceParsingDataset(tmp_path / "empty")
    (tmp_path / "empty" / "parsing_maps").mkdir()
    with pytest.raises(DataError, match="no image with a parsing map"):
        FaceParsingDataset(tmp_path / "empty")
    with pytest.raises(ValueError, match="--pretrain_data_path"):
        build_pretrain_dataset([], PretrainTransform(32))


def test_several_roots_are_concatenated(tmp_path):
    a = make_synthetic_pretrain_dataset(tmp_path / "a", 3, size=32, seed=1)
    b = make_synthetic_pretrain_dataset(tmp_path / "b", 4, size=32, seed=2)
    ds = build_pretrain_dataset([a, b], PretrainTransform(32))
    assert len(ds) == 7 and len(dataset_image_paths(ds)) == 7
    assert ds[6]["parsing_map"].shape == (1, 32, 32)


def test_simple_augment_moves_image_and_map_together(tmp_path):
    labels = np.zeros((64, 64), np.uint8)
    labels[:, 20:44] = 1
    labels[10:30, 30:60] = 10
    (tmp_path / "images").mkdir()
    (tmp_path / "parsing_maps").mkdir()
    Image.fromarray(np.repeat(labels[..., None] * 20, 3, axis=2)).save(tmp_path / "images" / "x.png")
    np.save(tmp_path / "parsing_maps" / "x.npy", labels.astype(np.int8)[None])
    ds = FaceParsingDataset(tmp_path, PretrainTransform(32, simple_augment=True))
    torch.manual_seed(3)
    for _ in range(5):
        item = ds[0]
        gray, pmap = item["image"][0].float(), item["parsing_map"][0]
        for label in pmap.unique().tolist():
            if int((pmap == label).sum()) > 20:  # each region's pixels keep that region's colour
                assert abs(float(gray[pmap == label].median()) - 20 * label) < 6


def test_mean_std_matches_numpy(root):
    paths = sorted((root / "images").glob("*.png"))
    pixels = np.stack([np.asarray(Image.open(p), dtype=np.float64) / 255 for p in paths])
    mean, std = compute_mean_std(paths, 32, batch_size=4)
    np.testing.assert_allclose(mean, pixels.mean(axis=(0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(std, pixels.std(axis=(0, 1, 2)), rtol=1e-6)


def test_stats_file_written_once_and_reused(root, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    paths = sorted((root / "images").glob("*.png"))
    first = resolve_pretrain_mean_std(out, paths, 32, normalize_from_imn=False, data_paths=[root])
    lines = (out / STATS_FILENAME).read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0]) == {"mean": first[0], "std": first[1], "data_paths": [str(root)]}

    def fail(*a, **k):
        raise AssertionError("statistics recomputed on resume")

    monkeypatch.setattr("fsvfm.util.norm_stats.compute_mean_std", fail)
    assert resolve_pretrain_mean_std(out, paths, 32, normalize_from_imn=False, data_paths=[root]) == first
    assert resolve_pretrain_mean_std(out, paths, 32, normalize_from_imn=False) == first  # no roots: not compared
    assert len((out / STATS_FILENAME).read_text().splitlines()) == 1


def test_imagenet_stats_are_written_too(root, tmp_path):
    out = tmp_path / "imn"
    out.mkdir()
    mean, _ = resolve_pretrain_mean_std(out, [], 32, normalize_from_imn=True)
    assert mean == list(IMAGENET_MEAN)
    assert json.loads((out / STATS_FILENAME).read_text())["mean"] == list(IMAGENET_MEAN)


def test_synthetic_data_tool_writes_what_its_command_line_says(tmp_path, capsys):
    """``python tools/synthetic_data.py pretrain DIR --n 2 --size 32``: two images and their int8 maps."""
    root = synthetic_data.main(["pretrain", str(tmp_path / "ds"), "--n", "2", "--size", "32", "--seed", "3"])
    assert sorted(p.name for p in (root / "images").iterdir()) == ["synthetic_3_00000.png", "synthetic_3_00001.png"]
    maps = [np.load(p) for p in sorted((root / "parsing_maps").iterdir())]
    assert [(m.shape, m.dtype) for m in maps] == [((1, 32, 32), np.int8)] * 2
    assert Image.open(root / "images" / "synthetic_3_00000.png").size == (32, 32)
    assert capsys.readouterr().out == f"wrote 2 faces with parsing maps under {root}\n"
    fas = synthetic_data.main(["fas", str(tmp_path / "fas"), "--n_videos", "1", "--size", "8"])
    lines = (fas / "MCIO" / "txt" / "casia_real_train.txt").read_text().split()
    assert lines == ["casia/train/real/casia_real_train_0_frame0.png", "casia/train/real/casia_real_train_0_frame1.png"]
