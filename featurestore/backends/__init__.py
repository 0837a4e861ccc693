"""Backends: one module per target of the logical plan.

duckdb_sql        batch computation (materialize, export)
feast_registry    the registry of record
serving_manifest  what the gRPC server loads, and the Redis layout it reads

Each (and the streaming engine's streaming.flink_sql) offers
`artifacts(plan, project) -> {relative path: str | bytes}`, the files
`featurestore compile` writes for it (featurestore.compile.BACKENDS).

Shared by the SQL engines (DuckDB here, Flink in streaming.flink_expr):

sql_dialect       expressions as SQL: the tree walk, and the tables an engine overrides
unicode_case      what `upper` and `lower` mean, one code point to one
"""
