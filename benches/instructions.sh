#!/usr/bin/env bash
# Instruction counts of the in-memory TLS 1.3 handshake (issue 2), unpinned vs pinned, full
# and resumed, counted by callgrind inside `measured_handshakes` only (setup, key minting and
# the warm-up handshake are excluded). Wall-time free, so it holds on a busy machine.
#
# Usage: benches/instructions.sh [N]      (N handshakes per arm, default 50)
# Exit:  0 when every pinned arm meets the issue 2 targets, 2 when one misses them, 1 when
#        the build or valgrind fails.
# Env:   KEEP=dir  keep the callgrind.out files there (for callgrind_annotate)
# Needs: valgrind (apt-get install valgrind).
set -euo pipefail

n=${1:-50}
cd "$(dirname "$0")/.."

if ! command -v valgrind >/dev/null; then
    echo "valgrind not found: apt-get install valgrind" >&2
    exit 1
fi

out=${KEEP:-$(mktemp -d)}
mkdir -p "$out"

# Build with the bench profile (optimised, with symbols) and find the binary.
bin=$(cargo bench -p portcullis-benches --bench handshake_instructions --no-run \
        --message-format=json 2>"$out/build.log" |
    sed -n 's/.*"executable":"\([^"]*handshake_instructions[^"]*\)".*/\1/p' | tail -n1) || true
if [[ -z "$bin" || ! -x "$bin" ]]; then
    cat "$out/build.log" >&2
    echo "could not build the handshake_instructions bench" >&2
    exit 1
fi

# Instructions (Ir) counted in the measured region of one run.
count() { # arm mode
    local file="$out/callgrind.out.$1.$2"
    valgrind --tool=callgrind --callgrind-out-file="$file" \
        --toggle-collect='*measured_handshakes*' \
        "$bin" "$1" "$2" "$n" >/dev/null 2>"$out/valgrind.$1.$2.log" || {
        cat "$out/valgrind.$1.$2.log" >&2
        exit 1
    }
    sed -n 's/^summary: *\([0-9]*\).*/\1/p' "$file"
}

# Whether a pinned arm's count meets its target against the unpinned count.
within_target() { # mode pinned unpinned
    awk -v m="$1" -v t="$2" -v b="$3" 'BEGIN {
        if (b <= 0 || t <= 0) exit 1
        r = t / b
        exit !(m == "full" ? r <= 1.01 : r < 1.005)
    }'
}

declare -A ir
for mode in full resumed; do
    for arm in unpinned pinned pinned_leaf; do
        ir[$arm.$mode]=$(count "$arm" "$mode")
    done
done

echo "Instructions per handshake (callgrind Ir, mean of $n, aws-lc-rs, X25519MLKEM768, ECDSA P-256)"
printf '%-9s %-12s %14s %10s\n' mode arm instructions ratio
for mode in full resumed; do
    base=${ir[unpinned.$mode]}
    for arm in unpinned pinned pinned_leaf; do
        total=${ir[$arm.$mode]}
        awk -v m="$mode" -v a="$arm" -v t="$total" -v b="$base" -v n="$n" \
            'BEGIN { printf "%-9s %-12s %14.0f %10.4f\n", m, a, t / n, t / b }'
    done
done
# The targets of issue 2, compared here: every pinned arm within 1 % of unpinned on a full
# handshake, and equal to it at two decimals (ratio < 1.005) on a resumed one.
echo "target (issue 2): pinned/unpinned <= 1.01 full, 1.00 resumed (to two decimals: < 1.005)"
missed=0
for mode in full resumed; do
    for arm in pinned pinned_leaf; do
        if within_target "$mode" "${ir[$arm.$mode]}" "${ir[unpinned.$mode]}"; then
            echo "met:    $mode $arm"
        else
            echo "MISSED: $mode $arm"
            missed=1
        fi
    done
done
[[ -n "${KEEP:-}" ]] && echo "callgrind files in $out (callgrind_annotate $out/callgrind.out.pinned.full)"
[[ -z "${KEEP:-}" ]] && rm -rf "$out"
# 2: a target was missed (1 is a build or valgrind failure, above).
[[ $missed -eq 0 ]] || exit 2
exit 0
