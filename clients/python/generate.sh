#!/usr/bin/env bash
# Generates the Python stubs for connections.v1 from ../../proto into ./gen (not committed).
# Uses the protoc bundled with grpcio-tools, which also ships the well-known types
# (google/protobuf/timestamp.proto), so no system protoc is needed.
#
#   PYTHON=.venv/bin/python ./generate.sh     # or any python with requirements.txt installed
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

PYTHON=${PYTHON:-python3}
PROTO_ROOT=../../proto
OUT=gen

shopt -s nullglob
protos=("$PROTO_ROOT"/connections/v1/*.proto)
if [[ ${#protos[@]} -eq 0 ]]; then
    echo "generate.sh: no .proto files under $PROTO_ROOT/connections/v1" >&2
    exit 1
fi

rm -rf "$OUT"
mkdir -p "$OUT"
# With -I at the proto root, the stubs import each other as `from connections.v1 import ...`.
"$PYTHON" -m grpc_tools.protoc \
    -I "$PROTO_ROOT" \
    --python_out="$OUT" \
    --pyi_out="$OUT" \
    --grpc_python_out="$OUT" \
    "${protos[@]}"
touch "$OUT/connections/__init__.py" "$OUT/connections/v1/__init__.py"
echo "generated $(ls "$OUT"/connections/v1/*_pb2*.py | wc -l) modules in $(pwd)/$OUT/connections/v1"
