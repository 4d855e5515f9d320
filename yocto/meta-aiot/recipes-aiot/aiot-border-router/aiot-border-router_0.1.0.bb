SUMMARY = "aiot 6LoWPAN border router: brings up the IEEE 802.15.4 radio and advertises a prefix"
DESCRIPTION = "Configures wpan0/lowpan0 with wpan-tools, forwards IPv6 between the radio and \
Ethernet and runs radvd on lowpan0, from the aiot overlay's script, unit and configuration."
HOMEPAGE = "https://github.com/pyaiot/pyaiot"
LICENSE = "BSD-3-Clause"
LIC_FILES_CHKSUM = "file://Cargo.toml;beginline=7;endline=7;md5=3c0d82cf3c54fabf9357222bb1d355ff"

inherit externalsrc
EXTERNALSRC = "${AIOT_SRCDIR}"
EXTERNALSRC_BUILD = "${WORKDIR}/build"

inherit systemd allarch

SYSTEMD_SERVICE:${PN} = "aiot-border-router.service"

do_configure[noexec] = "1"
do_compile[noexec] = "1"

do_install() {
    install -D -m 0755 ${S}/overlay/usr/libexec/aiot/border-router ${D}${libexecdir}/aiot/border-router
    install -D -m 0644 ${S}/overlay/usr/lib/systemd/system/aiot-border-router.service \
        ${D}${systemd_system_unitdir}/aiot-border-router.service
    install -D -m 0644 ${S}/overlay/etc/aiot/border-router.conf ${D}${sysconfdir}/aiot/border-router.conf
    install -D -m 0644 ${S}/overlay/etc/radvd.conf ${D}${sysconfdir}/radvd.conf
    install -D -m 0644 ${S}/overlay/usr/lib/systemd/system-preset/80-aiot.preset \
        ${D}${systemd_unitdir}/system-preset/80-aiot.preset
    install -d ${D}${sysconfdir}/sysctl.d
    cp -R --no-preserve=ownership ${S}/overlay/etc/sysctl.d/. ${D}${sysconfdir}/sysctl.d/
}

FILES:${PN} += "${libexecdir}/aiot ${systemd_unitdir}/system-preset"
CONFFILES:${PN} = "${sysconfdir}/aiot/border-router.conf"
# /etc/radvd.conf is radvd's own path: ours replaces the example radvd installs.
RDEPENDS:${PN} = "aiot wpan-tools radvd iproute2 kernel-module-ieee802154-6lowpan \
    kernel-module-mac802154"
RRECOMMENDS:${PN} = "kernel-module-at86rf230"
