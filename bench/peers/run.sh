#!/bin/bash
# Interleaves `provisioner bench throughput --store postgres` with the graphile-worker and
# pg-boss runs of run.mjs on the same PostgreSQL server, ROUNDS times, and prints one table of
# medians with the load average before each run. Not part of CI.
#
#   bench/peers/run.sh [path/to/provisioner]     (default: target/release/provisioner)
#   ORDERS=5000 ROUNDS=3 PEER_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${1:-$here/../../target/release/provisioner}"
orders="${ORDERS:-5000}"
rounds="${ROUNDS:-3}"
url="${PEER_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
out="$(mktemp)"
[ -d "$here/node_modules" ] || (cd "$here" && npm install --no-audit --no-fund >/dev/null)
for round in $(seq "$rounds"); do
  for system in provisioner graphile pgboss; do
    load="$(cut -d' ' -f1 /proc/loadavg)"
    if [ "$system" = provisioner ]; then
      text="$("$bin" bench throughput --store postgres --orders "$orders" --workers 16 --waiting 0 \
        --database-url "$url" 2>/dev/null)"
      rate="$(sed -n 's/^  whole pipeline: *\([0-9.]*\) orders.*/\1/p' <<<"$text")"
      commits="$(sed -n 's/^  commits per order: *\([0-9.]*\).*/\1/p' <<<"$text")"
      cpu="$(sed -n 's/.*this process \([0-9.]*\) ms.*backends \([0-9.]*\) ms.*/\1 \2/p' <<<"$text")"
      echo "{\"system\":\"provisioner\",\"round\":$round,\"load\":$load,\"orders_per_s\":$rate,\"write_commits_per_order\":$commits,\"cpu_ms_per_order_process\":${cpu% *},\"cpu_ms_per_order_backends\":${cpu#* }}" >>"$out"
    else
      line="$(cd "$here" && PEER_ORDERS="$orders" PEER_DATABASE_URL="$url" node run.mjs "$system" 2>/dev/null | grep '^{' || true)"
      [ -n "$line" ] && echo "${line%\}},\"round\":$round,\"load\":$load}" >>"$out"
    fi
  done
done
node "$here/table.mjs" <"$out"
rm -f "$out"
