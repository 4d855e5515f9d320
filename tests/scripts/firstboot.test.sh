#!/usr/bin/env bash
# overlay/usr/libexec/aiot/firstboot with the privileges aiot-firstboot.service gives each step:
# take and publish as root without any capability (setpriv empties the bounding set, as
# CapabilityBoundingSet= does), make as an unprivileged user standing in for aiot, with a real
# FAT file system on a loop device as the boot partition (mounted umask=0077, as the images
# do). Each password is checked by logging in to a real gateway that reads the hash. Needs
# root (losetup, mount, setpriv); scripts/vm-test runs the same script under systemd in a VM,
# on a real FAT partition.
set -euo pipefail
cd "$(dirname "$0")/../.."
script=$PWD/overlay/usr/libexec/aiot/firstboot

if [ "$(id -u)" != 0 ] || ! command -v losetup >/dev/null || ! losetup -f >/dev/null 2>&1; then
  echo "firstboot tests: SKIPPED (need root and loop devices)"
  exit 0
fi
for tool in mkfs.vfat setpriv python3; do
  command -v "$tool" >/dev/null || { echo "firstboot tests: $tool missing (apt-get install dosfstools util-linux python3)" >&2; exit 1; }
done
aiot=""
for candidate in target/*/debug/aiot target/*/release/aiot; do
  [ -x "$candidate" ] && aiot=$PWD/$candidate && break
done
[ -n "$aiot" ] || { echo "firstboot tests: no aiot binary; build it first" >&2; exit 1; }

