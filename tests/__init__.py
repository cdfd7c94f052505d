"""tffprod's tests: unit/ (no TensorFlow), integration/, e2e/; shared code in helpers/."""
