#!/usr/bin/env bash
# `make bench`: every benchmark in turn, each printing its figures next to a baseline measured in the same run.
# Needs wrk (apt-get install -y wrk) and, for time_to_alert, prometheus and prometheus-alertmanager (apt-get install -y
# prometheus prometheus-alertmanager). About 15 minutes in all. The whole output is also written to $BENCH_OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
BENCH_OUT=${BENCH_OUT:-/tmp/rutter-monitor-bench.txt}
missing=()
for tool in wrk prometheus; do command -v "$tool" >/dev/null || missing+=("$tool"); done
command -v prometheus-alertmanager >/dev/null || command -v alertmanager >/dev/null || missing+=(prometheus-alertmanager)
if ((${#missing[@]})); then
    echo "missing: ${missing[*]} (apt-get install -y ${missing[*]})" >&2
    exit 1
fi
{
    for bench in ingest scrape scale economy time_to_alert; do
        "$PYTHON" "bench/$bench.py"
    done
} 2>&1 | tee "$BENCH_OUT"
echo "output written to $BENCH_OUT"
