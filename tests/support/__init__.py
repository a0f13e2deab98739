"""Helpers for tests: small servers and fakes typed against our ports."""
