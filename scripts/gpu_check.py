#!/usr/bin/env python
"""Check a GPU machine: float32/float16 training, both split-attention forms (see --help)."""
import sys

from resnest_gluon.commands.gpu_check import main

if __name__ == "__main__":
    sys.exit(main())
