# IEEE 802.15.4, 6LoWPAN and the AT86RF233 driver: the same fragment as Buildroot's.
FILESEXTRAPATHS:prepend := "${THISDIR}/../../../../recipes-kernel/linux/files:"
SRC_URI += "file://6lowpan.cfg"
