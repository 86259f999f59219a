#!/usr/bin/env python
"""The demo run by ``make demo`` (see ``--help``)."""
import sys

from resnest_gluon.commands.demo import main

if __name__ == "__main__":
    sys.exit(main())
