"""``connmon import SPREADSHEET --output FILE | --output-dir DIR``: the command's steps and what it prints.

Read the sheet (:mod:`~monitor.config.spreadsheet`), find the columns and check every row
(:mod:`~monitor.config.site_rows`), merge into the YAML written before (:mod:`~monitor.config.importer`),
then print the changes and write, or, with ``--dry-run``, only print them. Nothing is written while a
row is bad, unless ``--skip-bad``: a half-imported region is worse than none, and every bad row is
listed at once so the sheet can be fixed in one pass.

Exit codes: 0 imported (or would be), 2 nothing written (bad rows, unusable columns, a file that would
not load).
"""

from __future__ import annotations

import argparse
import sys

from monitor.config import importer, site_rows
from monitor.config.spreadsheet import read_sheet
from monitor.errors import ConfigError


def run_import(args: argparse.Namespace) -> int:
    """Run the command with its parsed arguments; returns the exit code.

    Raises:
        ConfigError: the spreadsheet cannot be read, or the YAML there already cannot be merged into (exit 2).
    """
    try:
        mapping = site_rows.parse_map(args.map)
        box = site_rows.Box.parse(args.region_box) if args.region_box else None
    except ValueError as err:
        print(f"connmon: {err}", file=sys.stderr)
        return 2
    sheet = read_sheet(args.spreadsheet, site_rows.header_test(mapping))
    by_district = args.output_dir is not None
    found, problems = site_rows.columns(sheet, mapping,
                                        (*site_rows.REQUIRED, "district") if by_district else site_rows.REQUIRED)
    if problems:
        for text in problems:
            print(f"{sheet.source}: {text}", file=sys.stderr)
        return 2
    rows = site_rows.read_rows(sheet, found, box, need_district=by_district)
    for problem in rows.problems:
        print(str(problem), file=sys.stderr)
    if rows.problems:
        bad = len({p.row for p in rows.problems})
        if not args.skip_bad:
            print(f"connmon: {bad} bad rows in {sheet.source}; nothing written (fix them, or --skip-bad to "
                  f"import the {len(rows.sites)} good ones)", file=sys.stderr)
            return 2
        print(f"connmon: skipping {bad} bad rows; their sites are left as they were", file=sys.stderr)
    if rows.ignored:
        print(f"connmon: columns not imported: {', '.join(rows.ignored)}", file=sys.stderr)
    try:
        plan = importer.plan(rows, output=args.output, output_dir=args.output_dir, kind=args.kind)
    except ConfigError as err:
        print(f"{err}\nconnmon: the result would not load; nothing written", file=sys.stderr)
        return 2
    for change in plan.changes:
        print(change)
    if args.dry_run:
        print(f"dry run: {plan.summary()}; would write {len(plan.texts)} files")
        return 0
    importer.write(plan)
    print(f"{plan.summary()}; wrote {', '.join(sorted(plan.texts)) or 'nothing (no change)'}")
    return 0
