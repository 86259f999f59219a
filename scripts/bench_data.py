#!/usr/bin/env python
"""Input pipeline benchmark against the authors' pipeline and ImageRecordIter (``--help``)."""
import sys

from resnest_gluon.commands.bench_data import main

if __name__ == "__main__":
    sys.exit(main())
