"""`speedrun data fetch` against a local server speaking the hub's resolve endpoints (127.0.0.1 only).

The server answers like huggingface.co does for LFS files: `HEAD/GET /datasets/<repo>/resolve/<rev>/<file>`
redirects (302) to a CDN host with `X-Repo-Commit`, `X-Linked-Etag` (the content's sha256), `X-Linked-Size`
and `ETag`; the "CDN" is the same server under the name `localhost` (a different origin, so the client stops
at the redirect for metadata, as it does with the real CDN). Missing files get a 404 with
`X-Error-Code: EntryNotFound`.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import socket
import threading
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import synthetic

from speedrun import cli
from speedrun.data import streams
from speedrun.data import fetch
from speedrun import tracks
from speedrun.errors import SpeedrunError

REPO = "someone/fw"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def shard_bytes(tokens) -> bytes:
    header = np.zeros(256, dtype="<i4")
    header[:3] = (20240520, 1, len(tokens))
    return header.tobytes() + np.asarray(tokens, dtype="<u2").tobytes()


class Hub:
    """Files served, plus knobs to make the server lie or fail, and a log of requests."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.lie_sha: set[str] = set()     # report a wrong sha256
        self.short: set[str] = set()       # send fewer bytes than announced
        self.requests: list[tuple[str, str]] = []


