"""The domain layer: types, decoding, records, routing, catalog rules, settings, protocol.

Imports nothing else of the project (the import contract in pyproject.toml keeps it so).
"""
