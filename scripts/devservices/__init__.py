"""The parts of ``scripts/services.py``: one module per service, one shared."""
