#!/usr/bin/env python3
"""Dump every mmengine config under ``configs/`` (key-sorted ``to_dict()`` and ``pretty_text``) to JSON, or
compare two dumps: the check that a refactoring left every config as it was.

    python3 tools/analysis_tools/dump_configs.py dump before.json        # on the old tree
    python3 tools/analysis_tools/dump_configs.py dump after.json         # on the new tree
    python3 tools/analysis_tools/dump_configs.py compare before.json after.json

Files that are not mmengine configs (detectron2 LazyConfigs) are recorded with their error and compared too.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys


def dump(root: str) -> dict:
    import warnings

    from mmengine.config import Config

    warnings.filterwarnings('ignore', message='pkg_resources is deprecated')

    out = {}
    for path in sorted(glob.glob(os.path.join(root, 'configs', '**', '*.py'), recursive=True)):
        rel = os.path.relpath(path, root)
        try:
            cfg = Config.fromfile(path)
            as_dict = json.loads(json.dumps(cfg.to_dict(), sort_keys=True, default=repr))
            out[rel] = dict(dict=as_dict, text=cfg.pretty_text)
        except Exception as e:  # noqa: BLE001 - recorded, and compared like the rest
            out[rel] = dict(error=f'{type(e).__name__}: {e}')
    return out


def compare(a: dict, b: dict) -> list:
    problems = [f'only in the first: {k}' for k in sorted(set(a) - set(b))]
    problems += [f'only in the second: {k}' for k in sorted(set(b) - set(a))]
    problems += [f'differs: {k}' for k in sorted(set(a) & set(b)) if a[k] != b[k]]
    return problems


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest='cmd', required=True)
    d = sub.add_parser('dump')
    d.add_argument('out')
    d.add_argument('--root', default=os.getcwd(), help='the repository (default: the current directory)')
    c = sub.add_parser('compare')
    c.add_argument('first')
    c.add_argument('second')
    args = p.parse_args(argv)
    if args.cmd == 'dump':
        res = dump(args.root)
        with open(args.out, 'w') as f:
            json.dump(res, f, sort_keys=True, indent=1)
        errors = sum('error' in v for v in res.values())
        print(f'{len(res)} configs ({len(res) - errors} built, {errors} not mmengine configs) -> {args.out}')
        return 0
    with open(args.first) as f1, open(args.second) as f2:
        problems = compare(json.load(f1), json.load(f2))
    print('\n'.join(problems) if problems else 'identical')
    return 1 if problems else 0


if __name__ == '__main__':
    sys.exit(main())
