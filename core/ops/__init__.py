"""Operations, one module each (after restic's one-file-per-command): functions of an EngineContext.

The Engine is a facade over these; the CLI and the TUI call the Engine. An
operation that changes or deletes something gated runs inside
``core.security.guard`` (authorize, audit the outcome, copy the audit log).
"""
