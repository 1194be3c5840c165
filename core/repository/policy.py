"""The write policy (``targets_policy``, FORMAT.md 12.4): which opened targets a writer may go ahead with."""

from __future__ import annotations

from core.config import BackstopConfig
from core.errors import RepositoryError
from core.repository.repo import Repository


def quorum_policy(config: BackstopConfig) -> bool:
    """True when writes need a quorum of targets rather than all of them."""
    return not isinstance(config.targets_policy, str)


def hold_to_policy(repo: Repository, config: BackstopConfig) -> list[str]:
    """Check that the targets ``repo`` opened meet the quorum policy and keep it to that policy while writing.

    ``repo`` was opened without requiring every target. Raises RepositoryError
    (one line, naming what is down) when the opened targets fall short;
    otherwise returns a warning per target left out, and from now on a
    target failing a write is dropped while the rest still meet the policy.
    """
    reason = config.write_satisfied([s.name for s in repo.storages])
    left_out = {**repo.unreachable, **repo.damaged}
    if reason is not None:
        down = "; ".join(left_out.values()) or "no target is down"
        raise RepositoryError(f"targets_policy is not met: {reason} ({down}); bring a target back and try again")
    repo.write_check = config.write_satisfied
    return [f"target {name} is left out of this write ({why}); `backstop sync` copies what it lacks later"
            for name, why in left_out.items()]
