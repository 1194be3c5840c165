"""Insight over the catalog: KPIs, alerts and trend series (pure computations, no I/O)."""
