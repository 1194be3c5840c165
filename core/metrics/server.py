"""`backstop daemon --metrics-listen HOST:PORT`: serve /metrics from a thread for as long as the daemon runs.

A single-threaded WSGI server (the standard library's) around prometheus_client's
app: scrapes come one at a time and each reads the catalog afresh, so there is
nothing to share between threads but the collector's source.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

from core.errors import UsageError
from core.metrics.collector import BackstopCollector, registry_of

log = logging.getLogger("backstop.daemon")


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9187`` for IPv6) as (host, port); UsageError saying the form otherwise."""
    host, sep, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--metrics-listen {value!r}: give HOST:PORT, e.g. 127.0.0.1:9187")
    return host, int(port)


class _Quiet(WSGIRequestHandler):
    """No access log line per scrape (every 15 s) on the daemon's stderr; a client that stalls is dropped."""

    # One scrape at a time: a connection that sends nothing must not hold /metrics (or the daemon's stop).
    timeout = 10.0

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        return


class _Server(WSGIServer):
    def __init__(self, address: tuple[str, int], handler: type[WSGIRequestHandler]) -> None:
        try:
            is_v6 = ipaddress.ip_address(address[0]).version == 6
        except ValueError:
            is_v6 = False  # a host name: resolved as IPv4, as the standard library does
        if is_v6:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)


class MetricsServer:
    """/metrics on one address, served from a daemon thread until :meth:`stop`."""

    def __init__(self, listen: str, collector: BackstopCollector) -> None:
        host, port = parse_listen(listen)
        try:
            self._httpd = make_server(host, port, make_wsgi_app(registry_of(collector)), server_class=_Server,
                                      handler_class=_Quiet)
        except OSError as exc:
            raise UsageError(f"--metrics-listen {listen}: cannot listen there ({exc.strerror or exc}); choose a free "
                             "port or stop what holds it") from None
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="backstop-metrics", daemon=True)

    @property
    def url(self) -> str:
        address = self._httpd.server_address
        host, port = str(address[0]), int(address[1])
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"

    def start(self) -> MetricsServer:
        self._thread.start()
        log.info("serving metrics on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving and release the port (waits for a scrape in progress)."""
        if self._thread.is_alive():  # shutdown() waits for serve_forever, which a thread never started never ends
            self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
