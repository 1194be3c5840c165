"""Drills rotate across targets by the drills recorded (their kind), not by restores or database names."""

from __future__ import annotations

from datetime import timedelta

from core.planner import Incident, PastRestore, Severity, plan

from tests.test_planner import NOW, facts, history, req


def _past(kind: str, target: str, days_ago: float, ok: bool = True) -> PastRestore:
    return PastRestore("warranty", 1, 1.0, ok, (NOW - timedelta(days=days_ago)).timestamp(), target=target, kind=kind)


def test_the_drill_goes_to_the_target_least_recently_proven_by_a_drill() -> None:
    hist = [*history(), _past("drill", "offsite", 1), _past("drill", "local1", 30)]
    p = plan(req(Incident.DRILL, Severity.LOW), facts(hist=hist))
    assert p.ok and p.target == "local1"
    assert any("least recently proven by a drill" in r for r in p.reasons)


def test_restores_and_failed_drills_prove_no_copy() -> None:
    # local1 served a real restore yesterday and a drill there failed: neither proves its copy,
    # so local1 is still the one due (offsite was drilled successfully a week ago).
    hist = [*history(), _past("restore", "local1", 1), _past("drill", "local1", 2, ok=False),
            _past("drill", "offsite", 7)]
    p = plan(req(Incident.DRILL, Severity.LOW), facts(hist=hist))
    assert p.ok and p.target == "local1"
