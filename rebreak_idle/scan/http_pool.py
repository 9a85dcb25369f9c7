"""An HTTP connection pool whose connection factories do not log.

twisted.web's pool builds one client factory per backend connection; a factory logs
``Starting factory ...`` and ``Stopping factory ...`` at info level unless it is
``noisy = False``, which fills the operators' log (two lines per backend connection).
"""

from __future__ import annotations

from twisted.web.client import HTTPConnectionPool, _HTTP11ClientFactory

__all__ = ["QuietHTTPConnectionPool"]


class _QuietClientFactory(_HTTP11ClientFactory):
    noisy = False


class QuietHTTPConnectionPool(HTTPConnectionPool):
    """:class:`~twisted.web.client.HTTPConnectionPool` without the factory log lines."""

    _factory = _QuietClientFactory
