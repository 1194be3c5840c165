"""Test doubles: stand-ins for real parts that misbehave on purpose."""
