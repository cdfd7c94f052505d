"""Scaffolding for the demo and the tests: local site processes, the demo, centralized baselines.

The library never imports this package."""
