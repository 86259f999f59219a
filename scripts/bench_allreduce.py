#!/usr/bin/env python
"""The measured allreduce of one gradient against the scaling model (``--help``)."""
import sys

from resnest_gluon.commands.bench_allreduce import main

if __name__ == "__main__":
    sys.exit(main())
