"""What the kernel can promise about a file system: whether it is local, or in memory."""

from __future__ import annotations

import ctypes
import sys

TMPFS_MAGIC = 0x01021994
# File systems on a local device (or in memory), whose ->open of a looked-up file and
# whose close of a file opened read-only do not wait for I/O: ext2/3/4, XFS, Btrfs, F2FS,
# tmpfs. Anything else (NFS, CIFS, FUSE, overlays of those...) is opened on a worker.
LOCAL_FS = frozenset((0xEF53, 0x58465342, 0x9123683E, 0xF2F52010, TMPFS_MAGIC))
_STATFS_SIZE = 256  # struct statfs is 120 bytes on 64-bit Linux


def swap_configured() -> bool:
    """Whether /proc/meminfo shows any swap (unknown counts as yes). Without swap, tmpfs
    pages cannot be swapped out: reading or writing them never waits for a device."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("SwapTotal:"):
                    return int(line.split()[1]) > 0
    except (OSError, ValueError, IndexError):
        pass
    return True


def fs_type(libc: ctypes.CDLL, fd: int) -> int:
    """fstatfs(2)'s f_type of ``fd`` (the file system's magic number); 0 if unknown."""
    buf = ctypes.create_string_buffer(_STATFS_SIZE)
    if libc.fstatfs(fd, buf) != 0:
        return 0
    return int.from_bytes(buf.raw[:8], sys.byteorder)  # f_type, a long on 64-bit Linux
