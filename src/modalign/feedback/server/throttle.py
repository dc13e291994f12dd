"""Login throttling: after `max_failures` wrong tokens from one client within `window` seconds,
that client's logins get 429 until the oldest failure leaves the window."""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from typing import Callable

from modalign.feedback.server.errors import TooManyRequests

MAX_FAILURES, WINDOW_SECONDS = 10, 60.0


class LoginThrottle:
    def __init__(self, max_failures: int = MAX_FAILURES, window: float = WINDOW_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_failures, self.window, self.clock = max_failures, window, clock
        self._failures: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def check(self, client: str) -> None:
        """Raise 429 (naming the wait) if `client` has used up its failures."""
        with self._lock:
            failures = self._recent(client)
            if len(failures) >= self.max_failures:
                wait = int(failures[0] + self.window - self.clock()) + 1
                raise TooManyRequests(f"too many wrong tokens from this address: try again in {wait} s", field="token")

    def failed(self, client: str) -> None:
        with self._lock:
            self._recent(client).append(self.clock())

    def _recent(self, client: str) -> deque[float]:
        failures = self._failures[client]
        while failures and failures[0] <= self.clock() - self.window:
            failures.popleft()
        return failures
