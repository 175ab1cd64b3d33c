"""Claimed cells: any number of sweep workers, on one machine or many sharing a filesystem, run one output folder
without running a cell twice.

A cell's folder holds, besides its results:
- `claim.json`: who runs it now (host, pid, a random token, when it started, when the claim was last refreshed).
  A worker refreshes it every `expiry / 6` seconds while the cell runs; a claim not refreshed for `expiry`
  seconds belongs to a stopped worker (killed, or its node lost) and may be taken over. A claim made on this host
  by a process that is gone is taken over at once.
- `attempts.jsonl`: one line per start of the cell and one per end (`done`, `failed`, `discarded`), with host,
  pid, token and times: the cell's own record of how often it ran.
- `error.json`: the last failure's error and traceback, with the count of failed attempts.

Every read-modify-write of these files (claiming, refreshing, committing results, recording a failure) happens
under the folder's lock file (`filelock.FileLock`: an fcntl lock, released by the kernel when its holder dies, so a
killed worker never leaves it held). A worker writes its results only while the claim is still its own (checked
under the lock at write time); a worker that finds its claim taken over discards its results, so a cell's files
come from one run. On NFS, fcntl locks go through the NFS lock service (NFSv4, or NFSv3 with lockd), which cluster
filesystems provide; expiry compares the refresh time written by one host with the clock of another, so hosts'
clocks must agree to well within `expiry` (NTP does; the default expiry is 10 minutes).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import traceback
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock

from kvbench.files import write_atomically
from kvbench.settings import DEFAULT_CLAIM_EXPIRY as DEFAULT_EXPIRY

LOCK_TIMEOUT = 60.0  # a lock is held for milliseconds; a minute without it means a hung filesystem

CLAIM, ATTEMPTS, ERROR, RESULTS, LOCK = "claim.json", "attempts.jsonl", "error.json", "results.json", ".claim.lock"


@dataclass
class Claim:
    folder: Path
    token: str
    started: float
    lost: threading.Event = field(default_factory=threading.Event)  # set when another worker took the cell over


@dataclass(frozen=True)
class CellState:
    """What a folder says about its cell: `done`, `running` (claimed, refreshed within the expiry), `failed`
    (failed more often than the retries allow) or `pending` (never started, failed with retries left, or its
    claimant stopped refreshing)."""

    status: str
    claim: dict | None = None
    failures: int = 0
    error: dict | None = None


def host() -> str:
    """The name claims record for this machine: KVBENCH_HOST where it is set (containers on several nodes may share
    one hostname), else the hostname."""
    return os.environ.get("KVBENCH_HOST") or socket.gethostname()


def _me() -> dict:
    return {"host": host(), "pid": os.getpid()}


def _dead_here(claim: dict) -> bool:
    """A claim made on this host by a process that no longer runs (or is a zombie): no need to wait out its expiry.
    (A claim from another host can only expire: its process cannot be looked up from here.)"""
    if claim.get("host") != host():
        return False
    pid = int(claim["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _lock(folder: Path) -> FileLock:
    return FileLock(str(folder / LOCK), timeout=LOCK_TIMEOUT)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _append(folder: Path, record: dict) -> None:
    with open(folder / ATTEMPTS, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def attempts(folder: Path) -> list[dict]:
    """The cell's own records, oldest first (an empty list for a cell never started)."""
    try:
        lines = (folder / ATTEMPTS).read_text().splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in lines if line.strip()]


def state(folder: Path, retries: int, expiry: float = DEFAULT_EXPIRY, now: float | None = None) -> CellState:
    now = time.time() if now is None else now
    if (folder / RESULTS).is_file():
        return CellState("done")
    error = _read_json(folder / ERROR)
    failures = int(error["failures"]) if error else 0
    claim = _read_json(folder / CLAIM)
    if claim and now - float(claim["refreshed"]) < expiry and not _dead_here(claim):
        return CellState("running", claim, failures, error)
    if failures > retries:
        return CellState("failed", None, failures, error)
    return CellState("pending", None, failures, error)


