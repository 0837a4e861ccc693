"""Code generated from protos/serving/v1/serving.proto by protos/generate.py.
The *_pb2 modules are regenerated, never edited by hand."""
