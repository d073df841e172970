#!/usr/bin/env bash
# Reproduces the figures of docs/security.md against `provisioner serve` on loopback.
#   bench/security/run.sh holds|flood|guess|replay [NOFILE] [measure.py options...]
# NOFILE: the open-files limit serve runs under (default: the shell's). Each call starts one
# fresh serve (fresh SQLite, fresh storefront and admin secrets, built-in simulator) on
# 127.0.0.1:18080, runs one measurement, stops serve and prints the JSON result.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${PROVISIONER_BIN:-$here/../../target/release/provisioner}
cmd=$1; shift
nofile=${1:-}; [ $# -gt 0 ] && shift
dir=$(mktemp -d)
export PROV_STOREFRONT_SECRET=$("$bin" keygen) PROV_ADMIN_TOKEN=$("$bin" keygen)
export PROV_API=127.0.0.1:18080 PROV_PACKAGE=${PROV_PACKAGE:-9}
# PROV_TOML: extra settings for serve's ./provisioner.toml, e.g. to measure guessing without the
# throttle: PROV_TOML=$'[server]\nauth_failure_burst = 1000000000'
if [ -n "${PROV_TOML:-}" ]; then printf '%s\n' "$PROV_TOML" >"$dir/provisioner.toml"; fi
(
  cd "$dir"
  if [ -n "$nofile" ]; then ulimit -n "$nofile"; fi
  PROVISIONER_DATABASE_URL="sqlite://$dir/p.db" PROVISIONER_LISTEN=$PROV_API \
  PROVISIONER_STOREFRONTS="shop:$PROV_STOREFRONT_SECRET" \
  PROVISIONER_ADMIN_TOKENS="alice:$PROV_ADMIN_TOKEN" \
  exec "$bin" serve >"$dir/serve.log" 2>&1
) &
pid=$!
trap 'kill -TERM $pid 2>/dev/null || true; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -sf "http://$PROV_API/healthz" >/dev/null && break; sleep 0.2; done
echo "serve pid $pid, nofile $(awk '/Max open files/{print $4}' /proc/$pid/limits), log $dir/serve.log" >&2
grep -o 'server.max_connections lowered.*' "$dir/serve.log" >&2 || true
ulimit -n "$(ulimit -Hn)"            # the client: as many sockets as allowed per process
python3 "$here/measure.py" "$cmd" $([ "$cmd" = flood ] && echo --pid $pid) "$@"
echo "'Too many open files' lines in the serve log: $(grep -ci 'too many open files' "$dir/serve.log" || true)" >&2
echo "accept errors logged: $(grep -c 'accepting a connection failed' "$dir/serve.log" || true)" >&2
