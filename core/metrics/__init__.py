"""Prometheus metrics: the collector that reads the catalog on each scrape, and the daemon's /metrics server."""
