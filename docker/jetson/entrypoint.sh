#!/bin/sh
# trapedge container start: build the TensorRT engines of the bundle for this Jetson when they
# are not in the engine cache yet (first start, new bundle, new JetPack), then run the appliance.
# `export-tensorrt` keys each engine by GPU name, TensorRT version, ONNX sha256 and precision and
# skips those already built, so later starts only check the cache. Arguments replace the default
# command (e.g. `docker run ... IMAGE trapedge run --config /etc/trapedge/edge.yaml --validate-config`).
set -eu

config="${TRAPEDGE_CONFIG:-/etc/trapedge/edge.yaml}"
bundle="${TRAPEDGE_BUNDLE:-/var/lib/trapedge/bundles/current}"
cache="${TRAPEDGE_ENGINE_CACHE:-/var/lib/trapedge/engines}"
precision="${TRAPEDGE_TRT_PRECISION:-both}"
calibration="${TRAPEDGE_CALIBRATION_DATA:-/var/lib/trapedge/calibration}"

log() {
    printf 'trapedge-entrypoint: %s\n' "$*" >&2
}

build_engines() {
    if [ "${TRAPEDGE_SKIP_ENGINES:-0}" = "1" ]; then
        log "TRAPEDGE_SKIP_ENGINES=1: not building TensorRT engines"
        return 0
    fi
    if [ ! -f "$bundle/manifest.json" ]; then
        log "no bundle at $bundle (manifest.json missing): mount one or set TRAPEDGE_BUNDLE"
        exit 2
    fi
    mkdir -p "$cache"
    log "TensorRT engines for $bundle into $cache (only missing ones are built; minutes on first start)"
    # INT8 calibration reads images from $calibration unless its cache (<key>.calib) is already there
    trapedge export-tensorrt --bundle "$bundle" --cache "$cache" --precision "$precision" --data "$calibration"
}

if [ "$#" -gt 0 ]; then
    exec "$@"
fi
build_engines
exec trapedge run --config "$config"
