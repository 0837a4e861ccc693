"""Backends: one module per target of the logical plan.

duckdb_sql        batch computation (materialize, export)
feast_registry    the registry of record
serving_manifest  what the gRPC server loads, and the Redis layout it reads

Each (and the streaming engine's streaming.flink_sql) offers
`artifacts(plan, project) -> {relative path: str | bytes}`, the files
`featurestore compile` writes for it (featurestore.compile.BACKENDS).
"""
