#!/usr/bin/env bash
# Smoke run of every fuzz target, cheap enough for CI: builds them once, then runs each for
# SMOKE_SECONDS (default 10) from its seeds. Exits non-zero on the first crash, leak, timeout
# or build failure; the crashing input is left under fuzz/artifacts/<target>/.
#
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz --locked`).
set -euo pipefail

cd "$(dirname "$0")"
seconds="${SMOKE_SECONDS:-10}"
# A fixed seed makes the CI run repeatable: a crash it finds is found again, not by luck.
seed="${SMOKE_SEED:-1}"
toolchain="${FUZZ_TOOLCHAIN:-+nightly}"
# SMOKE_TARGETS (space-separated) runs a subset.
read -r -a targets <<<"${SMOKE_TARGETS:-config_parse route_match access_log_format iptables_plan detect proxy_request upstream_response}"

if ! cargo "$toolchain" fuzz --version >/dev/null 2>&1; then
    echo "smoke.sh: cargo-fuzz or the nightly toolchain is missing" >&2
    exit 2
fi

start=$(date +%s)
cargo "$toolchain" fuzz build -O
for t in "${targets[@]}"; do
    # Generated corpus growth goes to corpus/<t> (git-ignored); seeds/<t> is only read.
    mkdir -p "corpus/$t"
    echo "== $t (${seconds}s)"
    mkdir -p artifacts
    log="artifacts/$t.log"
    if ! cargo "$toolchain" fuzz run -O "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$seconds" -seed="$seed" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "smoke.sh: $t failed; see fuzz/artifacts/$t/ and fuzz/$log" >&2
        exit 1
    fi
    grep -E '^(#[0-9]+.*DONE|stat::number_of_executed_units|stat::peak_rss_mb)' "$log" || true
done
echo "smoke.sh: all ${#targets[@]} targets clean in $(( $(date +%s) - start ))s"
