#!/usr/bin/env bash
# Shared by every board, after the overlay is copied: the writable data partition (keys, state)
# mounted where the gateway keeps them, so the root file system can stay read-only.
set -euo pipefail

: "${TARGET_DIR:?run by Buildroot as a post-build script}"

# The label genimage gives the third partition (board/*/genimage.cfg*).
data_line='LABEL=aiot-data /var/lib/aiot ext4 defaults,noatime,nofail,x-systemd.device-timeout=10s 0 2'
mkdir -p "${TARGET_DIR}/var/lib/aiot"
grep -qF 'LABEL=aiot-data' "${TARGET_DIR}/etc/fstab" 2>/dev/null \
	|| printf '%s\n' "${data_line}" >>"${TARGET_DIR}/etc/fstab"
