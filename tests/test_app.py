"""The web app (``fsvfm.app``) served on 127.0.0.1 and driven through its HTTP API (gradio_client) and
a headless Chromium, on a tiny DfD detector and a tiny pre-training checkpoint."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import urlparse

import cv2
import httpx
import numpy as np
import pytest
from PIL import Image

_APP_EXTRA = "needs the web app's extra: pip install -e '.[app]' (make setup installs it)"
pytest.importorskip("gradio", reason=_APP_EXTRA)
gradio_client = pytest.importorskip("gradio_client", reason=_APP_EXTRA)

from fsvfm import app  # noqa: E402
from fsvfm.predict import Detector  # noqa: E402
from fsvfm.visualize import load_pretrained  # noqa: E402
from tests.helpers import (  # noqa: E402
    FACES,
    detector_checkpoint,
    free_port,
    pretrain_checkpoint,
    write_face_image,
    write_video,
)

# pandas deprecations raised inside Gradio's queue, not ours
pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")

LIMIT = 300 * 1024               # --max_file_mb of the served app (bytes): photos of shared/faces fit
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BROWSER_PHOTO = "Tom_Cruise_avp_2014_4.jpg"    # one face for dlib


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("app")
    return detector_checkpoint(root), pretrain_checkpoint(root / "pre")[0]


@pytest.fixture(scope="module")
def served(checkpoints):
    """The app on a free localhost port: ``(url, workdir, label, reference detector)``."""
    det_ckpt, pre_ckpt = checkpoints
    with app.app_workdir() as workdir:
        detectors = app.load_detectors([str(det_ckpt)], "cpu")
        blocks = app.build_app(detectors, load_pretrained(pre_ckpt), workdir, LIMIT)
        url = app.launch(blocks, "127.0.0.1", free_port(), LIMIT, block=False)
        try:
            yield url, workdir, next(iter(detectors)), Detector.from_checkpoint(det_ckpt, device="cpu")
        finally:
            blocks.close()
    assert not workdir.exists()


@pytest.fixture(scope="module")
def client(served, tmp_path_factory):
    return gradio_client.Client(served[0], verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")))


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("media")
    files = {"photo": write_face_image(root / "photo.jpg"), "clip": write_video(root / "clip.mp4", n_frames=4),
             "text": root / "notes.txt", "big": root / "big.png"}
    files["text"].write_text("not a picture\n")
    noise = np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8)
    write_face_image(files["big"], noise)   # incompressible PNG: about 480 KB > LIMIT
    return files


def _assert_same_faces(got: dict, want: dict) -> None:
    assert len(got["faces"]) == len(want["faces"]) >= 1
    for g, w in zip(got["faces"], want["faces"]):
        assert (g["box"], g["frame"]) == (w["box"], w["frame"])
        assert g["score_real"] == pytest.approx(w["score_real"], abs=1e-6)
        assert g["score_fake"] == pytest.approx(w["score_fake"], abs=1e-6)
    assert got["score_real"] == pytest.approx(want["score_real"], abs=1e-6)


def test_detect_image_through_the_api(served, client, media):
    _, workdir, label, ref = served
    status, records, gallery, table = client.predict(gradio_client.handle_file(str(media["photo"])), api_name="/detect")
    want = ref.predict(media["photo"])
    assert list(records) == [label] and label == "DfD: ft/checkpoint-min_val_loss.pth"
    _assert_same_faces(records[label], want)
    assert records[label]["file"] == "photo.jpg" and "path" not in records[label]
    assert len(list(workdir.rglob("photo.jpg"))) == 1           # Gradio's upload cache is the app's temp folder
    assert status == "**photo.jpg**: image" and f"**P(real) = {want['score_real']:.4f}**" in table
    assert table.count("\n| 1 |") == 1 and f"{want['faces'][0]['score_fake']:.4f}" in table
    assert len(gallery) == 1
    drawn = np.asarray(Image.open(gallery[0]["image"]).convert("RGB"))
    assert drawn.shape == (200, 200, 3)
    assert not np.array_equal(drawn, cv2.imread(str(media["photo"]))[:, :, ::-1])  # the box is drawn


def test_detect_video_gives_frames_and_the_video_score(served, client, media):
    _, _, label, ref = served
    _, records, gallery, table = client.predict(gradio_client.handle_file(str(media["clip"])), api_name="/detect")
    want = ref.predict(media["clip"])
    _assert_same_faces(records[label], want)
    assert [f["frame"] for f in records[label]["faces"]] == [0, 1, 2, 3]
    assert len(gallery) == 4 and "video score (mean over faces and frames)" in table


def test_masking_tab_returns_the_figure(served, client, media):
    status, figure = client.predict(gradio_client.handle_file(str(media["photo"])), "eyes", False, 3,
                                    api_name="/masking")
    image = np.asarray(Image.open(figure))
    # masking_figure: 4 columns with a model, 1 + 1 rows, 200 px per panel at dpi 100
    assert image.shape[:2] == (400, 800) and image.std() > 10
    assert status == "**photo.jpg**: region eyes, seed 3, reconstructions by checkpoint-1.pth"


def test_bad_uploads_get_the_message(served, client, media):
    status, records, gallery, table = client.predict(gradio_client.handle_file(str(media["text"])), api_name="/detect")
    assert status.startswith("**notes.txt** is not a file this tab reads; upload one of: .avi, .bmp")
    assert (records, gallery, table) == ({}, [], "")
    status, figure = client.predict(gradio_client.handle_file(str(media["clip"])), "all", False, 0,
                                    api_name="/masking")
    assert status.startswith("**clip.mp4** is not a file this tab reads") and figure is None


def test_oversized_upload_is_refused(served, client, media):
    assert media["big"].stat().st_size > LIMIT
    with pytest.raises(ValueError, match=f"big.png exceeds the maximum file size of {LIMIT} bytes"):
        client.predict(gradio_client.handle_file(str(media["big"])), api_name="/detect")  # the client checks first
    with open(media["big"], "rb") as fh:                                                 # the server refuses too
        reply = httpx.post(f"{served[0]}gradio_api/upload", files={"files": ("big.png", fh, "image/png")}, timeout=30)
    assert reply.status_code == 413 and f"maximum allowed size of {LIMIT} bytes" in reply.text
    # the handler's own check (reached by uploads that bypass Gradio's limit, e.g. a larger server limit)
    status, records, _, _ = app.detect(str(media["big"]), {}, LIMIT, served[1])
    size = media["big"].stat().st_size
    assert status == (f"**big.png** is {size / 2**20:.1f} MB; this app takes files up to {LIMIT / 2**20:.3g} MB "
                      "(`--max_file_mb`).") and records == {}


def test_start_up_errors_are_one_line(tmp_path, capsys):
    assert app.main(["--detector", str(tmp_path / "missing.pth")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"python -m fsvfm.app: error: {tmp_path / 'missing.pth'}: no such checkpoint file; give the path of a .pth file"
    assert app.main(["--max_file_mb", "0"]) == 2


@pytest.mark.slow
def test_browser_shows_scores(served, media):
    """Headless Chromium: open the page, see an oversized upload refused, upload a photo of
    ../shared/faces and read the rendered scores."""
    missing = [need for need, ok in ((f"a Chromium binary at {CHROMIUM} (apt-get install chromium)",
                                      os.path.exists(CHROMIUM)),
                                     (f"real face photos in {FACES} (the workspace's shared/faces folder)",
                                      FACES.is_dir())) if not ok]
    if missing:
        pytest.skip("needs " + " and ".join(missing))
    from playwright import sync_api  # the app extra installs it; it drives the system's Chromium
    url, _, label, ref = served
    photo = FACES / BROWSER_PHOTO
    want = ref.predict(photo)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.set_default_timeout(20_000)
            hosts = set()
            page.on("request", lambda r: hosts.add(urlparse(r.url).hostname))
            page.goto(url)
            upload = page.locator("#detect-file input[type=file]")
            upload.set_input_files(str(media["big"]))
            page.get_by_text('exceed the maximum allowed size of 300.0 Kb: "big.png"').wait_for()
            upload.set_input_files(str(photo))
            page.get_by_role("button", name="Detect", exact=True).click()
            scores = page.locator("#detect-scores-0")
            scores.get_by_text("P(real) =").wait_for()
            text = scores.inner_text()
        finally:
            browser.close()
    assert label in text and f"P(real) = {want['score_real']:.4f}" in text
    assert f"{want['faces'][0]['score_fake']:.4f}" in text and len(want["faces"]) == 1
    assert hosts <= {"127.0.0.1", None}    # nothing fetched from the internet (None: data: URLs)
