"""Per-pod databases: the StateProvider seam and its implementations."""
