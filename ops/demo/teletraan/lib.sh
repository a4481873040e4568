# Shared by the demo-service hooks (sourced, not run). POSIX sh; needs only coreutils, grep and
# /proc (Linux). The agent runs every hook with TARGET set to the staged build (a symlink).
#
# Settings (environment, e.g. the env's script config):
#   DEMO_PORT       port to serve on (127.0.0.1), default 8000
#   DEMO_STATE_DIR  pid file and log of this host's instance, default $HOME/.demo-service
#
# Identity: the running instance is the process named in $DEMO_STATE_DIR/demo-service.pid AND
# whose command line carries that same pid file path. A stale pid file (the process is gone, or
# the pid now belongs to something else) is removed, never acted on: these hooks signal no other
# process. (deploy-sentinel killed whatever listened on port 8000.)

DEMO_PORT="${DEMO_PORT:-8000}"
DEMO_STATE_DIR="${DEMO_STATE_DIR:-${HOME:-/tmp}/.demo-service}"
# Seconds to wait for SIGTERM to end the service before SIGKILL, and for a start to write its
# pid file.
DEMO_STOP_TIMEOUT_S=10
DEMO_START_TIMEOUT_S=10

mkdir -p "$DEMO_STATE_DIR"
# Canonical, so the path in the service's command line matches whatever spelling a later hook
# is given.
DEMO_STATE_DIR="$(cd "$DEMO_STATE_DIR" && pwd -P)"
DEMO_PID_FILE="$DEMO_STATE_DIR/demo-service.pid"
DEMO_LOG="$DEMO_STATE_DIR/demo-service.log"

demo_log() {
    echo "[$(basename "$0")] $*"
}

demo_nap() {
    sleep 0.1 2>/dev/null || sleep 1
}

# Sets DEMO_BUILD (the build TARGET points at, resolved) and DEMO_BIN.
demo_require_target() {
    : "${TARGET:?TARGET must be set (the deploy agent sets it to the staged build)}"
    DEMO_BUILD="$(cd "$TARGET" && pwd -P)"
    DEMO_BIN="$DEMO_BUILD/bin/demo-service"
}

# True if pid $1 is a live demo-service of this state directory. A zombie has an empty command
# line and so counts as gone.
demo_is_ours() {
    if [ -d /proc/self ]; then
        [ -r "/proc/$1/cmdline" ] || return 1
        tr '\0' '\n' <"/proc/$1/cmdline" 2>/dev/null | grep -qxF -- "$DEMO_PID_FILE"
    else
        kill -0 "$1" 2>/dev/null
    fi
}

# True if pid $1 exists and is not a zombie (whatever its command line).
demo_is_alive() {
    if [ -d /proc/self ]; then
        state="$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$1/status" 2>/dev/null)" || true
        [ -n "$state" ] && [ "$state" != Z ]
    else
        kill -0 "$1" 2>/dev/null
    fi
}

# Waits up to $2 seconds for pid $1 to be gone; false if it is still there.
demo_wait_gone() {
    deadline=$(( $(date +%s) + $2 ))
    while demo_is_ours "$1"; do
        [ "$(date +%s)" -lt "$deadline" ] || return 1
        demo_nap
    done
}

# Stops this host's instance, if one runs: SIGTERM, then SIGKILL after DEMO_STOP_TIMEOUT_S.
demo_stop() {
    if [ ! -f "$DEMO_PID_FILE" ]; then
        demo_log "demo-service is not running (no $DEMO_PID_FILE)"
        return 0
    fi
    pid="$(cat "$DEMO_PID_FILE")"
    case "$pid" in
        '' | *[!0-9]*)
            demo_log "removing malformed pid file $DEMO_PID_FILE"
            rm -f "$DEMO_PID_FILE"
            return 0
            ;;
    esac
    if ! demo_is_ours "$pid"; then
        demo_log "removing stale pid file (pid $pid is not a demo-service of $DEMO_STATE_DIR)"
        rm -f "$DEMO_PID_FILE"
        return 0
    fi
    demo_log "stopping demo-service pid $pid"
    kill -TERM "$pid" 2>/dev/null || true
    if ! demo_wait_gone "$pid" "$DEMO_STOP_TIMEOUT_S"; then
        demo_log "pid $pid ignored SIGTERM for ${DEMO_STOP_TIMEOUT_S}s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        if ! demo_wait_gone "$pid" 5; then
            demo_log "pid $pid survived SIGKILL" >&2
            return 1
        fi
    fi
    rm -f "$DEMO_PID_FILE"
    demo_log "demo-service pid $pid stopped"
}

# Starts the service of the build TARGET points at, detached (stdin /dev/null, output appended
# to DEMO_LOG, so it holds none of the hook's descriptors), and waits until it listens (it
# writes its pid file after binding the port).
demo_start() {
    demo_require_target
    nohup "$DEMO_BIN" \
        --port "$DEMO_PORT" \
        --config "$DEMO_BUILD/teletraan/service.conf" \
        --version-file "$DEMO_BUILD/VERSION" \
        --pid-file "$DEMO_PID_FILE" \
        </dev/null >>"$DEMO_LOG" 2>&1 &
    started=$!
    deadline=$(( $(date +%s) + DEMO_START_TIMEOUT_S ))
    until [ -f "$DEMO_PID_FILE" ] && [ "$(cat "$DEMO_PID_FILE")" = "$started" ]; do
        # Not demo_is_ours: until nohup execs the service, the child's command line is sh's.
        if ! demo_is_alive "$started" || [ "$(date +%s)" -ge "$deadline" ]; then
            demo_log "demo-service did not start; last lines of $DEMO_LOG:" >&2
            tail -n 20 "$DEMO_LOG" >&2 || true
            kill -KILL "$started" 2>/dev/null || true
            return 1
        fi
        demo_nap
    done
    demo_log "demo-service $(cat "$DEMO_BUILD/VERSION") started: pid $started, port $DEMO_PORT"
}
