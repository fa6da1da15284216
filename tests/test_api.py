"""The public API is curated: nothing leaks from the package root, nothing vanishes."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

import greenflow
import greenflow.testing
import greenflow.wsgi

PUBLIC = {
    "DEFAULT_READ_SIZE",
    "BrokenError",
    "BufferedFlow",
    "BusyError",
    "ClosedError",
    "CopyStats",
    "Flow",
    "FlowError",
    "FlowIO",
    "FlowSocket",
    "FlowTimeout",
    "FramedFlow",
    "IncompleteReadError",
    "LimitOverrunError",
    "Listener",
    "ListenerLayer",
    "PipeFlow",
    "ProxyStats",
    "Scope",
    "Server",
    "Shutdown",
    "SocketFlow",
    "Supervisor",
    "TLSCertificateError",
    "TLSError",
    "TLSFlow",
    "TLSTruncatedError",
    "connect_tcp",
    "connect_tls",
    "connect_unix",
    "connect_vsock",
    "connect_vsock_uds",
    "copy",
    "from_fd",
    "from_pipes",
    "from_socket",
    "idle",
    "listen_fd",
    "listen_socket",
    "listen_systemd",
    "listen_tcp",
    "listen_tls",
    "listen_unix",
    "listen_url",
    "listen_vsock",
    "pipe_pair",
    "proxy",
    "socket_bridge",
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
    "wait_all_blocked",
}

WSGI = {
    "DEFAULT_HEADER_TIMEOUT",
    "DEFAULT_KEEPALIVE_TIMEOUT",
    "DEFAULT_MAX_BODY_SIZE",
    "DEFAULT_MAX_HEADER_SIZE",
    "DEFAULT_MAX_REQUESTS",
    "Application",
    "FileWrapper",
    "Limits",
    "RequestTooLarge",
    "WSGIHandler",
    "handler",
}


def test_root_api_is_pinned() -> None:
    assert set(greenflow.__all__) == PUBLIC
    assert len(greenflow.__all__) == len(PUBLIC)  # no duplicates
    for name in greenflow.__all__:
        assert getattr(greenflow, name) is not None


def run_fresh(code: str) -> None:
    """Run ``code`` in a new interpreter (where greenflow is not imported yet); it must print ok."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert result.stdout.strip() == "ok", result.stderr


def test_tls_is_loaded_on_first_use() -> None:
    run_fresh(
        "import sys, greenflow; assert 'OpenSSL' not in sys.modules; "
        "greenflow.TLSFlow; assert 'OpenSSL' in sys.modules; "
        "from greenflow import connect_tls; import greenflow.tls; "
        "assert connect_tls is greenflow.tls.connect_tls; print('ok')"
    )


def test_dir_and_help_list_the_tls_names() -> None:
    run_fresh(
        "import pydoc, sys, greenflow; "
        "missing = set(greenflow.__all__) - set(dir(greenflow)); assert not missing, missing; "
        "assert 'OpenSSL' not in sys.modules, 'dir() loaded TLS'; "
        "text = pydoc.render_doc(greenflow, renderer=pydoc.plaintext); "
        "missing = [n for n in greenflow.__all__ if n not in text]; assert not missing, missing; "
        "assert 'connect_tls(host' in text and 'class TLSFlow' in text; print('ok')"
    )


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        greenflow.nope  # noqa: B018


def test_testing_api_is_pinned() -> None:
    assert set(greenflow.testing.__all__) == TESTING
    for name in greenflow.testing.__all__:
        assert getattr(greenflow.testing, name) is not None


def test_wsgi_api_is_pinned() -> None:
    assert set(greenflow.wsgi.__all__) == WSGI
    for name in greenflow.wsgi.__all__:
        assert getattr(greenflow.wsgi, name) is not None


def test_h11_is_loaded_by_greenflow_wsgi_only() -> None:
    run_fresh(
        "import sys, greenflow, greenflow.cli; greenflow.cli.build_parser(); "
        "assert 'h11' not in sys.modules; import greenflow.wsgi; assert 'h11' in sys.modules; print('ok')"
    )


def test_everything_public_is_documented() -> None:
    for module in (greenflow, greenflow.testing, greenflow.wsgi):
        for name in module.__all__:
            value = getattr(module, name)
            if inspect.isfunction(value) or inspect.isclass(value):
                assert value.__doc__, f"{module.__name__}.{name} has no docstring"
