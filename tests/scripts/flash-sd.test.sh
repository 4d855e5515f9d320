#!/usr/bin/env bash
# scripts/flash-sd against loop devices standing in for SD cards: every refusal, a refused
# confirmation, and two real writes verified byte for byte. Needs root (losetup, mount).
# The loop devices are real block devices; only their sysfs "removable" flag and model are
# presented through a fake sysfs (AIOT_FLASH_SYSFS), because a loop device is never removable.
set -euo pipefail
cd "$(dirname "$0")/../.."
flash=$PWD/scripts/flash-sd

if [ "$(id -u)" != 0 ] || ! command -v losetup >/dev/null || ! losetup -f >/dev/null 2>&1; then
  echo "flash-sd tests: SKIPPED (need root and loop devices)"
  exit 0
fi
for tool in sfdisk partx mkfs.ext4 cmp; do
  command -v "$tool" >/dev/null || { echo "flash-sd tests: $tool missing (apt-get install fdisk e2fsprogs)" >&2; exit 1; }
done

work=$(mktemp -d)
loops=()
mounted=()
cleanup() {
  for m in "${mounted[@]}"; do umount "$m" 2>/dev/null || true; done
  for l in "${loops[@]}"; do losetup -d "$l" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok - $1"; }
not_ok() { failed=$((failed + 1)); echo "not ok - $1"; sed 's/^/    /' "$work/out" >&2; }

# A loop device over a fresh zeroed file of SIZE; prints its path.
new_card() {
  local file=$work/card$RANDOM.bin dev
  truncate -s "$1" "$file"
  dev=$(losetup -f --show "$file")
  loops+=("$dev")
  echo "$dev"
}

# A fake sysfs entry for NAME copied from the real one, with our removable flag and model.
fake() {
  local name=$1 removable=$2 dir=$work/sys/class/block/$1
  mkdir -p "$dir/device"
  cat "/sys/class/block/$name/size" >"$dir/size"
  [ ! -e "/sys/class/block/$name/partition" ] || cat "/sys/class/block/$name/partition" >"$dir/partition"
  echo "$removable" >"$dir/removable"
  echo "Fake SD card   " >"$dir/device/model"
}

# expect_refusal NAME MESSAGE-REGEX FLASH-ARGS... — exits non-zero, says why, writes nothing.
expect_refusal() {
  local what=$1 pattern=$2
  shift 2
  if AIOT_FLASH_SYSFS=$work/sys "$flash" "$@" </dev/null >"$work/out" 2>&1; then
    not_ok "$what: flash-sd succeeded"
  elif grep -qE "$pattern" "$work/out"; then
    ok "$what"
  else
    not_ok "$what: no /$pattern/ in the output"
  fi
}

image=$work/sdcard.img
head -c $((6 * 1024 * 1024 + 12345)) /dev/urandom >"$image"

# --help
if "$flash" --help | grep -q '^Usage: scripts/flash-sd'; then ok "--help"; else not_ok "--help"; fi
expect_refusal "wrong argument count" 'Usage' "$image"
expect_refusal "unknown option" 'unknown option' --force "$image" /dev/null

# The image must exist; the device must exist and be a block device.
card=$(new_card 16M)
fake "$(basename "$card")" 1
expect_refusal "missing image" 'no such image' "$work/nope.img" "$card"
expect_refusal "missing device" 'no such device' "$image" /dev/aiot-no-such-card
expect_refusal "regular file as device" 'not a block device' "$image" "$work/sdcard.img"
expect_refusal "character device" 'not a block device' "$image" /dev/null

# Not removable.
plain=$(new_card 16M)
fake "$(basename "$plain")" 0
expect_refusal "non-removable disk" 'not a removable device' --yes "$image" "$plain"
if cmp -s -n $((1024 * 1024)) "$plain" /dev/zero; then ok "non-removable disk untouched"; else not_ok "non-removable disk untouched"; fi

# A partition instead of the whole disk.
parted_file=$work/parted.bin
truncate -s 16M "$parted_file"
printf 'label: dos\n,4M,83\n,,83\n' | sfdisk -q "$parted_file"
parted=$(losetup -fP --show "$parted_file")
loops+=("$parted")
partx -a "$parted" 2>/dev/null || true
for _ in $(seq 50); do [ -b "${parted}p1" ] && break; sleep 0.1; done
fake "$(basename "$parted")" 1
fake "$(basename "$parted")p1" 1
expect_refusal "partition" 'is a partition' --yes "$image" "${parted}p1"

# A mounted partition of the card, and the card itself mounted.
mkfs.ext4 -q "${parted}p2"
mkdir -p "$work/mnt1"
mount "${parted}p2" "$work/mnt1"
mounted+=("$work/mnt1")
expect_refusal "mounted partition" "${parted}p2 is mounted" --yes "$image" "$parted"
whole=$(new_card 16M)
fake "$(basename "$whole")" 1
mkfs.ext4 -q "$whole"
mkdir -p "$work/mnt2"
mount "$whole" "$work/mnt2"
mounted+=("$work/mnt2")
expect_refusal "mounted whole device" "$whole is mounted" --yes "$image" "$whole"

# The disk holding / (made to look removable): refused before anything is asked or written.
# No --yes and an empty stdin: even a broken check could not write.
root_disk=$(basename "$(readlink -f "/sys/dev/block/$(mountpoint -d /)")")
[ ! -e "/sys/class/block/$root_disk/partition" ] || root_disk=$(basename "$(dirname "$(readlink -f "/sys/class/block/$root_disk")")")
if [ -b "/dev/$root_disk" ]; then
  fake "$root_disk" 1
  expect_refusal "disk holding /" 'root file system' "$image" "/dev/$root_disk"
else
  echo "ok - disk holding / # SKIP / is not on a block device here"
fi

# Too small for the image.
small=$(new_card 4M)
fake "$(basename "$small")" 1
expect_refusal "device smaller than the image" 'the image needs' --yes "$image" "$small"

# Asked, answered no: nothing written.
if AIOT_FLASH_SYSFS=$work/sys "$flash" "$image" "$card" <<<"no" >"$work/out" 2>&1; then
  not_ok "answer no: flash-sd succeeded"
elif grep -q 'Fake SD card' "$work/out" && grep -q 'MB' "$work/out" && grep -q 'not confirmed' "$work/out" \
  && cmp -s -n $((1024 * 1024)) "$card" /dev/zero; then
  ok "answer no: shows model and size, writes nothing"
else
  not_ok "answer no"
fi

# Asked, answered yes, through a /dev/disk/by-id style alias: written and verified.
ln -s "$card" "$work/by-id-card"
if AIOT_FLASH_SYSFS=$work/sys "$flash" "$image" "$work/by-id-card" <<<"yes" >"$work/out" 2>&1 \
  && grep -q 'verified' "$work/out" && cmp -s -n "$(stat -c %s "$image")" "$image" "$card"; then
  ok "answer yes via an alias: written and verified"
else
  not_ok "answer yes via an alias"
fi

# --yes on a second card.
card2=$(new_card 8M)
fake "$(basename "$card2")" 1
if AIOT_FLASH_SYSFS=$work/sys "$flash" --yes "$image" "$card2" </dev/null >"$work/out" 2>&1 \
  && grep -q 'verified' "$work/out" && cmp -s -n "$(stat -c %s "$image")" "$image" "$card2"; then
  ok "--yes: written and verified"
else
  not_ok "--yes"
fi

echo "flash-sd tests: $passed passed, $failed failed"
# ci/test adds these to its closing count.
echo "# pass $passed"
echo "# fail $failed"
[ "$failed" = 0 ]
