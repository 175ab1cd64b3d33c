"""`kvbench data fetch`: HELMET's released data and the ICL datasets, for machines that are online.

Downloads resume where they stopped (HTTP Range on a `.part` file), show a progress bar, and are
checked against a SHA-256 when one is known (always for the ICL sources, kvbench.data.icl_sources); the
digest of what was downloaded is always written next to it (`<file>.sha256`) so a later run, or another
machine, can check against it. A file that does not match is named in the error and removed.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
import urllib.request
from pathlib import Path

HELMET_URL = "https://huggingface.co/datasets/princeton-nlp/HELMET/resolve/main/data.tar.gz"
# HELMET publishes no digest of its archive: pass --sha256 to pin one; the digest of what was downloaded is saved
# beside it, and every results file records the SHA-256 of each HELMET file a task read.
HELMET_SHA256 = None
CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: Path, sha256: str | None = None, progress: bool = True, timeout: float = 60) -> Path:
    """Download url to dest, resuming a previous partial download; verify sha256 when given."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists() and (sha256 is None or sha256_of(dest) == sha256):
        return dest
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code != 416:  # 416: nothing left to send, the partial file is complete
            raise
        response = None
    if response is not None:
        with response:
            resumed = response.status == 206
            if not resumed:
                start = 0  # the server ignored the Range header: start over
            length = response.headers.get("Content-Length")
            total = start + int(length) if length is not None else None
            with open(part, "ab" if resumed else "wb") as out, _bar(progress, dest.name, total, start) as advance:
                for block in iter(lambda: response.read(CHUNK), b""):
                    out.write(block)
                    advance(len(block))
    digest = sha256_of(part)
    if sha256 is not None and digest != sha256:
        part.unlink()
        raise ValueError(
            f"checksum mismatch for {dest.name} ({url}): expected sha256 {sha256}, got {digest}; the download was "
            f"removed, run the command again to download it from scratch"
        )
    part.replace(dest)
    dest.with_name(dest.name + ".sha256").write_text(f"{digest}  {dest.name}\n")
    return dest


class _bar:
    """A rich progress bar as a context manager yielding `advance(n)`; silent when progress is off."""

    def __init__(self, show: bool, name: str, total: int | None, done: int):
        self.show, self.name, self.total, self.done = show, name, total, done

    def __enter__(self):
        if not self.show:
            return lambda n: None
        from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

        self.progress = Progress(
            "[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn()
        )
        self.progress.start()
        task = self.progress.add_task(self.name, total=self.total, completed=self.done)
        return lambda n: self.progress.advance(task, n)

    def __exit__(self, *exc):
        if self.show:
            self.progress.stop()


def unpack(archive: Path, dest: Path) -> None:
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")  # "data": refuses absolute paths, links out of dest, devices


def fetch_helmet(dest: Path, url: str = HELMET_URL, sha256: str | None = HELMET_SHA256, keep: bool = False) -> Path:
    archive = download(url, dest / "data.tar.gz", sha256)
    unpack(archive, dest)
    if not keep:
        archive.unlink()
    return dest / "data"


def icl_mirror(base: str | None) -> dict | None:
    """The ICL sources with every file fetched from base/<source>/<file name>, their pinned digests kept."""
    from kvbench.data.icl_sources import SOURCES

    if not base:
        return None
    return {
        source: {
            key: (f"{base.rstrip('/')}/{source}/{url.rsplit('/', 1)[-1]}", sha256)
            for key, (url, sha256) in entries.items()
        }
        for source, entries in SOURCES.items()
    }


def fetch_icl(dest: Path, seed: int = 42, sources: dict | None = None, progress: bool = True) -> Path:
    """Write icl/<name>/{train,test}.jsonl (fields text, label) under dest/data: the rows HELMET's Hub datasets
    held, in their order, from the raw files their loading scripts read (checked against pinned SHA-256;
    `sources` replaces kvbench.data.icl_sources.SOURCES, for mirrors). Files already downloaded are not
    downloaded again, and a download cut short resumes."""
    from kvbench.data import icl_sources

    sources = sources or icl_sources.SOURCES
    files = {}
    for source, entries in sources.items():
        files[source] = {}
        for key, (url, sha256) in entries.items():
            target = dest / "downloads" / "icl" / source / url.rsplit("/", 1)[-1]
            files[source][key] = download(url, target, sha256, progress=progress)
    for name, splits in icl_sources.icl_splits(files, seed).items():
        folder = dest / "data" / "icl" / name
        folder.mkdir(parents=True, exist_ok=True)
        for split, rows in zip(("train", "test"), splits, strict=True):
            lines = "".join(json.dumps({"text": text, "label": label}) + "\n" for text, label in rows)
            part = folder / f"{split}.jsonl.part"
            part.write_text(lines, encoding="utf-8")
            part.replace(folder / f"{split}.jsonl")
    return dest / "data" / "icl"
