"""Writes serving/feast_protos.binpb: the descriptors of Feast's serving API
(feast/serving/ServingService.proto, GrpcServer.proto and what they import),
taken from the installed feast package, which generated them from its .proto
files (Apache-2.0). The server loads them into a descriptor pool of its own
(serving.feast_api), so it answers Feast's clients without importing feast,
and without clashing with feast's classes in a process that has both.

    .venv/bin/python scripts/vendor_feast_protos.py    # after upgrading feast
"""
from __future__ import annotations

from pathlib import Path

from google.protobuf import descriptor_pb2

from feast.protos.feast.serving import GrpcServer_pb2

OUT = Path(__file__).resolve().parent.parent / "serving" / "feast_protos.binpb"


def main() -> None:
    files, seen = [], set()

    def add(file_descriptor) -> None:
        if file_descriptor.name in seen:
            return
        for dependency in file_descriptor.dependencies:
            add(dependency)
        seen.add(file_descriptor.name)
        proto = descriptor_pb2.FileDescriptorProto()
        file_descriptor.CopyToProto(proto)
        files.append(proto)

    add(GrpcServer_pb2.DESCRIPTOR)
    OUT.write_bytes(descriptor_pb2.FileDescriptorSet(file=files).SerializeToString())
    print(f"wrote {OUT} ({', '.join(f.name for f in files)})")


if __name__ == "__main__":
    main()
