"""Benchmark harness for gaterpc (``gaterpc bench``) and its helpers."""
