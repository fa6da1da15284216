"""The error hierarchy: what each class is, so that callers can catch it."""

from __future__ import annotations

import pytest

from greenflow import BrokenError, BusyError, ClosedError, FlowError, FlowTimeout


def test_hierarchy() -> None:
    for cls in (ClosedError, BrokenError, BusyError, FlowTimeout):
        assert issubclass(cls, FlowError)
    assert issubclass(BrokenError, ConnectionError)
    assert issubclass(BrokenError, OSError)  # legacy code catching OSError keeps working
    assert issubclass(FlowTimeout, TimeoutError)
    assert not issubclass(ClosedError, OSError)
    assert not issubclass(BusyError, OSError)


@pytest.mark.parametrize("cls", [FlowError, ClosedError, BrokenError, BusyError, FlowTimeout])
def test_message_is_the_sentence(cls: type[FlowError]) -> None:
    assert str(cls("the peer went away")) == "the peer went away"


def test_broken_error_keeps_its_cause_and_errno() -> None:
    from greenflow.descriptors import broken_error

    cause = ConnectionResetError(104, "Connection reset by peer")
    error = broken_error(cause, "reading the connection to 127.0.0.1:80")
    assert str(error) == "reading the connection to 127.0.0.1:80 failed: the peer reset the connection"
    assert error.errno == 104
    unknown = broken_error(OSError(5, "Input/output error"), "writing")
    assert str(unknown) == "writing failed: Input/output error"
