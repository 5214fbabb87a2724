SUMMARY = "OTA agent: checks the OTA service, verifies and installs signed hub_update.bin images"
DESCRIPTION = "The device side of meta-ota: the ota-agent command (ota_build.device), its \
configuration /etc/ota-agent.json made from the OTA_AGENT_* variables, and a systemd unit \
or a sysvinit script. The verification key and /etc/full_ota_record.json come from \
ota-record. Per-device values (device id, device token) are provisioned on the device \
in /etc/ota/device-id and /etc/ota/device-token, never built into the image."
HOMEPAGE = "https://github.com/meta-ota/meta-ota"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

# The library lives next to the layer: <repo>/ota_build.
FILESEXTRAPATHS:prepend := "${OTA_SOURCE_DIR}:${THISDIR}/files:"
SRC_URI = "${@ota_source_uris(d, d.getVar('OTA_DEVICE_PARTS'))} \
           file://ota-agent.service \
           file://ota-agent.init \
"

S = "${@d.getVar('UNPACKDIR') or d.getVar('WORKDIR')}"
B = "${WORKDIR}/build"

inherit allarch ota-common python3-dir systemd update-rc.d

DEPENDS += "ota-build-native"

SYSTEMD_SERVICE:${PN} = "ota-agent.service"
INITSCRIPT_NAME = "ota-agent"
INITSCRIPT_PARAMS = "defaults 95"

# The parts of ota_build that run on the device (checked by tests/test_architecture.py).
OTA_DEVICE_PARTS = "core device"
OTA_DEVICE_PARTS[doc] = "Sub-packages of ota_build installed on the device: the core and the agent."

do_configure[noexec] = "1"

do_compile() {
	ota_tool ${@'OTA_AGENT_SLOTS' if d.getVar('OTA_AGENT_SLOTS') else 'OTA_AGENT_SERVER'} ota-build agent-config \
		--server "${OTA_AGENT_SERVER}" -c ${OTA_CONFIG} ${@'--device-type ' + d.getVar('OTA_AGENT_DEVICE_TYPE') if d.getVar('OTA_AGENT_DEVICE_TYPE') else ''} \
		--public-key ${OTA_DEVICE_KEY_PATH} --type ${OTA_TYPE} --boot-variable "${OTA_AGENT_BOOT_VARIABLE}" \
		--command "${OTA_AGENT_COMMAND}" --poll-interval ${OTA_AGENT_POLL_INTERVAL} --local-port ${OTA_AGENT_LOCAL_PORT} \
		--description "${OTA_AGENT_DESCRIPTION}" --payload-fstype "${OTA_PAYLOAD_FSTYPE}" \
		--state-dir "${OTA_AGENT_STATE_DIR}" --device-dir "${OTA_AGENT_DEVICE_DIR}" \
		--boot-limit "${OTA_AGENT_BOOT_LIMIT}" --health-check "${OTA_AGENT_HEALTH_CHECK}" -o ${B}/ota-agent.json \
		${@'--boot-env-file %s/%s' % (d.getVar('OTA_BOOT_MOUNT').rstrip('/'), d.getVar('OTA_BOOT_ENV_FILE')) if d.getVar('OTA_BOOT_ENV_STORAGE') == 'file' else ''} \
		${@'--reboot-command "%s"' % d.getVar('OTA_AGENT_REBOOT_COMMAND') if d.getVar('OTA_AGENT_SLOTS') and d.getVar('OTA_AGENT_REBOOT_COMMAND') else ''} \
		${@' '.join('--slot ' + s for s in (d.getVar('OTA_AGENT_SLOTS') or '').split())} \
		${@' '.join('--boot-value ' + v for v in (d.getVar('OTA_AGENT_BOOT_VALUES') or '').split())}
}
do_compile[dirs] = "${B}"
do_compile[cleandirs] = "${B}"
do_compile[vardeps] += "OTA_AGENT_SERVER OTA_AGENT_DEVICE_TYPE OTA_AGENT_SLOTS OTA_AGENT_BOOT_VARIABLE \
                        OTA_AGENT_BOOT_VALUES OTA_AGENT_COMMAND OTA_AGENT_POLL_INTERVAL OTA_AGENT_LOCAL_PORT \
                        OTA_AGENT_DESCRIPTION OTA_TYPE OTA_DEVICE_KEY_PATH OTA_PAYLOAD_FSTYPE OTA_AGENT_BOOT_LIMIT \
                        OTA_AGENT_HEALTH_CHECK OTA_AGENT_REBOOT_COMMAND OTA_AGENT_STATE_DIR OTA_AGENT_DEVICE_DIR \
                        OTA_BOOT_ENV_STORAGE OTA_BOOT_MOUNT OTA_BOOT_ENV_FILE"
