#!/usr/bin/env bash
# Recorded CPU run of the encoder-fusion baseline (text with dialogue context) on one full corpus, from a cold
# feature cache, plus the utterance-only MiniLM + logistic-regression reference computed in the same run.
#
#   evaluation/run_baseline.sh meld|emorynlp [--key value ...]     (extra args override the recipe YAML)
#
# Prints the command, wall times and dev/test weighted-F1; the run directory is runs/baseline/bench_<corpus>.
set -euo pipefail
cd "$(dirname "$0")/.."
corpus=${1:?usage: evaluation/run_baseline.sh meld|emorynlp [overrides]}
shift
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}   # no busy-waiting OpenMP threads on a shared CPU
export ERC_LLM_DATA_DIR=${ERC_LLM_DATA_DIR:-$(cd .. && pwd)/shared/data}
out=runs/baseline/bench_${corpus}
mkdir -p "$(dirname "$out")"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}   # also runs from a checkout without `pip install -e .`
rm -rf "$out"
cmd=("$PY" -m accelerate.commands.launch --num_processes 1 --num_machines 1 --mixed_precision no
     --dynamo_backend no --cpu recipes/baseline.py --config "recipes/encoder-fusion/${corpus}_text_context.yaml"
     --output_dir "$out" --feature_cache_dir "$out/feature_cache" --disable_tqdm true "$@")
echo "date:    $(date -u +%Y-%m-%dT%H:%MZ)"
echo "machine: $(nproc) CPU cores ($(lscpu | sed -n 's/^Model name: *//p')), $(free -g | awk '/Mem:/ {print $2}') GiB, no GPU"
echo "git:     $(git rev-parse --short HEAD)"
echo "command: ${cmd[*]}"
start=$(date +%s)
"${cmd[@]}" > "$out.log" 2>&1 || { tail -50 "$out.log"; exit 1; }
end=$(date +%s)
echo "baseline wall time: $((end - start)) s (log: $out.log)"
"$PY" -m erc_llm.baseline.reference --corpus "$corpus" --run-dir "$out" | tail -2
echo "reference wall time: $(( $(date +%s) - end )) s"
