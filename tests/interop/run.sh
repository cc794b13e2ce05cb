#!/usr/bin/env bash
# Interop suite: the stock Prefect Python client and CLI against `blocks serve`, once on
# SQLite and once on PostgreSQL. Creates (and reuses) a virtual environment with the pinned
# packages of requirements.txt, starts the server on a free port with a temporary
# $BLOCKS_HOME, and runs the course's scenarios with pytest.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"

venv="$("$here/venv.sh")"

cargo build --quiet -p registry-server --bin blocks -p registry-client --example zoom_gcs --example save_blocks
blocks="$CARGO_TARGET_DIR/debug/blocks"
rust_example="$CARGO_TARGET_DIR/debug/examples/zoom_gcs"
rust_save="$CARGO_TARGET_DIR/debug/examples/save_blocks"
# The capabilities, on blocks the Prefect client saved (built apart, so `blocks` stays
# without them).
cargo build --quiet -p registry-client --features gcp,sqlalchemy --example blocks_at_work
rust_at_work="$CARGO_TARGET_DIR/debug/examples/blocks_at_work"

pg_admin="${BLOCKS_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
backends="${BLOCKS_INTEROP_BACKENDS:-sqlite postgres}"
status=0
for backend in $backends; do
    work="$(mktemp -d)"
    server_pid=""
    db_name=""
    cleanup() {
        [ -n "$server_pid" ] && kill -TERM "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null || true
        [ -n "$db_name" ] && psql "$pg_admin" -qc "drop database if exists $db_name with (force)" >/dev/null 2>&1 || true
        rm -rf "$work"
    }
    trap cleanup EXIT
    args=(serve --port 0)
    if [ "$backend" = postgres ]; then
        db_name="blocks_interop_$$_$RANDOM"
        psql "$pg_admin" -qc "create database $db_name" >/dev/null
        db_url="$(python3 -c "import sys, urllib.parse as u; p = u.urlparse(sys.argv[1]); print(p._replace(path='/' + sys.argv[2]).geturl())" "$pg_admin" "$db_name")"
        head -c 32 /dev/urandom | base64 > "$work/master.key"
        chmod 600 "$work/master.key"
        args+=(--database-url "$db_url" --master-key-file "$work/master.key")
    fi
    BLOCKS_HOME="$work/home" BLOCKS_LOG=info "$blocks" "${args[@]}" > "$work/server.log" 2>&1 &
    server_pid=$!
    addr=""
    for _ in $(seq 1 100); do
        addr="$(sed -n 's/.*addr=\([0-9.:]*\).*/\1/p' "$work/server.log" | head -n 1)"
        [ -n "$addr" ] && break
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.1
    done
    if [ -z "$addr" ]; then
        echo "the server did not start on $backend:"; cat "$work/server.log"; exit 1
    fi
    # The first start wrote the admin token to $BLOCKS_HOME/profile.toml; with it, make the
    # scoped tokens the scenarios use.
    admin_token="$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["api_key"])' "$work/home/profile.toml")"
    new_token() {
        python3 - "http://$addr/api/tokens" "$admin_token" "$@" <<'PY'
import json, sys, urllib.request
url, admin, name, *scopes = sys.argv[1:]
req = urllib.request.Request(url, data=json.dumps({"name": name, "scopes": scopes}).encode(),
                             headers={"Authorization": f"Bearer {admin}", "Content-Type": "application/json"})
print(json.load(urllib.request.urlopen(req))["token"])
PY
    }
    pipeline_token="$(new_token pipeline read-secrets write)"
    readonly_token="$(new_token dashboard read)"
    writer_token="$(new_token writer write)"
    # Runs a Rust example as the pipeline, told of this server by BLOCKS_* variables only.
    as_pipeline() {
        env -u PREFECT_API_URL -u PREFECT_API_KEY BLOCKS_API_URL="http://$addr/api" \
            BLOCKS_API_KEY="$pipeline_token" "$@"
    }
    # Whether $out shows every pattern after the first argument, and neither that canary nor
    # a private key.
    shows_safely() {
        local canary="$1" pattern
        shift
        for pattern in "$@"; do
            grep -q "$pattern" <<<"$out" || return 1
        done
        ! grep -q "$canary" <<<"$out" && ! grep -q "PRIVATE KEY" <<<"$out"
    }
    echo "== interop on $backend: blocks serve at http://$addr/api"
    if ! PREFECT_API_URL="http://$addr/api" PREFECT_API_KEY="$pipeline_token" PREFECT_HOME="$work/prefect" \
        BLOCKS_INTEROP_BACKEND="$backend" BLOCKS_ADMIN_TOKEN="$admin_token" BLOCKS_READONLY_TOKEN="$readonly_token" BLOCKS_WRITE_TOKEN="$writer_token" \
        BLOCKS_SERVER_LOG="$work/server.log" \
        "$venv/bin/python" -m pytest -q -p no:cacheprovider "$here/test_prefect_client.py" "$here/test_console_created.py"; then
        status=1
        echo "== server log ($backend)"; tail -n 50 "$work/server.log"
    fi
    # The blocks the Prefect client saved, loaded in Rust by the client's example.
    echo "== the Rust example loads what Prefect saved ($backend)"
    if ! out="$(as_pipeline "$rust_example" 2>&1)" \
        || ! shows_safely canary-interop "bucket:  dtc-data-lake" "project: dtc-de"; then
        status=1
        echo "the Rust example failed on $backend:"; echo "$out"
    fi
    echo "== the Rust example loads what the console created ($backend)"
    if ! out="$(as_pipeline "$rust_example" zoom-console-gcs 2>&1)" \
        || ! shows_safely canary-console "bucket:  dtc_data_lake_console" "project: dtc-de"; then
        status=1
        echo "the Rust example failed on the console's blocks on $backend:"; echo "$out"
    fi
    echo "== the Rust capabilities on what Prefect saved ($backend)"
    if ! out="$(as_pipeline "$rust_at_work" 2>&1)" \
        || ! shows_safely canary-interop "service account: .*@" "project: dtc-de" \
            "backend: PostgreSQL (postgresql+psycopg2)" \
            'host: Some("localhost"), port: Some(5432), database: Some("ny_taxi")'; then
        status=1
        echo "the Rust capabilities failed on $backend:"; echo "$out"
    fi
    # …and what Rust saved, loaded by Prefect.
    echo "== Prefect loads what Rust saved ($backend)"
    export BLOCKS_EXAMPLE_SECRET="rust-canary-$RANDOM"
    export BLOCKS_EXAMPLE_KEY_FILE="$work/service-account.json"
    "$venv/bin/python" - "$BLOCKS_EXAMPLE_KEY_FILE" <<'PY'
