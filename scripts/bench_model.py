#!/usr/bin/env python
"""Model speed/memory benchmark against gluoncv (see ``--help``)."""
import sys

from resnest_gluon.commands.bench_model import main

if __name__ == "__main__":
    sys.exit(main())
