SUMMARY = "The Python packages of ota_build's upload client (native): requests and what it imports"
DESCRIPTION = "requests, urllib3, idna, certifi and charset-normalizer as pure-Python wheels, \
unpacked beside ota_build in the native sysroot (${datadir}/ota-build), for do_ota_upload \
(OTA_UPLOAD = 1). Not oe-core's requests recipe: through urllib3's and requests' \
runtime dependencies (pyopenssl, cryptography) it pulls the rust toolchain into the build on \
kirkstone and scarthgap. No toolchain, no setuptools: the wheels are only unpacked."
HOMEPAGE = "https://github.com/meta-ota/meta-ota"
LICENSE = "Apache-2.0 & MIT & BSD-3-Clause & MPL-2.0"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/Apache-2.0;md5=89aea4e17d99a7cacdbeed46a0096b10 \
                    file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302 \
                    file://${COMMON_LICENSE_DIR}/BSD-3-Clause;md5=550794465ba0ec5312d6919e203a55f9 \
                    file://${COMMON_LICENSE_DIR}/MPL-2.0;md5=815ca599c9df247a0c7f619bab123dad"

OTA_PYPI_WHEELS = "https://files.pythonhosted.org/packages/py3"
OTA_PYPI_WHEELS[doc] = "Where the wheels are fetched from (PyPI's files by name)."
SRC_URI = "${OTA_PYPI_WHEELS}/r/requests/requests-2.32.3-py3-none-any.whl;name=requests;unpack=0 \
           ${OTA_PYPI_WHEELS}/u/urllib3/urllib3-2.2.3-py3-none-any.whl;name=urllib3;unpack=0 \
           ${OTA_PYPI_WHEELS}/i/idna/idna-3.10-py3-none-any.whl;name=idna;unpack=0 \
           ${OTA_PYPI_WHEELS}/c/certifi/certifi-2025.1.31-py3-none-any.whl;name=certifi;unpack=0 \
           ${OTA_PYPI_WHEELS}/c/charset_normalizer/charset_normalizer-3.4.1-py3-none-any.whl;name=charset;unpack=0 \
"
SRC_URI[requests.sha256sum] = "70761cfe03c773ceb22aa2f671b4757976145175cdfca038c02654d061d6dcc6"
SRC_URI[urllib3.sha256sum] = "ca899ca043dcb1bafa3e262d73aa25c465bfb49e0bd9dd5d59f1d0acba2f8fac"
SRC_URI[idna.sha256sum] = "946d195a0d259cbba61165e88e65941f16e9b36ea6ddb97f00452bae8b1287d3"
SRC_URI[certifi.sha256sum] = "ca78db4565a652026a4db2bcdf68f2fb589ea80d0be70e03929ed730746b84fe"
SRC_URI[charset.sha256sum] = "d98b1668f06378c6dbefec3b92299716b931cd4e6061f3c875a71ced1780ab85"

S = "${@d.getVar('UNPACKDIR') or d.getVar('WORKDIR')}"

INHIBIT_DEFAULT_DEPS = "1"
# python3-native unpacks the wheels (zipfile); the upload runs with it anyway
DEPENDS = "python3-native"

inherit native

do_configure[noexec] = "1"
do_compile[noexec] = "1"

do_install() {
    install -d ${D}${datadir}/ota-build
    for wheel in ${S}/*.whl; do
        ${STAGING_BINDIR_NATIVE}/python3-native/python3 -B -m zipfile -e $wheel ${D}${datadir}/ota-build/
    done
}
