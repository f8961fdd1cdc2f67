#!/usr/bin/env bash
# The demo, one command on a fresh Debian 12 machine (as root, or with sudo):
#
#   deploy/demo.sh                 # uses deploy/demo.toml
#   deploy/demo.sh my-config.toml  # or your own config
#
# Installs what is missing (deploy/bootstrap.sh), builds Vigil in release,
# starts a local Mosquitto when the config's broker is this machine and nothing
# listens there yet, then runs Vigil in the foreground. Ctrl-C stops both.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONFIG="$(realpath "${1:-$ROOT/deploy/demo.toml}")"

"$ROOT/deploy/bootstrap.sh"
# rustup installs into ~/.cargo/bin, which a fresh shell may not have on PATH.
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

cd "$ROOT"
cargo build --release --locked -p vigil

# The broker: read mqtt.url from the config (default mqtt://127.0.0.1:1883).
url="$(sed -n 's/^[[:space:]]*url[[:space:]]*=[[:space:]]*"\(mqtt[^"]*\)".*/\1/p' "$CONFIG" | head -n1)"
url="${url:-mqtt://127.0.0.1:1883}"
hostport="${url#*://}"
host="${hostport%%:*}"
port="${hostport##*:}"
[ "$port" = "$hostport" ] && port=1883

broker_pid=""
cleanup() {
    if [ -n "$broker_pid" ]; then
        kill "$broker_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT

if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then
    echo "[demo] using the MQTT broker already listening on $host:$port"
elif [ "$host" = "127.0.0.1" ] || [ "$host" = "localhost" ]; then
    mkdir -p "$ROOT/.vigil"
    conf="$ROOT/.vigil/mosquitto-demo.conf"
    printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$port" > "$conf"
    mosquitto -c "$conf" > "$ROOT/.vigil/mosquitto-demo.log" 2>&1 &
    broker_pid=$!
    for _ in $(seq 50); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.1
    done
    echo "[demo] started a local Mosquitto on 127.0.0.1:$port (log: .vigil/mosquitto-demo.log)"
else
    echo "[demo] broker $host:$port is not reachable yet; Vigil will keep retrying"
fi

# Vigil prints where its web page and API token are; add a link that signs
# the browser in (the page keeps the token and drops it from the address).
"$ROOT/target/release/vigil" run --config "$CONFIG" | while IFS= read -r line; do
    printf '%s\n' "$line"
    case "$line" in
        *"web page: "*) web="${line#*web page: }" ;;
        *"api token: "*)
            file="${line#*api token: }"
            if [ -f "$file" ]; then
                printf '  open:     %s#token=%s\n' "$web" "$(cat "$file")"
            fi
            ;;
    esac
done
