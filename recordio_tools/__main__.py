"""``python -m recordio_tools {pack,check,inspect,index} ...``"""
import argparse
import logging
import sys

from resnest_gluon.commands.cli import command
from resnest_gluon.data.recordio import rebuild_index

from . import check, inspect_shards, pack


def index_main(args) -> int:
    count = rebuild_index(args.rec)
    print(f"wrote {args.rec[:-4]}.idx ({count} records)")
    return 0


@command("recordio_tools")
def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m recordio_tools",
                                     description="Pack, check and inspect RecordIO shards.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module, help_text in (("pack", pack, "images -> shards"),
                                    ("check", check, "verify shards"),
                                    ("inspect", inspect_shards, "summarise shards")):
        module.build_parser(sub.add_parser(name, help=help_text)).set_defaults(run=module.run)
    index = sub.add_parser("index", help="rebuild the .idx of a .rec by scanning it")
    index.add_argument("rec", help="the .rec file")
    index.set_defaults(run=index_main)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