import json, sys
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
json.dump({"type": "service_account", "project_id": "dtc-de", "private_key_id": "rust", "private_key": pem,
           "client_email": "svc@dtc-de.iam.gserviceaccount.com", "client_id": "1",
           "token_uri": "https://oauth2.googleapis.com/token"}, open(sys.argv[1], "w"))
PY
    if ! as_pipeline "$rust_save" \
        || ! PREFECT_API_URL="http://$addr/api" PREFECT_API_AUTH_STRING="prefect:$pipeline_token" PREFECT_HOME="$work/prefect" \
            "$venv/bin/python" -m pytest -q -p no:cacheprovider "$here/test_rust_saved.py"; then
        status=1
        echo "Rust-saved blocks did not load in Prefect on $backend"
    fi
    cleanup
    trap - EXIT
done
# `blocks import-prefect` from a real Prefect server (the pinned one, from the same virtual
# environment) seeded with the course's blocks.
echo "== blocks import-prefect from a running Prefect $("$venv/bin/python" -c 'import prefect; print(prefect.__version__)')"
pwork="$(mktemp -d)"
prefect_pid=""
ours_pid=""
cleanup_import() {
    [ -n "$prefect_pid" ] && kill "$prefect_pid" 2>/dev/null && wait "$prefect_pid" 2>/dev/null || true
    [ -n "$ours_pid" ] && kill "$ours_pid" 2>/dev/null && wait "$ours_pid" 2>/dev/null || true
    rm -rf "$pwork"
}
trap cleanup_import EXIT
pport="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
PREFECT_HOME="$pwork/prefect-server" PREFECT_UI_ENABLED=false PREFECT_SERVER_ANALYTICS_ENABLED=false \
    "$venv/bin/prefect" server start --host 127.0.0.1 --port "$pport" > "$pwork/prefect.log" 2>&1 &
