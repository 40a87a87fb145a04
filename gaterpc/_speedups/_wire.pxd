# Constants shared by the compiled twins: ``cimport`` them from here, never
# redefine them in a ``.pyx`` (and no ``DEF``: deprecated in Cython 3).
#
# Every value mirrors a Python definition -- the wire constants, reply kinds
# and twin tuning values in ``gaterpc/protocol.py`` (which the pure twins
# import), the libzmq option and flag numbers in pyzmq -- and
# ``tests/test_twins_parity.py`` checks each name declared below against it
# through ``gaterpc._speedups._frames_c._wire_constants()``.  A compiled
# module needing another wire constant adds it here, to
# ``_wire_constants()`` and (if new) to ``gaterpc/protocol.py``.
#
# Byte strings are C string literals (converted with ``<bytes>NAME``, so
# they must not contain NUL bytes; a hex escape is closed by ending the
# literal, as C would read ``"\xa9e"`` as one escape); numbers are anonymous
# enums.

cdef extern from *:
    """
    #define GATERPC_STREAM_TAG "GateStreamGenerator"
    #define GATERPC_STREAM_END "GateStreamEnd"
    #define GATERPC_STREAM_EXC "GateStreamException"
    #define GATERPC_HUGE_TAG "GateStreamHugData"
    #define GATERPC_HUGE_END "HugeDataEND"
    #define GATERPC_HUGE_EXC "HugeDataException"
    #define GATERPC_SINGLE_HEAD "\\x82\\xa6" "result"
    #define GATERPC_SINGLE_OK_TAIL "\\xa9" "exception" "\\xc0"
    #define GATERPC_SINGLE_ERR_MID "\\xc0\\xa9" "exception"
    """
    const char* STREAM_TAG "GATERPC_STREAM_TAG"
    const char* STREAM_END "GATERPC_STREAM_END"
    const char* STREAM_EXC "GATERPC_STREAM_EXC"
    const char* HUGE_TAG "GATERPC_HUGE_TAG"
    const char* HUGE_END "GATERPC_HUGE_END"
    const char* HUGE_EXC "GATERPC_HUGE_EXC"
    const char* SINGLE_HEAD "GATERPC_SINGLE_HEAD"
    const char* SINGLE_OK_TAIL "GATERPC_SINGLE_OK_TAIL"
    const char* SINGLE_ERR_MID "GATERPC_SINGLE_ERR_MID"

# Reply body kinds (``frames.reply_kind``).
cdef enum:
    KIND_INVALID = -1
    KIND_SINGLE = 0
    KIND_STREAM_ITEM = 1
    KIND_STREAM_END = 2
    KIND_STREAM_ERROR = 3
    KIND_HUGE_CHUNK = 4
    KIND_HUGE_END = 5
    KIND_HUGE_ERROR = 6

# Twin tuning values (not on the wire).
cdef enum:
    REQTABLE_SLACK = 1024
    HUGE_UNLIMITED_STEP = 67108864  # 64 MiB
    ZERO_COPY_MIN = 65536  # 64 KiB

# libzmq numbers (zmq.h), as pyzmq exposes them: ``zmq.DONTWAIT``, ...
cdef enum:
    ZMQ_DONTWAIT = 1
    ZMQ_SNDMORE = 2
    ZMQ_EVENTS = 15
