"""Reads memcheck's XML report (scripts/valgrind.sh) and says what it found: every error
kind with its count, and whether each is in ferroloop's extension (a frame of the stack in
its shared object). Exits 1 on any invalid read, write or free, or jump, there."""

from __future__ import annotations

import collections
import os
import sys
import xml.etree.ElementTree as ET

FATAL = {"InvalidRead", "InvalidWrite", "InvalidFree", "MismatchedFree", "InvalidJump"}


def main(report: str, extension: str) -> int:
    ours_path = os.path.realpath(extension)
    counts: collections.Counter[tuple[str, bool]] = collections.Counter()
    fatal: list[str] = []
    where: list[str] = []
    for error in ET.parse(report).getroot().iter("error"):
        kind = error.findtext("kind", "?")
        objs = [os.path.realpath(o.text or "") for o in error.iter("obj")]
        ours = ours_path in objs
        counts[(kind, ours)] += 1
        what = error.findtext("what") or error.findtext("xwhat/text") or kind
        if ours and kind in FATAL:
            fns = [f.findtext("fn", "?") for f in error.iter("frame")][:12]
            where.append(f"{kind}: {what}\n      " + "\n      ".join(fns))
        if ours and kind in FATAL:
            fatal.append(what)
    for (kind, ours), n in sorted(counts.items()):
        print(f"  {n:5d} {kind} ({'in ferroloop' if ours else 'elsewhere'})")
    if not counts:
        print("  no errors")
    for w in where[:10]:
        print("  in ferroloop:", w)
    # (Leaks "in ferroloop" are pyo3's type objects, which live as long as the process.)
    if fatal:
        print(f"valgrind: {len(fatal)} invalid access(es) in ferroloop:")
        for what in fatal[:20]:
            print("   ", what)
        return 1
    print("valgrind: no invalid read or write in ferroloop's extension")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
