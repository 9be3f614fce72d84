#!/bin/sh
# What the test suite needs beyond the Rust toolchain, installed where
# missing: the wasm32-wasip2 target (guests), the CNCF distribution registry
# and skopeo (Debian packages docker-registry, skopeo) and ORAS's Python
# client (pip package oras), which the image tests run against, and the
# official OpenAI Python client (pip package openai), which the sidecar's
# tests run against, and the official A2A SDK (a2a-sdk 1.x, in a virtualenv),
# which the daemon's tests run against.
set -eu

rustup target add wasm32-wasip2

missing=""
command -v docker-registry >/dev/null 2>&1 || missing="$missing docker-registry"
command -v skopeo >/dev/null 2>&1 || missing="$missing skopeo"
command -v unshare >/dev/null 2>&1 || missing="$missing util-linux"
if [ -n "$missing" ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $missing >/dev/null
fi

pip_install() {
    python3 -m pip install --quiet --user "$1" 2>/dev/null ||
        python3 -m pip install --quiet "$1" 2>/dev/null ||
        python3 -m pip install --quiet --break-system-packages "$1"
}
python3 -c "import oras.client" >/dev/null 2>&1 || pip_install oras
python3 -c "import openai" >/dev/null 2>&1 || pip_install openai

# The official A2A Python SDK (1.x), in a virtualenv of its own: its
# dependencies (protobuf, pydantic) stay out of the system's Python.
A2A_VENV="${CAIRN_A2A_VENV:-$HOME/.cache/cairn-a2a-venv}"
if ! "$A2A_VENV/bin/python3" -c "import a2a.client" >/dev/null 2>&1; then
    if ! python3 -m venv "$A2A_VENV" >/dev/null 2>&1; then
        sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >/dev/null
        python3 -m venv "$A2A_VENV"
    fi
    "$A2A_VENV/bin/pip" install --quiet 'a2a-sdk>=1.0.0,<2'
fi
