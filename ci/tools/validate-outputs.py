#!/usr/bin/env python3
"""Validate every KCIDB and JUnit file the end-to-end tests wrote (VANISH_E2E_ARTIFACTS).

KCIDB: against kcidb-io's v4.3 schema, then upgraded to its latest schema and validated again.
JUnit: parsed with junitparser (a real parser, not a regex) and checked for test cases.
Exits 1 on the first invalid file; prints one line per file and a closing count.
"""
import json
import pathlib
import sys

import kcidb_io
import junitparser


def main(root: str) -> int:
    files = sorted(pathlib.Path(root).iterdir()) if pathlib.Path(root).is_dir() else []
    kcidb = [f for f in files if f.suffix == ".json"]
    junit = [f for f in files if f.suffix == ".xml"]
    if not kcidb or not junit:
        print(f"validate-outputs: expected KCIDB and JUnit files in {root}, found {len(kcidb)} and {len(junit)}")
        return 1
    failed = 0
    for f in kcidb:
        data = json.loads(f.read_text())
        try:
            kcidb_io.schema.V4_3.validate(data)
            latest = kcidb_io.schema.LATEST.upgrade(data)
            kcidb_io.schema.LATEST.validate(latest)
        except Exception as e:  # the schema library raises several kinds
            print(f"FAIL {f.name}: {str(e).splitlines()[0]}")
            failed += 1
            continue
        print(f"ok   {f.name}: KCIDB v4.3, upgraded to the latest schema: {len(data.get('tests', []))} tests")
    for f in junit:
        try:
            xml = junitparser.JUnitXml.fromfile(str(f))
            cases = [c for suite in xml for c in suite]
            if not cases:
                raise ValueError("no test case")
        except Exception as e:
            print(f"FAIL {f.name}: {e}")
            failed += 1
            continue
        print(f"ok   {f.name}: JUnit, {len(cases)} test cases")
    total = len(kcidb) + len(junit)
    print(f"{total - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
