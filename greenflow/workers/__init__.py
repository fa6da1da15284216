"""Worker processes: one server on every core, reloaded without downtime.

A :class:`Supervisor` forks worker processes that each run a
:class:`greenflow.Server` for the same handler on the same listening
sockets, watches their heartbeats, and turns signals into actions:

=============  ======================================================
SIGTERM, INT   graceful stop of every worker, then the supervisor ends
SIGHUP         reload: new workers (the handler imported afresh), then
               the old ones drain; if the new ones fail, the old stay
SIGTTIN, TTOU  one worker more, one fewer
=============  ======================================================

``greenflow serve --workers N`` runs one; see the documentation's
"Scaling" page for the choices (shared sockets or ``SO_REUSEPORT``, the
worker timeout, ``--worker-max-requests``).
"""

from __future__ import annotations

from ._supervisor import DEFAULT_WORKER_TIMEOUT, Supervisor, WorkerState

__all__ = ["DEFAULT_WORKER_TIMEOUT", "Supervisor", "WorkerState"]
