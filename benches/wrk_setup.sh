# Shared by benches/static_throughput.sh and benches/proxy_throughput.sh (sourced, with ROOT set):
# the build profile (release, or BUILD=hot: see static_throughput.sh), and wrk and nginx
# installed when missing.
if [ "${BUILD:-release}" = hot ]; then
    HOT_ARGS="--config profile.dev.debug=0"
    for p in steward-runtime steward-schema tokio mio hyper hyper-util http httparse bytes \
        http-body http-body-util httpdate; do
        for kv in opt-level=3 debug-assertions=false overflow-checks=false; do
            HOT_ARGS="$HOT_ARGS --config profile.dev.package.$p.$kv"
        done
    done
    BUILD_ARGS=${BUILD_ARGS:-$HOT_ARGS}
    PROFILE_DIR=${PROFILE_DIR:-debug}
    export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target/bench}
fi
BUILD_ARGS=${BUILD_ARGS:---release}
PROFILE_DIR=${PROFILE_DIR:-release}

need() {
    command -v "$1" >/dev/null 2>&1 && return 0
    [ -x "/usr/sbin/$1" ] && return 0
    echo "installing $2 ..." >&2
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$2" >/dev/null
}
need wrk wrk
need nginx nginx
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
