"""The web app (``fsvfm.app``) served on 127.0.0.1 and driven through its HTTP API (gradio_client) and
a headless Chromium, on three tiny detectors side by side (a fine-tuned binary DfD one, a 4-class one saved
as the released unified detector is, a FAS one) and a tiny pre-training checkpoint."""
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
    UNIFIED_CLASSES,
    detector_checkpoint,
    fas_checkpoint,
    free_port,
    pretrain_checkpoint,
    released_unified_checkpoint,
    write_face_image,
    write_video,
)

# pandas deprecations raised inside Gradio's queue, not ours
pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")

LIMIT = 300 * 1024               # --max_file_mb of the served app (bytes): photos of shared/faces fit
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BROWSER_PHOTO = "Tom_Cruise_avp_2014_4.jpg"    # one face for dlib
DFD, UNIFIED, FAS = ("DfD: ft/checkpoint-min_val_loss.pth",
                     "DfD: v1_Fine-tuned_on_4_classes/checkpoint-min_train_loss.pth",
                     "FAS: fas/msu_vit_0_shot_checkpoint_run_0.pth.tar")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> tuple[list[Path], Path]:
    """The detectors (DfD, unified 4-class, FAS) and the pre-training checkpoint."""
    root = tmp_path_factory.mktemp("app")
    detectors = [detector_checkpoint(root), released_unified_checkpoint(root / "hub"), fas_checkpoint(root)]
    return detectors, pretrain_checkpoint(root / "pre")[0]


@pytest.fixture(scope="module")
def served(checkpoints):
    """The app on a free localhost port: ``(url, workdir, {label: reference detector})``."""
    det_ckpts, pre_ckpt = checkpoints
    with app.app_workdir() as workdir:
        detectors = app.load_detectors([str(p) for p in det_ckpts], "cpu")
        blocks = app.build_app(detectors, load_pretrained(pre_ckpt), workdir, LIMIT)
        url = app.launch(blocks, "127.0.0.1", free_port(), LIMIT, block=False)
        try:
            refs = {label: Detector.from_checkpoint(p, device="cpu") for label, p in zip(detectors, det_ckpts)}
            yield url, workdir, refs
        finally:
            blocks.close()
    assert not workdir.exists()


def _detect(client, path: Path) -> tuple[str, dict, list, list, list]:
    """``/detect``: status, records, the three galleries, the three score tables, the class bars (one: only
    the unified detector has more than two classes)."""
    status, records, *rest = client.predict(gradio_client.handle_file(str(path)), api_name="/detect")
    assert len(rest) == 3 + 3 + 1
    return status, records, rest[:3], rest[3:6], rest[6:]


