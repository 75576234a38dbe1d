#!/usr/bin/env bash
# The whole suite on a CUDA machine within one 10-minute call: scripts/gpu_check.sh three times
# side by side (the suite alone takes ~13 min on the H200 host), each part pinned to its own cores,
# because the tour's stop tests count CPU time and a busy neighbour on the same core inflates it.
#
#   OUT=/some/dir bash scripts/gpu_check_parts.sh     # writes OUT/gpu_check_{tour,b,c}.json and pytest logs
#
# The tour gets a quarter of the physical cores, parts B and C half of the rest each.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to a directory for the results}
mkdir -p "$OUT"
B="tests/test_memory.py tests/test_evaluate.py tests/test_model_parity.py tests/test_memory_tracker.py tests/test_train.py tests/test_nf4.py tests/test_qlora.py tests/test_lora.py tests/test_scratch.py tests/test_optim.py tests/test_docs_numbers.py tests/test_bench.py tests/test_on_cuda.py tests/test_advice.py tests/test_fused_projections.py"
C="tests/test_scripts.py tests/test_capstone.py tests/test_hub.py tests/test_distributed.py tests/test_tokenizer.py tests/test_decide.py tests/test_fairytales.py tests/test_matvec.py tests/test_checkpoint.py tests/test_generate.py tests/test_data.py tests/test_quant.py tests/test_fast_path.py tests/test_cuda_graph.py tests/test_load_quantized.py tests/test_kernels.py tests/test_packaging.py tests/test_torchrun.py"
all=$(ls tests/test_*.py | sort); listed=$(echo tests/test_tour.py $B $C | tr ' ' '\n' | sort)
if [ "$all" != "$listed" ]; then
  echo "the parts do not cover the suite (add new test files to B or C):"; diff <(echo "$all") <(echo "$listed"); exit 1
fi
# install once here, so the parts do not install under each other
python -m pip install -q --no-build-isolation --no-deps -e . >/dev/null 2>&1

read -r TOUR_CPUS B_CPUS C_CPUS < <(python3 - <<'PY'
import glob, math, os
cores = {}   # (package, core) -> its logical CPUs
for d in sorted(glob.glob("/sys/devices/system/cpu/cpu[0-9]*/topology")):
    cpu = int(d.split("/")[-2][3:])
    if cpu in os.sched_getaffinity(0):
        key = (open(f"{d}/physical_package_id").read().strip(), open(f"{d}/core_id").read().strip())
        cores.setdefault(key, []).append(cpu)
groups = sorted(cores.values(), key=min)
if len(groups) < 4:
    raise SystemExit(f"{len(groups)} cores: too few for three parts side by side (run scripts/gpu_check.sh)")
t = math.ceil(len(groups) / 4); rest = groups[t:]; h = len(rest) // 2
cpus = lambda gs: ",".join(str(c) for g in gs for c in g)  # noqa: E731
print(cpus(groups[:t]), cpus(rest[:h]), cpus(rest[h:]))
PY
)
[ -n "${C_CPUS:-}" ] || exit 1
echo "tour on CPUs $TOUR_CPUS; B on $B_CPUS; C on $C_CPUS"
pinned() { local cpus=$1; shift
  python3 -c 'import os, sys; os.sched_setaffinity(0, {int(c) for c in sys.argv[1].split(",")}); os.execvp(sys.argv[2], sys.argv[2:])' "$cpus" "$@"; }
count() { echo "$1" | tr ',' '\n' | wc -l; }
OUT=$OUT/tour FILES="tests/test_tour.py" pinned "$TOUR_CPUS" bash scripts/gpu_check.sh > "$OUT/tour.out" 2>&1 &
OMP_NUM_THREADS=$(count "$B_CPUS") OUT=$OUT/b FILES="$B" pinned "$B_CPUS" bash scripts/gpu_check.sh > "$OUT/b.out" 2>&1 &
OMP_NUM_THREADS=$(count "$C_CPUS") OUT=$OUT/c FILES="$C" pinned "$C_CPUS" bash scripts/gpu_check.sh > "$OUT/c.out" 2>&1 &
status=0
for job in $(jobs -p); do wait "$job" || status=1; done
for part in tour b c; do
  echo "== $part"; grep -E "^(FAILED|ERROR) " "$OUT/$part/pytest.log" | cut -c1-300; tail -n 1 "$OUT/$part/pytest.log"
done
exit $status