def make_handler(hub: Hub):
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _resolve(self, body: bool):
            host = self.headers.get("Host", "")
            prefix = f"/datasets/{REPO}/resolve/"
            hub.requests.append((self.command, self.path))
            if self.path.startswith("/cdn/"):
                return self._cdn(self.path[len("/cdn/"):], body)
            if not self.path.startswith(prefix):
                self.send_response(404)
                self.send_header("X-Error-Code", "RepoNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            name = self.path[len(prefix):].split("/", 1)[1]
            if name not in hub.files:
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("X-Error-Message", "Entry not found")
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            content = hub.files[name]
            sha = hashlib.sha256(content).hexdigest() if name not in hub.lie_sha else "f" * 64
            port = host.rsplit(":", 1)[1]
            self.send_response(302)
            self.send_header("Location", f"http://localhost:{port}/cdn/{name}")
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("X-Linked-Etag", f'"{sha}"')
            self.send_header("X-Linked-Size", str(len(content)))
            self.send_header("ETag", '"gitblobid"')
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _cdn(self, name: str, body: bool):
            content = hub.files[name]
            if name in hub.short:
                content = content[: len(content) // 2]
            self.send_response(200)
            self.send_header("Content-Length", str(len(content)))
            self.send_header("ETag", f'"{hashlib.sha256(content).hexdigest()}"')
            self.end_headers()
            if body:
                self.wfile.write(content)

        def do_HEAD(self):
            self._resolve(body=False)

        def do_GET(self):
            self._resolve(body=True)

    return Handler


@pytest.fixture
def hub():
    state = Hub()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    rng = np.random.default_rng(0)
    state.tokens = {}
    for name in ["fw_val_000000.bin"] + [f"fw_train_{i:06d}.bin" for i in (1, 2, 3)]:
        tokens = rng.integers(0, 50257, 5000)
        state.tokens[name] = tokens
        state.files[name] = shard_bytes(tokens)
    yield state
    server.shutdown()
    server.server_close()


def hub_track(tmp_path: Path, pins: dict[str, str] | None = None) -> tracks.Track:
    return synthetic.hub_track(tmp_path, pins, repo=REPO)


def run_cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = cli.main(list(args))
    return rc, out.getvalue(), err.getvalue()


def test_fetch_downloads_verifies_and_skips_present_files(hub, tmp_path):
    track = hub_track(tmp_path)
    root = tmp_path / "data"
    infos = fetch.fetch(track, 2, data_dir=root, endpoint=hub.endpoint)
    assert [i.path.name for i in infos] == ["fw_val_000000.bin", "fw_train_000001.bin", "fw_train_000002.bin"]
    for info in infos:
        assert info.sha256 == hashlib.sha256(hub.files[info.path.name]).hexdigest()
        np.testing.assert_array_equal(streams.read_shard(info.path), hub.tokens[info.path.name])
    assert not (root / "fw" / "fw_train_000003.bin").exists()
    train, val = streams.track_files(track, root)
    assert len(train) == 2 and val[0].name == "fw_val_000000.bin"

    hub.requests.clear()
    fetch.fetch(track, 2, data_dir=root, endpoint=hub.endpoint)
    assert hub.requests == []  # present and valid: nothing downloaded, not even asked


def test_cli_fetch_then_verify(hub, tmp_path):
    track = hub_track(tmp_path)
    rc, out, err = run_cli("data", "fetch", str(track.path), "--train-shards", "1", "--data-dir",
                           str(tmp_path / "data"), "--endpoint", hub.endpoint)
    assert rc == 0, err
    assert "2 file(s) ready, 10,000 tokens" in out
    rc, out, err = run_cli("data", "verify", "--track", str(track.path), "--data-dir", str(tmp_path / "data"))
    assert rc == 0, err
    assert hashlib.sha256(hub.files["fw_train_000001.bin"]).hexdigest() in out


def test_pinned_sha_mismatch_removes_the_file(hub, tmp_path):
    track = hub_track(tmp_path, {"fw_train_000001.bin": "0" * 64})
    with pytest.raises(SpeedrunError, match=r"fw_train_000001.bin: corrupt download, removed: .*track's pin"):
        fetch.fetch(track, 1, data_dir=tmp_path / "data", endpoint=hub.endpoint)
    assert not (tmp_path / "data" / "fw" / "fw_train_000001.bin").exists()
    assert (tmp_path / "data" / "fw" / "fw_val_000000.bin").exists()


def test_hub_sha_mismatch_removes_the_file(hub, tmp_path):
    hub.lie_sha.add("fw_val_000000.bin")
    with pytest.raises(SpeedrunError, match="hub's sha256"):
        fetch.fetch(hub_track(tmp_path), 0, data_dir=tmp_path / "data", endpoint=hub.endpoint)
    assert not (tmp_path / "data" / "fw" / "fw_val_000000.bin").exists()


def test_corrupt_shard_content_is_rejected(hub, tmp_path):
    hub.files["fw_val_000000.bin"] = b"\x00" * 4096  # consistent sha256, but not a shard
    with pytest.raises(SpeedrunError, match="corrupt download.*magic"):
        fetch.fetch(hub_track(tmp_path), 0, data_dir=tmp_path / "data", endpoint=hub.endpoint)
    assert not (tmp_path / "data" / "fw" / "fw_val_000000.bin").exists()


def test_short_download_leaves_nothing(hub, tmp_path):
    hub.short.add("fw_val_000000.bin")
    with pytest.raises(SpeedrunError, match="fw_val_000000.bin: download from .* failed"):
        fetch.fetch(hub_track(tmp_path), 0, data_dir=tmp_path / "data", endpoint=hub.endpoint)
    folder = tmp_path / "data" / "fw"
    assert not (folder / "fw_val_000000.bin").exists()
    assert not [p for p in folder.rglob("*") if p.is_file() and p.suffix in (".bin", ".incomplete")]


def test_missing_file_on_the_hub_is_one_line(hub, tmp_path):
    del hub.files["fw_train_000002.bin"]
    rc, out, err = run_cli("data", "fetch", str(hub_track(tmp_path).path), "--train-shards", "2",
                           "--data-dir", str(tmp_path / "data"), "--endpoint", hub.endpoint)
    assert rc == 1
    assert err.strip().splitlines() == [
        f"speedrun: error: fw_train_000002.bin: not found in {REPO} on {hub.endpoint}"]


def test_unreachable_endpoint_is_one_line(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once we leave: nothing listens there
    rc, out, err = run_cli("data", "fetch", str(hub_track(tmp_path).path), "--train-shards", "0",
                           "--data-dir", str(tmp_path / "data"), "--endpoint", f"http://127.0.0.1:{port}")
    assert rc == 1 and len(err.strip().splitlines()) == 1
    assert "fw_val_000000.bin: download from" in err
    assert not (tmp_path / "data" / "fw" / "fw_val_000000.bin").exists()


def test_invalid_local_copy_is_downloaded_again(hub, tmp_path):
    folder = tmp_path / "data" / "fw"
    folder.mkdir(parents=True)
    (folder / "fw_val_000000.bin").write_bytes(b"garbage")
    info = fetch.fetch(hub_track(tmp_path), 0, data_dir=tmp_path / "data", endpoint=hub.endpoint)[0]
    assert info.sha256 == hashlib.sha256(hub.files["fw_val_000000.bin"]).hexdigest()


def test_train_shard_count_is_checked(hub, tmp_path):
    with pytest.raises(SpeedrunError, match="between 0 and 3"):
        fetch.fetch(hub_track(tmp_path), 4, data_dir=tmp_path / "data", endpoint=hub.endpoint)