prefect_pid=$!
for _ in $(seq 1 240); do
    curl -sf "http://127.0.0.1:$pport/api/health" >/dev/null 2>&1 && break
    kill -0 "$prefect_pid" 2>/dev/null || break
    sleep 0.5
done
seed_canary="prefect-canary-$RANDOM"
# `blocks import-prefect` from that server into ours' $BLOCKS_HOME, with none of the
# caller's API variables.
import_prefect() {
    env -u PREFECT_API_URL -u PREFECT_API_KEY -u BLOCKS_API_URL -u BLOCKS_API_KEY BLOCKS_HOME="$pwork/home" \
        "$blocks" --json import-prefect --url "http://127.0.0.1:$pport/api"
}
BLOCKS_HOME="$pwork/home" BLOCKS_LOG=info "$blocks" serve --port 0 > "$pwork/ours.log" 2>&1 &
ours_pid=$!
ours=""
for _ in $(seq 1 100); do
    ours="$(sed -n 's/.*addr=\([0-9.:]*\).*/\1/p' "$pwork/ours.log" | head -n 1)"
    [ -n "$ours" ] && break
    sleep 0.1
done
if ! SEED_CANARY="$seed_canary" PREFECT_API_URL="http://127.0.0.1:$pport/api" PREFECT_HOME="$pwork/prefect-client" \
        "$venv/bin/python" "$here/seed_prefect.py" > "$pwork/seed.log" 2>&1; then
    status=1; echo "could not seed the Prefect server:"; tail -n 20 "$pwork/seed.log"; tail -n 20 "$pwork/prefect.log"
elif ! first="$(import_prefect 2>&1)" \
        || ! grep -q '"created": 5' <<<"$first"; then
    status=1; echo "import-prefect failed: $first"
elif ! again="$(import_prefect 2>&1)" \
        || ! grep -q '"created": 0' <<<"$again" || ! grep -q '"kept": 5' <<<"$again"; then
    status=1; echo "a second import-prefect was not idempotent: $again"
elif ! secret="$(BLOCKS_HOME="$pwork/home" "$blocks" inspect secret/api-token --show-secrets 2>&1)" \
        || ! grep -q "$seed_canary" <<<"$secret"; then
    status=1; echo "the imported secret is wrong: $secret"
elif ! inline="$(BLOCKS_HOME="$pwork/home" "$blocks" inspect gcs-bucket/inline-gcs --show-secrets 2>&1)" \
        || ! grep -q '"project":"inline"' <<<"$inline" || ! grep -q "$seed_canary" <<<"$inline"; then
    status=1; echo "the imported bucket with anonymous credentials is wrong: $inline"
elif ! out="$(BLOCKS_HOME="$pwork/home" "$rust_example" 2>&1)" || ! grep -q "project: dtc-de" <<<"$out"; then
    status=1; echo "the imported zoom-gcs does not load in Rust: $out"
elif grep -q "$seed_canary" "$pwork/ours.log"; then
    status=1; echo "a secret reached the server log"
else
    echo "imported: $first" | tr -d '\n '; echo
fi
cleanup_import
trap - EXIT
exit $status
