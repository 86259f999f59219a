#!/usr/bin/env python
"""Train ResNeSt (see ``--help``); runs as one process or under horovodrun."""
import sys

from resnest_gluon.commands.train import main

if __name__ == "__main__":
    sys.exit(main())
