"""Makes the generated stubs (./gen, written by generate.sh) importable as `connections.v1`."""

import os
import sys

GEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gen")
if not os.path.isfile(os.path.join(GEN, "connections", "v1", "connection_service_pb2.py")):
    raise RuntimeError(f"no generated stubs in {GEN}: run ./generate.sh first (run_tests.sh does)")
sys.path.insert(0, GEN)
