#!/usr/bin/env bash
# sdkguard's demo traced into Arize Phoenix, and a screenshot of a retried call's trace.
#
#   bash examples/phoenix/run.sh
#
# 1. makes examples/phoenix/.venv with arize-phoenix and sdkguard[otel] (this checkout);
# 2. starts `phoenix serve` on 127.0.0.1 (UI and OTLP/HTTP on $PHOENIX_PORT, gRPC on
#    $PHOENIX_GRPC_PORT), with a fresh database, no telemetry and no external resources;
# 3. runs `python -m sdkguard demo --fast --otlp http://127.0.0.1:$PHOENIX_PORT`;
# 4. finds the trace of the call retried after an HTTP 529 and screenshots it with headless
#    Chromium (Debian: apt-get install chromium) into $SCREENSHOT;
# 5. stops Phoenix. KEEP=1 keeps it running instead, until Ctrl-C, to look around.
#
# Everything listens on and talks to 127.0.0.1 only. See README.md beside this file.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PYTHON="${PYTHON:-python3}"
CHROMIUM="${CHROMIUM:-chromium}"
PHOENIX_PORT="${PHOENIX_PORT:-6006}"
PHOENIX_GRPC_PORT="${PHOENIX_GRPC_PORT:-4317}"
REASON="${REASON:-status_529}"
SCREENSHOT="${SCREENSHOT:-$REPO/docs/images/retried-call-trace.png}"
KEEP="${KEEP:-0}"
VENV="$HERE/.venv"
PHOENIX="http://127.0.0.1:$PHOENIX_PORT"

say() { printf '\n==> %s\n' "$*"; }
die() { printf 'run.sh: %s\n' "$*" >&2; exit 1; }

command -v "$CHROMIUM" >/dev/null || die "no $CHROMIUM: apt-get install chromium (or set CHROMIUM)"

# -- 1. the venv ----------------------------------------------------------------------------
if [[ ! -f "$VENV/.installed" || "$REPO/pyproject.toml" -nt "$VENV/.installed" ]]; then
    say "installing arize-phoenix and sdkguard[otel] into $VENV"
    [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet arize-phoenix -e "$REPO[otel]"
    touch "$VENV/.installed"
fi
"$VENV/bin/python" - <<'EOF'
from importlib.metadata import version
print("    " + ", ".join(f"{p} {version(p)}" for p in (
    "arize-phoenix", "anthropic", "sdkguard", "opentelemetry-exporter-otlp-proto-http")))
EOF

# -- 2. Phoenix -----------------------------------------------------------------------------
if "$VENV/bin/python" -c "import socket,sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 1)" \
    "$PHOENIX_PORT" 2>/dev/null; then
    die "something already listens on 127.0.0.1:$PHOENIX_PORT (set PHOENIX_PORT)"
fi
WORK="$(mktemp -d)"
PHOENIX_PID=""
stop() {
    if [[ -n "$PHOENIX_PID" ]] && kill -0 "$PHOENIX_PID" 2>/dev/null; then
        say "stopping Phoenix (pid $PHOENIX_PID)"
        kill "$PHOENIX_PID"
        wait "$PHOENIX_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap stop EXIT
trap 'exit 130' INT TERM

say "starting Phoenix on $PHOENIX (log: $WORK/phoenix.log)"
# serve_local.py is `phoenix serve` with its gRPC receiver on 127.0.0.1 rather than [::].
env PHOENIX_HOST=127.0.0.1 \
    PHOENIX_PORT="$PHOENIX_PORT" \
    PHOENIX_GRPC_PORT="$PHOENIX_GRPC_PORT" \
    PHOENIX_WORKING_DIR="$WORK/phoenix" \
    PHOENIX_TELEMETRY_ENABLED=false \
    PHOENIX_ALLOW_EXTERNAL_RESOURCES=false \
    "$VENV/bin/python" "$HERE/serve_local.py" >"$WORK/phoenix.log" 2>&1 &
PHOENIX_PID=$!
for _ in $(seq 120); do
    if "$VENV/bin/python" -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=1)" \
        "$PHOENIX/healthz" 2>/dev/null; then
        break
    fi
    kill -0 "$PHOENIX_PID" 2>/dev/null || { cat "$WORK/phoenix.log" >&2; die "Phoenix exited"; }
    sleep 1
done
"$VENV/bin/python" -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=1)" \
    "$PHOENIX/healthz" || { tail -30 "$WORK/phoenix.log" >&2; die "Phoenix did not come up"; }
echo "    up: UI $PHOENIX, OTLP/HTTP $PHOENIX/v1/traces"

# -- 3. the demo ----------------------------------------------------------------------------
say "python -m sdkguard demo --fast --otlp $PHOENIX"
# Phoenix files spans by the resource attribute openinference.project.name, and takes traces
# only (no OTLP metrics), so the demo sends none.
OTEL_RESOURCE_ATTRIBUTES="openinference.project.name=sdkguard-demo" \
    OTEL_METRICS_EXPORTER=none \
    NO_COLOR=1 \
    "$VENV/bin/python" -m sdkguard demo --fast --otlp "$PHOENIX"

# -- 4. the screenshot ----------------------------------------------------------------------
say "finding the trace of a call retried for $REASON"
URL="$("$VENV/bin/python" "$HERE/trace_url.py" --phoenix "$PHOENIX" --project sdkguard-demo \
    --reason "$REASON")"
echo "    $URL"

chrome() {
    "$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
        --disable-background-networking --disable-component-update --disable-sync \
        --hide-scrollbars --force-device-scale-factor=1 --user-data-dir="$(mktemp -d -p "$WORK")" \
        --window-size=1600,1000 --virtual-time-budget=15000 "$@" 2>>"$WORK/chromium.log"
}
# The page is rendered by JavaScript: check that the trace is on it before taking the picture.
chrome --dump-dom "$URL" >"$WORK/trace.html"
attempts="$(grep -o 'sdkguard\.attempt' "$WORK/trace.html" | wc -l)"
grep -q "$REASON" "$WORK/trace.html" && [[ "$attempts" -ge 2 ]] \
    || die "the trace page does not show the retried call (see $WORK/trace.html)"

say "screenshot: $SCREENSHOT"
mkdir -p "$(dirname "$SCREENSHOT")"
chrome --screenshot="$WORK/shot.png" "$URL" >/dev/null
[[ -s "$WORK/shot.png" ]] || { cat "$WORK/chromium.log" >&2; die "no screenshot"; }
mv "$WORK/shot.png" "$SCREENSHOT"
echo "    $(wc -c <"$SCREENSHOT") bytes"

if [[ "$KEEP" == "1" ]]; then
    say "Phoenix keeps running at $PHOENIX; Ctrl-C stops it"
    wait "$PHOENIX_PID" || true
fi
