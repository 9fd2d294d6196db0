"""Compares two results.json files field by field: do the numbers of two runs agree?

    python benchmarks/compare_results.py REFERENCE.json CANDIDATE.json [--rtol 1e-5] [--atol 0]

Walks both JSON trees together. Every number present in both must satisfy
|a - b| <= atol + rtol |a| (null == null; null against a number is a mismatch), every string and
bool must be equal, lists must have equal lengths; keys present in one file only are reported
(they fail the comparison unless --allow-missing). Keys named in --ignore (default: job,
schema_version, wall_time_s, path, finished) are skipped anywhere in the tree: they record where
and when, not what was measured. Prints a summary (numbers compared, largest relative difference
and where) and exits 1 on any mismatch; --json writes the summary as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any, Dict, List

DEFAULT_IGNORE = ("job", "schema_version", "wall_time_s", "path", "finished")


def compare(reference: Any, candidate: Any, *, rtol: float = 1e-5, atol: float = 0.0,
            ignore=DEFAULT_IGNORE) -> Dict[str, Any]:
  """{"numbers", "mismatches": [(where, ref, cand)], "missing": [where], "max_rel": (value, where)}."""
  out = {"numbers": 0, "mismatches": [], "missing": [], "max_rel": (0.0, "")}

  def walk(a, b, where):
    if isinstance(a, dict) and isinstance(b, dict):
      for k in sorted(set(a) | set(b)):
        if k in ignore:
          continue
        if k not in a or k not in b:
          out["missing"].append(f"{where}.{k} (only in {'reference' if k in a else 'candidate'})")
          continue
        walk(a[k], b[k], f"{where}.{k}")
      return
    if isinstance(a, list) and isinstance(b, list):
      if len(a) != len(b):
        out["mismatches"].append((where, f"length {len(a)}", f"length {len(b)}"))
        return
      for i, (x, y) in enumerate(zip(a, b)):
        walk(x, y, f"{where}[{i}]")
      return
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
    if number(a) and number(b):
      out["numbers"] += 1
      diff = abs(a - b)
      rel = diff / abs(a) if a != 0 else (0.0 if diff == 0 else math.inf)
      if rel > out["max_rel"][0]:
        out["max_rel"] = (rel, where)
      if not diff <= atol + rtol * abs(a):
        out["mismatches"].append((where, a, b))
      return
    if a != b:
      out["mismatches"].append((where, a, b))

  walk(reference, candidate, "")
  return out


def main(argv: List[str] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("reference")
  parser.add_argument("candidate")
  parser.add_argument("--rtol", type=float, default=1e-5)
  parser.add_argument("--atol", type=float, default=0.0)
  parser.add_argument("--ignore", default=",".join(DEFAULT_IGNORE),
                      help="comma-separated key names skipped anywhere in the tree")
  parser.add_argument("--allow-missing", action="store_true",
                      help="keys present in one file only do not fail the comparison")
  parser.add_argument("--json", default="", help="also write the summary to this file")
  args = parser.parse_args(argv)
  with open(args.reference) as f:
    ref = json.load(f)
  with open(args.candidate) as f:
    cand = json.load(f)
  res = compare(ref, cand, rtol=args.rtol, atol=args.atol,
                ignore=tuple(k for k in args.ignore.split(",") if k))
  ok = not res["mismatches"] and (args.allow_missing or not res["missing"])
  print(f"{res['numbers']} numbers compared (rtol {args.rtol:g}, atol {args.atol:g}); largest "
        f"relative difference {res['max_rel'][0]:.3g} at {res['max_rel'][1] or '-'}")
  for where, a, b in res["mismatches"][:20]:
    print(f"MISMATCH {where}: {a!r} vs {b!r}")
  if len(res["mismatches"]) > 20:
    print(f"... {len(res['mismatches']) - 20} more mismatches")
  for where in res["missing"][:20]:
    print(f"MISSING {where}")
  print("EQUAL within tolerance" if ok else "DIFFERENT")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"reference": args.reference, "candidate": args.candidate, "rtol": args.rtol,
                 "atol": args.atol, "numbers": res["numbers"],
                 "max_relative_difference": res["max_rel"][0], "where": res["max_rel"][1],
                 "mismatches": [list(map(str, m)) for m in res["mismatches"]],
                 "missing": res["missing"], "equal": ok}, f, indent=1)
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
