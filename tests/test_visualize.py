"""Pictures: legend/colour table, mask and reconstruction panels, figures, CLI, TensorBoard images."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fsvfm import reconstruction, visualize
from fsvfm.data.pretrain import FaceParsingDataset, PretrainTransform
from fsvfm.main_pretrain import get_args_parser
from fsvfm.main_pretrain import main as pretrain_main
from fsvfm.masking import num_masked_patches
from fsvfm.preprocess.labels import LAPA_NAMES, PALETTE, label_colours, label_colours_rgb, legend_image
from fsvfm.util.checkpoint import CheckpointError, save_checkpoint
from tests.helpers import PRETRAIN_MEAN, PRETRAIN_OVERRIDES, PRETRAIN_STD, pretrain_checkpoint, tiny_fsfm
from tools.synthetic_data import draw_parsing_map, make_synthetic_pretrain_dataset, render_face

PHOTO = "2008_001322.jpg"


def _face_and_map(size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A generated face (RGB uint8) and its LaPa map, as written by the synthetic data set."""
    rng = np.random.default_rng(0)
    labels = draw_parsing_map(rng, size)
    return render_face(labels, rng), labels.astype(np.uint8)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return pretrain_checkpoint(tmp_path_factory.mktemp("ckpt"))


# ------------------------------------------------------------------------------------ colour table
def test_colour_table_and_legend_swatches():
    colours = label_colours()
    assert colours.shape == (11, 3) and (colours[0] == 255).all()
    assert np.array_equal(colours[1:], PALETTE[1:11]) and np.array_equal(label_colours_rgb(), colours[:, ::-1])
    legend = legend_image(220)
    assert legend.shape == (220, 150, 3) and legend.dtype == np.uint8
    row = 220 / len(LAPA_NAMES)
    side = int(row * 0.7)
    for k in range(len(LAPA_NAMES)):                 # the centre of swatch k has label k's colour
        top = int(k * row + (row - side) / 2)
        assert np.array_equal(legend[top + side // 2, 4 + side // 2], colours[k]), k
    assert (legend.min(axis=2) < 64).sum() > 200     # dark text pixels are drawn


# ------------------------------------------------------------------------------------ panels
def test_masking_views_pixel_exact():
    g = torch.Generator().manual_seed(0)
    images, recon = torch.rand(2, 3, 16, 16, generator=g), torch.rand(2, 3, 16, 16, generator=g)
    img_mask = torch.zeros(2, 16)
    img_mask[:, [0, 1, 5, 10, 15]] = 1
    region = torch.zeros(2, 16)
    region[:, [0, 1]] = 1
    v = reconstruction.masking_views(images, img_mask, region, 4, recon)
    masked = reconstruction.patch_pixels(img_mask, 4).bool().expand(-1, 3, -1, -1)
    in_region = reconstruction.patch_pixels(region, 4).bool().expand(-1, 3, -1, -1)
    assert masked.sum() == 2 * 3 * 5 * 16 and masked[0, 0, :4, :8].all() and not masked[0, 0, :4, 8:12].any()
    assert torch.equal(v["masked"][~masked], images[~masked]) and (v["masked"][masked] == 0.5).all()
    assert torch.equal(v["pasted"][masked], recon[masked]) and torch.equal(v["pasted"][~masked], images[~masked])
    assert torch.equal(v["reconstruction"], recon) and torch.equal(v["mask"][~masked], images[~masked])
    red = 0.45 * images + 0.55 * torch.tensor(reconstruction.REGION_RGB).view(1, 3, 1, 1)
    dark = 0.45 * images + 0.55 * torch.tensor(reconstruction.SHADE_RGB).view(1, 3, 1, 1)
    assert torch.allclose(v["mask"][in_region], red[in_region])
    assert torch.allclose(v["mask"][masked & ~in_region], dark[masked & ~in_region])
    assert set(reconstruction.masking_views(images, img_mask, region, 4)) == {"mask", "masked"}


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_reconstruct_undoes_per_patch_normalisation(monkeypatch, norm_pix_loss):
    """A decoder that predicts the loss target exactly reconstructs the input exactly."""
    model = tiny_fsfm(norm_pix_loss).train()
    imgs = torch.randn(2, 3, 32, 32)
    target = model.patchify(imgs)
    if norm_pix_loss:
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    monkeypatch.setattr(model, "forward_decoder", lambda latent, ids: target)
    out = reconstruction.reconstruct(model, imgs, torch.zeros(2, 16).index_fill_(1, torch.arange(12), 1))
    assert out.shape == (2, 3, 32, 32) and torch.allclose(out, imgs, atol=1e-4)
    assert model.training                           # the caller's mode is restored


def test_face_views_with_tiny_model_are_seeded_and_sized():
    face, pmap = _face_and_map()
    pre = visualize.Pretrained(tiny_fsfm(), PRETRAIN_MEAN, PRETRAIN_STD, 0.75, "tiny")
    v = visualize.face_views(face, pmap, "eyes", pre, seed=3)
    assert set(v) == {"face", "parsing", "mask", "masked", "reconstruction", "pasted"}
    assert all(img.shape == (32, 32, 3) and img.dtype == np.uint8 for img in v.values())
    patches = lambda img: img.reshape(4, 8, 4, 8, 3).transpose(0, 2, 1, 3, 4).reshape(16, -1)  # noqa: E731
    changed = (patches(v["masked"]) != patches(v["face"])).any(axis=1)
    assert changed.sum() == num_masked_patches(16, 0.75)            # 12 of 16 patches hidden
    assert np.array_equal(patches(v["pasted"])[~changed], patches(v["face"])[~changed])
    assert not np.array_equal(patches(v["pasted"])[changed], patches(v["face"])[changed])
    again = visualize.face_views(face, pmap, "eyes", pre, seed=3)
    assert all(np.array_equal(v[k], again[k]) for k in v)
    assert (v["parsing"][pmap[::2, ::2] == 0] == 255).all()             # nearest-neighbour 64 -> 32


# ------------------------------------------------------------------------------------ figures
def test_masking_figure_sizes_and_content():
    face, pmap = _face_and_map()
    fig = visualize.masking_figure(face, pmap, "eyes")
    assert fig.shape == (2 * 200, 3 * 200, 3) and fig.dtype == np.uint8
    colours = {tuple(c) for c in fig.reshape(-1, 3)}
    assert len(colours) > 200
    for k in np.unique(pmap):                        # parsing-map colours of present labels are drawn
        assert tuple(label_colours_rgb()[k]) in colours, k
    pre = visualize.Pretrained(tiny_fsfm(), PRETRAIN_MEAN, PRETRAIN_STD, 0.75, "tiny")
    fig_all = visualize.masking_figure(face, pmap, "all", pre, dpi=50)
    assert fig_all.shape == (7 * 100, 4 * 100, 3) and fig_all.std() > 10
    with pytest.raises(visualize.VisualizeError, match="unknown region 'ears'"):
        visualize.masking_figure(face, pmap, "ears")


def test_load_pretrained_rebuilds_model_and_statistics(tiny_checkpoint):
    path, model = tiny_checkpoint
    pre = visualize.load_pretrained(path)
    assert (pre.mean, pre.std, pre.mask_ratio, pre.input_size, pre.patch_size) == (PRETRAIN_MEAN, PRETRAIN_STD, 0.75, 32, 8)
    assert pre.model.norm_pix_loss and not pre.model.training
    assert all(torch.equal(a, b) for a, b in zip(pre.model.state_dict().values(), model.state_dict().values()))
    with pytest.raises(CheckpointError, match="target network.*checkpoint-1.pth"):
        visualize.load_pretrained(path.with_name("checkpoint-te-1.pth"))
    save_checkpoint(path.with_name("classifier.pth"), {}, args={"model": "vit_small_patch16"})
    with pytest.raises(CheckpointError, match="not a pre-training checkpoint"):
        visualize.load_pretrained(path.with_name("classifier.pth"))


def test_cli_user_errors_exit_2(tmp_path, capsys):
    out = tmp_path / "fig.png"
    assert visualize.main(["masking", "--image", str(tmp_path / "none.jpg"), "--out", str(out)]) == 2
    assert "image not found" in capsys.readouterr().err
    Image.new("RGB", (120, 120), (90, 90, 90)).save(tmp_path / "blank.png")
    assert visualize.main(["masking", "--image", str(tmp_path / "blank.png"), "--backend", "landmarks",
                           "--out", str(out)]) == 2
    assert "no face found" in capsys.readouterr().err and not out.exists()


def test_out_formats_agree_with_the_help(tmp_path, capsys, monkeypatch):
    help_text = visualize.get_args_parser()._subparsers._group_actions[0].choices["masking"].format_help()
    assert "(.png, .jpg, .jpeg, .gif)" in " ".join(help_text.split())
    image = np.zeros((6, 4, 3), np.uint8)
    image[:, :, 0] = 255                                    # red: RGB order kept, within GIF's palette step
    gif = visualize.save_image(tmp_path / "fig.gif", image)
    with Image.open(gif) as im:
        assert im.format == "GIF" and im.size == (4, 6)
        assert np.abs(np.asarray(im.convert("RGB")).astype(int) - image).max() <= 4
    # refused before the (missing) image is even looked at: the one line is about --out
    pdf = tmp_path / "fig.pdf"
    assert visualize.main(["masking", "--image", str(tmp_path / "none.jpg"), "--out", str(pdf)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"python -m fsvfm.visualize: error: --out {pdf}: the figure is written as .png, .jpg, .jpeg, "
                   ".gif; end the file name with one of them"]
    import cv2
    monkeypatch.setattr(cv2, "haveImageWriter", lambda name: not name.endswith(".gif"))   # an OpenCV < 4.12
    assert visualize.main(["masking", "--image", str(tmp_path / "none.jpg"), "--out", str(tmp_path / "f.gif")]) == 2
    assert "cannot write .gif; use .png, or install opencv-python-headless>=4.12" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ real photos
def test_prepare_face_on_a_real_photo(shared_dir):
    face, pmap = visualize.prepare_face(shared_dir / "faces" / PHOTO, backend="landmarks")
    assert face.shape == (224, 224, 3) and pmap.shape == (224, 224) and pmap.dtype == np.uint8
    assert {1, 2, 3, 4, 5, 6, 7, 9} <= set(np.unique(pmap).tolist())   # skin, brows, eyes, nose, lips
    same, _ = visualize.prepare_face(np.asarray(Image.open(shared_dir / "faces" / PHOTO).convert("RGB")),
                                     backend="landmarks")
    assert np.array_equal(face, same)


def test_cli_real_photo_with_checkpoint(shared_dir, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "fig.png"
    argv = ["masking", "--image", str(shared_dir / "faces" / PHOTO), "--checkpoint", str(tiny_checkpoint[0]),
            "--region", "nose", "--backend", "landmarks", "--out", str(out)]
    assert visualize.main(argv) == 0
    assert Image.open(out).size == (800, 400) and "wrote" in capsys.readouterr().out


# ------------------------------------------------------------------------------------ TensorBoard
@pytest.fixture(scope="module")
def vis_run(tmp_path_factory):
    data = make_synthetic_pretrain_dataset(tmp_path_factory.mktemp("faces"), 8, size=32, seed=0)
    out = tmp_path_factory.mktemp("run")
    pretrain_main(get_args_parser().parse_args([
        "--pretrain_data_path", str(data), "--output_dir", str(out), "--device", "cpu", "--input_size", "32",
        "--model_overrides", json.dumps(PRETRAIN_OVERRIDES), "--batch_size", "2", "--num_workers", "0", "--epochs", "1",
        "--warmup_epochs", "1", "--norm_pix_loss", "--vis_freq", "1"]))
    return out


def test_pretraining_writes_loss_scalars_and_image_grid(vis_run):
    acc = EventAccumulator(str(vis_run), size_guidance={"images": 0, "scalars": 0}).Reload()
    tags = acc.Tags()
    assert {"train_loss", "lr", "loss_rec_all", "loss_rec_sfr", "loss_cl"} <= set(tags["scalars"])
    assert [len(acc.Scalars(k)) for k in ("loss_rec_all", "loss_rec_sfr", "loss_cl")] == [4, 4, 4]  # 8 / 2 steps
    assert tags["images"] == [reconstruction.TB_IMAGE_TAG]
    (img,) = acc.Images(reconstruction.TB_IMAGE_TAG)
    assert img.step == 0 and (img.width, img.height) == (8 * 34 + 2, 4 * 34 + 2)   # 8 faces x 4 rows of 32 px
    assert np.asarray(Image.open(io.BytesIO(img.encoded_image_string))).std() > 10


def test_checkpoint_of_pretraining_draws_the_cli_figure(vis_run, shared_dir, tmp_path):
    out = tmp_path / "fig.png"
    assert visualize.main(["masking", "--image", str(shared_dir / "faces" / PHOTO), "--checkpoint",
                           str(vis_run / "checkpoint-0.pth"), "--backend", "landmarks", "--out", str(out)]) == 0
    assert Image.open(out).size == (800, 1400)


class _Recorder:
    def __init__(self):
        self.images = []

    def add_image(self, tag, img, step):
        self.images.append((tag, tuple(img.shape), step))

    def flush(self):
        pass


def test_image_logger_frequency_and_off_switch(tmp_path):
    data = make_synthetic_pretrain_dataset(tmp_path, 3, size=32, seed=1)
    ds = FaceParsingDataset(data, PretrainTransform(32, PRETRAIN_MEAN, PRETRAIN_STD))
    model, rec = tiny_fsfm(), _Recorder()
    log = reconstruction.PretrainImageLogger(rec, ds, PRETRAIN_MEAN, PRETRAIN_STD, 8, 0.75, vis_freq=2)
    for epoch in range(4):
        log(model, epoch)
    assert rec.images == [(reconstruction.TB_IMAGE_TAG, (3, 4 * 34 + 2, 3 * 34 + 2), 1),
                          (reconstruction.TB_IMAGE_TAG, (3, 4 * 34 + 2, 3 * 34 + 2), 3)]
    off = reconstruction.PretrainImageLogger(rec, ds, PRETRAIN_MEAN, PRETRAIN_STD, 8, 0.75, vis_freq=0)
    off(model, 1)
    assert off.images is None and len(rec.images) == 2


def test_image_logger_normalises_uint8_items_like_the_host_pipeline(tmp_path):
    """The pre-training workers deliver uint8 images; the grid equals the one of host-normalised items."""
    data = make_synthetic_pretrain_dataset(tmp_path, 3, size=32, seed=2)
    raw = FaceParsingDataset(data, PretrainTransform(32))
    host = FaceParsingDataset(data, PretrainTransform(32, PRETRAIN_MEAN, PRETRAIN_STD))
    assert raw[0]["image"].dtype == torch.uint8
    model = tiny_fsfm()
    from_uint8 = reconstruction.PretrainImageLogger(_Recorder(), raw, PRETRAIN_MEAN, PRETRAIN_STD, 8, 0.75, vis_freq=1)
    from_float = reconstruction.PretrainImageLogger(_Recorder(), host, PRETRAIN_MEAN, PRETRAIN_STD, 8, 0.75, vis_freq=1)
    assert torch.equal(from_uint8.images, from_float.images)
    assert torch.equal(from_uint8.grid(model), from_float.grid(model))


def test_no_crop_refuses_a_group_photo_unless_told(shared_dir, tmp_path, capsys):
    out = tmp_path / "fig.png"
    argv = ["masking", "--image", str(shared_dir / "faces" / "bald_guys.jpg"), "--no_crop", "--backend", "landmarks",
            "--out", str(out)]
    assert visualize.main(argv) == 2 and not out.exists()
    err = capsys.readouterr().err.strip()
    assert err.endswith("bald_guys.jpg is not a face crop (24 faces); let its face be detected and cropped first "
                        "(no --no_crop / 'already a face crop' unticked), or --skip_crop_check to use the whole image")
    assert visualize.main([*argv, "--skip_crop_check"]) == 0 and out.is_file()
