"""`kvbench data fetch`'s download logic against a local HTTP server: resume with Range, checksum, unpack; the ICL
sets built from stand-ins of their raw source files."""

import hashlib
import io
import json
import re
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

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
    assert (
        main(
            [
                "data",
                "fetch",
                "helmet",
                "--dest",
                str(tmp_path),
                "--url",
                url,
                "--sha256",
                hashlib.sha256(httpd.body).hexdigest(),
            ]
        )
        == 0
    )
    assert (tmp_path / "data/kilt/nq-dev-multikilt_1000_k20_dep6.jsonl").read_bytes() == content
    assert not (tmp_path / "data.tar.gz").exists()
    assert "data_dir" in capsys.readouterr().out
    assert main(["data", "fetch", "helmet", "--dest", str(tmp_path / "x"), "--url", url, "--sha256", "0" * 64]) == 2


# ---- ICL: the raw files behind HELMET's Hub datasets, parsed as their loading scripts did ----

STANDINS = Path(__file__).parent / "data" / "icl_standins"  # small files in each source's raw format


class Folder(BaseHTTPRequestHandler):
    """Serves tests/data/icl_standins as <source>/<file name>; counts requests."""

    requests: list = []

    def do_GET(self):
        type(self).requests.append(self.path)
        path = STANDINS / self.path.lstrip("/")
        if not path.is_file():
            self.send_response(404)
            self.end_headers()
            return
        body = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def mirror():
    Folder.requests = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Folder)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def standin_sources(base: str) -> dict:
    """The pinned sources' layout, served from the mirror, with the stand-ins' own digests."""
    from kvbench.data.icl_sources import SOURCES

    out = {}
    for source, entries in SOURCES.items():
        out[source] = {}
        for key, (url, _) in entries.items():
            name = url.rsplit("/", 1)[-1]
            out[source][key] = (
                f"{base}/{source}/{name}",
                hashlib.sha256((STANDINS / source / name).read_bytes()).hexdigest(),
            )
    return out


def jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_icl_sets_are_built_from_the_raw_sources_as_their_scripts_read_them(mirror, tmp_path):
    icl = fetch.fetch_icl(tmp_path, sources=standin_sources(mirror), progress=False)
    assert sorted(p.name for p in icl.iterdir()) == ["banking77", "clinc150", "nlu", "trec_coarse", "trec_fine"]
    # TREC: "FINE:label text" lines; a stray 0xF0 byte is a space, CRLF and trailing blanks are stripped
    assert jsonl(icl / "trec_coarse/train.jsonl")[:4] == [
        {"text": "How did serfdom develop in and then leave Russia ?", "label": 2},
        {"text": "What is the sister city of Los Angeles ?", "label": 4},
        {"text": "Who wrote `` Hamlet '' ?", "label": 3},
        {"text": "How many   spaces  are kept inside ?", "label": 5},
    ]
    assert [r["label"] for r in jsonl(icl / "trec_fine/train.jsonl")] == [26, 32, 29, 38, 1]
    assert [r["label"] for r in jsonl(icl / "trec_fine/test.jsonl")] == [40, 12]
    # banking77: quoted CSV, a space after the comma, labels by the script's list (not alphabetical)
    assert jsonl(icl / "banking77/train.jsonl")[1:] == [
        {"text": 'I ordered it, but it says "pending"', "label": 45},
        {"text": "Why was I refunded twice?", "label": 51},
        {"text": "Is this reverted?", "label": 53},
    ]
    assert jsonl(icl / "banking77/test.jsonl") == [{"text": "Café charged me twice", "label": 63}]
    # clinc150 "plus": in-scope then out-of-scope; HELMET's test split is the validation split
    assert [r["label"] for r in jsonl(icl / "clinc150/train.jsonl")] == [5, 150, 0, 42]
    assert jsonl(icl / "clinc150/test.jsonl") == [
        {"text": "set a timer", "label": 32},
        {"text": "who is the best nfl team", "label": 42},
        {"text": "tell me about kites", "label": 42},
    ]
    # NLU: "null" annotations dropped, slot markup removed, then HELMET's own 10% split with seed 42
    assert jsonl(icl / "nlu/test.jsonl") == [{"text": "email mom and  dad", "label": 17}]
    assert [r["text"] for r in jsonl(icl / "nlu/train.jsonl")] == [
        "who is bill gates; really",
        "[weird:no space] stays",
        "turn off the kitchen lights",
        "wake me up at five am this week",
    ]
    requests = len(Folder.requests)
    fetch.fetch_icl(tmp_path, sources=standin_sources(mirror), progress=False)  # again: nothing downloaded
    assert len(Folder.requests) == requests == 6


def test_an_icl_source_that_does_not_match_its_pinned_checksum_is_named(mirror, tmp_path, capsys):
    # The stand-ins are not the real files, so against the pinned digests the first one fails, by name.
    assert main(["data", "fetch", "icl", "--dest", str(tmp_path), "--icl-mirror", mirror]) == 2
    error = capsys.readouterr().err
    assert "checksum mismatch for train_5500.label" in error and "run the command again" in error
    assert not list((tmp_path / "downloads").rglob("train_5500.label*"))  # nothing corrupt left behind
