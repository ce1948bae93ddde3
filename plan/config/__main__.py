"""``python -m plan.config --reference [--write]``: print (or write into README.md) the table of keys."""

from __future__ import annotations

import argparse
import sys

from plan.config.reference import README, reference_table, with_table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plan.config", description=__doc__)
    parser.add_argument("--reference", action="store_true", required=True, help="the README's table of config keys")
    parser.add_argument("--write", action="store_true", help="write it between README.md's markers")
    args = parser.parse_args(argv)
    table = reference_table()
    if args.write:
        README.write_text(with_table(README.read_text(), table))
        print(f"wrote the table of config keys into {README.name}")
    else:
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
