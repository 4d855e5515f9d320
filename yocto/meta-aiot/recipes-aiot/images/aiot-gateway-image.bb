SUMMARY = "aiot gateway image: systemd, the aiot gateway and the 6LoWPAN border router"
LICENSE = "MIT"

inherit core-image features_check

REQUIRED_DISTRO_FEATURES = "systemd"

IMAGE_INSTALL = "packagegroup-core-boot aiot aiot-border-router kernel-modules ${CORE_IMAGE_EXTRA_INSTALL}"
IMAGE_LINGUAS = ""

# boot, root file system, and the writable data partition for keys and state (wic/).
WKS_FILE ?= "aiot-sdimage.wks"
