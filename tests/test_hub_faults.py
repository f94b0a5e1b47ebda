"""A broken hub cache or a failing hub never leaves the user stuck: a truncated cached blob is refused (exit 2,
nothing placed, the fix named) and ``--force`` fetches it again; HTTP 404 / 500 are named; an endpoint that
never answers is given up on in bounded time; the retries print one line. The hub is a local HTTP stand-in
(no internet) speaking the resolve protocol huggingface_hub uses (HEAD with X-Repo-Commit and ETag, then GET)."""
from __future__ import annotations

import hashlib
import http.server
import logging
import threading
import time
from pathlib import Path

import pytest

from fsvfm import hub
from fsvfm.util.checkpoint import CheckpointError, load_checkpoint
from tests.helpers import COMMIT, PRE

CKPT = f"{PRE}/checkpoint-599.pth"


def _truncate_blob(cache_root: Path, rel: str, keep: int = 100) -> Path:
    blob = (cache_root / "models--Wolowolo--fsfm-3c/snapshots" / COMMIT / rel).resolve()
    blob.write_bytes(blob.read_bytes()[:keep])
    return blob


def test_truncated_cached_blob_is_refused_and_nothing_is_placed(cache, tmp_path, capsys):
    blob = _truncate_blob(cache, CKPT)
    dest = tmp_path / "checkpoint"
    assert hub.main(["download", "FS-VFM_ViT-S_VF2_600e", "--dir", str(dest)]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line == (f"python -m fsvfm.hub: error: the hub cache holds a damaged copy of '{CKPT}' (100 bytes whose "
                    f"sha256 {hashlib.sha256(blob.read_bytes()).hexdigest()[:12]}... is not the hub's "
                    f"{blob.name[:12]}...; an interrupted download or a full disk?): run `python -m fsvfm.hub "
                    f"download FS-VFM_ViT-S_VF2_600e --force` to fetch it again (or delete {blob})")
    assert not dest.exists()  # the statistics file is not placed either: all are checked first
    with pytest.raises(CheckpointError, match=rf"damaged copy of '{CKPT}' .* `python -m fsvfm.hub download {CKPT} "
                                              r"--force` to fetch it again"):
        load_checkpoint(f"hf://Wolowolo/fsfm-3c/{CKPT}")


class _Hub(http.server.BaseHTTPRequestHandler):
    """``/{repo}/resolve/{revision}/{path}``: files of ``self.server.files``; ``self.server.mode`` makes it fail."""

    def log_message(self, *args):
        pass

    def _answer(self, body: bool) -> None:
        mode = self.server.mode
        if mode == "hang":
            threading.Event().wait(30)  # not time.sleep: the fixture makes retries not sleep
            return
        if mode in (404, 500):
            self.send_response(mode)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        rel = self.path.split("/resolve/", 1)[1].split("/", 1)[1]
        data = self.server.files.get(rel)
        if data is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("X-Linked-Etag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("X-Linked-Size", str(len(data)))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_HEAD(self):  # noqa: N802 - http.server's name
        self._answer(False)

    def do_GET(self):  # noqa: N802
        self._answer(True)


@pytest.fixture
def stand_in(cache, released, monkeypatch):
    """The cache fixture's hub cache, online, against a local stand-in hub; retries do not sleep."""
    from huggingface_hub import constants
    from huggingface_hub.utils import _http
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    server.daemon_threads = True
    server.files, server.mode = dict(released), "ok"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(_http.time, "sleep", lambda s: None)
    yield server
    server.shutdown()
    server.server_close()


def test_force_downloads_a_damaged_cache_again(stand_in, cache, released, tmp_path, capsys):
    _truncate_blob(cache, CKPT)
    dest = tmp_path / "checkpoint"
    assert hub.main(["download", CKPT, "--dir", str(dest)]) == 2   # online too: the cache is checked
    assert "--force" in capsys.readouterr().err
    assert hub.main(["download", CKPT, "--dir", str(dest), "--force"]) == 0
    assert (dest / CKPT).read_bytes() == released[CKPT]
    assert load_checkpoint(dest / CKPT)["epoch"] == 1


@pytest.mark.parametrize("mode,expected", [
    (500, "'pretrained_models/nope.pth' of the Hugging Face repository Wolowolo/fsfm-3c: the hub at {endpoint} "
          "answered HTTP 500 (a server fault; try again later) and the file is not in the hub cache"),
    (404, "'pretrained_models/nope.pth' of the Hugging Face repository Wolowolo/fsfm-3c does not exist: HTTP 404 "
          "from {endpoint}; `python -m fsvfm.hub list` shows the released files"),
    ("ok", "'pretrained_models/nope.pth' of the Hugging Face repository Wolowolo/fsfm-3c does not exist: HTTP 404"),
])
def test_http_errors_are_named_with_one_retry_line(stand_in, mode, expected, caplog):
    stand_in.mode = mode
    endpoint = f"http://127.0.0.1:{stand_in.server_address[1]}"
    with caplog.at_level(logging.WARNING), pytest.raises(hub.HubError) as e:
        hub.hub_file("pretrained_models/nope.pth")
    assert str(e.value).startswith(expected.format(endpoint=endpoint)), str(e.value)
    retry_lines = [r for r in caplog.records if r.name.startswith("huggingface_hub")]
    assert len(retry_lines) <= 1, [r.getMessage() for r in retry_lines]


@pytest.mark.slow
def test_a_hanging_endpoint_is_given_up_in_bounded_time(stand_in, monkeypatch):
    from huggingface_hub import constants, file_download
    stand_in.mode = "hang"
    monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 1)
    start = time.monotonic()
    with pytest.raises(hub.HubError, match=r"did not answer within 1 s "
                                           r"\(HF_HUB_ETAG_TIMEOUT\)"):
        hub.hub_file("pretrained_models/nope.pth")
    assert time.monotonic() - start < 20     # 1 s, then 6 tries of 1 s (default 10 s + 6 x 5 s + waits)
    assert file_download._ETAG_RETRY_TIMEOUT == 60   # restored


def test_release_names_get_a_closest_match(capsys):
    assert hub.main(["download", "FS-VFM_ViT-B_VF2_600", "--dir", "unused"]) == 2
    assert "unknown release 'FS-VFM_ViT-B_VF2_600' (did you mean FS-VFM_ViT-B_VF2_600e?)" in capsys.readouterr().err
