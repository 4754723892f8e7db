#!/usr/bin/env bash
# Reverse-proxy throughput: Steward's web engine against nginx `proxy_pass` (with upstream
# keep-alive), both in front of the same backend, same load generator, same run.
#
#   benches/proxy_throughput.sh                  # wrk -t2 -c50 -d10s, median of 3 runs each
#   RUNS=5 DURATION=20s benches/proxy_throughput.sh
#
# The backend is nginx serving one small file (615 bytes), deployed as a `process` application
# of the web engine (`runtime/examples/serve_proxy.rs` runs it as the supervisor runs any process
# application: it gets `PORT`, it is health-checked, then proxied). The reference nginx proxies
# to that same backend process (the port it was given), with `keepalive 64` upstream connections
# per worker and the same `X-Forwarded-*` headers the engine adds. Access logs are off everywhere.
# Both proxies get WORKERS worker threads/processes (default 2); the backend BACKEND_WORKERS
# (default 1). Runs alternate (steward, nginx, steward, …) so a change in the machine's load hits
# both; the medians are compared. Each run also gives the proxy's CPU time per request (its own
# threads, or nginx's workers, from /proc, over the run): on a machine where everything shares
# the cores that decides the throughput, and the load of other work stretches it far less.
#
# Installs `nginx` and `wrk` with apt-get when missing. Builds the example with
# `cargo build --release` (BUILD=hot: see benches/static_throughput.sh; BUILD_ARGS/PROFILE_DIR
# override both). SERVE_PROXY=path runs that binary instead of building one (e.g. a copy of a
# previous build, to compare two versions in the same conditions). NICE=-15 runs every process
# of the measurement (both proxies, the backend, wrk) at that niceness, so other work on a shared
# machine disturbs it less (a negative value needs root).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DURATION=${DURATION:-10s}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-50}
WORKERS=${WORKERS:-2}
BACKEND_WORKERS=${BACKEND_WORKERS:-1}
RUNS=${RUNS:-3}
NICED=()
[ -n "${NICE:-}" ] && NICED=(nice -n "$NICE")
OURS_PORT=${OURS_PORT:-18191}
NGINX_PORT=${NGINX_PORT:-18192}
# The build profile and the load tools, as both throughput benches set them up.
. "$ROOT/benches/wrk_setup.sh"

OURS=$(example_binary serve_proxy "${SERVE_PROXY:-}")
[ -x "$OURS" ] || { echo "no binary at $OURS (set PROFILE_DIR)" >&2; exit 1; }

WORK=$(mktemp -d /tmp/steward-bench-XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
chmod 755 "$WORK"
mkdir -p "$WORK/site" "$WORK/app" "$WORK/backend/logs" "$WORK/nginx/logs"
python3 - "$WORK/site/index.html" <<'PY'
import sys
body = "<!DOCTYPE html>\n<html><head><title>bench</title></head><body>\n"
body += "<p>" + ("proxy throughput " * 40)[: 615 - len(body) - 24] + "</p>\n</body></html>\n"
open(sys.argv[1], "w").write(body)
PY
chmod -R a+rX "$WORK/site"
USER_LINE=$( [ "$(id -u)" -eq 0 ] && echo "user root;" || true )
TEMPS="client_body_temp_path body; proxy_temp_path proxy; fastcgi_temp_path fastcgi;
    uwsgi_temp_path uwsgi; scgi_temp_path scgi;"

# The process application: writes the backend's configuration for the PORT it is given, says
# where it listens, and becomes that nginx (so stopping the application stops it).
cat >"$WORK/app/run.sh" <<SH
#!/bin/sh
cat >"$WORK/backend/nginx.conf" <<CONF
worker_processes $BACKEND_WORKERS;
pid $WORK/backend/nginx.pid;
error_log $WORK/backend/logs/error.log warn;
daemon off;
$USER_LINE
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    $TEMPS
    types { text/html html; }
    server {
        listen 127.0.0.1:\$PORT;
        root $WORK/site;
        index index.html;
    }
}
CONF
echo "\$PORT" >"$WORK/backend.port"
exec "$NGINX" -p "$WORK/backend" -c "$WORK/backend/nginx.conf"
SH
chmod 755 "$WORK/app/run.sh"

"${NICED[@]}" "$OURS" "$WORK/app" run.sh "$OURS_PORT" --threads "$WORKERS" >"$WORK/ours.log" 2>&1 &
PIDS+=($!)

