"""featurestore: a real-time feature store.

Feature definitions (.feat files, see `dsl`) compile to a logical plan that
DuckDB materializes into Redis (`featurestore.materialize`), that Feast keeps
as the registry of record (`featurestore.backends.feast_registry`), and that
the gRPC server (`serving`) reads through one Redis layout
(`featurestore.layout`). Importing this package loads nothing heavy.
"""

__version__ = "0.1.0"
