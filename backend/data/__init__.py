"""Data: assets (PyPI wheels), corpora, activation capture and shard caches."""
