# nooelint: oelint.var.mandatoryvar.SRC_URI - nothing to fetch: the record is made from OTA_CONFIG
SUMMARY = "OTA record (/etc/full_ota_record.json) and the OTA verification key"
DESCRIPTION = "Creates the image's OTA record from OTA_CONFIG and OTA_BUILD_NUMBER with \
ota_build (or picks up a record made before the build in OTA_RECORD_PREMADE, as \
partner-ota-hub-uploader --createOTARecord leaves it in TMPDIR), and installs it as \
/etc/full_ota_record.json together with the public key devices verify hub_update.bin with. \
Without OTA_SIGNING_KEY, the layer's published development key is used."
HOMEPAGE = "https://github.com/meta-ota/meta-ota"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

inherit allarch ota-common

DEPENDS += "openssl-native ota-build-native"

B = "${WORKDIR}/build"

do_configure[noexec] = "1"

python () {
    ota_check_settings(d)
}

# The public key devices verify with is derived from the signing key, so the two always
# match; the record is made from OTA_CONFIG, or a record made before the build is used.
do_compile() {
	ota_tool OTA_SIGNING_KEY ota-build pubkey -k ${OTA_SIGNING_KEY_FILE} --backend openssl -o ${B}/public.pem
	if [ -n "${OTA_PUBLIC_KEY_FILE}" ] && [ "$(cat ${OTA_PUBLIC_KEY_FILE})" != "$(cat ${B}/public.pem)" ]; then
		bbfatal "OTA_SIGNING_PUBLIC_KEY: ${OTA_PUBLIC_KEY_FILE} is not the public key of ${OTA_SIGNING_KEY_FILE}"
	fi
	if [ -e "${OTA_RECORD_PREMADE}" ]; then
		bbnote "Using the OTA record made before the build: ${OTA_RECORD_PREMADE} (remove it to have the build make one)"
		ota_tool OTA_RECORD_PREMADE ota-build record --from ${OTA_RECORD_PREMADE} -o ${B}/full_ota_record.json
	else
		export SOURCE_DATE_EPOCH=${OTA_RECORD_TIMESTAMP}
		ota_tool OTA_CONFIG ota-build record -c ${OTA_CONFIG} \
			-n ${OTA_BUILD_NUMBER} -o ${B}/full_ota_record.json --force ${OTA_RECORD_ARGS}
	fi
}
OTA_RECORD_ARGS = "${@'-d' if d.getVar('OTA_DEBUG') == '1' else ''} ${@'--version-number ' + d.getVar('OTA_VERSION_NUMBER') if d.getVar('OTA_VERSION_NUMBER') else ''}"
OTA_RECORD_ARGS[doc] = "Options of ota-build record from OTA_DEBUG and OTA_VERSION_NUMBER."
do_compile[dirs] = "${B}"
do_compile[cleandirs] = "${B}"
do_compile[prefuncs] += "ota_export_secrets"
do_compile[ota-secrets] = "OTA_KEY_PASSWORD"
do_compile[file-checksums] += "${OTA_FILE_CHECKSUMS}"
do_compile[vardeps] += "${OTA_VALUE_VARS} OTA_RECORD_TIMESTAMP"
do_compile[vardepsexclude] += "${OTA_PATH_VARS} ${OTA_SECRET_ENV_VARS} BB_ORIGENV"

do_install() {
    install -d ${D}${sysconfdir} ${D}$(dirname ${OTA_DEVICE_KEY_PATH})
    install -m 0644 ${B}/full_ota_record.json ${D}${sysconfdir}/full_ota_record.json
    install -m 0644 ${B}/public.pem ${D}${OTA_DEVICE_KEY_PATH}
}

FILES:${PN} += "${sysconfdir}/full_ota_record.json ${OTA_DEVICE_KEY_PATH}"
