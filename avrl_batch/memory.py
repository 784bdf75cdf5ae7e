"""Peak resident memory of the calling process.

Linux ``getrusage().ru_maxrss`` is carried across ``exec``: a process started with
``subprocess`` (vfork + exec) reports at least its parent's peak at the time it was started,
so a small decoder child of a 300 MiB Ray worker would read as 300 MiB. ``VmHWM`` in
``/proc/self/status`` is the high-water mark of the process's own memory map and starts
afresh at exec; ``ru_maxrss`` is the fallback where there is no ``/proc``.
"""

from __future__ import annotations

import resource


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (its own, not inherited from its parent)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
