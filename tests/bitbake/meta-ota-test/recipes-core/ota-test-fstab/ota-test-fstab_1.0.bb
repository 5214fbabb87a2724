SUMMARY = "A stock /etc/fstab as base-files installs it (base-files itself is not built in the test layer)"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

inherit allarch

do_configure[noexec] = "1"
do_compile[noexec] = "1"

do_install() {
	install -d ${D}${sysconfdir}
	printf '/dev/root\t/\tauto\tdefaults\t1\t1\nproc\t/proc\tproc\tdefaults\t0\t0\n' > ${D}${sysconfdir}/fstab
}

FILES:${PN} = "${sysconfdir}/fstab"
