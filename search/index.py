"""`python -m search.index build|info|ann|publish ...`, kept at its documented path: the command
line is search/indexing/cli.py, the builder the rest of search/indexing/."""
import sys

from search.indexing.cli import main

if __name__ == "__main__":
    sys.exit(main())
