#!/usr/bin/env bash
# Buildroot's Raspberry Pi post-image, with this tree's genimage template (boot, rootfs, data).
set -euo pipefail

: "${BINARIES_DIR:?run by Buildroot as a post-image script}" "${BUILD_DIR:?}"
board_dir="$(dirname "$0")"
genimage_cfg="${BINARIES_DIR}/genimage.cfg"

files=()
for f in "${BINARIES_DIR}"/*.dtb "${BINARIES_DIR}"/rpi-firmware/*; do
	files+=("${f#"${BINARIES_DIR}"/}")
done
kernel=$(sed -n 's/^kernel=//p' "${BINARIES_DIR}/rpi-firmware/config.txt")
files+=("${kernel}")

boot_files=$(printf '\\t\\t\\t"%s",\\n' "${files[@]}")
sed "s|#BOOT_FILES#|${boot_files}|" "${board_dir}/genimage.cfg.in" >"${genimage_cfg}"

rootpath_tmp="$(mktemp -d)"
trap 'rm -rf "${rootpath_tmp}"' EXIT
rm -rf "${BUILD_DIR}/genimage.tmp"
genimage \
	--rootpath "${rootpath_tmp}" \
	--tmppath "${BUILD_DIR}/genimage.tmp" \
	--inputpath "${BINARIES_DIR}" \
	--outputpath "${BINARIES_DIR}" \
	--config "${genimage_cfg}"
