# nooelint: oelint.var.mandatoryvar.SRC_URI - nothing to fetch: the script is generated from OTA_AGENT_SLOTS
SUMMARY = "A/B boot script (boot.scr) and fw_env.config for meta-ota's fail-safe updates"
DESCRIPTION = "The U-Boot script that boots the first slot of BOOT_ORDER, counts the boot \
attempts of a slot the agent has not committed yet (BOOT_<slot>_LEFT, upgrade_available, \
bootcount) and rolls back to the previous slot when they are used up (docs/boot.md). \
Generated from OTA_AGENT_SLOTS, OTA_AGENT_BOOT_VARIABLE and OTA_AGENT_BOOT_VALUES by \
ota-build boot-script, compiled with u-boot-tools-native's mkimage, deployed for wic's \
bootimg-partition (IMAGE_BOOT_FILES). The package holds /etc/fw_env.config for fw_setenv."
HOMEPAGE = "https://github.com/meta-ota/meta-ota"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

inherit deploy kernel-arch ota-common

DEPENDS += "ota-build-native u-boot-tools-native"
# boot.scr and fw_env.config are per machine (boot values, devices, environment size).
PACKAGE_ARCH = "${MACHINE_ARCH}"
INHIBIT_DEFAULT_DEPS = "1"

# The boot script's name on the boot partition (U-Boot's distro boot looks for boot.scr).
OTA_BOOT_SCRIPT_NAME = "boot.scr"
OTA_BOOT_SCRIPT_NAME[doc] = "File name of the compiled boot script in DEPLOY_DIR_IMAGE and on the boot partition."

S = "${@d.getVar('UNPACKDIR') or d.getVar('WORKDIR')}"
B = "${WORKDIR}/build"

python () {
    # No slots, no A/B boot: skipped (with the reason "bitbake ota-boot" prints), not an error,
    # so that adding the layer breaks no build that does not use the boot side.
    if len((d.getVar("OTA_AGENT_SLOTS") or "").split()) < 2:
        raise bb.parse.SkipRecipe("OTA_AGENT_SLOTS must name two slots (a=/dev/mmcblk0p2 b=/dev/mmcblk0p3) for the A/B boot script")
}

do_configure[noexec] = "1"

# U-Boot syntax in the values (${kernel_addr_r}, ...) is U-Boot's: each value is single-quoted
# into the run script so that neither BitBake nor the shell expands it.
def ota_boot_quote(d, name):
    import shlex
    return shlex.quote(d.getVar(name) or "")

do_compile() {
	ota_tool OTA_AGENT_SLOTS ota-build boot-script --boot-variable ${@ota_boot_quote(d, 'OTA_AGENT_BOOT_VARIABLE')} \
		--env-storage ${@ota_boot_quote(d, 'OTA_BOOT_ENV_STORAGE')} --env-file ${@ota_boot_quote(d, 'OTA_BOOT_ENV_FILE')} \
		--env-device ${@ota_boot_quote(d, 'OTA_BOOT_ENV_DEVICE')} --env-addr ${@ota_boot_quote(d, 'OTA_BOOT_ENV_ADDR')} \
		--bootargs ${@ota_boot_quote(d, 'OTA_BOOT_ARGS')} --boot-commands ${@ota_boot_quote(d, 'OTA_BOOT_COMMANDS')} \
		--on-failure ${@ota_boot_quote(d, 'OTA_BOOT_ON_FAILURE')} -o ${B}/boot.cmd \
		${@' '.join('--slot ' + s for s in (d.getVar('OTA_AGENT_SLOTS') or '').split())} \
		${@' '.join('--boot-value ' + v for v in (d.getVar('OTA_AGENT_BOOT_VALUES') or '').split())}
	mkimage -A ${UBOOT_ARCH} -T script -C none -n "meta-ota A/B boot script" -d ${B}/boot.cmd ${B}/${OTA_BOOT_SCRIPT_NAME}
	printf '%s\n' "# meta-ota: U-Boot environment for fw_printenv/fw_setenv (OTA_BOOT_FW_ENV_CONFIG)" \
		"# device/file  offset  size" ${@ota_boot_quote(d, 'OTA_BOOT_FW_ENV_CONFIG')} > ${B}/fw_env.config
}
do_compile[dirs] = "${B}"
do_compile[cleandirs] = "${B}"
do_compile[vardeps] += "OTA_AGENT_SLOTS OTA_AGENT_BOOT_VARIABLE OTA_AGENT_BOOT_VALUES OTA_BOOT_ENV_STORAGE OTA_BOOT_DEVTYPE \
                        OTA_BOOT_ENV_FILE OTA_BOOT_ENV_DEVICE OTA_BOOT_ENV_ADDR OTA_BOOT_ARGS OTA_BOOT_COMMANDS \
                        OTA_BOOT_ON_FAILURE OTA_BOOT_FW_ENV_CONFIG OTA_BOOT_MOUNT UBOOT_ARCH"
do_compile[vardepsexclude] += "${OTA_PATH_VARS} ${OTA_SECRET_ENV_VARS} BB_ORIGENV"

do_install() {
    install -d ${D}${sysconfdir}
    install -m 0644 ${B}/fw_env.config ${D}${sysconfdir}/fw_env.config
}

do_deploy() {
    install -m 0644 ${B}/${OTA_BOOT_SCRIPT_NAME} ${DEPLOYDIR}/${OTA_BOOT_SCRIPT_NAME}
    install -m 0644 ${B}/boot.cmd ${DEPLOYDIR}/ota-boot.cmd
}
addtask deploy after do_compile before do_build

FILES:${PN} = "${sysconfdir}/fw_env.config"
CONFFILES:${PN} = "${sysconfdir}/fw_env.config"
