#!/usr/bin/env bash
# Shared by every board, after the overlay is copied: the writable data partition (keys, state)
# mounted where the gateway keeps them, so the root file system can stay read-only; and the
# boot partition on /boot, where aiot-firstboot.service takes or leaves the web password
# (readable by root only on the device, by anyone who puts the card in a PC).
set -euo pipefail

: "${TARGET_DIR:?run by Buildroot as a post-build script}"

# The label genimage gives the third partition (board/*/genimage.cfg*).
data_line='LABEL=aiot-data /var/lib/aiot ext4 defaults,noatime,nofail,x-systemd.device-timeout=10s 0 2'
mkdir -p "${TARGET_DIR}/var/lib/aiot"
grep -qF 'LABEL=aiot-data' "${TARGET_DIR}/etc/fstab" 2>/dev/null \
	|| printf '%s\n' "${data_line}" >>"${TARGET_DIR}/etc/fstab"

# The label genimage gives the first partition. nofail: a card without it still boots, and
# only first boot (and so the gateway) waits for it. 60 s: in scripts/vm-test's VM under load,
# udev named the disk after more than 10 s.
boot_line='LABEL=AIOT-BOOT /boot vfat defaults,noatime,umask=0077,nofail,x-systemd.device-timeout=60s 0 0'
mkdir -p "${TARGET_DIR}/boot"
grep -qF 'LABEL=AIOT-BOOT' "${TARGET_DIR}/etc/fstab" 2>/dev/null \
	|| printf '%s\n' "${boot_line}" >>"${TARGET_DIR}/etc/fstab"
