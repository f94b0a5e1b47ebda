"""Fine-tuning data: labels by meaning, split files, transforms, sharding, normalisation lookup.

Also holds the small generators the other fine-tuning tests import.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision import transforms

from fsvfm.data import finetune as fd
from fsvfm.util import norm_stats as ns
from fsvfm.util.naming import DFD_VOCABULARY, video_name_from_path
from tests.helpers import make_split_tree, write_image


@pytest.mark.parametrize("name,label", [("DiFF_real", 1), ("real_youtube", 1), ("fake_four", 0),
                                        ("Real", 1), ("fake_DeepFakes", 0), ("real_actors", 1), ("fake", 0)])
def test_folder_label_by_meaning(name, label):
    assert DFD_VOCABULARY.label_of(name) == label


@pytest.mark.parametrize("name", ["DiFF_images", "fake_vs_real", "youtube"])
def test_ambiguous_folder_is_an_error_naming_it(name):
    with pytest.raises(ValueError, match=name):
        DFD_VOCABULARY.label_of(name, "/data/x")


def test_image_folder_labels_not_alphabetical(tmp_path):
    # Alphabetically 'DiFF_real' < 'fake_images' would make real class 0; by meaning it is 1.
    make_split_tree(tmp_path, "test", videos=1, frames=2, classes=("fake_images", "DiFF_real"))
    ds = fd.TestImageFolder(str(tmp_path / "test"))
    assert ds.class_to_idx == {"DiFF_real": 1, "fake_images": 0}
    assert ds.classes == ["fake_images", "DiFF_real"]
    assert sorted(ds.targets) == [0, 0, 1, 1]
    for i, (path, label) in enumerate(ds.samples):
        assert label == (1 if "DiFF_real" in path else 0)
        _, lab, video = ds[i]
        assert lab == label and video == f"{Path(path).parent.name}/{Path(path).name.split('_frame_')[0]}"


def test_image_folder_rejects_ambiguous_class(tmp_path):
    write_image(tmp_path / "train" / "fake" / "a.png", False, 0)
    write_image(tmp_path / "train" / "others" / "b.png", True, 1)
    with pytest.raises(ValueError, match="others"):
        fd.LabelledImageFolder(str(tmp_path / "train"))


def test_video_names():
    assert video_name_from_path("/a/b/id0_id1_0003_frame_12.png") == "id0_id1_0003"
    assert video_name_from_path("/a/_Roop_a_0001.png") == "_Roop_a_0001.png"


@pytest.mark.parametrize("delimiter", [",", ", ", " "])
def test_split_file_delimiters_and_abs_path(tmp_path, delimiter):
    for i in range(3):
        write_image(tmp_path / "imgs" / f"v{i}_frame_0.png", real=bool(i % 2), seed=i)
    lines = [f"/imgs/v{i}_frame_0.png{delimiter}{i % 2}" for i in range(3)]
    split = tmp_path / "train.txt"
    split.write_text("\n".join(lines) + "\n\n")
    ds = fd.SplitFileDataset(split, transforms.ToTensor(), delimiter=delimiter, root=tmp_path)
    assert len(ds) == 3 and ds.targets == [0, 1, 0]
    image, label = ds[1]
    assert image.shape == (3, 32, 32) and label == 1
    assert ds.video_names == [f"{tmp_path / 'imgs'}/v{i}" for i in range(3)]


def test_split_file_malformed_line_names_file_and_line(tmp_path):
    write_image(tmp_path / "a.png", True, 0)
    split = tmp_path / "val.txt"
    split.write_text(f"{tmp_path / 'a.png'},1\n{tmp_path / 'a.png'},1,extra\n")
    with pytest.raises(fd.SplitFileError, match=r"val\.txt: 1 bad line\(s\) \(lines 2\): line 2: .* 3 field"):
        fd.read_split_file(split, ",")
    split.write_text(f"{tmp_path / 'a.png'},one\n")
    with pytest.raises(fd.SplitFileError, match=r"val\.txt: 1 bad line\(s\) \(lines 1\): line 1: label 'one'"):
        fd.read_split_file(split, ",")


def test_split_file_missing_images_reported(tmp_path):
    split = tmp_path / "val.txt"
    split.write_text("nowhere/x.png 0\nnowhere/y.png 1\n")
    with pytest.raises(FileNotFoundError, match=r"2 of 2 listed images missing \(lines 1, 2\)"):
        fd.read_split_file(split)


def _aug_args(simple: bool, size: int = 224, interp: str = "bicubic") -> argparse.Namespace:
    return argparse.Namespace(input_size=size, apply_simple_augment=simple, color_jitter=None,
                              aa="rand-m9-mstd0.5-inc1", reprob=0.25, remode="pixel", recount=1,
                              train_interpolation=interp)


def test_transforms_use_bicubic():
    mean, std = ns.IMAGENET_MEAN, ns.IMAGENET_STD
    train = fd.build_transform(True, _aug_args(True), mean, std)
    rrc = train.transforms[0]
    assert rrc.interpolation == transforms.InterpolationMode.BICUBIC  # F2 fixed
    ra = train.transforms[2]
    assert all(op.hparams["interpolation"] == Image.BICUBIC for op in ra.ops if "interpolation" in op.hparams)
    old = fd.build_transform(True, _aug_args(True, interp="bilinear"), mean, std)
    assert old.transforms[0].interpolation == transforms.InterpolationMode.BILINEAR
    ev = fd.build_transform(False, _aug_args(True), mean, std)
    assert ev.transforms[0].size == 256 and ev.transforms[1].size == (224, 224)
    assert ev.transforms[0].interpolation == transforms.InterpolationMode.BICUBIC
    plain = fd.build_transform(False, _aug_args(False), mean, std)
    assert plain.transforms[0].size == (224, 224)
    out = plain(Image.new("RGB", (300, 200)))
    assert out.shape == (3, 224, 224)


def test_shard_sampler_covers_once():
    shards = [list(fd.ShardSampler(7, r, 3)) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(7))
    assert [len(s) for s in shards] == [3, 2, 2]


def test_norm_stats_lookup_order_and_warning(tmp_path, caplog):
    f = tmp_path / ns.STATS_FILENAME
    ns.write_mean_std(f, [0.1, 0.2, 0.3], [0.4, 0.5, 0.6])
    assert ns.resolve_mean_std(files=[tmp_path / "none.txt", f])[:2] == ([0.1, 0.2, 0.3], [0.4, 0.5, 0.6])
    emb = {"mean": [0.5] * 3, "std": [0.25] * 3}
    assert ns.resolve_mean_std(embedded=emb, files=[f])[2] == "checkpoint norm_stats"
    assert ns.resolve_mean_std(imagenet=True, files=[f])[0] == list(ns.IMAGENET_MEAN)
    with caplog.at_level(logging.WARNING):
        mean, std, source = ns.resolve_mean_std(files=[tmp_path / "missing" / ns.STATS_FILENAME])
    assert mean == list(ns.VGGFACE2_MEAN) and source == "VGGFace2 fallback"
    assert "missing" in caplog.text and "0.5482" in caplog.text
    with pytest.raises(ns.StatsFileError):
        ns.stats_from_mapping({"mean": [1, 2]}, "x")


def test_build_finetune_datasets(tmp_path):
    a = make_split_tree(tmp_path / "a", "train", videos=1, frames=2)
    make_split_tree(a, "val", videos=1, frames=1)
    b = make_split_tree(tmp_path / "b", "train", videos=1, frames=1)
    make_split_tree(b, "val", videos=1, frames=1)
    args = argparse.Namespace(data_path=[str(a), str(b)], train_split=None, val_split=None, nb_classes=2)
    train, val = fd.build_finetune_datasets(args, None, None)
    assert len(train) == 6 and len(val) == 4
    assert fd.dataset_video_names(val)[0].startswith("fake_four/fake_four0")
    args.data_path = [str(tmp_path / "nothing")]
    with pytest.raises(FileNotFoundError, match="nothing"):
        fd.build_finetune_datasets(args, None, None)
    args.data_path = []
    with pytest.raises(ValueError, match="--finetune_data_path"):
        fd.build_finetune_datasets(args, None, None)


def test_plain_train_val_folders(tmp_path):
    """--train/--val name any two folders of class folders (no DIR/train, DIR/val naming needed)."""
    make_split_tree(tmp_path, "mine_a", videos=2, frames=2)
    make_split_tree(tmp_path, "mine_b", videos=1, frames=1)
    args = argparse.Namespace(data_path=[], train=str(tmp_path / "mine_a"), val=str(tmp_path / "mine_b"),
                              train_split=None, val_split=None, nb_classes=2)
    train, val = fd.build_finetune_datasets(args, None, None)
    assert (len(train), len(val)) == (8, 2)
    assert fd.dataset_targets(val) == [0, 1] and fd.dataset_video_names(val)[1] == "real_youtube/real_youtube0"
    with pytest.raises(fd.UsageError, match="--train needs --val"):
        fd.build_finetune_datasets(argparse.Namespace(**{**vars(args), "val": None}), None, None)
    with pytest.raises(fd.UsageError, match="--finetune_data_path both"):
        fd.build_finetune_datasets(argparse.Namespace(**{**vars(args), "data_path": [str(tmp_path)]}), None, None)
    with pytest.raises(fd.UsageError, match="not both"):
        fd.build_finetune_datasets(argparse.Namespace(**{**vars(args), "train_split": "x.txt"}), None, None)


def test_indexed_dataset():
    ds = fd.IndexedDataset([(torch.zeros(1), 1, "v")] * 3)
    assert len(ds) == 3 and ds[2][1:] == (1, 2)


def test_randaugment_posterize_zero_bits_is_black_not_a_crash():
    train = fd.build_transform(True, _aug_args(True, size=32), ns.IMAGENET_MEAN, ns.IMAGENET_STD)
    ops = [op for op in train.transforms[2].ops if op.name.startswith("Posterize")]
    assert ops
    img = Image.new("RGB", (8, 8), (200, 100, 50))
    assert ops[0].aug_fn(img, 0).getextrema() == ((0, 0), (0, 0), (0, 0))
    assert ops[0].aug_fn(img, 8) is img
    assert ops[0].aug_fn(img, 1).getpixel((0, 0)) == (128, 0, 0)


class _Labels(torch.utils.data.Dataset):
    def __init__(self, targets):
        self.targets = targets

    def __len__(self):
        return len(self.targets)


def test_one_class_or_out_of_range_sets_fail_before_training():
    both = torch.utils.data.ConcatDataset([_Labels([0, 0]), _Labels([1])])
    assert fd.dataset_targets(both) == [0, 0, 1]
    fd.check_classes(both, "validation", 2)
    with pytest.raises(ValueError, match=r"validation set holds only class\(es\) \[1\] \(3 images\)"):
        fd.check_classes(_Labels([1, 1, 1]), "validation", 2)
    with pytest.raises(ValueError, match="label 2 but --nb_classes is 2"):
        fd.check_classes(_Labels([0, 1, 2]), "training", 2)


def test_test_programs_plain_test_folder(tmp_path):
    """--test DIR: one set named after the folder, labelled by its class folders; mistakes are usage errors."""
    from fsvfm import evaluation
    from fsvfm.tasks import DFD_TASK
    make_split_tree(tmp_path, "holdout", videos=2, frames=2)
    args = evaluation.test_parser(DFD_TASK).parse_args(["--test", str(tmp_path / "holdout"), "--resume", "x"])
    (name, source, build), = evaluation._test_sets(args, DFD_TASK, None, None, 2, DFD_VOCABULARY)
    ds = build()
    assert (name, source, len(ds)) == ("holdout", str(tmp_path / "holdout"), 8)
    assert fd.dataset_video_names(ds)[0] == "fake_four/fake_four0" and fd.dataset_targets(ds)[-1] == 1
    args.test_split = "list.txt"
    with pytest.raises(fd.UsageError, match="--test .* tests one folder: drop --test_split"):
        list(evaluation._test_sets(args, DFD_TASK, None, None, 2, DFD_VOCABULARY))
    args.test_split, args.test = None, str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere: folder not found"):
        list(evaluation._test_sets(args, DFD_TASK, None, None, 2, DFD_VOCABULARY))


def test_half_a_folder_pair_is_one_line_before_any_output(tmp_path, capsys):
    from fsvfm import main_finetune_DfD
    from fsvfm.util.cli import run_cli
    with pytest.raises(SystemExit) as e:
        run_cli(main_finetune_DfD.main, main_finetune_DfD.get_args_parser(),
                ["--val", str(tmp_path), "--output_dir", str(tmp_path / "out"), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and [line.split(": ", 1)[1] for line in err] == ["error: --val needs --train too: give both folders "
                                         "(each holds class folders, e.g. real/, fake/)"]
    assert not (tmp_path / "out").exists()
