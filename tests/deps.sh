#!/bin/sh
# What the test suite needs beyond the Rust toolchain, installed where
# missing: the wasm32-wasip2 target (guests), the CNCF distribution registry
# and skopeo (Debian packages docker-registry, skopeo) and ORAS's Python
# client (pip package oras), which the image tests run against, and the
# official OpenAI Python client (pip package openai), which the sidecar's
# tests run against.
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
