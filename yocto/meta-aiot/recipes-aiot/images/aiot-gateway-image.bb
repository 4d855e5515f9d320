SUMMARY = "aiot gateway image: systemd, the aiot gateway and the 6LoWPAN border router"
LICENSE = "MIT"

inherit core-image features_check

REQUIRED_DISTRO_FEATURES = "systemd"

IMAGE_INSTALL = "packagegroup-core-boot aiot aiot-border-router kernel-modules ${CORE_IMAGE_EXTRA_INSTALL}"
IMAGE_LINGUAS = ""

# SD-card machines: boot, root file system, and the writable data partition for keys and
# state (files/wic/). Machine configurations set WKS_FILE, so this is a plain assignment.
WKS_FILE = "aiot-sdimage.wks"
# QEMU boots its kernel directly and keeps the machine's own single-disk layout.
WKS_FILE:qemux86-64 = "qemux86-directdisk.wks"
