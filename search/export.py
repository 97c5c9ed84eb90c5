"""`python -m search.export --index DIR`, kept at its documented path: the export of the CLIP towers
to ONNX is search/indexing/export.py."""
import sys

from search.indexing.export import main

if __name__ == "__main__":
    sys.exit(main())
