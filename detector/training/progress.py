"""Training progress that reads well where it is read.

On a terminal an epoch is a ``tqdm`` bar redrawn in place. Anywhere else (CI, ``docker logs``,
``detector train > log``) redrawing means thousands of carriage-return updates in one line, so
progress becomes log lines instead: one every ``interval_s`` seconds while an epoch runs (with
the step count) and one when it ends (with its summary). Which one is decided by the stream the
bar would write to (``sys.stderr`` by default): :func:`is_terminal`.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import TextIO

from tqdm import tqdm

from detector.core.console import is_terminal

logger = logging.getLogger(__name__)

LOG_INTERVAL_S = 30.0
"""Seconds between two progress lines within an epoch when the output is not a terminal."""


class EpochProgress:
    """Progress of one loop of ``total`` steps: a bar on a terminal, log lines elsewhere.

    Args:
        desc: what runs, e.g. ``"epoch 3/30"``; starts every line and labels the bar.
        total: steps in the loop.
        enabled: ``False`` shows nothing (e.g. on the processes other than rank 0).
        stream: where the bar goes and whose ``isatty()`` decides; ``None``: ``sys.stderr``.
        interval_s: seconds between two progress lines when ``stream`` is not a terminal.
        clock: monotonic seconds (replaceable in tests).
    """

    def __init__(
        self,
        desc: str,
        total: int,
        enabled: bool = True,
        stream: TextIO | None = None,
        interval_s: float = LOG_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.desc = desc
        self.total = total
        self.enabled = enabled
        self.stream = sys.stderr if stream is None else stream
        self.interval_s = interval_s
        self.clock = clock
        self.steps = 0
        self.interactive = enabled and is_terminal(self.stream)
        self._last_line = clock()
        self._bar: tqdm | None = None
        if self.interactive:
            self._bar = tqdm(
                total=total, desc=desc, file=self.stream, dynamic_ncols=True, leave=True
            )

    def update(self, status: Callable[[], str]) -> None:
        """One step done; ``status()`` (losses, lr, speed...) is called only when shown."""
        self.steps += 1
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.set_postfix_str(status(), refresh=False)
            self._bar.update(1)
            return
        now = self.clock()
        if now - self._last_line >= self.interval_s and self.steps < self.total:
            logger.info("%s step %d/%d: %s", self.desc, self.steps, self.total, status())
            self._last_line = now

    def close(self, summary: str) -> None:
        """The loop is over: close the bar, or log ``summary`` as the loop's one closing line."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.enabled:
            logger.info("%s: %s", self.desc, summary)
