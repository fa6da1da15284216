"""Shared test set-up.

Every test has a timeout: pytest-timeout's default is set for the whole suite
in pyproject.toml, and tests that need longer say so with
``@pytest.mark.timeout``. A socket left to the garbage collector is an error
(``ResourceWarning`` is turned into one there too). Nothing is monkey-patched.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from greenflow.listeners import Listener

from pairs import SOCKET_PAIRS, has_ipv6


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if not has_ipv6():
        skip = pytest.mark.skip(reason="this machine has no IPv6 loopback (::1)")
        for item in items:
            if "tcp6" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(params=sorted(SOCKET_PAIRS))
def socket_pair_maker(request: pytest.FixtureRequest) -> object:
    """Each way of making a pair of connected socket flows."""
    return SOCKET_PAIRS[request.param]


@pytest.fixture
def closing() -> Iterator[list[Listener]]:
    """Listeners a test made, closed after it."""
    made: list[Listener] = []
    yield made
    for listener in made:
        listener.close()
