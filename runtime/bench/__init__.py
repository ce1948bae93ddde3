"""The benchmark (``python -m runtime.bench``, ``make bench``): not in the serving image."""
