#!/usr/bin/env bash
# Salmon 3.3.0's own tests against mailrouter.compat.salmon. The sdist comes from PyPI into a
# temporary folder (never into this repository), every `salmon` module name in its tests is
# rewritten to `mailrouter.compat.salmon` (nothing else is changed), and the test files run in
# one session, from the sdist's folder (they read tests/data and write run/ there), with this
# project's interpreter ($SALMON_TESTS_PYTHON, default .venv/bin/python).
#
# Prints `salmon-tests: FILE passed=N failed=N errors=N` per file, then each failure with its
# exception. Exit status: pytest's (1 when a test failed), 3 when the sdist cannot be had.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
python="${SALMON_TESTS_PYTHON:-$root/.venv/bin/python}"
version=3.3.0
files=(test_handler test_message test_queue test_routing test_testing test_view test_bounce
    test_confirm)

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

if ! "$python" -m pip download --quiet --no-deps --no-binary :all: "salmon-mail==$version" \
    -d "$work" >"$work/pip.log" 2>&1; then
    cat "$work/pip.log" >&2
    echo "salmon-tests: cannot download salmon-mail $version from PyPI" >&2
    exit 3
fi
tar -xzf "$work/salmon_mail-$version.tar.gz" -C "$work"
cd "$work/salmon_mail-$version"
find tests -name '*.py' -exec sed -E -i \
    -e 's/\bsalmon\./mailrouter.compat.salmon./g' \
    -e 's/\b(from|import) salmon\b/\1 mailrouter.compat.salmon/g' {} +

status=0
paths=()
for name in "${files[@]}"; do paths+=("tests/$name.py"); done
"$python" -m pytest -q -p no:cacheprovider --continue-on-collection-errors --rootdir=. \
    --junitxml="$work/report.xml" "${paths[@]}" >"$work/pytest.log" 2>&1 || status=$?
[ -s "$work/report.xml" ] || { cat "$work/pytest.log" >&2; exit "$status"; }

"$python" - "$work/report.xml" "${files[@]}" <<'EOF'
import sys
import xml.etree.ElementTree as ET

report, names = sys.argv[1], sys.argv[2:]
counts = {name: {"passed": 0, "failed": 0, "errors": 0} for name in names}
problems = []
for case in ET.parse(report).iter("testcase"):
    dotted = f"{case.get('classname', '')}.{case.get('name', '')}".split(".")  # a collection
    module = next((name for name in names if name in dotted), None)  # error names the module
    if module is None:
        continue
    outcome = next((c for c in case if c.tag in ("failure", "error", "skipped")), None)
    kind = {"failure": "failed", "error": "errors"}.get(getattr(outcome, "tag", ""), "passed")
    if outcome is not None and outcome.tag == "skipped":
        continue
    counts[module][kind] += 1
    if outcome is not None:  # the exception's line of the traceback, else pytest's message
        raised = [ln[2:].strip() for ln in (outcome.text or "").splitlines() if ln.startswith("E ")]
        why = raised[-1] if raised else (outcome.get("message") or "")
        problems.append(f"salmon-tests:   {module}.py::{case.get('name')}: {why[:200]}")
for name in names:
    c = counts[name]
    print(f"salmon-tests: {name}.py passed={c['passed']} failed={c['failed']} errors={c['errors']}")
print("\n".join(problems))
EOF
exit "$status"
