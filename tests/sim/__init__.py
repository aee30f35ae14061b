"""Tests of the RDS simulator (`rdscsi.sim`)."""
