#!/usr/bin/env bash
# Compiles the radio's device-tree overlay, installs extlinux.conf, then lays out the card with
# Buildroot's genimage helper (arguments: -c genimage.cfg, from BR2_ROOTFS_POST_SCRIPT_ARGS).
set -euo pipefail

: "${BINARIES_DIR:?run by Buildroot as a post-image script}" "${HOST_DIR:?}"
board_dir="$(dirname "$0")"

"${HOST_DIR}/bin/dtc" -@ -I dts -O dtb -o "${BINARIES_DIR}/aiot-at86rf233.dtbo" \
	"${board_dir}/aiot-at86rf233.dtso"
install -m 0644 -D "${board_dir}/extlinux.conf" "${BINARIES_DIR}/extlinux/extlinux.conf"

exec support/scripts/genimage.sh "$@"
