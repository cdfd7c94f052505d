"""Contract suites: every implementation of a plug-point through the same cases."""
