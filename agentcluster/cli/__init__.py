"""The ``agentcluster`` command line.

Commands: ``serve`` (Ray and the gateway on this machine: the main job), ``up`` / ``down`` (the
same in the background, tracked by a PID file), ``status`` (is the gateway up and ready), ``chat``
(a conversation in the terminal, streamed), ``keys`` (API keys, with the admin key), ``db upgrade``
/ ``db current`` (migrations), ``check`` (probe every configured dependency), ``relay`` (run the
outbox relay in the foreground), ``config`` (show effective settings), ``secrets rotate``
(re-encrypt the provider secrets under a new key).

Errors are one line ``agentcluster: <message>`` on stderr; the exit code is 2 for usage and
configuration errors, 1 for failures (gateway unreachable, an API error, not ready).

The console script ``agentcluster`` and ``python -m agentcluster.cli`` both run :func:`main`.
Modules: ``_main`` (the parser and the handlers), ``_local`` (``up``/``down``, the background
``serve``), ``_remote`` (gateway URL and keys, ``status``, ``keys``), ``_chat`` (``chat``),
``_secrets`` (``secrets rotate``).
"""

from agentcluster.cli._main import main, parse_args

__all__ = ["main", "parse_args"]
