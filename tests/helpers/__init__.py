"""Code shared by test modules (import as ``tests.helpers.<module>``); fixtures live in conftest.py."""
