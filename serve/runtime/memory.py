"""Give memory freed by a closed model back to the operating system.

A model's weights, its runtime's arenas and the buffers of its batches come from glibc's
``malloc``, spread over the arenas of the threads that used them. When a version is closed
(hot swap, unload) that memory is freed but glibc keeps most of it in its arenas for later
``malloc`` calls, so the process's resident memory stays as high as with the model loaded.
``malloc_trim(0)`` returns the free pages of every arena (glibc 2.8 and later) to the system.
Elsewhere (musl, macOS) there is nothing to call and this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from functools import cache

logger = logging.getLogger(__name__)


@cache
def _malloc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        function = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return function


def release_free_memory() -> bool:
    """Return the free pages of glibc's arenas to the system; ``True`` when any were."""
    trim = _malloc_trim()
    if trim is None:
        return False
    return bool(trim(0))
