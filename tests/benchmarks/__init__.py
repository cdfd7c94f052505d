"""Benchmarks: programs that print numbers (``make bench``), not tests.

Files are named ``bench_*.py`` so pytest's default ``test_*.py`` pattern never collects them.
"""
