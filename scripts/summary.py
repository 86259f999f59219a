#!/usr/bin/env python
"""Parameters, GFLOPs and stage shapes of zoo models (see ``--help``)."""
import sys

from resnest_gluon.commands.summary import main

if __name__ == "__main__":
    sys.exit(main())
