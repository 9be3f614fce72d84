#!/bin/sh
# What the test suite needs beyond the Rust toolchain, installed where
# missing: the wasm32-wasip2 target (guests), the CNCF distribution registry
# and skopeo (Debian packages docker-registry, skopeo) and ORAS's Python
# client (pip package oras), which the image tests run against.
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

if ! python3 -c "import oras.client" >/dev/null 2>&1; then
    python3 -m pip install --quiet --user oras 2>/dev/null ||
        python3 -m pip install --quiet oras 2>/dev/null ||
        python3 -m pip install --quiet --break-system-packages oras
fi
