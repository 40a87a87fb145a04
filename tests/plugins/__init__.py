"""Test-only packages."""
