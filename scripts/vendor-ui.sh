#!/bin/sh
# Vendor the browser libraries the UI uses into vsrt_service/web/static/vendor/ (committed).
# The service serves only its own files (no CDN), so the exact versions pinned in
# vsrt_service/web/vendor/package.json and package-lock.json are installed with `npm ci
# --ignore-scripts` into a temporary folder, and only the ES modules the UI imports (and the
# licence) are copied, with a SHA256SUMS file that tests/test_player_ui.py checks.
# Run it after changing the pinned version; commit what it writes.
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PINS="$ROOT/vsrt_service/web/vendor"
DEST="$ROOT/vsrt_service/web/static/vendor/wavesurfer"
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
(cd "$DEST" && find . -type f ! -name SHA256SUMS | LC_ALL=C sort | sed 's|^\./||' | xargs sha256sum > SHA256SUMS)
echo "vendored wavesurfer.js $(cat "$DEST/VERSION") into ${DEST#"$ROOT"/}"
