#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time: fuzz/run.sh [seconds]
# (default 20 per target). Installs cargo-fuzz (pinned) if it is missing.
#
# cargo-fuzz needs nightly only for sanitizers (`-Zsanitizer`); with
# `-s none` it builds on stable (checked with 1.95), and the targets are
# safe Rust, so AddressSanitizer would add little. libFuzzer starts from
# the committed seeds in fuzz/corpus/<target>/ and writes the inputs it
# finds to fuzz/target/corpus/<target>/, so the committed corpus stays a
# handful of meaningful seeds (copy an input worth keeping there by hand:
# the workspace test tests/tests/fuzz_corpus.rs replays every file in it).
# A crash leaves its input in fuzz/artifacts/<target>/ and fails the
# script.
set -euo pipefail
cd "$(dirname "$0")"

seconds=${1:-20}
CARGO_FUZZ_VERSION=0.13.2

if ! cargo fuzz --version >/dev/null 2>&1; then
    started=$SECONDS
    cargo install --locked "cargo-fuzz@$CARGO_FUZZ_VERSION"
    echo "cargo-fuzz installed in $((SECONDS - started)) s"
fi

targets=$(cargo fuzz list)
started=$SECONDS
cargo fuzz build -s none --release
echo "fuzz targets built in $((SECONDS - started)) s"
for target in $targets; do
    echo "=== fuzz $target for ${seconds}s"
    mkdir -p "target/corpus/$target"
    cargo fuzz run -s none --release "$target" "target/corpus/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=5 -rss_limit_mb=2048 -print_final_stats=1
done
