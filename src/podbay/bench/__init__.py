"""Benchmarks: scripts that measure and print JSON plus a one-line summary (never timed assertions)."""
