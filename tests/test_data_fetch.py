"""`kvbench data fetch`'s download logic against a local HTTP server: resume with Range, checksum, unpack."""

import hashlib
import io
import re
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kvbench.cli import main
from kvbench.data import fetch

PAYLOAD = bytes(range(256)) * 4096 + b"tail"  # ~1 MiB and a bit, not a multiple of the chunk size


class Handler(BaseHTTPRequestHandler):
    honour_range = True
    ranges: list = []

    def do_GET(self):
        body = self.server.body
        header = self.headers.get("Range")
        type(self).ranges.append(header)
        match = re.fullmatch(r"bytes=(\d+)-", header or "")
        if match and self.honour_range:
            start = int(match[1])
            if start >= len(body):
                self.send_response(416)
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            body = body[start:]
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    Handler.ranges = []
    Handler.honour_range = True
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.body = PAYLOAD
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd, f"http://127.0.0.1:{httpd.server_address[1]}/data.tar.gz"
    httpd.shutdown()
    httpd.server_close()


def test_download_resumes_a_partial_file_with_range(server, tmp_path):
    _, url = server
    dest = tmp_path / "data.tar.gz"
    (tmp_path / "data.tar.gz.part").write_bytes(PAYLOAD[:300_000])  # an interrupted earlier run
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    fetch.download(url, dest, sha256=digest, progress=False)
    assert Handler.ranges == ["bytes=300000-"]
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "data.tar.gz.part").exists()
    assert (tmp_path / "data.tar.gz.sha256").read_text().split()[0] == digest
    fetch.download(url, dest, sha256=digest, progress=False)  # already there and valid: no request
    assert Handler.ranges == ["bytes=300000-"]


def test_download_starts_over_when_the_server_ignores_range(server, tmp_path):
    _, url = server
    Handler.honour_range = False
    (tmp_path / "f.part").write_bytes(b"garbage that must not be kept")
    fetch.download(url, tmp_path / "f", progress=False)
    assert (tmp_path / "f").read_bytes() == PAYLOAD


def test_a_complete_partial_file_is_accepted_on_416(server, tmp_path):
    _, url = server
    (tmp_path / "f.part").write_bytes(PAYLOAD)
    fetch.download(url, tmp_path / "f", sha256=hashlib.sha256(PAYLOAD).hexdigest(), progress=False)
    assert (tmp_path / "f").read_bytes() == PAYLOAD


def test_checksum_mismatch_is_an_error_and_drops_the_partial_file(server, tmp_path):
    _, url = server
    (tmp_path / "f.part").write_bytes(b"X" * 1000)  # corrupt prefix: resuming yields a wrong file
    with pytest.raises(ValueError, match="checksum mismatch.*run the command again"):
        fetch.download(url, tmp_path / "f", sha256=hashlib.sha256(PAYLOAD).hexdigest(), progress=False)
    assert not (tmp_path / "f.part").exists() and not (tmp_path / "f").exists()


def test_cli_fetch_unpacks_helmet_layout(server, tmp_path, capsys):
    httpd, url = server
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        content = b'{"question": "q"}\n'
        info = tarfile.TarInfo("data/kilt/nq-dev-multikilt_1000_k20_dep6.jsonl")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    httpd.body = buffer.getvalue()
    assert main(["data", "fetch", "helmet", "--dest", str(tmp_path), "--url", url,
                 "--sha256", hashlib.sha256(httpd.body).hexdigest()]) == 0
    assert (tmp_path / "data/kilt/nq-dev-multikilt_1000_k20_dep6.jsonl").read_bytes() == content
    assert not (tmp_path / "data.tar.gz").exists()
    assert "data_dir" in capsys.readouterr().out
    assert main(["data", "fetch", "helmet", "--dest", str(tmp_path / "x"), "--url", url, "--sha256", "0" * 64]) == 2
