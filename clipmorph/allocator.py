"""glibc's allocator tuned for torch: keep freed tensor memory instead of handing it back to the kernel.

By default glibc serves every allocation over its (dynamic) mmap threshold with a fresh mmap and unmaps it
when freed, so each batch's activations (tens of MB) are faulted in page by page, zeroed by the kernel,
and given back, frame after frame. Raising the mmap and trim thresholds keeps that memory in the heap for
the next batch. Measured on the development machine (2 Zen 4 cores): `clipmorph stylize` of bikes.mp4
(248 frames, 640x272, torch runtime) 14.1-14.9 s with 6-7 s of system time before, 11.4-11.9 s with
2.3-3.0 s after; a training step 1.63 -> 1.20 s (docs/performance.md, README "Training speed").
The cost: a process keeps its peak heap (it was going to need it again for the next frame anyway).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt parameter numbers (glibc malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Allocations below this come from the heap and stay there when freed. 32 MiB (the most glibc's dynamic
# threshold grows to on 64-bit) gave nothing on the run above: a batch's tensors are larger. glibc on
# x86-64 accepts 1 GiB (mallopt returns 1).
KEEP_BELOW = 1 << 30


def keep_freed_memory(threshold: int = KEEP_BELOW) -> bool:
    """Raise glibc's mmap and trim thresholds (see module doc); False where that is not glibc (musl, macOS)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, threshold)) and bool(mallopt(M_TRIM_THRESHOLD, threshold))
