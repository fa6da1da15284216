"""A flow of your own, built with greenflow.kit: a layer that counts bytes.

``CountingFlow(inner)`` passes everything through to ``inner`` and counts
the bytes each way, as a metrics layer would. The kit keeps the contract's
rules for it: one greenlet per direction, refusals in the contract's order,
sticky EOF and errors, shutdown and close.
"""

from __future__ import annotations

from collections.abc import Iterable

from greenflow import BrokenError, Flow, Shutdown
from greenflow.flow import Buffer
from greenflow.kit import FlowBase, check_buffers, check_bytes_like, check_read_size, reraise


class CountingFlow(FlowBase):
    """Counts the bytes that pass through another flow, each way."""

    def __init__(self, inner: Flow) -> None:
        super().__init__(timeout=inner.timeout)
        self.inner = inner
        self.bytes_in = 0
        self.bytes_out = 0

    @property
    def underlying(self) -> Flow:  # type: ignore[override]
        return self.inner

    @property
    def timeout(self) -> float | None:
        return self.inner.timeout

    @timeout.setter
    def timeout(self, value: float | None) -> None:
        self.inner.timeout = value  # the inner flow bounds each call

    def read(self, max_bytes: int | None = None) -> bytes:
        size = check_read_size(max_bytes)
        reader = self._reader
        if reader.enter("read"):
            return b""
        try:
            data = self.inner.read(size)
        except BrokenError as exc:
            reader.fail(exc)  # sticky: later reads say this read failed
            raise
        finally:
            reader.leave()
        if not data:
            reader.end()
        self.bytes_in += len(data)
        return data

    def read_into(self, buffer: bytearray | memoryview) -> int:
        reader = self._reader
        if reader.enter("read_into"):
            return 0
        try:
            count = self.inner.read_into(buffer)
        except BrokenError as exc:
            reader.fail(exc)  # sticky: later reads say this read failed
            raise
        finally:
            reader.leave()
        if not count:
            reader.end()
        self.bytes_in += count
        return count

    def write(self, data: Buffer) -> None:
        self._send(check_bytes_like(data).tobytes(), "write")

    def writev(self, buffers: Iterable[Buffer]) -> None:
        self._send(b"".join(check_buffers(buffers)), "writev")

    def _send(self, data: bytes, what: str) -> None:
        writer = self._writer
        writer.enter(what)
        try:
            self.inner.write(data)
        except BaseException as exc:
            if isinstance(exc, BrokenError):
                writer.fail(exc)  # sticky: later writes say this write failed
            reraise(exc, writer.interrupted(exc, what))  # a timeout or a kill breaks writing too
        finally:
            writer.leave()
        self.bytes_out += len(data)

    def shutdown(self, how: Shutdown | str = Shutdown.WRITE) -> None:
        how = self.begin_shutdown(how)
        ends_writing = how.writes and self._writer.shut()
        ends_reading = how.reads and self._reader.shut()
        if ends_writing or ends_reading:
            # The inner flow sends the EOF, and wakes a reader blocked in it.
            self.inner.shutdown(how)

    def close(self) -> None:
        if self.mark_closed():
            self.inner.close()  # wakes every greenlet blocked in it
