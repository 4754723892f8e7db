#!/usr/bin/env bash
# Static file throughput: Steward's web engine against nginx, same file, same load generator.
#
#   benches/static_throughput.sh                # wrk -t2 -c50 -d10s against both
#   DURATION=30s CONNECTIONS=100 benches/static_throughput.sh
#   ACCESS_LOG=1 benches/static_throughput.sh   # both servers write an access log
#
# Installs `nginx` and `wrk` with apt-get when missing. Builds `runtime/examples/serve_static.rs`
# with `cargo build --release`, or with BUILD=hot: a dev build (in target/bench, so the normal
# dev artifacts are not disturbed) in which only the crates on the request path are optimized:
# far cheaper than a release build of the whole tree (gix and all) on a shared 2-core machine,
# and the same code on the hot path. BUILD_ARGS/PROFILE_DIR override both.
# SERVE_STATIC=path runs that binary instead of building one (a copy of another build, to compare
# two versions in the same conditions).
# Both servers get the same number of worker threads (WORKERS, default 2) on loopback ports.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DURATION=${DURATION:-10s}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-50}
WORKERS=${WORKERS:-2}
OURS_PORT=${OURS_PORT:-18181}
NGINX_PORT=${NGINX_PORT:-18182}
# The build profile and the load tools, as both throughput benches set them up.
. "$ROOT/benches/wrk_setup.sh"

OURS=$(example_binary serve_static "${SERVE_STATIC:-}")
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
mkdir -p "$WORK/site" "$WORK/nginx/logs"
# The same small file for both: an HTML page of nginx's default-page size (615 bytes).
python3 - "$WORK/site/index.html" <<'PY'
import sys
body = "<!DOCTYPE html>\n<html><head><title>bench</title></head><body>\n"
body += "<p>" + ("static throughput " * 40)[: 615 - len(body) - 24] + "</p>\n</body></html>\n"
open(sys.argv[1], "w").write(body)
PY
chmod -R a+rX "$WORK/site"

if [ -n "${ACCESS_LOG:-}" ]; then
    OURS_LOG="--access-log"; NGINX_LOG="access_log $WORK/nginx/logs/access.log;"
else
    OURS_LOG=""; NGINX_LOG="access_log off;"
fi
cat >"$WORK/nginx/nginx.conf" <<CONF
worker_processes $WORKERS;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/logs/error.log warn;
daemon off;
$( [ "$(id -u)" -eq 0 ] && echo "user root;" )
events { worker_connections 4096; }
http {
    $NGINX_LOG
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    client_body_temp_path $WORK/nginx/body;
    proxy_temp_path $WORK/nginx/proxy;
    fastcgi_temp_path $WORK/nginx/fastcgi;
    uwsgi_temp_path $WORK/nginx/uwsgi;
    scgi_temp_path $WORK/nginx/scgi;
    types { text/html html; }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        root $WORK/site;
        index index.html;
    }
}
CONF

"$OURS" "$WORK/site" "$OURS_PORT" --threads "$WORKERS" $OURS_LOG >"$WORK/ours.log" 2>&1 &
PIDS+=($!)
"$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" >"$WORK/nginx.out" 2>&1 &
PIDS+=($!)

wait_port() {
    for _ in $(seq 1 100); do
        curl -fsS -o /dev/null "http://127.0.0.1:$1/index.html" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing answers on port $1" >&2
    cat "$WORK/ours.log" "$WORK/nginx.out" "$WORK/nginx/logs/error.log" 2>/dev/null >&2 || true
    exit 1
}
wait_port "$OURS_PORT"
wait_port "$NGINX_PORT"
cmp <(curl -fsS "http://127.0.0.1:$OURS_PORT/index.html") <(curl -fsS "http://127.0.0.1:$NGINX_PORT/index.html")

run() { # name port -> prints req/s, keeps wrk's output
    wrk -t"$THREADS" -c"$CONNECTIONS" -d2s "http://127.0.0.1:$2/index.html" >/dev/null 2>&1 || true
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" "http://127.0.0.1:$2/index.html" >"$WORK/$1.wrk" 2>&1
    awk '/Requests\/sec/ {print $2}' "$WORK/$1.wrk"
}
ours=$(run steward "$OURS_PORT")
theirs=$(run nginx "$NGINX_PORT")
wrk_answers_ok "$WORK/steward.wrk"
wrk_answers_ok "$WORK/nginx.wrk"
for n in steward nginx; do
    echo "--- $n"; grep -E "Latency|Requests/sec|Socket errors|Non-2xx" "$WORK/$n.wrk" || true
done
echo
printf 'steward  %12.0f req/s\n' "$ours"
printf 'nginx    %12.0f req/s\n' "$theirs"
python3 -c "print(f'ratio    {float($ours)/float($theirs):12.2f} (steward / nginx; wrk -t$THREADS -c$CONNECTIONS -d$DURATION, $WORKERS workers each)')"
