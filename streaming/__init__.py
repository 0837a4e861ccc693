"""Streaming engine: the same logical plan, run continuously by PyFlink.

    flink_expr     the Flink dialect of expressions (featurestore.backends.sql_dialect)
    flink_states   tile states (featurestore.tiles) and latest rows in Flink SQL
    flink_sql      the job: source DDL, each view's rows, outputs and settings;
                   `artifacts` for `featurestore compile`
    wire           how Flink hands values to the writers: the SQL that spells them,
                   the Python that reads them back
    sink           the Redis writers and the contract of their input
    udf            the Python functions that hand Flink's updates to the writers
    job            builds and runs the job (local MiniCluster or a cluster), checkpoints
    push           `featurestore push`: events appended to a files stream
    quickstart     the quickstart's streaming step

A tile written by the stream has the bytes a batch run would write, under the
same keys (`featurestore.layout`); the batch engine skips stream views.
"""
