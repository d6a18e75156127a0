"""Keep a CPU process's resident memory at LoRA-training level while LHSPG runs.

LHSPG's saliency forms ``|Ĝ ⊙ W'|`` in 16 MiB chunks every step. glibc raises its mmap threshold to the size of the
largest freed chunk (up to 32 MiB), after which such chunks come from the heap and, once freed, stay resident
between the step's activations: on a 551 M-parameter LLaMA that retention alone added ~30 % to peak RSS (measured,
``bench/prune.py memory``). A fixed threshold of 1 MiB makes every large temporary an mmap that is returned to the OS
when freed. This is the same knob as ``MALLOC_MMAP_THRESHOLD_=1048576`` in the environment; it changes nothing on
other allocators or platforms.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_MMAP_THRESHOLD = -3
_done = False


def return_large_frees_to_os(threshold: int = 1 << 20) -> bool:
    """Set glibc's mmap threshold once per process; True when it was applied."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _done = bool(libc.mallopt(M_MMAP_THRESHOLD, int(threshold)))
    except (OSError, AttributeError):
        return False
    return _done