def try_claim(folder: Path, retries: int, expiry: float = DEFAULT_EXPIRY) -> Claim | None:
    """Claim the cell if it is pending (atomically: under the folder's lock); None if it is done, running or
    failed. A claim whose owner stopped refreshing is taken over, and its takeover recorded."""
    folder.mkdir(parents=True, exist_ok=True)
    with _lock(folder):
        now = time.time()
        found = state(folder, retries, expiry, now)
        if found.status != "pending":
            return None
        stale = _read_json(folder / CLAIM)
        claim = Claim(folder, uuid.uuid4().hex, now)
        write_atomically(folder / CLAIM, json.dumps({**_me(), "token": claim.token, "started": now, "refreshed": now}))
        if stale:
            _append(folder, {"event": "expired", **{k: stale[k] for k in ("host", "pid", "token")}, "time": now})
        _append(folder, {"event": "start", **_me(), "token": claim.token, "time": now})
        return claim


def _ours(claim: Claim) -> bool:
    found = _read_json(claim.folder / CLAIM)
    return bool(found) and found.get("token") == claim.token


def refresh(claim: Claim) -> bool:
    """Mark the claim alive now; False (and `claim.lost` set) if another worker has taken the cell over."""
    with _lock(claim.folder):
        found = _read_json(claim.folder / CLAIM)
        if not found or found.get("token") != claim.token:
            claim.lost.set()
            return False
        write_atomically(claim.folder / CLAIM, json.dumps({**found, "refreshed": time.time()}))
        return True


@contextmanager
def kept_alive(claim: Claim, expiry: float = DEFAULT_EXPIRY):
    """Refresh the claim in a background thread while the body runs."""
    stop = threading.Event()

    def beat():
        while not stop.wait(expiry / 6):
            try:
                if not refresh(claim):
                    return
            except OSError:  # a filesystem hiccup: the next beat tries again, well inside the expiry
                continue

    thread = threading.Thread(target=beat, name=f"claim {claim.folder.name}", daemon=True)
    thread.start()
    try:
        yield claim
    finally:
        stop.set()
        thread.join()


def commit(claim: Claim, write, seconds: float) -> bool:
    """Under the lock: if the claim is still ours, `write()` the cell's files, release the claim and record the
    run; else record that our results were discarded (the cell belongs to the worker that took it over)."""
    with _lock(claim.folder):
        if not _ours(claim):
            claim.lost.set()
            _append(claim.folder, {"event": "discarded", **_me(), "token": claim.token, "time": time.time()})
            return False
        write()
        _append(claim.folder, {"event": "done", **_me(), "token": claim.token, "time": time.time(), "seconds": seconds})
        (claim.folder / CLAIM).unlink(missing_ok=True)
        return True


def record_failure(claim: Claim, error: BaseException) -> int:
    """Record the failure (error and traceback) and release the claim; the count of failed attempts so far."""
    with _lock(claim.folder):
        if not _ours(claim):
            return 0
        previous = _read_json(claim.folder / ERROR)
        failures = (int(previous["failures"]) if previous else 0) + 1
        record = {
            "failures": failures,
            "error": f"{type(error).__name__}: {error}",
            "traceback": "".join(traceback.format_exception(error)),
            **_me(),
            "time": time.time(),
        }
        write_atomically(claim.folder / ERROR, json.dumps(record, indent=1))
        _append(claim.folder, {"event": "failed", **_me(), "token": claim.token, "time": time.time()})
        (claim.folder / CLAIM).unlink(missing_ok=True)
        return failures


def release(claim: Claim) -> None:
    """Give the cell back unfinished (an interrupted worker): pending again at once, not after the expiry."""
    with _lock(claim.folder):
        if _ours(claim):
            (claim.folder / CLAIM).unlink(missing_ok=True)
            _append(claim.folder, {"event": "released", **_me(), "token": claim.token, "time": time.time()})
