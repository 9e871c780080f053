"""Batched reads of a socket's error queue: many messages per system call, with ``recvmmsg(2)``.

Why: every ICMP echo leaves a kernel send stamp in its socket's error queue (see
:mod:`monitor.icmp.engine`), and Python's ``socket.recvmsg`` reads one message per call, about
3.5 µs each with the objects it builds: a quarter of the engine's CPU per echo at 10,000 sites
(issue 9). ``recvmmsg`` fills up to :data:`BATCH` messages into buffers made once, and callers
read the stamps straight out of those buffers.

Python's socket module has no ``recvmmsg``, so libc's is called through :mod:`ctypes`. Where it
cannot be had (another libc, no symbol), :func:`open_batch` returns None and callers keep their
one-message loop.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
from collections.abc import Callable
from typing import cast

BATCH = 64  # messages per call: a round of 10,000 echoes leaves thousands of stamps queued
CONTROL_BYTES = 256  # SCM_TIMESTAMPNS (32), SCM_TIMESTAMPING (64) and the extended error with its offender (64)
_MSG_ERRQUEUE = getattr(socket, "MSG_ERRQUEUE", 0x2000)
_MSG_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0x40)
_SO_TIMESTAMPING = getattr(socket, "SO_TIMESTAMPING", 37)
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_SO_EE_ORIGIN_TIMESTAMPING = 4
_CMSG_HEADER = struct.Struct("@Nii")  # struct cmsghdr: size_t cmsg_len, int cmsg_level, int cmsg_type
_TIMESPEC = struct.Struct("@qq")  # the first of SO_TIMESTAMPING's three: the software stamp
_STAMP_FIRST = struct.Struct("@Niiqq")  # a cmsghdr and the software stamp right after it
_TIMESTAMPNS_CMSG = _CMSG_HEADER.size + 16  # a whole SCM_TIMESTAMPNS message: header and one timespec
_NAME_BYTES = 28  # sizeof(struct sockaddr_in6), the larger of the two
_ALIGN = ctypes.sizeof(ctypes.c_size_t)


class _IoVec(ctypes.Structure):
    _fields_ = (("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t))


class _MsgHdr(ctypes.Structure):
    _fields_ = (("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.POINTER(_IoVec)), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int))


class _MMsgHdr(ctypes.Structure):
    _fields_ = (("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint))


_CONTROLLEN_AT = _MsgHdr.msg_controllen.offset
_SIZE = struct.Struct("@N")
_MMSG_SIZE = ctypes.sizeof(_MMsgHdr)


def _libc_recvmmsg() -> Callable[..., int] | None:
    try:
        function = ctypes.CDLL(None, use_errno=True).recvmmsg
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p)
    function.restype = ctypes.c_int
    return cast(Callable[..., int], function)


_RECVMMSG = _libc_recvmmsg()


class ErrorQueueBatch:
    """Buffers for :data:`BATCH` error-queue messages of one socket and the call that fills them.

    Send stamps are read straight from the control buffers (:meth:`send_stamp`); any other message
    (an ICMP error on a datagram socket) is handed back in ``socket.recvmsg``'s shape by
    :meth:`as_recvmsg`, so that one parser serves both readers.
    """

    def __init__(self, fd: int, batch: int = BATCH, payload_bytes: int = 2048) -> None:
        if _RECVMMSG is None:
            raise OSError(errno.ENOSYS, "recvmmsg is not available")
        self._fd = fd
        self._batch = batch
        self._payload_bytes = payload_bytes
        self._control = ctypes.create_string_buffer(batch * CONTROL_BYTES)
        self._payload = ctypes.create_string_buffer(batch * payload_bytes)
        self._names = ctypes.create_string_buffer(batch * _NAME_BYTES)
        self._iovecs = (_IoVec * batch)()
        self._headers = (_MMsgHdr * batch)()
        control, payload, names = (ctypes.addressof(b) for b in (self._control, self._payload, self._names))
        for i in range(batch):
            self._iovecs[i].iov_base = payload + i * payload_bytes
            self._iovecs[i].iov_len = payload_bytes
            header = self._headers[i].msg_hdr
            header.msg_name = names + i * _NAME_BYTES
            header.msg_namelen = _NAME_BYTES
            header.msg_iov = ctypes.pointer(self._iovecs[i])
            header.msg_iovlen = 1
            header.msg_control = control + i * CONTROL_BYTES
            header.msg_controllen = CONTROL_BYTES
        # The kernel writes each message's lengths over these fields: the pristine copy is put back
        # before every call, in one memmove.
        self._size = ctypes.sizeof(self._headers)
        self._pristine = ctypes.create_string_buffer(bytes(self._headers), self._size)
        self._control_view = memoryview(self._control).cast("B")
        self._header_view = memoryview(self._headers).cast("B")

    def read(self) -> int:
        """Fill the buffers with the messages waiting, :data:`BATCH` at most; their count (0: none).

        Raises:
            OSError: for any failure but an empty queue.
        """
        ctypes.memmove(self._headers, self._pristine, self._size)
        assert _RECVMMSG is not None
        count: int = _RECVMMSG(self._fd, self._headers, self._batch, _MSG_ERRQUEUE | _MSG_DONTWAIT, None)
        if count < 0:
            code = ctypes.get_errno()
            if code in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                return 0
            raise OSError(code, os.strerror(code))
        return count

    @property
    def batch(self) -> int:
        return self._batch

    def send_stamps(self, count: int) -> list[int]:
        """The send stamps (ns) of the ``count`` messages read, for a queue that holds nothing else
        (a raw socket's: no ICMP errors without IP_RECVERR). The stamp comes first in each message:
        one unpack each; another layout is parsed in full."""
        view = self._control_view
        unpack = _STAMP_FIRST.unpack_from
        stamps = []
        for i in range(count):
            length, level, kind, seconds, nanoseconds = unpack(view, i * CONTROL_BYTES)
            if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and length == _TIMESTAMPNS_CMSG:
                # with SO_TIMESTAMPNS on (for replies) the kernel puts its stamp first: the one wanted is next
                length, level, kind, seconds, nanoseconds = unpack(view, i * CONTROL_BYTES + _TIMESTAMPNS_CMSG)
            if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPING:
                stamps.append(seconds * 1_000_000_000 + nanoseconds)
            else:
                is_stamp, stamp = self.send_stamp(i)
                if is_stamp and stamp:
                    stamps.append(stamp)
        return stamps

    def send_stamp(self, i: int) -> tuple[bool, int]:
        """(is message ``i`` a send-stamp report, its stamp in ns or 0): a message with an extended
        error of another origin (an ICMP error quoting an echo) is not one."""
        view = self._control_view
        stamp = 0
        for level, kind, start, end in self._control_messages(i):
            if level == socket.SOL_SOCKET:
                if kind == _SO_TIMESTAMPING and end - start >= _TIMESPEC.size:
                    seconds, nanoseconds = _TIMESPEC.unpack_from(view, start)
                    stamp = seconds * 1_000_000_000 + nanoseconds
            elif end - start >= 16 and view[start + 4] != _SO_EE_ORIGIN_TIMESTAMPING:
                return False, stamp  # sock_extended_err.ee_origin: an ICMP error, not a stamp
        return True, stamp

    def as_recvmsg(self, i: int, family: int) -> tuple[bytes, list[tuple[int, int, bytes]], int, tuple[str, int]]:
        """Message ``i`` as ``socket.recvmsg`` gives it: (data, ancillary, flags, (address, 0))."""
        header = self._headers[i]
        size = min(header.msg_len, self._payload_bytes)
        data = self._payload.raw[i * self._payload_bytes:i * self._payload_bytes + size]
        view = self._control_view
        ancillary = [(level, kind, bytes(view[start:end])) for level, kind, start, end in self._control_messages(i)]
        name = self._names.raw[i * _NAME_BYTES:(i + 1) * _NAME_BYTES]
        if family == socket.AF_INET6:
            address = socket.inet_ntop(socket.AF_INET6, name[8:24])
        else:
            address = socket.inet_ntop(socket.AF_INET, name[4:8])
        return data, ancillary, header.msg_hdr.msg_flags, (address, 0)

    def _control_messages(self, i: int) -> list[tuple[int, int, int, int]]:
        """Message ``i``'s control messages as (level, type, data start, data end) in :attr:`_control_view`."""
        view = self._control_view
        offset = i * CONTROL_BYTES
        end = offset + min(CONTROL_BYTES, _SIZE.unpack_from(self._header_view, i * _MMSG_SIZE + _CONTROLLEN_AT)[0])
        found = []
        while offset + _CMSG_HEADER.size <= end:
            length, level, kind = _CMSG_HEADER.unpack_from(view, offset)
            if length < _CMSG_HEADER.size or offset + length > end:
                break
            found.append((level, kind, offset + _CMSG_HEADER.size, offset + length))
            offset += (length + _ALIGN - 1) & ~(_ALIGN - 1)
        return found


def open_batch(sock: socket.socket) -> ErrorQueueBatch | None:
    """A batch reader for ``sock``'s error queue, or None where ``recvmmsg`` cannot be called."""
    try:
        return ErrorQueueBatch(sock.fileno())
    except OSError:
        return None
