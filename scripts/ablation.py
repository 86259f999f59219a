#!/usr/bin/env python
"""The radix x cardinality ablation grid: summary, train, report (see ``--help``)."""
import sys

from resnest_gluon.commands.ablation import main

if __name__ == "__main__":
    sys.exit(main())
