#!/usr/bin/env bash
# The benchmark report of issue 6, in one command: prints the Markdown tables that
# benches/README.md carries ("Report (issue 6)"). Every figure is a ratio to a baseline
# measured in the same run.
#
#   bash benches/report.sh > /tmp/report.md      (about 3-4 minutes after the build)
#
# Sections: handshake pinned vs unpinned (criterion wall time, and callgrind instructions via
# benches/instructions.sh when valgrind is installed); sign/verify per algorithm (attest
# criterion bench); client layers vs bare hyper and the full client stack (loopback HTTPS
# keep-alive, req/s and p50/p99); the server stack vs a bare axum server under load from a
# second process; memory under a flood of unique keys.
#
# Env: SECS_CLIENT (default 3: seconds per client arm), SECS_SERVER (default 6: seconds per
#      server arm), FLOOD (default 1000000 unique keys), INSTR_N (default 20 handshakes per
#      arm under callgrind; 0 skips it), CRITERION_ARGS (default
#      "--warm-up-time 1 --measurement-time 2").
# Needs: cargo, jq; valgrind for the instruction counts (apt-get install valgrind jq).
set -euo pipefail

cd "$(dirname "$0")/.."
secs_client=${SECS_CLIENT:-3}
secs_server=${SECS_SERVER:-6}
flood=${FLOOD:-1000000}
instr_n=${INSTR_N:-20}
read -r -a criterion_args <<<"${CRITERION_ARGS:---warm-up-time 1 --measurement-time 2}"

for tool in cargo jq; do
    command -v "$tool" >/dev/null || { echo "$tool not found (apt-get install $tool)" >&2; exit 1; }
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
stamp="$work/stamp"
touch "$stamp"
target_dir=$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
started=$(date +%s)

log() { echo "report.sh: $*" >&2; }

# Median (ns) of one criterion benchmark of this run: refuses a stale estimate.
median_ns() { # dir under target/criterion
    local file="$target_dir/criterion/$1/new/estimates.json"
    if [[ ! -f "$file" || ! "$file" -nt "$stamp" ]]; then
        echo "no fresh criterion estimate at $file" >&2
        exit 1
    fi
    jq -r .median.point_estimate "$file"
}

bench() { # name: runs one criterion bench of portcullis-benches, output to a log
    log "cargo bench --bench $1 -- ${criterion_args[*]}"
    cargo bench -p portcullis-benches --bench "$1" -- "${criterion_args[@]}" \
        >"$work/$1.log" 2>&1 || { cat "$work/$1.log" >&2; exit 1; }
}

# Build the load harness first (bench profile), and find its binary.
log "building the stack_load harness (bench profile)"
bin=$(cargo bench -p portcullis-benches --bench stack_load --no-run --message-format=json \
        2>"$work/build.log" |
    sed -n 's/.*"executable":"\([^"]*stack_load[^"]*\)".*/\1/p' | tail -n1) || true
if [[ -z "$bin" || ! -x "$bin" ]]; then
    cat "$work/build.log" >&2
    echo "could not build the stack_load bench" >&2
    exit 1
fi

cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)
echo "Command: \`bash benches/report.sh\` (SECS_CLIENT=$secs_client SECS_SERVER=$secs_server" \
    "FLOOD=$flood INSTR_N=$instr_n, criterion ${criterion_args[*]})"
echo
echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'); commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
echo "- machine: $(nproc) vCPU ${cpu:-unknown CPU}, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo) RAM," \
    "load average at start $(cut -d' ' -f1-3 /proc/loadavg) (shared with other engineers' builds: wall times are noisy)"
echo "- $(rustc --version), $(uname -sr)"
echo

# --- Handshake -------------------------------------------------------------------------------
bench handshake
echo "### Handshake: pinned vs unpinned (criterion, in-memory TLS 1.3, ECDSA P-256, X25519MLKEM768)"
echo
echo "| handshake | arm | median µs | × unpinned |"
echo "|---|---|---:|---:|"
for mode in full resumed; do
    base=$(median_ns "handshake_$mode/unpinned")
    arms="unpinned pinned pinned_leaf"
    [[ $mode == resumed ]] && arms="unpinned pinned"
    for arm in $arms; do
        t=$(median_ns "handshake_$mode/$arm")
        awk -v m="$mode" -v a="$arm" -v t="$t" -v b="$base" \
            'BEGIN { printf "| %s | %s | %.1f | %.3f |\n", m, a, t / 1000, t / b }'
    done
done
echo
if [[ "$instr_n" -gt 0 ]]; then
    if command -v valgrind >/dev/null; then
        log "benches/instructions.sh $instr_n"
        echo "### Handshake: instructions (callgrind, \`benches/instructions.sh $instr_n\`)"
        echo
        echo '```'
        benches/instructions.sh "$instr_n"
        echo '```'
    else
        echo "Instruction counts skipped: valgrind is not installed (apt-get install valgrind)."
    fi
    echo
fi

# --- Sign / verify per algorithm -------------------------------------------------------------
bench attest
echo "### Sign and verify per algorithm (criterion \`attest\` bench, 1 KiB JSON body, in-process tower calls)"
echo
echo "Baseline: the same signed request into the bare app (\`attest/server/bare\`). Verify runs"
echo "the full \`VerifySignatureLayer\` (content-digest, signature base, key lookup, replay cache)."
echo
echo "| algorithm | sign µs | × bare call | verify µs | × bare call | verifying server µs | × bare call |"
echo "|---|---:|---:|---:|---:|---:|---:|"
bare=$(median_ns attest_server/bare)
for alg in ed25519 ecdsa-p256-sha256 hmac-sha256; do
    s=$(median_ns "attest_sign/$alg")
    v=$(median_ns "attest_verify/$alg")
    sv=$(median_ns "attest_server/verifying/$alg")
    awk -v a="$alg" -v s="$s" -v v="$v" -v sv="$sv" -v b="$bare" 'BEGIN {
        printf "| %s | %.1f | %.0f | %.1f | %.0f | %.1f | %.0f |\n", a, s/1000, s/b, v/1000, v/b, sv/1000, sv/b }'
done
awk -v b="$bare" 'BEGIN { printf "| (bare call) | | | | | %.2f | 1 |\n", b/1000 }'
echo

# --- Client layers, server stack, memory -----------------------------------------------------
log "stack_load client $secs_client"
echo "### Client layers vs bare hyper (loopback HTTPS keep-alive, real sockets)"
echo
"$bin" client "$secs_client"
echo
log "stack_load server $secs_server"
echo "### Server stack vs bare axum under load from a second process"
echo
"$bin" server "$secs_server"
echo
log "stack_load memory $flood"
echo "### Memory under a flood of unique keys"
echo
"$bin" memory "$flood"
echo
echo "Report produced in $(($(date +%s) - started)) s (load average at the end $(cut -d' ' -f1-3 /proc/loadavg))."
