#!/bin/sh
# Vendor the browser libraries the UI uses into vsrt_service/web/static/vendor/ (committed).
# The service serves only its own files (no CDN), so the exact versions pinned in
# vsrt_service/web/vendor/package.json and package-lock.json are installed with `npm ci
# --ignore-scripts` into a temporary folder, and only the files the pages load (and the
# licences) are copied, each library with a SHA256SUMS file its test checks
# (tests/test_player_ui.py: wavesurfer.js; tests/test_openapi.py: swagger-ui-dist for /api/docs).
# Run it after changing the pinned version; commit what it writes.
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PINS="$ROOT/vsrt_service/web/vendor"
VENDOR="$ROOT/vsrt_service/web/static/vendor"
DEST="$VENDOR/wavesurfer"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

cp "$PINS/package.json" "$PINS/package-lock.json" "$WORK/"
(cd "$WORK" && npm ci --ignore-scripts --no-audit --no-fund)

SRC="$WORK/node_modules/wavesurfer.js"
rm -rf "$DEST"
mkdir -p "$DEST/plugins"
cp "$SRC/dist/wavesurfer.esm.js" "$DEST/"
cp "$SRC/dist/plugins/regions.esm.js" "$DEST/plugins/"
cp "$SRC/LICENSE" "$DEST/LICENSE"
node -e 'console.log(require(process.argv[1]).version)' "$SRC/package.json" > "$DEST/VERSION"
sums() { (cd "$1" && find . -type f ! -name SHA256SUMS | LC_ALL=C sort | sed 's|^\./||' | xargs sha256sum > SHA256SUMS); }
sums "$DEST"
echo "vendored wavesurfer.js $(cat "$DEST/VERSION") into ${DEST#"$ROOT"/}"

# Swagger UI for the API docs page (/api/docs): the self-contained bundle and its stylesheet.
# Its package's postinstall (a telemetry dependency) never runs (--ignore-scripts).
SRC="$WORK/node_modules/swagger-ui-dist"
DEST="$VENDOR/swagger-ui"
rm -rf "$DEST"
mkdir -p "$DEST"
cp "$SRC/swagger-ui-bundle.js" "$SRC/swagger-ui.css" "$SRC/LICENSE" "$SRC/NOTICE" "$DEST/"
node -e 'console.log(require(process.argv[1]).version)' "$SRC/package.json" > "$DEST/VERSION"
sums "$DEST"
echo "vendored swagger-ui-dist $(cat "$DEST/VERSION") into ${DEST#"$ROOT"/}"
