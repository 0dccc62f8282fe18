"""The life of uploaded files: who still needs a cached upload, and how many bytes a client may upload a minute."""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from pipelines.access import SlidingWindows


# Gradio's cache cleaner removes files older than this anyway; a claim nobody used by then is moot.
CLAIM_TTL_S = 900.0


@dataclass
class _Entry:
    """Who needs one cached upload: uploads not yet used by a request, and current holders."""

    claims: deque = field(default_factory=deque)  # monotonic times of uploads not yet taken by a holder
    holders: set = field(default_factory=set)
    touched: float = 0.0


class UploadRefs:
    """Reference counts of Gradio's cached upload paths, so a file goes only when its last user is done.

    Gradio stores identical bytes under one path. Every upload of a path is a claim on it until a request
    takes it (acquire); a holder is an API request in flight or a UI session. A path is deleted when it has
    no holder and no live claim, and never while an upload is in flight (it may be writing that same path).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, claim_ttl: float = CLAIM_TTL_S,
                 unlink: Callable[[str], None] | None = None):
        self.clock = clock
        self.claim_ttl = claim_ttl
        self._unlink = unlink or _remove
        self._entries: dict[str, _Entry] = defaultdict(_Entry)
        self._held_by: dict[str, set[str]] = defaultdict(set)  # holder -> paths
        self._uploading = 0
        self._pending: set[str] = set()  # paths to delete once no upload is in flight
        self._swept = clock()
        self._lock = threading.Lock()

    def upload_started(self) -> None:
        """An upload request began; deletions wait until it has said which paths it wrote."""
        with self._lock:
            self._uploading += 1

    def upload_finished(self, paths: Iterable[str]) -> None:
        """An upload request ended, having written these paths (each one claim)."""
        now = self.clock()
        with self._lock:
            for path in paths:
                entry = self._entries[str(path)]
                entry.claims.append(now)
                entry.touched = now
            self._uploading = max(0, self._uploading - 1)
            if not self._uploading:
                self._delete_pending()
            due = now - self._swept > 60
        if due:  # unused claims expire: keep the table as small as the uploads of the last TTL
            self._swept = now
            self.sweep()

    def acquire(self, path: str, holder: str) -> None:
        """A holder starts using a path; its first hold takes one upload's claim."""
        now = self.clock()
        with self._lock:
            entry = self._entries[path]
            entry.touched = now
            if holder in entry.holders:
                return
            entry.holders.add(holder)
            self._held_by[holder].add(path)
            self._expire(entry, now)
            if entry.claims:
                entry.claims.popleft()

    def release(self, path: str, holder: str) -> bool:
        """A holder is done with a path; True if the file was deleted (or will be, once uploads end)."""
        with self._lock:
            paths = self._held_by.get(holder)
            if paths is not None:
                paths.discard(path)
                if not paths:
                    del self._held_by[holder]
            entry = self._entries.get(path)
            if entry is not None:
                entry.holders.discard(holder)
            return self._maybe_delete(path)

    def release_all(self, holder: str) -> int:
        """A holder (a session) is done with every path it held; returns how many files go."""
        with self._lock:
            paths = self._held_by.pop(holder, set())
            gone = 0
            for path in paths:
                entry = self._entries.get(path)
                if entry is not None:
                    entry.holders.discard(holder)
                gone += self._maybe_delete(path)
            return gone

    def held(self, path: str) -> bool:
        """Whether anyone holds or has a live claim on a path."""
        with self._lock:
            entry = self._entries.get(path)
            if entry is None:
                return False
            self._expire(entry, self.clock())
            return bool(entry.holders or entry.claims)

    def sweep(self) -> int:
        """Forget claims older than the TTL and delete paths nobody needs any more; returns how many went."""
        now = self.clock()
        with self._lock:
            gone = 0
            for path in list(self._entries):
                entry = self._entries[path]
                self._expire(entry, now)
                if not entry.holders and not entry.claims:
                    gone += self._maybe_delete(path)
                elif now - entry.touched > self.claim_ttl and not entry.claims:
                    # held by a session long idle: Gradio's cleaner owns the file now; keep the table small
                    for holder in entry.holders:
                        paths = self._held_by.get(holder)
                        if paths is not None:
                            paths.discard(path)
                            if not paths:
                                del self._held_by[holder]
                    del self._entries[path]
            return gone

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def _expire(self, entry: _Entry, now: float) -> None:
        while entry.claims and now - entry.claims[0] > self.claim_ttl:
            entry.claims.popleft()

    def _maybe_delete(self, path: str) -> bool:
        entry = self._entries.get(path)
        if entry is not None:
            self._expire(entry, self.clock())
            if entry.holders or entry.claims:
                return False
            del self._entries[path]
        if self._uploading:
            self._pending.add(path)  # an upload in flight may be renaming these very bytes into place
            return True
        return self._unlink(path) is not False

    def _delete_pending(self) -> None:
        for path in list(self._pending):
            self._pending.discard(path)
            entry = self._entries.get(path)
            if entry is None or not (entry.holders or entry.claims):
                self._entries.pop(path, None)
                self._unlink(path)


def _remove(path: str) -> bool:
    """Delete a cached upload and its folder (named by the bytes' sha256) once empty; False if it was gone."""
    target = Path(path)
    try:
        target.unlink()
        gone = True
    except FileNotFoundError:
        gone = False
    if len(target.parent.name) == 64:  # Gradio's folder named by the sha256 of the bytes, never the cache root
        try:
            target.parent.rmdir()  # only if empty: the same bytes under another name stay
        except OSError:
            pass
    return gone


class UploadBudget:
    """At most `max_bytes` of uploads from one client in any 60 s; 0 means no budget."""

    def __init__(self, max_bytes: int, clock: Callable[[], float] = time.monotonic, max_clients: int = 100_000):
        self.max_bytes = max_bytes
        self._windows = SlidingWindows(clock, max_clients)

    def take(self, client: str, size: int) -> float:
        """Spend `size` bytes of a client's budget; 0 if granted, else the seconds until it could be."""
        if self.max_bytes <= 0 or size <= 0:
            return 0.0
        now = self._windows.clock()
        with self._windows.lock:
            window = self._windows.window(client, now)
            used = sum(n for _, n in window)
            if used + size <= self.max_bytes:
                window.append((now, size))
                return 0.0
            if size > self.max_bytes:
                return 60.0
            # the time until enough of the oldest spending leaves the window
            freed = used + size - self.max_bytes
            for stamp, n in window:
                freed -= n
                if freed <= 0:
                    return max(1.0, round(60 - (now - stamp), 1))
            return 60.0

