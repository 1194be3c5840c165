"""Operators, one-time codes, the security gate and the tamper-evident audit log.

- ``totp``: RFC 6238 codes (generate, check with drift and replay rules).
- ``derive``: the secrets this package needs, derived from the repository key.
- ``operators``: enrolled operators, their roles and sealed TOTP secrets.
- ``audit``: the keyed hash chain in the catalog, and ``audit_copy`` its copy
  in the repository.
- ``operator_copy``: operator records in the repository, so a lost catalog
  keeps its operators.
- ``gate``: the one decision point every front end goes through before a
  destructive action.
"""
