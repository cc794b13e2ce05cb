#!/usr/bin/env bash
# Prepares (once per requirements.txt) the Python virtual environment the tests use: the
# stock Prefect client and collections for the interop suite, and the GCS emulator the
# storage tests start. Prints the environment's path.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${BLOCKS_INTEROP_VENV:-$HOME/.cache/blocks-interop-venv}"
stamp="$venv/.requirements"
if ! cmp -s "$here/requirements.txt" "$stamp" 2>/dev/null; then
    echo "== creating the Python virtual environment in $venv" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt" >&2
    cp "$here/requirements.txt" "$stamp"
fi
echo "$venv"
