"""The demo model's data and evaluation: `python -m demo.prepare_data`, `python -m demo.evaluate` (see README)."""
