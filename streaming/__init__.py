"""Streaming engine: the same logical plan, run continuously by PyFlink.

Stream views compile to Flink SQL (sources, per-tile partial aggregates) and
a sink writes tiles to Redis through `featurestore.layout`, so a tile written
by the stream merges with one written by batch materialization.
"""
