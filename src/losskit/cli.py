"""The `losskit` command: `losskit list`, `losskit run NAME|all [--quick] [--seeds N] [--epochs N]
[--out DIR]`. (Filled in by the recipes work.)"""

import argparse
import sys

from losskit import recipes


def main(argv=None):
    parser = argparse.ArgumentParser(prog="losskit")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list")
    args = parser.parse_args(argv)
    if args.command == "list":
        for name in recipes.RECIPES:
            print(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
