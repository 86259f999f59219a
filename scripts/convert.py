#!/usr/bin/env python
"""See ``--help``."""
import sys

from resnest_gluon.commands.convert import main

if __name__ == "__main__":
    sys.exit(main())
