#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (ASan + UBSan) in BUILD/fuzz and runs each for SECONDS
# (default 25) on a copy of its seed corpus (tests/fuzz/corpus/<target>). Exits non-zero on the
# first finding; the crashing input is left in BUILD/fuzz/findings/.
#   tests/fuzz/run.sh BUILD [SECONDS]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=$(realpath -m "${1:?usage: run.sh BUILD [SECONDS]}")/fuzz
seconds=${2:-25}
command -v clang++ >/dev/null || { echo "fuzz: clang++ not installed (apt-get install clang)"; exit 1; }

launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
cmake -S "$here" -B "$build" -DCMAKE_CXX_COMPILER=clang++ "${launcher[@]}" >/dev/null
cmake --build "$build" -j2 >/dev/null

targets=(request_head_fuzzer response_head_fuzzer chunked_fuzzer invoke_target_fuzzer
         function_toml_fuzzer daemon_toml_fuzzer)
mkdir -p "$build/findings"
for t in "${targets[@]}"; do
  work="$build/corpus/$t"
  mkdir -p "$work"
  cp -n "$here/corpus/$t"/* "$work/" 2>/dev/null || true
  dict=()
  [ -f "$here/$t.dict" ] && dict=(-dict="$here/$t.dict")
  echo "fuzz: $t for ${seconds}s"
  if ! "$build/$t" -max_total_time="$seconds" -max_len=4096 -timeout=10 -rss_limit_mb=1024 \
       -print_final_stats=1 -artifact_prefix="$build/findings/$t-" "${dict[@]}" "$work" \
       > "$build/$t.log" 2>&1; then
    echo "fuzz: $t found a problem:"; tail -n 40 "$build/$t.log"; exit 1
  fi
  grep -E '^stat::number_of_executed_units|^stat::new_units_added' "$build/$t.log" | tr '\n' ' '
  echo
done
echo "fuzz: no findings"