work=$(mktemp -d)
chmod 0755 "$work"
loop=""
gateway=""
cleanup() {
  [ -z "$gateway" ] || kill "$gateway" 2>/dev/null || true
  umount "$work/boot" 2>/dev/null || true
  [ -z "$loop" ] || losetup -d "$loop" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok - $1"; }
not_ok() { failed=$((failed + 1)); echo "not ok - $1"; sed 's/^/    /' "$work/out" >&2; }

# The service user: nobody, owner of the state directory (0700, as StateDirectoryMode=).
user=65534
mkdir -p "$work/state" "$work/tmp" "$work/boot"
chown "$user:$user" "$work/state"
chmod 0700 "$work/state"
chmod 1777 "$work/tmp"
truncate -s 32M "$work/boot.img"
mkfs.vfat -n AIOT-BOOT "$work/boot.img" >/dev/null
loop=$(losetup -f --show "$work/boot.img")
if ! mount -t vfat -o umask=0077 "$loop" "$work/boot" 2>/dev/null; then
  # A kernel without vfat (some containers): a root-only tmpfs has the same owner and modes.
  echo "firstboot tests: no vfat in this kernel; the boot partition is a tmpfs (mode 0700)"
  mount -t tmpfs -o size=4m,mode=0700 tmpfs "$work/boot"
  export AIOT_FIRSTBOOT_BOOT_FSTYPE=tmpfs
fi

export AIOT_FIRSTBOOT_STATE=$work/state AIOT_FIRSTBOOT_BOOT=$work/boot
export AIOT_FIRSTBOOT_HANDOFF=$work/tmp/aiot-firstboot AIOT_FIRSTBOOT_AIOT=$aiot
# The three steps as the unit runs them; their output (the journal) goes to $work/out.
firstboot() {
  {
    setpriv --bounding-set=-all --inh-caps=-all -- "$script" take &&
      (umask 0077 && setpriv --reuid="$user" --regid="$user" --clear-groups \
        --bounding-set=-all --inh-caps=-all -- "$script" make) &&
      setpriv --bounding-set=-all --inh-caps=-all -- "$script" publish
  } >"$work/out" 2>&1
}
generated_password() {
  sed -n 's/^    \([a-z2-9]\{4\}\(-[a-z2-9]\{4\}\)\{3\}\)$/\1/p' "$work/boot/aiot-password-generated.txt" 2>/dev/null || true
}
hash_sum() { sha256sum "$work/state/web-password" 2>/dev/null | cut -c1-64; }

# The status of POST /api/login with $1 at a gateway started on the hash file.
port=$((20000 + RANDOM % 20000))
login() {
  local status
  port=$((port + 2))
  printf '[coap]\nenabled = false\n[mqtt]\nenabled = false\n[mqttsn]\nenabled = false\n' >"$work/gateway.toml"
  STATE_DIRECTORY=$work/state "$aiot" --config "$work/gateway.toml" gateway --allow-root \
    --bind 127.0.0.1 --gateway-port "$((port + 1))" --web-port "$port" \
    --web-password-file "$work/state/web-password" >"$work/gateway.log" 2>&1 &
  gateway=$!
  status=$(AIOT_TEST_PASSWORD=$1 python3 - "$port" <<'PY'
import json, os, sys, time, urllib.error, urllib.request
base = f"http://127.0.0.1:{sys.argv[1]}"
password = os.environ["AIOT_TEST_PASSWORD"]
for _ in range(100):
    try:
        urllib.request.urlopen(base + "/healthz", timeout=2).close()
        break
    except OSError:
        time.sleep(0.1)
request = urllib.request.Request(base + "/api/login", json.dumps({"password": password}).encode(),
                                 {"Content-Type": "application/json"}, method="POST")
try:
    with urllib.request.urlopen(request, timeout=30) as response:
        print(response.status)
except urllib.error.HTTPError as error:
    print(error.code)
except OSError as error:
    print("error", error)
PY
)
  kill "$gateway" 2>/dev/null || true
  wait "$gateway" 2>/dev/null || true
  gateway=""
  echo "$status"
}

# 1. First boot, nothing on the boot partition: a key file, a hash, a generated password.
if firstboot; then
  password=$(generated_password)
  if [ -n "$password" ] && [ "$(stat -c '%a %u' "$work/state/web-password")" = "600 $user" ] &&
    [ "$(stat -c '%a %u' "$work/state/keys")" = "600 $user" ] &&
    [ "$(cut -d'$' -f2 "$work/state/web-password")" = argon2id ] &&
    ! grep -qF "$password" "$work/out" && [ ! -e "$work/tmp/aiot-firstboot" ] &&
    [ "$(login "$password")" = 200 ] && [ "$(login "wrong-$password")" = 401 ]; then
    ok "first boot: key file and hash (600, the service user), the generated password logs in, is not in the log, the handoff is gone"
  else
    not_ok "first boot: password '${password}', $(stat -c '%a %u' "$work/state/web-password" 2>&1)"
  fi
else
  not_ok "first boot failed"
fi
first_sum=$(hash_sum)

# 2. Two first boots never make the same password.
other=$(mktemp -d)
if (export AIOT_FIRSTBOOT_STATE=$other AIOT_FIRSTBOOT_BOOT=$other/none AIOT_FIRSTBOOT_HANDOFF=$other/h &&
  "$script" take && "$script" make && "$script" publish) >"$work/out" 2>&1 &&
  [ -s "$other/web-password.txt" ] && [ "$(cat "$other/web-password.txt")" != "$password" ] &&
  [ "$(stat -c '%a' "$other/web-password.txt")" = 600 ]; then
  ok "no boot partition: the generated password goes to web-password.txt (600), and differs from the first device's"
else
  not_ok "no boot partition"
fi
rm -rf "$other"

# 3. Again: nothing changes.
if firstboot && [ "$(hash_sum)" = "$first_sum" ] && [ "$(generated_password)" = "$password" ]; then
  ok "second run: same hash, same password"
else
  not_ok "second run changed something"
fi

# 4. The owner's own password, as Notepad saves it: byte order mark, spaces, CRLF.
own="my own gateway pw"
printf '\357\273\277  %s \r\nsecond line\r\n' "$own" >"$work/boot/aiot-password.txt"
if firstboot && [ ! -e "$work/boot/aiot-password.txt" ] &&
  [ ! -e "$work/boot/aiot-password-generated.txt" ] && [ "$(hash_sum)" != "$first_sum" ] &&
  ! grep -qF "$own" "$work/out" && [ "$(login "$own")" = 200 ] && [ "$(login "$password")" = 401 ]; then
  ok "aiot-password.txt: taken (BOM, spaces, CRLF dropped), deleted with the stale generated file; the old password is refused"
else
  not_ok "aiot-password.txt not taken"
fi
own_sum=$(hash_sum)

# 5. A password that is too short: deleted, the reason left, the current password kept.
printf 'short\n' >"$work/boot/aiot-password.txt"
if firstboot && [ ! -e "$work/boot/aiot-password.txt" ] && [ "$(hash_sum)" = "$own_sum" ] &&
  grep -q "at least 8 characters" "$work/boot/aiot-password-refused.txt" &&
  ! grep -q short "$work/boot/aiot-password-refused.txt" && [ "$(login "$own")" = 200 ]; then
  ok "a too-short aiot-password.txt: deleted, aiot-password-refused.txt says why, the password stays"
else
  not_ok "too-short aiot-password.txt"
fi

# 6. Reset: the hash deleted, no aiot-password.txt: a new generated password.
rm -f "$work/state/web-password"
if firstboot && [ -n "$(generated_password)" ] && [ "$(generated_password)" != "$password" ] &&
  [ "$(login "$(generated_password)")" = 200 ] && [ "$(login "$own")" = 401 ]; then
  ok "reset (hash deleted): a new generated password, the old one refused"
else
  not_ok "reset"
fi

echo "firstboot tests: $passed passed, $failed failed"
# ci/test adds these to its closing count.
echo "# pass $passed"
echo "# fail $failed"
[ "$failed" = 0 ]
