"""Sandbox data: realistic, deterministic databases for the demo, tests and benchmarks."""
