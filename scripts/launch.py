#!/usr/bin/env python
"""Check every host, then run the job under horovodrun (``--help``)."""
import sys

from resnest_gluon.commands.launch import main

if __name__ == "__main__":
    sys.exit(main())
