"""FAS data (spec 6.1-6.3): protocol table, list files, video ids, data set items, balanced batches, errors."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from fsvfm.data import fas as fd
from tools.synthetic_data import make_synthetic_fas_tree

MEAN = STD = (0.5, 0.5, 0.5)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_synthetic_fas_tree(tmp_path_factory.mktemp("fas"), n_videos=3, size=16)


def test_protocol_table():
    assert {c: (p.train_sources, p.target) for c, p in fd.PROTOCOLS.items()} == {
        "C": (("oulu", "replay", "msu", "celeb"), "casia"),
        "I": (("oulu", "casia", "msu", "celeb"), "replay"),
        "M": (("oulu", "casia", "replay", "celeb"), "msu"),
        "O": (("replay", "casia", "msu", "celeb"), "oulu"),
        "cefa": (("wmca", "surf", "celeb"), "cefa"),
        "surf": (("wmca", "cefa", "celeb"), "surf"),
        "wmca": (("cefa", "surf", "celeb"), "wmca"),
        "custom": (("custom",), "custom"),   # your own data: one domain, train lists -> test lists
    }
    assert [fd.domain_group(d) for d in ("msu", "celeb", "cefa", "wmca")] == ["MCIO", "MCIO", "WCS", "WCS"]
    with pytest.raises(fd.FASDataError, match="choose from C, I, M, O, cefa, surf, wmca, custom"):
        fd.get_protocol("X")


def test_list_parsing_train_shot_and_test(tree):
    real = fd.train_frames(tree, "msu", "real")
    assert len(real) == 6 and real[0] == str(tree / "MCIO/frame/msu/train/real/msu_real_train_0_frame0.png")
    shots = fd.shot_frames(tree, "msu", "fake")
    assert len(shots) == 20 and shots[:5] == shots[5:10] and len(set(shots)) == 5
    fake, real = fd.test_frames(tree, "msu")       # the lists name frame0; frame1 is added
    assert len(fake) == len(real) == 6
    assert fake[:2] == [str(tree / f"MCIO/frame/msu/test/fake/msu_fake_test_0_frame{k}.png") for k in (0, 1)]
    wcs_fake, _ = fd.test_frames(tree, "cefa")      # WCS items are single images: nothing added
    assert len(wcs_fake) == 3 and wcs_fake[0].startswith(str(tree / "WCS/frame/cefa/test/fake/"))
    assert [len(x) for x in fd.sample_frames(1, "oulu", tree)] == [0, 6]
    assert [len(x) for x in fd.sample_frames(4, "oulu", tree)] == [6, 6]


def test_video_id_grouping():
    paths = ["a/v1_frame0.png", "a/v2_frame0.png", "a/v1_frame1.png", "b/v1_frame1.png", "c/x.png"]
    assert fd.video_ids(paths).tolist() == [0, 1, 0, 2, 3]


def test_datasets_items_and_balanced_batches(tree):
    test = fd.build_test_set("msu", tree, MEAN, STD, input_size=24)
    img, label, vid, path = test[7]
    assert img.shape == (3, 24, 24) and label == fd.REAL and path.endswith("msu_real_test_0_frame1.png")
    assert vid == test[6][2] and test.video_ids.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    sets = fd.build_train_sets(fd.get_protocol("M"), tree, MEAN, STD, input_size=24)
    assert [(d, len(r), len(f)) for d, r, f in sets] == [(d, 6, 6) for d in ("oulu", "casia", "replay", "celeb")]
    batches = fd.BalancedSourceBatches(sets, batch_size=4)
    for _ in range(4):  # 6 frames per loader, drop_last: a fresh pass every batch after the first
        x, y = next(batches)
    assert x.shape == (32, 3, 24, 24) and y.tolist() == ([1] * 4 + [0] * 4) * 4
    assert fd.source_test_domains(fd.get_protocol("M"), tree) == ["oulu", "casia", "replay"]


def test_saturation_jitter_is_seeded_by_torch():
    bgr = (torch.rand(8, 8, 3) * 255).numpy().astype("uint8")
    torch.manual_seed(1)
    a = fd.saturation_jitter(bgr)
    torch.manual_seed(1)
    assert (fd.saturation_jitter(bgr) == a).all() and a.dtype.name == "uint8"
    same = fd.saturation_jitter(bgr, p=0.0)    # no jitter: an exact BGR -> RGB round trip (within 1)
    assert abs(same.astype(int) - bgr[:, :, ::-1].astype(int)).max() <= 1


def test_saturation_jitter_clips_or_wraps_like_the_original():
    """RGB (200, 90, 20) has S = 0.9; S x 1.17 gives RGB (200, 71.3, -10.6): clipped to 0, or wrapped as the
    original's uint8 cast (trunc -10.6 = -10, mod 256 = 246). A grey pixel (S = 0) is unchanged either way."""
    bgr = np.array([[[20, 90, 200], [128, 128, 128]]], np.uint8)
    clipped = fd.saturation_jitter(bgr, p=1.0, low=1.17, high=1.17)
    wrapped = fd.saturation_jitter(bgr, p=1.0, low=1.17, high=1.17, wrap=True)
    assert clipped.tolist() == [[[200, 71, 0], [128, 128, 128]]]
    assert wrapped.tolist() == [[[200, 71, 246], [128, 128, 128]]]


