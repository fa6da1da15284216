"""The public API is curated: nothing leaks from the package root, nothing vanishes."""

from __future__ import annotations

import inspect

import greenflow
import greenflow.testing

PUBLIC = {
    "DEFAULT_READ_SIZE",
    "BrokenError",
    "BusyError",
    "ClosedError",
    "Flow",
    "FlowError",
    "FlowTimeout",
    "PipeFlow",
    "Shutdown",
    "SocketFlow",
    "connect_tcp",
    "connect_unix",
    "connect_vsock",
    "from_fd",
    "from_pipes",
    "from_socket",
    "pipe_pair",
    "socketpair",
}

TESTING = {
    "DEFAULT_MEMORY_BUFFER",
    "MakePair",
    "MemoryFlow",
    "MemoryPipe",
    "check_flow_pair",
    "lockstep_pair",
    "memory_pair",
}


def test_root_api_is_pinned() -> None:
    assert set(greenflow.__all__) == PUBLIC
    assert len(greenflow.__all__) == len(PUBLIC)  # no duplicates
    for name in greenflow.__all__:
        assert getattr(greenflow, name) is not None


def test_testing_api_is_pinned() -> None:
    assert set(greenflow.testing.__all__) == TESTING
    for name in greenflow.testing.__all__:
        assert getattr(greenflow.testing, name) is not None


def test_everything_public_is_documented() -> None:
    for module in (greenflow, greenflow.testing):
        for name in module.__all__:
            value = getattr(module, name)
            if inspect.isfunction(value) or inspect.isclass(value):
                assert value.__doc__, f"{module.__name__}.{name} has no docstring"
