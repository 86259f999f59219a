#!/usr/bin/env python
"""Modelled Horovod scaling efficiency of each ResNeSt depth (see ``--help``)."""
import sys

from resnest_gluon.commands.scaling import main

if __name__ == "__main__":
    sys.exit(main())
