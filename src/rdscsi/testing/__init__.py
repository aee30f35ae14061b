"""Counterparts the driver meets in a cluster, in-process: used by the test suite, the
benchmarks and `rdscsi demo --scenario` (no cluster needed)."""
