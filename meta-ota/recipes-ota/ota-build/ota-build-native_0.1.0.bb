SUMMARY = "ota_build: the library and tools behind meta-ota (native)"
DESCRIPTION = "Installs the ota_build Python package of the meta-ota repository into the \
native sysroot, with the ota-build, partner-ota-hub-uploader and partner-ota-hub-deploy \
commands. It is copied, not built: no setuptools, wheel or pip, and no native \
cryptography, jsonschema or requests on the build path (python3-native and \
openssl-native are enough)."
HOMEPAGE = "https://github.com/meta-ota/meta-ota"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

# The library lives next to the layer: <repo>/ota_build.
FILESEXTRAPATHS:prepend := "${OTA_SOURCE_DIR}:"
# One file:// per source file, without __pycache__ (see ota_source_uris in ota-common.bbclass).
SRC_URI = "${@ota_source_uris(d)}"

S = "${@d.getVar('UNPACKDIR') or d.getVar('WORKDIR')}/ota_build"

INHIBIT_DEFAULT_DEPS = "1"

inherit ota-common native

# The tools run with python3-native (bin/python3-native/python3 beside them in the sysroot):
# whoever depends on ota-build-native:do_populate_sysroot gets it too.
RDEPENDS:${PN} += "python3-native"

do_configure[noexec] = "1"
do_compile[noexec] = "1"

do_install() {
    install -d ${D}${datadir}/ota-build ${D}${bindir}
    cp -R --no-preserve=ownership ${S} ${D}${datadir}/ota-build/ota_build
    find ${D}${datadir}/ota-build -name __pycache__ -prune -exec rm -rf {} +
    find ${D}${datadir}/ota-build -name '*.pyc' -delete
    for tool in ota-build:ota_build.cli.build:main \
                partner-ota-hub-uploader:ota_build.cli.compat:uploader_main \
                partner-ota-hub-deploy:ota_build.cli.compat:deploy_main; do
        name=${tool%%:*}
        target=${tool#*:}
        cat > ${D}${bindir}/$name <<EOS
#!/bin/sh
# $name from ota-build-native (meta-ota): runs ota_build with python3-native beside it in
# the sysroot (OTA_PYTHON, or the python3 on PATH, where there is none), writing no bytecode
here=\$(dirname "\$(readlink -f "\$0")")
python=\${OTA_PYTHON:-\$here/python3-native/python3}
[ -x "\$python" ] || python=python3
PYTHONPATH="\$here/../share/ota-build\${PYTHONPATH:+:\$PYTHONPATH}" PYTHONDONTWRITEBYTECODE=1 exec "\$python" -s -c 'import sys; from ${target%:*} import ${target#*:}; sys.exit(${target#*:}())' "\$@"
EOS
        chmod 0755 ${D}${bindir}/$name
    done
}
