"""Parsing backends (landmarks offline, facer with stand-in models), pre-training set output, resume."""
from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import cv2
import dlib
import numpy as np
import pytest
from PIL import Image

from fsvfm.data.pretrain import FaceParsingDataset
from fsvfm.preprocess import prepare_pretrain_dataset
from fsvfm.preprocess.cli import main_face_parse
from fsvfm.preprocess.faces import FaceCropper, landmark_model_path
from fsvfm.preprocess.labels import LAPA, LEGEND_WIDTH, PALETTE, legend_image
from fsvfm.preprocess.parse_facer import FACER_FILES, FacerParser
from fsvfm.preprocess.parse_landmarks import LandmarkParser
from fsvfm.preprocess.parsing import resolve_backend, to_parser_input
from tests.helpers import PRETRAIN_DEFAULT, REPO, astronaut_bgr, tree, write_face_image


@pytest.fixture(scope="module")
def face224() -> np.ndarray:
    """The astronaut's face crop resized to 224x224 RGB, as the parser sees it."""
    crop, _ = FaceCropper().crop(astronaut_bgr())
    return np.asarray(to_parser_input(np.ascontiguousarray(crop[:, :, ::-1])))


@pytest.fixture(scope="module")
def landmark_parser() -> LandmarkParser:
    return LandmarkParser()


def box(pts: np.ndarray, margin: int = 1) -> tuple[int, int, int, int]:
    (x0, y0), (x1, y1) = pts.min(0), pts.max(0)
    return int(x0) - margin, int(y0) - margin, int(np.ceil(x1)) + margin, int(np.ceil(y1)) + margin


def inside(mask: np.ndarray, b: tuple[int, int, int, int]) -> bool:
    ys, xs = np.nonzero(mask)
    return bool(len(xs)) and xs.min() >= b[0] and xs.max() <= b[2] and ys.min() >= b[1] and ys.max() <= b[3]


def test_landmark_parser_labels_inside_landmark_boxes(face224, landmark_parser):
    m = landmark_parser.parse(face224)
    assert m.shape == (224, 224) and m.dtype == np.uint8 and m.max() <= 10
    # landmarks computed here directly with dlib, independently of the toolkit's code path
    rect = dlib.get_frontal_face_detector()(face224, 1)[0]
    shape = dlib.shape_predictor(str(landmark_model_path()))(face224, rect)
    pts = np.array([(p.x, p.y) for p in shape.parts()], float)
    assert inside(m == LAPA["re"], box(pts[36:42])) and inside(m == LAPA["le"], box(pts[42:48]))
    assert inside(m == LAPA["nose"], box(pts[27:36]))
    assert inside(np.isin(m, [LAPA["ulip"], LAPA["imouth"], LAPA["llip"]]), box(pts[48:68]))
    assert inside(m == LAPA["rb"], box(pts[17:22], 5)) and inside(m == LAPA["lb"], box(pts[22:27], 5))
    assert m[int(pts[30, 1]), int(pts[30, 0])] == LAPA["nose"]
    for idx, label in ((37, "re"), (44, "le")):      # a point just inside each eye's outline
        c = pts[[idx, idx + 4]].mean(0) if label == "re" else pts[[idx, idx + 2]].mean(0)
        assert m[int(round(c[1])), int(round(c[0]))] == LAPA[label]
    assert set(np.unique(m)) == set(range(11))                    # every class drawn on this face
    assert m[0, 0] == LAPA["background"] or m[0, 0] == LAPA["hair"]


def test_landmark_parser_no_face_returns_none(landmark_parser):
    assert landmark_parser.parse(np.full((224, 224, 3), 127, np.uint8)) is None


def test_custom_face_parse_outputs_resume_and_bad_inputs(tmp_path, face224, landmark_parser):
    src = tmp_path / "src"
    write_face_image(src / "face.png", np.ascontiguousarray(face224[:, :, ::-1]))
    write_face_image(src / "sub" / "blank.jpg", np.full((100, 100, 3), 127, np.uint8))
    (src / "corrupt.png").write_bytes(b"\x89PNG broken")
    (src / "readme.txt").write_text("not an image (D1)")
    dst = tmp_path / "ds"
    argv = ["--dataset", "custom", "--src", str(src), "--dst", str(dst), "--workers", "1",
            "--backend", "landmarks", "--save_vis", "--skip_crop_check"]   # blank.jpg: a no_face record
    s = main_face_parse(PRETRAIN_DEFAULT, argv)
    assert (s.counts["done"], s.counts["no_face"], s.counts["unreadable"]) == (1, 1, 1)
    assert tree(dst) == {"images/face.png", "parsing_maps/face.npy", "vis_parsing_maps/face.png",
                         "vis_parsing_maps/face_with_pm.png", "face_parse_preprocess_custom_failures.txt",
                         "face_parse_preprocess_custom_summary.json"}
    pm = np.load(dst / "parsing_maps/face.npy")
    assert pm.dtype == np.int8 and pm.shape == (1, 224, 224) and 0 <= pm.min() and pm.max() <= 10
    img = Image.open(dst / "images/face.png")
    assert img.size == (224, 224) and img.mode == "RGB"
    assert np.array_equal(pm[0], landmark_parser.parse(np.asarray(img)).astype(np.int8))
    vis = cv2.imread(str(dst / "vis_parsing_maps/face.png"))
    assert vis.shape == (224, 224 + LEGEND_WIDTH, 3)                  # colour map + legend on its right
    assert np.array_equal(vis[:, 224:], legend_image(224))
    vis = vis[:, :224]
    assert (vis[pm[0] == 0] == 255).all() and (vis[pm[0] == 1] == PALETTE[1]).all()
    item = FaceParsingDataset(dst)[0]                           # what pre-training reads
    assert len(FaceParsingDataset(dst)) == 1 and tuple(item["image"].shape) == (3, 224, 224)
    assert np.array_equal(item["parsing_map"].numpy().astype(np.int8), pm)
    failures = (dst / "face_parse_preprocess_custom_failures.txt").read_text().splitlines()
    assert [line.split("\t")[:2] for line in failures] == [
        ["no_face", str(src / "sub/blank.jpg")], ["unreadable", str(src / "corrupt.png")]]

    s = main_face_parse(PRETRAIN_DEFAULT, argv)                 # second run: finished work skipped
    assert (s.counts["done"], s.counts["skipped"]) == (0, 1)