wait_port() {
    for _ in $(seq 1 300); do
        curl -fsS -o /dev/null "http://127.0.0.1:$1/index.html" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing answers on port $1" >&2
    cat "$WORK/ours.log" "$WORK/nginx.out" "$WORK"/*/logs/error.log 2>/dev/null >&2 || true
    exit 1
}
wait_port "$OURS_PORT"
BACKEND_PORT=$(cat "$WORK/backend.port")
BACKEND_PID=$(cat "$WORK/backend/nginx.pid")

cat >"$WORK/nginx/nginx.conf" <<CONF
worker_processes $WORKERS;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/logs/error.log warn;
daemon off;
$USER_LINE
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    $TEMPS
    upstream app {
        server 127.0.0.1:$BACKEND_PORT;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$http_host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$http_host;
            proxy_set_header X-Forwarded-Prefix /;
        }
    }
}
CONF
"${NICED[@]}" "$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" >"$WORK/nginx.out" 2>&1 &
PIDS+=($!)
wait_port "$NGINX_PORT"
cmp <(curl -fsS "http://127.0.0.1:$OURS_PORT/index.html") \
    <(curl -fsS "http://127.0.0.1:$NGINX_PORT/index.html")
echo "--- steward's response head" >&2
curl -sS -o /dev/null -D - "http://127.0.0.1:$OURS_PORT/index.html" >&2

# CPU time (clock ticks) of a proxy: its own threads, and for nginx its worker processes.
ticks() { # pid...
    local t=0 p
    for p in "$@" $(pgrep -P "$1" || true); do
        [ "$p" = "$BACKEND_PID" ] && continue
        t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
    done
    echo "$t"
}
run() { # name port pid n -> prints req/s, keeps wrk's output and the proxy's CPU per request
    local before after
    before=$(ticks "$3")
    "${NICED[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" "http://127.0.0.1:$2/index.html" \
        >"$WORK/$1.$4.wrk" 2>&1
    after=$(ticks "$3")
    awk -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" '
        /requests in/ {n = $1} /Requests\/sec/ {r = $2}
        END {printf "%.0f %.1f\n", r, t / hz * 1e6 / n}' "$WORK/$1.$4.wrk"
}
# Warm both (connections, caches) before measuring.
"${NICED[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d2s "http://127.0.0.1:$OURS_PORT/index.html" >/dev/null 2>&1
"${NICED[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d2s "http://127.0.0.1:$NGINX_PORT/index.html" >/dev/null 2>&1
OURS_ALL=()
NGINX_ALL=()
OURS_CPU=()
NGINX_CPU=()
for i in $(seq 1 "$RUNS"); do
    read -r r c < <(run steward "$OURS_PORT" "${PIDS[0]}" "$i")
    OURS_ALL+=("$r")
    OURS_CPU+=("$c")
    read -r r c < <(run nginx "$NGINX_PORT" "${PIDS[1]}" "$i")
    NGINX_ALL+=("$r")
    NGINX_CPU+=("$c")
    wrk_answers_ok "$WORK/steward.$i.wrk"
    wrk_answers_ok "$WORK/nginx.$i.wrk"
    echo "run $i: steward ${OURS_ALL[-1]} req/s (${OURS_CPU[-1]} µs CPU/request)," \
        "nginx ${NGINX_ALL[-1]} req/s (${NGINX_CPU[-1]} µs CPU/request)" >&2
done
for n in steward nginx; do
    echo "--- $n (last run)"
    grep -E "Latency|Requests/sec|Socket errors|Non-2xx" "$WORK/$n.$RUNS.wrk" || true
done
echo
python3 - "${OURS_ALL[*]}" "${NGINX_ALL[*]}" "${OURS_CPU[*]}" "${NGINX_CPU[*]}" <<PY
import statistics, sys
ours = [float(x) for x in sys.argv[1].split()]
theirs = [float(x) for x in sys.argv[2].split()]
cpu_ours = statistics.median(float(x) for x in sys.argv[3].split())
cpu_theirs = statistics.median(float(x) for x in sys.argv[4].split())
mo, mt = statistics.median(ours), statistics.median(theirs)
fmt = lambda xs: ", ".join(f"{x:.0f}" for x in xs)
print(f"steward  {mo:12.0f} req/s  (runs: {fmt(ours)})")
print(f"nginx    {mt:12.0f} req/s  (runs: {fmt(theirs)})")
print(f"ratio    {mo / mt:12.2f} (steward / nginx, medians of $RUNS; wrk -t$THREADS -c$CONNECTIONS -d$DURATION, "
      f"$WORKERS workers each, backend nginx with $BACKEND_WORKERS worker)")
print(f"CPU per request (proxy only, medians): steward {cpu_ours:.1f} µs, nginx {cpu_theirs:.1f} µs")
PY
