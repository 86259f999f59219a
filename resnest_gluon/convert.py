"""``python -m resnest_gluon.convert SRC DST.params --model NAME``: the converter of
:mod:`resnest_gluon.commands.convert` (also ``scripts/convert.py``, ``resnest-convert``)."""
import sys

from .commands.convert import main

if __name__ == "__main__":
    sys.exit(main())
