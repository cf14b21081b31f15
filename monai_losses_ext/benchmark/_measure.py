"""Timing and peak-memory helpers shared by the benchmarks (CPU and CUDA)."""

from __future__ import annotations

import contextlib
import os
import sys
import time

import torch


def steady_allocator() -> bool:
    """Make glibc serve large CPU tensors from its heap and keep freed memory (mallopt), as it settles into
    during a long training loop. Without it, whether a 10-30 MB buffer costs fresh page faults depends on
    what the previous call freed, and alternated timings of two losses swing by 2x. Returns True if set."""
    import ctypes

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    ok = libc.mallopt(m_mmap_threshold, 32 * 2**20) and libc.mallopt(m_trim_threshold, 2**30)
    return bool(ok)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn, device: torch.device, repeats: int = 5, warmup: int = 1) -> float:
    """Minimum wall time of ``fn()`` over ``repeats`` runs, in seconds."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def time_pair(fn_a, fn_b, device: torch.device, repeats: int = 5) -> tuple[float, float, float]:
    """Minimum wall times of ``fn_a()`` and ``fn_b()``, run alternately so that both see the same machine
    state, and the median over the repeats of the ratio a/b of adjacent runs (on a shared or throttled
    machine that ratio is far steadier than either time)."""
    fn_a(), fn_b()
    times_a, times_b = [], []
    for _ in range(repeats):
        for fn, times in ((fn_a, times_a), (fn_b, times_b)):
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - t0)
    ratios = sorted(a / b for a, b in zip(times_a, times_b))
    return min(times_a), min(times_b), ratios[len(ratios) // 2]


@contextlib.contextmanager
def _native_stderr_quiet():
    """The profiler's native library prints a start/stop line to file descriptor 2 on every use: silenced
    here (Python exceptions still propagate)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_extra_bytes(fn, device: torch.device) -> int:
    """Peak bytes allocated by ``fn()`` above what was allocated before it (tensors it frees included).

    CUDA: the caching allocator's peak statistic. CPU: the allocator events recorded by the PyTorch
    profiler, summed in time order (every CPU tensor allocation and free, whatever the op)."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    with _native_stderr_quiet(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    current = peak = 0
    for _, nbytes in events:
        current += nbytes
        peak = max(peak, current)
    return peak
