SUMMARY = "aiot gateway: CoAP, MQTT and websocket nodes to the web, with a local dashboard"
DESCRIPTION = "pyaiot's broker, gateways and dashboard rebuilt in Rust as one binary; \
this package installs it as the gateway service of the appliance."
HOMEPAGE = "https://github.com/pyaiot/pyaiot"
LICENSE = "BSD-3-Clause"
# The repository has no licence text yet; Cargo.toml's license field is what there is.
LIC_FILES_CHKSUM = "file://Cargo.toml;beginline=7;endline=7;md5=3c0d82cf3c54fabf9357222bb1d355ff"

# Built from the checkout this layer lives in (AIOT_SRCDIR, conf/layer.conf); the crates come
# from aiot-crates.inc, fetched by bitbake like any other source.
inherit externalsrc
EXTERNALSRC = "${AIOT_SRCDIR}"
EXTERNALSRC_BUILD = "${WORKDIR}/build"

inherit cargo cargo-update-recipe-crates systemd useradd

require ${BPN}-crates.inc

# Only the root Cargo.lock: fuzz/ is a separate workspace that is not built here.
CARGO_LOCK_SRC_DIR = "${S}"
# No `aiot bench` on the device (a development tool), as scripts/build-aarch64 builds it.
CARGO_BUILD_FLAGS:append = " --bin aiot --no-default-features"
# The appliance's size-optimised build, as the release-small profile does on the host.
export CARGO_PROFILE_RELEASE_OPT_LEVEL = "z"
export CARGO_PROFILE_RELEASE_LTO = "fat"
export CARGO_PROFILE_RELEASE_CODEGEN_UNITS = "1"
export CARGO_PROFILE_RELEASE_PANIC = "abort"

USERADD_PACKAGES = "${PN}"
USERADD_PARAM:${PN} = "--system --user-group --home-dir /var/lib/aiot --no-create-home \
    --shell /sbin/nologin --comment 'aiot gateway' aiot"

SYSTEMD_SERVICE:${PN} = "aiot-gateway.service aiot-firstboot.service"

do_install:append() {
    install -d ${D}${systemd_system_unitdir} ${D}${sysconfdir}/aiot ${D}${nonarch_libdir}/sysusers.d
    install -m 0644 ${S}/overlay/usr/lib/systemd/system/aiot-gateway.service ${D}${systemd_system_unitdir}/
    install -m 0644 ${S}/overlay/usr/lib/systemd/system/aiot-firstboot.service ${D}${systemd_system_unitdir}/
    install -D -m 0755 ${S}/overlay/usr/libexec/aiot/firstboot ${D}${libexecdir}/aiot/firstboot
    install -D -m 0644 ${S}/overlay/etc/issue.d/aiot.issue ${D}${sysconfdir}/issue.d/aiot.issue
    install -m 0644 ${S}/overlay/etc/aiot/gateway.toml ${D}${sysconfdir}/aiot/
    install -m 0644 ${S}/overlay/usr/lib/sysusers.d/aiot.conf ${D}${nonarch_libdir}/sysusers.d/
    install -d ${D}${nonarch_libdir}/systemd/system.conf.d ${D}${nonarch_libdir}/systemd/journald.conf.d
    cp -R --no-preserve=ownership ${S}/overlay/usr/lib/systemd/system.conf.d/. ${D}${nonarch_libdir}/systemd/system.conf.d/
    cp -R --no-preserve=ownership ${S}/overlay/usr/lib/systemd/journald.conf.d/. ${D}${nonarch_libdir}/systemd/journald.conf.d/
}

FILES:${PN} += "${libexecdir}/aiot ${sysconfdir}/issue.d ${nonarch_libdir}/sysusers.d ${nonarch_libdir}/systemd/system.conf.d \
    ${nonarch_libdir}/systemd/journald.conf.d"
CONFFILES:${PN} = "${sysconfdir}/aiot/gateway.toml"
