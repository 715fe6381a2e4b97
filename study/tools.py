"""What the study and the benchmarks share: the peak memory of a process."""

from __future__ import annotations

from pathlib import Path


def peak_rss(reset: bool = False) -> int:
    """Peak resident memory of this process in bytes (Linux: VmHWM; elsewhere ru_maxrss).

    ``resource``'s ru_maxrss survives ``exec`` on Linux, so a child process started by
    a big parent would report the parent's peak; VmHWM belongs to this process alone.

    Args:
        reset: on Linux, restart the high-water mark at the current RSS (so a later
            call measures only what happens after this one).
    """
    status = Path("/proc/self/status")
    if status.exists():
        if reset:
            Path("/proc/self/clear_refs").write_text("5")
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource  # Unix only
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024
