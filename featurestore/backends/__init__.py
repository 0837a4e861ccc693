"""Backends: one module per target of the logical plan.

duckdb_sql        batch computation (materialize, export)
feast_registry    the registry of record
serving_manifest  what the gRPC server loads
"""