def test_saturation_wrap_reaches_the_training_sets(tmp_path):
    root = make_synthetic_fas_tree(tmp_path / "t", n_videos=2, size=8)
    sets = fd.build_train_sets(fd.get_protocol("M"), root, [0.5] * 3, [0.2] * 3, 8, saturation_wrap=True)
    assert [(real.saturation_wrap, fake.saturation_wrap) for _, real, fake in sets] == [(True, True)] * 4
    assert not fd.build_train_sets(fd.get_protocol("M"), root, [0.5] * 3, [0.2] * 3, 8)[0][1].saturation_wrap
    from fsvfm.main_finetune_FAS import get_args_parser
    from fsvfm.tasks.fas import build_fas_datasets
    tf = fd.fas_transform(True, [0.5] * 3, [0.2] * 3, 8)
    for flag, want in (([], False), (["--saturation_wrap"], True)):
        args = get_args_parser().parse_args(["--config", "M", "--fas_data_root", str(root), *flag])
        train, _ = build_fas_datasets(args, fd.get_protocol("M"), tf, tf)
        assert {ds.saturation_wrap for _, real, fake in train for ds in (real, fake)} == {want}


def test_missing_list_file_empty_domain_and_missing_frame(tmp_path):
    root = make_synthetic_fas_tree(tmp_path / "t", n_videos=2, size=8)
    (root / "MCIO/txt/oulu_real_train.txt").unlink()
    with pytest.raises(fd.FASDataError, match=r"oulu_real_train\.txt: list file not found"):
        fd.train_frames(root, "oulu", "real")
    (root / "MCIO/txt/casia_fake_train.txt").write_text("\n  \n")
    with pytest.raises(fd.FASDataError, match=r"casia_fake_train\.txt: lists no frames \(empty domain\)"):
        fd.train_frames(root, "casia", "fake")
    (root / "MCIO/frame/msu/test/real/msu_real_test_1_frame1.png").unlink()
    with pytest.raises(fd.FASDataError, match=r"msu_real_test\.txt:2: frame .*msu_real_test_1_frame1\.png not found"):
        fd.test_frames(root, "msu")
    sets = fd.build_train_sets(fd.get_protocol("cefa"), root, MEAN, STD, 8)
    with pytest.raises(fd.FASDataError, match="domain wmca has 2 real training frames, fewer than --batch_size 3"):
        fd.BalancedSourceBatches(sets, batch_size=3)


def test_a_stale_statistics_file_in_the_output_folder_is_warned_about(tmp_path, caplog):
    """As DfD's fine-tuning: the output folder's statistics differ from those of --pt_model's folder (or from
    ImageNet, when that has none); the same values, or no file, are no warning."""
    from fsvfm.util.norm_stats import IMAGENET_MEAN, IMAGENET_STD, STATS_FILENAME, write_mean_std
    pre, out = tmp_path / "pre", tmp_path / "out"
    pre.mkdir()
    out.mkdir()
    write_mean_std(pre / STATS_FILENAME, [0.5, 0.4, 0.3], [0.2, 0.2, 0.2])
    with caplog.at_level(logging.WARNING):
        assert fd.fas_training_mean_std(pre / "checkpoint-1.pth", False, out)[2] == str(pre / STATS_FILENAME)
    assert caplog.text == ""
    write_mean_std(out / STATS_FILENAME, [0.1, 0.1, 0.1], [0.3, 0.3, 0.3])
    with caplog.at_level(logging.WARNING):
        mean, _, _ = fd.fas_training_mean_std(pre / "checkpoint-1.pth", False, out)
    assert mean == [0.5, 0.4, 0.3]
    assert (f"normalisation statistics differ: {pre / STATS_FILENAME} has mean [0.5, 0.4, 0.3] std [0.2, 0.2, 0.2], "
            f"{out / STATS_FILENAME} has mean [0.1, 0.1, 0.1] std [0.3, 0.3, 0.3] (another data set?); this run uses "
            f"{pre / STATS_FILENAME}") in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert fd.fas_training_mean_std(None, True, out)[:2] == (list(IMAGENET_MEAN), list(IMAGENET_STD))
    assert "normalisation statistics differ: ImageNet (--normalize_from_IMN) has mean [0.485" in caplog.text
    write_mean_std(out / STATS_FILENAME, [0.5, 0.4, 0.3], [0.2, 0.2, 0.2])
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        fd.fas_training_mean_std(pre / "checkpoint-1.pth", False, out)
    assert caplog.text == ""


def test_a_stale_statistics_file_in_the_op_dir_is_warned_about(tmp_path, caplog):
    from fsvfm.util.norm_stats import IMAGENET_MEAN, IMAGENET_STD, STATS_FILENAME, write_mean_std
    write_mean_std(tmp_path / STATS_FILENAME, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25])
    with caplog.at_level(logging.WARNING):
        mean, std, _ = fd.fas_training_mean_std(None, True, tmp_path)
    assert (list(mean), list(std)) == (list(IMAGENET_MEAN), list(IMAGENET_STD))
    assert [r.message.split(":")[0] for r in caplog.records] == ["normalisation statistics differ"]
    assert "[0.5, 0.5, 0.5]" in caplog.records[0].message
    caplog.clear()
    write_mean_std(tmp_path / STATS_FILENAME, list(IMAGENET_MEAN), list(IMAGENET_STD))
    with caplog.at_level(logging.WARNING):
        fd.fas_training_mean_std(None, True, tmp_path)           # the same values: no warning
    assert caplog.records == []
