#!/usr/bin/env bash
# Builds vipd's container image FROM scratch with buildah, without a
# registry: stages vipd (stripped), the shared libraries `ldd` names and the
# CA roots, then builds packaging/Dockerfile over them and writes the image
# as an OCI archive.
#
#   bash packaging/image.sh [VIPD_BINARY] [OUTPUT.tar]
#
# Defaults: target/release/vipd (built if missing), target/vipd-image.tar.
# Environment: VIPD_IMAGE_TAG (vipd:VERSION), BUILDAH_ROOT (a private
# buildah store under target/, removed afterwards unless given).
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-target/release/vipd}"
out="${2:-target/vipd-image.tar}"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
tag="${VIPD_IMAGE_TAG:-vipd:$version}"
command -v buildah >/dev/null || { echo "image.sh: buildah is not installed (apt-get install buildah)" >&2; exit 2; }
if [ ! -x "$bin" ]; then
  cargo build --release --bin vipd
fi
stage=$(mktemp -d)
own_root=
if [ -z "${BUILDAH_ROOT:-}" ]; then
  BUILDAH_ROOT=$(mktemp -d -p "$(pwd)/target" buildah.XXXXXX)
  own_root=1
fi
cleanup() {
  rm -rf "$stage"
  if [ -n "$own_root" ]; then rm -rf "$BUILDAH_ROOT"; fi
}
trap cleanup EXIT
root="$stage/rootfs"
mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs" "$root/etc/vipd" "$root/var/lib/vipd" "$root/tmp"
strip -o "$root/usr/local/bin/vipd" "$bin"
# Every library the dynamic linker loads, at the path it loads it from.
for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
store=(--root "$BUILDAH_ROOT/root" --runroot "$BUILDAH_ROOT/run" --storage-driver vfs)
buildah "${store[@]}" build --quiet --isolation chroot -f "$(pwd)/packaging/Dockerfile" -t "$tag" "$stage" >/dev/null
rm -f "$out"
buildah "${store[@]}" push --quiet "$tag" "oci-archive:$out:$tag" >/dev/null
echo "image.sh: $tag -> $out ($(du -h "$out" | cut -f1))"