@pytest.fixture(scope="module")
def client(served, tmp_path_factory):
    return gradio_client.Client(served[0], verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")))


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("media")
    files = {"photo": write_face_image(root / "photo.jpg"), "clip": write_video(root / "clip.mp4", n_frames=4),
             "text": root / "notes.txt", "big": root / "big.png",
             "blank": write_face_image(root / "blank.png", np.full((120, 120, 3), 128, np.uint8))}
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
    _, workdir, refs = served
    status, records, galleries, tables, _ = _detect(client, media["photo"])
    want = refs[DFD].predict(media["photo"])
    assert list(records) == list(refs) == [DFD, UNIFIED, FAS]
    _assert_same_faces(records[DFD], want)
    assert records[DFD]["file"] == "photo.jpg" and "path" not in records[DFD]
    assert len(list(workdir.rglob("photo.jpg"))) == 1           # Gradio's upload cache is the app's temp folder
    verdict = "real" if want["score_real"] >= 0.5 else "fake"   # the binary table as before N-class models
    face = want["faces"][0]
    assert status == "**photo.jpg**: image" and tables[0] == (
        f"#### {DFD}\n**P(real) = {want['score_real']:.4f}** ({verdict}), image score (mean over faces), 1 face(s)\n\n"
        "| face | frame | box x1, y1, x2, y2 | P(real) | P(fake) |\n|---:|---:|---|---:|---:|\n"
        f"| 1 | - | {', '.join(map(str, face['box']))} | {face['score_real']:.4f} | {face['score_fake']:.4f} |")
    assert len(galleries[0]) == 1
    drawn = np.asarray(Image.open(galleries[0][0]["image"]).convert("RGB"))
    assert drawn.shape == (200, 200, 3)
    assert not np.array_equal(drawn, cv2.imread(str(media["photo"]))[:, :, ::-1])  # the box is drawn


def test_unified_detector_shows_one_bar_per_class(served, client, media):
    _, _, refs = served
    _, records, galleries, tables, (bars,) = _detect(client, media["photo"])
    want = refs[UNIFIED].predict(media["photo"])
    assert refs[UNIFIED].info["classes_source"] == "known release"   # no ``classes`` key, as the released file
    got = records[UNIFIED]
    assert list(got["scores"]) == list(UNIFIED_CLASSES) and "score_real" not in got
    assert got["scores"] == pytest.approx(want["scores"], abs=1e-6) and got["label"] == want["label"]
    confidences = {c["label"]: c["confidence"] for c in bars["confidences"]}
    assert set(confidences) == set(UNIFIED_CLASSES) and len(bars["confidences"]) == 4
    assert confidences == pytest.approx(want["scores"], abs=1e-6)
    assert sum(confidences.values()) == pytest.approx(1.0, abs=1e-5)
    assert bars["label"] == want["label"] == max(want["scores"], key=want["scores"].get)
    top = want["label"]
    assert f"**{top}** (P({top}) = {want['scores'][top]:.4f}), image score (mean over faces), 1 face(s)" in tables[1]
    assert "| P(real) | P(deepfake) | P(diffusion) | P(spoof) | class |" in tables[1]
    face = want["faces"][0]
    assert tables[1].endswith(" | ".join(f"{face['scores'][c]:.4f}" for c in UNIFIED_CLASSES) + f" | {top} |")
    assert len(galleries[1]) == 1


def test_fas_detector_reads_live_and_spoof(served, client, media):
    _, _, refs = served
    _, records, galleries, tables, _ = _detect(client, media["photo"])
    want = refs[FAS].predict(media["photo"])
    assert len(want["faces"]) == 1 and "score_real" not in records[FAS]
    assert records[FAS]["score_live"] == pytest.approx(want["score_live"], abs=1e-6)
    verdict = "live" if want["score_live"] >= 0.5 else "spoof"
    assert f"**P(live) = {want['score_live']:.4f}** ({verdict})" in tables[2]
    assert "| P(live) | P(spoof) |" in tables[2] and "real" not in tables[2].split("\n", 1)[1]
    assert len(galleries[2]) == 1                  # drawn with the FAS classes (a live/spoof caption)


def test_api_names_say_what_they_are(served, client):
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert [p["parameter_name"] for p in api["/detect"]["parameters"]] == ["image_or_video"]
    assert [r["label"] for r in api["/detect"]["returns"]] == [
        "status", "records (fsvfm.predict)", DFD, UNIFIED, FAS, *(f"scores: {k}" for k in (DFD, UNIFIED, FAS)),
        f"classes: {UNIFIED}"]
    assert [p["parameter_name"] for p in api["/masking"]["parameters"]] == ["face_photo", "region", "already_cropped",
                                                                            "mask_seed"]
    assert [r["label"] for r in api["/masking"]["returns"]] == ["status", "CRFR-P masking"]


def test_detect_video_gives_frames_and_the_video_score(served, client, media):
    _, _, refs = served
    _, records, galleries, tables, (bars,) = _detect(client, media["clip"])
    want = refs[DFD].predict(media["clip"])
    _assert_same_faces(records[DFD], want)
    assert [f["frame"] for f in records[DFD]["faces"]] == [0, 1, 2, 3]
    assert len(galleries[0]) == 4 and "video score (mean over faces and frames)" in tables[0]
    video = refs[UNIFIED].predict(media["clip"])    # the bars are the mean over faces and frames
    assert {c["label"]: c["confidence"] for c in bars["confidences"]} == pytest.approx(video["scores"], abs=1e-6)


def test_masking_tab_returns_the_figure(served, client, media):
    status, figure = client.predict(gradio_client.handle_file(str(media["photo"])), "eyes", False, 3,
                                    api_name="/masking")
    image = np.asarray(Image.open(figure))
    # masking_figure: 4 columns with a model, 1 + 1 rows, 200 px per panel at dpi 100
    assert image.shape[:2] == (400, 800) and image.std() > 10
    assert status == "**photo.jpg**: region eyes, seed 3, reconstructions by checkpoint-1.pth"


def test_masking_error_names_the_upload_not_its_temporary_path(served, client, media):
    status, figure = client.predict(gradio_client.handle_file(str(media["blank"])), "all", False, 0,
                                    api_name="/masking")
    assert status == ("**blank.png**: no face found in blank.png by dlib; give a photo with a frontal face")
    assert figure is None and str(served[1]) not in status


def test_hide_path():
    upload = "/tmp/fsvfm-app-x/gradio/0a1b/photo.jpg"
    assert app.hide_path(f"cannot read {upload}: truncated", upload) == "cannot read photo.jpg: truncated"
    assert app.hide_path("/tmp/fsvfm-app-x/gradio/0a1b/other.png is empty", upload) == "other.png is empty"
    assert app.hide_path(None, upload) is None and app.hide_path("no face found", upload) == "no face found"


def test_bad_uploads_get_the_message(served, client, media):
    status, records, galleries, tables, bars = _detect(client, media["text"])
    assert status.startswith("**notes.txt** is not a file this tab reads; upload one of: .avi, .bmp")
    assert (records, galleries, tables, bars) == ({}, [[]] * 3, [""] * 3, [{}])    # bars: an empty gr.Label
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


@pytest.mark.slow  # starts a Chromium
def test_browser_shows_scores(served, media):
    """Headless Chromium: open the page, see an oversized upload refused, upload a photo of
    ../shared/faces and read the rendered scores: P(real), the unified detector's four class bars, P(live)."""
    missing = [need for need, ok in ((f"a Chromium binary at {CHROMIUM} (apt-get install chromium)",
                                      os.path.exists(CHROMIUM)),
                                     (f"real face photos in {FACES} (the workspace's shared/faces folder)",
                                      FACES.is_dir())) if not ok]
    if missing:
        pytest.skip("needs " + " and ".join(missing))
    from playwright import sync_api  # the app extra installs it; it drives the system's Chromium
    url, _, refs = served
    photo = FACES / BROWSER_PHOTO
    want, want4, want_fas = (refs[k].predict(photo) for k in (DFD, UNIFIED, FAS))
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
            fas = page.locator("#detect-scores-2")
            fas.get_by_text("P(live) =").wait_for()
            fas_text = fas.inner_text()
            classes = page.locator("#detect-classes-1")
            classes.locator("meter").nth(3).wait_for()     # one bar (an HTML meter) per class
            bars = classes.locator("meter").evaluate_all("ms => ms.map(m => [m.getAttribute('aria-label'), m.value])")
            top = classes.locator("[data-testid=label-output-value]").inner_text()
        finally:
            browser.close()
    assert DFD in text and f"P(real) = {want['score_real']:.4f}" in text
    assert f"{want['faces'][0]['score_fake']:.4f}" in text and len(want["faces"]) == 1
    assert FAS in fas_text and f"P(live) = {want_fas['score_live']:.4f}" in fas_text and "P(real)" not in fas_text
    shown = dict(bars)
    assert len(bars) == 4 and set(shown) == set(UNIFIED_CLASSES)
    assert shown == pytest.approx(want4["scores"], abs=1e-6) and sum(shown.values()) == pytest.approx(1.0, abs=1e-5)
    assert top == want4["label"]
    assert hosts <= {"127.0.0.1", None}    # nothing fetched from the internet (None: data: URLs)
