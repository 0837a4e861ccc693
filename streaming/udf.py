"""The Python functions of the streaming job: each receives one output of one
view in Arrow batches and writes it with a `streaming.sink.RedisSink`.

The workers of a cluster import this module (and what it imports: PyFlink,
the sink, the layout, the tile states), and nothing of the compiler.
"""
from __future__ import annotations

from streaming.sink import RedisSink, ViewOutput, input_fields


def sink_function(project: str, view: ViewOutput, part: str, store):
    """A pandas UDF that writes `part` of `view` to the online store `store`
    (`featurestore.redis_client.RedisTarget`); it returns 0 per row, for a
    blackhole (a function is the only way into Python from Flink SQL)."""
    from pyflink.table import DataTypes
    from pyflink.table.udf import ScalarFunction, udf

    class WriteToRedis(ScalarFunction):
        def __init__(self):
            self._sink = None

        def open(self, function_context):
            self._sink = RedisSink(project, view, part, store)
            self._kinds = [f.kind for f in input_fields(view, part)]
            group = function_context.get_metric_group().add_group("featurestore")
            self._written = group.counter(f"{view.name}_{part}_writes")

        def eval(self, *series):
            import pandas as pd

            columns = [to_list(s, kind) for s, kind in zip(series, self._kinds)]
            self._written.inc(self._sink.write(columns))
            return pd.Series([0] * len(series[0]), dtype="int64")

        def close(self):
            if self._sink is not None:
                self._sink.close()

        def is_deterministic(self):
            return False  # it writes: the planner must neither fold nor drop it

    return udf(WriteToRedis(), result_type=DataTypes.BIGINT(), func_type="pandas")


def to_list(series, kind: str) -> list:
    """A pandas column as Python values (Arrow lists arrive as numpy arrays)."""
    values = series.tolist()
    if kind == "list":
        return [None if v is None else v.tolist() for v in values]
    return values
