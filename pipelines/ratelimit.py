"""A per-client limit on requests a minute, as a sliding window."""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from typing import Callable


class RateLimiter:
    """At most `per_minute` requests from one client in any 60 s; 0 means no limit."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic, max_clients: int = 100_000):
        self.per_minute = per_minute
        self.clock = clock
        self.max_clients = max_clients
        self._seen: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def retry_after(self, client: str) -> float:
        """Record a request; 0 if it may go ahead, else the seconds until it could."""
        if self.per_minute <= 0:
            return 0.0
        now = self.clock()
        with self._lock:
            if len(self._seen) > self.max_clients:  # forget idle clients rather than grow without bound
                for key in [k for k, q in self._seen.items() if not q or now - q[-1] > 60]:
                    del self._seen[key]
            window = self._seen[client]
            while window and now - window[0] >= 60:
                window.popleft()
            if len(window) >= self.per_minute:
                return round(60 - (now - window[0]), 1)
            window.append(now)
            return 0.0
