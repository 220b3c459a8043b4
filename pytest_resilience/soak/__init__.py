"""Load and soak runs: an open-model driver, fixed-interval sampling, drift verdicts.

See ``pytest_resilience.soak.record`` for the record format (``soak/*.json`` next to
``results.json``).
"""
