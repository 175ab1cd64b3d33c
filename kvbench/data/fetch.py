"""`kvbench data fetch`: HELMET's released data and the ICL datasets, for machines that are online.

Downloads resume where they stopped (HTTP Range on a `.part` file), show a progress bar, and are
checked against a SHA-256 when one is known; the digest of what was downloaded is always written next
to it (`<file>.sha256`) so a later run, or another machine, can check against it.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
import urllib.request
from pathlib import Path

HELMET_URL = "https://huggingface.co/datasets/princeton-nlp/HELMET/resolve/main/data.tar.gz"
HELMET_SHA256 = None  # not published; pass --sha256 to pin it (the digest is printed and saved after download)
# HELMET loads these from the Hub: (dataset, config, text field, label field, test split or None to split train).
ICL_SOURCES = {
    "trec_coarse": ("CogComp/trec", None, "text", "coarse_label", "test"),
    "trec_fine": ("CogComp/trec", None, "text", "fine_label", "test"),
    "banking77": ("PolyAI/banking77", None, "text", "label", "test"),
    "clinc150": ("clinc_oos", "plus", "text", "intent", "validation"),
    "nlu": ("xingkunliuxtracta/nlu_evaluation_data", None, "text", "label", None),
}
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
            f"checksum mismatch for {url}: expected sha256 {sha256}, got {digest}; the partial download was "
            f"removed, run the command again to download from scratch"
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

        self.progress = Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                                 TransferSpeedColumn())
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


def fetch_icl(dest: Path, seed: int = 42) -> None:
    """Write icl/<name>/{train,test}.jsonl (fields text, label) from the Hub datasets HELMET uses."""
    import datasets

    for name, (path, config, text, label, test_split) in ICL_SOURCES.items():
        data = datasets.load_dataset(path, config)
        if test_split is None:  # NLU has one split; HELMET holds out 10% with its seed
            data = data["train"].train_test_split(test_size=0.1, seed=seed)
            test_split = "test"
        folder = dest / "data" / "icl" / name
        folder.mkdir(parents=True, exist_ok=True)
        for split, out in (("train", "train"), (test_split, "test")):
            with open(folder / f"{out}.jsonl", "w", encoding="utf-8") as f:
                for row in data[split]:
                    f.write(json.dumps({"text": row[text], "label": int(row[label])}) + "\n")
