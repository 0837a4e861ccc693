"""Regenerate the Python code of the protos under `protos/`.

    python protos/generate.py           # rewrite the generated files in place
    python protos/generate.py --check   # exit 1, naming them, if any is stale

The protos are compiled with `-I protos` into the repository root, so that
`protos/serving/v1/serving.proto` becomes the package `serving.v1` and the
generated imports (`from serving.v1 import serving_pb2`) match the package path.
The generated files are committed and never edited by hand.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PROTOS = ("serving/v1/serving.proto",)


def outputs(proto: str) -> list[str]:
    """The files protoc writes for `proto`, relative to the output root."""
    stem = proto.removesuffix(".proto")
    return [f"{stem}_pb2.py", f"{stem}_pb2.pyi", f"{stem}_pb2_grpc.py"]


def generate(out_dir: Path) -> None:
    """Compile every proto into `out_dir` (which must exist)."""
    from importlib.resources import files

    from grpc_tools import protoc

    well_known = files("grpc_tools") / "_proto"
    args = ["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{well_known}",
            f"--python_out={out_dir}", f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}", *(str(PROTO_ROOT / p) for p in PROTOS)]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed (see its message above)")


def stale_files() -> list[str]:
    """Generated files that are missing or differ from a fresh generation."""
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        stale = []
        for proto in PROTOS:
            for rel in outputs(proto):
                committed = ROOT / rel
                if not committed.exists() or committed.read_bytes() != (Path(tmp) / rel).read_bytes():
                    stale.append(rel)
        return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 if a generated file is stale")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        for rel in stale:
            print(f"stale: {rel}", file=sys.stderr)
        if stale:
            print("run `python protos/generate.py` and commit the result", file=sys.stderr)
        return 1 if stale else 0
    generate(ROOT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
