# A native recipe under oe-core's name that links the host's binaries into the sysroot
# (tests only). HOST_TOOL_LINKS: "host-path=sysroot-path ..." (sysroot paths under ${D}).
inherit native
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"
INHIBIT_DEFAULT_DEPS = "1"
# nothing to patch (quilt-native itself is one of these recipes)
PATCHTOOL = "patch"
HOST_TOOL_LINKS ?= ""
do_configure[noexec] = "1"
do_compile[noexec] = "1"
do_install() {
    for link in ${HOST_TOOL_LINKS}; do
        target=${link%%=*}
        path=${D}${link#*=}
        install -d $(dirname $path)
        ln -sf $target $path
    done
}