do_compile[vardepsexclude] += "${OTA_PATH_VARS} ${OTA_SECRET_ENV_VARS} BB_ORIGENV"
do_compile[file-checksums] += "${OTA_CONFIG_CHECKSUMS}"

do_install() {
    install -d ${D}${PYTHON_SITEPACKAGES_DIR} ${D}${bindir} ${D}${sysconfdir}/ota ${D}${localstatedir}/lib/ota-agent
    # Exactly the device side: the package marker, core/ and device/ (docs/architecture.md).
    # Not cli/, partner/ or server/: build-host, partner and service code stay off the device.
    install -d ${D}${PYTHON_SITEPACKAGES_DIR}/ota_build
    install -m 0644 ${S}/ota_build/__init__.py ${D}${PYTHON_SITEPACKAGES_DIR}/ota_build/
    for part in ${OTA_DEVICE_PARTS}; do
        cp -R --no-preserve=ownership ${S}/ota_build/$part ${D}${PYTHON_SITEPACKAGES_DIR}/ota_build/
    done
    find ${D}${PYTHON_SITEPACKAGES_DIR}/ota_build -name __pycache__ -prune -exec rm -rf {} +
    cat > ${D}${bindir}/ota-agent <<EOS
#!/usr/bin/env python3
import sys
from ota_build.device.cli import main
sys.exit(main())
EOS
    chmod 0755 ${D}${bindir}/ota-agent
    install -m 0644 ${B}/ota-agent.json ${D}${sysconfdir}/ota-agent.json
    install -d ${D}${systemd_system_unitdir} ${D}${sysconfdir}/init.d
    install -m 0644 ${S}/ota-agent.service ${D}${systemd_system_unitdir}/ota-agent.service
    install -m 0755 ${S}/ota-agent.init ${D}${sysconfdir}/init.d/ota-agent
}

FILES:${PN} += "${PYTHON_SITEPACKAGES_DIR}/ota_build ${sysconfdir}/ota-agent.json ${localstatedir}/lib/ota-agent \
                ${systemd_system_unitdir}/ota-agent.service ${sysconfdir}/init.d/ota-agent"
CONFFILES:${PN} = "${sysconfdir}/ota-agent.json"

# python3-* provide what ota_build.device imports (python3-asyncio: concurrent.futures, with which
# core.package overlaps writing and hashing the streamed payload); openssl-bin checks signatures
# (no python3-cryptography on the device); fw_setenv switches A/B slots; with the tar.gz
# payload the archive installer formats the inactive slot (mkfs.ext4) and mounts it.
RDEPENDS:${PN} = "ota-record openssl-bin python3-core python3-json python3-logging python3-netclient \
                  python3-netserver python3-crypt python3-threading python3-shell python3-asyncio \
                  ${@'libubootenv-bin' if d.getVar('OTA_AGENT_SLOTS') else ''} \
                  ${@'e2fsprogs-mke2fs python3-compression' if d.getVar('OTA_AGENT_SLOTS') and d.getVar('OTA_PAYLOAD_FSTYPE') == 'tar.gz' else ''}"