@pytest.mark.slow
def test_entry_script_runs_from_any_directory(tmp_path):
    write_face_image(tmp_path / "photos" / "a.jpg", astronaut_bgr())
    script = REPO / "datasets/pretrain/preprocess/face_parse.py"
    r = subprocess.run([sys.executable, str(script), "--dataset", "custom", "--src", "photos", "--dst", "out",
                        "--crop", "--workers", "1", "--backend", "landmarks"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "face parsing backend: landmarks" in r.stderr and "done 1," in r.stderr
    assert {"images/a.png", "parsing_maps/a.npy"} <= tree(tmp_path / "out")


# --- facer backend with stand-in models in a temporary FACER cache ---------------------------------

def _stand_in_detector(path: Path) -> None:
    """RetinaFace/mobilenet state dict whose heads ignore the image: only the 256/512 px anchors
    fire, each with a five-point face layout (offsets in units of 0.1 x anchor size)."""
    import torch
    from facer.face_detection.retinaface import RetinaFace, cfg_mnet
    net = RetinaFace(cfg=cfg_mnet, phase="test")
    layout = torch.tensor([-1.5, -1.0, 1.5, -1.0, 0.0, 0.5, -1.0, 2.0, 1.0, 2.0]) * 0.25
    with torch.no_grad():
        for level in range(3):
            for head in (net.ClassHead[level], net.BboxHead[level], net.LandmarkHead[level]):
                head.conv1x1.weight.zero_()
                head.conv1x1.bias.zero_()
            net.ClassHead[level].conv1x1.bias.copy_(torch.tensor([10.0, -10.0] * 2 if level < 2 else [-10.0, 10.0] * 2))
            net.LandmarkHead[level].conv1x1.bias.copy_(layout.repeat(2))
    torch.save(net.state_dict(), path)


def _stand_in_parser(path: Path) -> None:
    """TorchScript stand-in for FaRL: ``nose`` in the central half of the warped face, background
    around it (FaRL's tanh warp covers the whole image, so the map gets both)."""
    import torch

    class Net(torch.nn.Module):
        def forward(self, x: torch.Tensor):
            logits = torch.zeros(x.shape[0], 11, x.shape[2], x.shape[3], dtype=x.dtype, device=x.device)
            logits[:, 0] = 5.0
            h, w = x.shape[2], x.shape[3]
            logits[:, 6, h // 4:3 * h // 4, w // 4:3 * w // 4] = 10.0
            return logits, x.mean()
    torch.jit.script(Net()).save(str(path))


@pytest.fixture
def facer_cache(tmp_path, monkeypatch) -> Path:
    pytest.importorskip("facer", reason="needs the optional FACER parser: pip install --no-deps pyfacer==0.0.5 "
                                 "(make setup installs it)")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    _stand_in_detector(cache / FACER_FILES["detector"][0])
    _stand_in_parser(cache / FACER_FILES["parser"][0])
    return cache


def test_facer_backend_real_code_path(facer_cache, face224, tmp_path, caplog):
    assert resolve_backend("auto") == "facer"
    parser = FacerParser(device="cpu")
    assert parser.detector.threshold == 0.3
    m = parser.parse(face224)
    assert m.shape == (224, 224) and set(np.unique(m)) == {0, 6} and 100 < (m == 6).sum() < 224 * 224 - 100

    (tmp_path / "photos").mkdir()
    cv2.imwrite(str(tmp_path / "photos" / "astronaut.png"), astronaut_bgr())
    with caplog.at_level(logging.INFO):
        s = prepare_pretrain_dataset(tmp_path / "photos", tmp_path / "ds", backend="auto")
    assert s.counts["done"] == 1 and "face parsing backend: facer (auto)" in caplog.text
    pm = np.load(tmp_path / "ds" / "parsing_maps" / "astronaut.npy")
    assert pm.shape == (1, 224, 224) and pm.dtype == np.int8 and set(np.unique(pm)) == {0, 6}


def test_facer_missing_weights_message(tmp_path):
    assert resolve_backend("auto", tmp_path) == "landmarks"
    with pytest.raises(FileNotFoundError) as e:
        FacerParser(model_dir=tmp_path)
    for fname, url in FACER_FILES.values():
        assert str(tmp_path / fname) in str(e.value) and url in str(e.value)
