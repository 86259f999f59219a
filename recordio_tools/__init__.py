"""Tools for RecordIO shards: ``pack`` images into shards, ``check`` them, ``inspect`` them,
rebuild an ``index``. The record format itself lives in :mod:`resnest_gluon.data.recordio`.

Run as ``python -m recordio_tools COMMAND ...`` or the console scripts ``recordio-pack``,
``recordio-check``, ``recordio-inspect``.
"""
