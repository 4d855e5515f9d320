################################################################################
#
# aiot
#
################################################################################

# Must equal Cargo.toml's version: scripts/vendor-source checks it.
AIOT_VERSION = 0.1.0
# The source is this repository, as a tarball with every crate vendored in VENDOR/ (made by
# scripts/vendor-source). A local-site package would be rsynced without vendoring, and
# cargo-package builds --offline --locked; Buildroot's cargo post-process leaves an archive
# that already has VENDOR/ as it is.
# Its hash changes with every commit: scripts/vendor-source writes it to
# buildroot/patches/aiot/aiot.hash (git-ignored), an extra hash file in BR2_GLOBAL_PATCH_DIR.
AIOT_SOURCE = aiot-$(AIOT_VERSION)-vendored.tar.gz
AIOT_SITE = file://$(BR2_EXTERNAL_AIOT_PATH)/../target/buildroot-dl
# Cargo.toml's licence; the repository has no licence text yet for _LICENSE_FILES to name.
AIOT_LICENSE = BSD-3-Clause

# The appliance's binary favours size, as the release-small profile does on the host.
AIOT_CARGO_ENV = \
	CARGO_PROFILE_RELEASE_OPT_LEVEL=z \
	CARGO_PROFILE_RELEASE_LTO=fat \
	CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 \
	CARGO_PROFILE_RELEASE_PANIC=abort
# No `aiot bench` on the device (a development tool), as scripts/build-aarch64 builds it.
AIOT_CARGO_BUILD_OPTS = --no-default-features

# The same account as overlay/usr/lib/sysusers.d/aiot.conf, made at build time so that a
# read-only root file system has it from the first boot.
define AIOT_USERS
	aiot -1 aiot -1 * /var/lib/aiot - - aiot gateway
endef

define AIOT_INSTALL_CONFIG
	$(INSTALL) -D -m 0644 $(@D)/overlay/etc/aiot/gateway.toml \
		$(TARGET_DIR)/etc/aiot/gateway.toml
	$(INSTALL) -D -m 0644 $(@D)/overlay/usr/lib/sysusers.d/aiot.conf \
		$(TARGET_DIR)/usr/lib/sysusers.d/aiot.conf
endef
AIOT_POST_INSTALL_TARGET_HOOKS += AIOT_INSTALL_CONFIG

define AIOT_INSTALL_INIT_SYSTEMD
	$(INSTALL) -D -m 0644 $(@D)/overlay/usr/lib/systemd/system/aiot-gateway.service \
		$(TARGET_DIR)/usr/lib/systemd/system/aiot-gateway.service
	$(INSTALL) -D -m 0644 $(@D)/overlay/usr/lib/systemd/system/aiot-firstboot.service \
		$(TARGET_DIR)/usr/lib/systemd/system/aiot-firstboot.service
	$(INSTALL) -D -m 0755 $(@D)/overlay/usr/libexec/aiot/firstboot \
		$(TARGET_DIR)/usr/libexec/aiot/firstboot
endef

$(eval $(cargo-package))
