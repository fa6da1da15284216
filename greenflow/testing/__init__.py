"""Tools for testing flows: in-memory pairs and the conformance suite.

Public and importable without pytest, so that anyone who writes a flow can
check it::

    from greenflow.testing import check_flow_pair

    check_flow_pair(make_my_pair)

- :func:`memory_pair`: two connected flows with bounded buffers, and hooks
  (``flow.incoming.stalled``, ``flow.incoming.trickle``) to hold data back or
  dribble it out.
- :func:`lockstep_pair`: two connected flows with no buffer at all, where a
  write returns only when the other end has read all of it.
- :func:`check_flow_pair`: runs every check of the flow contract against
  pairs from a factory and raises ``AssertionError`` listing what failed.
- :func:`wait_all_blocked`: returns once every other greenlet is blocked; use
  it instead of a sleep to let other greenlets get as far as they can.
"""

from __future__ import annotations

from ._check import MakePair, check_flow_pair
from ._idle import wait_all_blocked
from ._memory import DEFAULT_MEMORY_BUFFER, MemoryFlow, MemoryPipe, lockstep_pair, memory_pair

__all__ = [
    "DEFAULT_MEMORY_BUFFER",
    "MakePair",
    "MemoryFlow",
    "MemoryPipe",
    "check_flow_pair",
    "lockstep_pair",
    "memory_pair",
    "wait_all_blocked",
]
