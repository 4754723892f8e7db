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

# Stops the bench when a wrk run got error answers: its rate would count failures as served.
wrk_answers_ok() { # wrk-output-file
    if grep -q "Non-2xx" "$1"; then
        echo "error answers in $1, the figures do not count:" >&2
        cat "$1" >&2
        exit 1
    fi
}

# The example binary to measure: OVERRIDE when set (a copy of another build, to compare two
# versions in the same conditions), else the example built here.
example_binary() { # example-name override
    if [ -n "$2" ]; then
        echo "$2"
        return
    fi
    echo "building $1 (${BUILD:-release}) ..." >&2
    (cd "$ROOT" && cargo build -q $BUILD_ARGS -p steward-runtime --example "$1") >&2 || exit 1
    echo "${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE_DIR/examples/$1"
}
