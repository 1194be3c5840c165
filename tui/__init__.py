"""The operator console: a Textual app over ``core.engine`` (presentation only)."""
