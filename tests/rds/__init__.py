"""Tests of the pure RDS adapter (`rdscsi.io.rds`): commands, parsers, errors, sizes."""
