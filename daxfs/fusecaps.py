"""What daxfs/native/fusecaps.c, preloaded into the daemon, negotiated with the kernel at
INIT beyond what pyfuse3 can ask for (that file says why each is needed)."""
import ctypes

# the bits daxfs_fusecaps_negotiated() reports
CAPS = {1 << 0: "dont_mask", 1 << 1: "handle_killpriv_v2", 1 << 2: "direct_io_allow_mmap"}


def negotiated() -> list[str]:
    """The capabilities the preloaded library negotiated, [] without it."""
    try:
        fn = ctypes.CDLL(None).daxfs_fusecaps_negotiated
    except (AttributeError, OSError):
        return []
    fn.restype = ctypes.c_uint
    bits = fn()
    return [name for bit, name in CAPS.items() if bits & bit]
