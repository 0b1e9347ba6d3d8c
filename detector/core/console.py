"""Whether output goes to a terminal someone watches (torch-free): progress that redraws in
place on a terminal becomes plain log lines everywhere else (CI, ``docker logs``, a file)."""

from __future__ import annotations

import os


def is_terminal(stream: object) -> bool:
    """Whether ``stream`` is an interactive terminal someone watches.

    False for files, pipes and closed streams, and for a terminal of no size (0 columns or 0
    rows, where a bar draws nothing): the pseudo terminal of a detached ``docker run -t`` (what
    ``docker logs`` shows) or of ``script``.
    """
    isatty, fileno = getattr(stream, "isatty", None), getattr(stream, "fileno", None)
    try:
        if isatty is None or not isatty():
            return False
    except (ValueError, OSError):  # closed
        return False
    if fileno is None:
        return True  # a terminal without a descriptor to measure
    try:
        size = os.get_terminal_size(fileno())
    except (ValueError, OSError):  # e.g. io.UnsupportedOperation
        return True
    return size.columns > 0 and size.lines > 0
