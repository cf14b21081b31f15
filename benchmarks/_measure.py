"""Timing and peak-memory helpers shared by the benchmarks (CPU and CUDA)."""

from __future__ import annotations

import time

import torch


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


def time_pair(fn_a, fn_b, device: torch.device, repeats: int = 5) -> tuple[float, float]:
    """Minimum wall times of ``fn_a()`` and ``fn_b()``, run alternately so that both see the same machine
    state (on a shared or throttled machine the ratio is far steadier than two separate loops)."""
    fn_a(), fn_b()
    best_a = best_b = float("inf")
    for _ in range(repeats):
        for fn, which in ((fn_a, 0), (fn_b, 1)):
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            dt = time.perf_counter() - t0
            if which == 0:
                best_a = min(best_a, dt)
            else:
                best_b = min(best_b, dt)
    return best_a, best_b


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

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
    )
    current = peak = 0
    for _, nbytes in events:
        current += nbytes
        peak = max(peak, current)
    return peak
