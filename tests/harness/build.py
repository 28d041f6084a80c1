#!/usr/bin/env python3
"""Builds the C test programs: python3 tests/harness/build.py [progs|hostile|deploy|all]
(what tests/Makefile and tests/hostile/Makefile run; the suites call harness.build_programs)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import harness  # noqa: E402


def main(argv):
    kinds = argv or ['progs']
    if kinds == ['all']:
        kinds = sorted(harness.PROGRAM_SETS)
    for kind in kinds:
        if kind not in harness.PROGRAM_SETS:
            sys.stderr.write('unknown set %r (one of %s, or all)\n' % (kind, ', '.join(sorted(harness.PROGRAM_SETS))))
            return 2
        try:
            harness.build_programs(kind)
        except (harness.TestFailure, OSError) as ex:
            sys.stderr.write('building %s: %s\n' % (kind, ex))
            return 1
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
