# nooelint: oelint.var.mandatoryvar.SRC_URI - nothing to fetch: the record is made from OTA_CONFIG
SUMMARY = "OTA record (/etc/full_ota_record.json) and the OTA verification key"
DESCRIPTION = "Creates the image's OTA record from OTA_CONFIG and OTA_BUILD_NUMBER with \
ota_build (or picks up a record made before the build in OTA_RECORD_PREMADE, as \
partner-ota-hub-uploader --createOTARecord leaves it in TMPDIR), and installs it as \
/etc/full_ota_record.json together with the public key devices verify hub_update.bin with. \
Without OTA_SIGNING_KEY, a development key pair is made once in OTA_DEV_KEY_DIR."
HOMEPAGE = "https://github.com/meta-ota/meta-ota"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

inherit allarch ota-common

DEPENDS += "openssl-native ota-build-native python3-native"

B = "${WORKDIR}/build"

do_configure[noexec] = "1"

python () {
    ota_check_settings(d)
}

python do_compile() {
    import os
    b = d.getVar("B")
    key = d.getVar("OTA_SIGNING_KEY_FILE")
    public = d.getVar("OTA_PUBLIC_KEY_FILE")
    if not d.getVar("OTA_SIGNING_KEY") and not os.path.exists(key):
        bb.utils.mkdirhier(d.getVar("OTA_DEV_KEY_DIR"))
        ota_run(d, ["keygen", "-a", d.getVar("OTA_DEV_KEY_ALGORITHM"), "--backend", "openssl",
                    "--private", key, "--public", public], "OTA_DEV_KEY_DIR")
        bb.warn("OTA_SIGNING_KEY is not set: made a development key pair in %s; images of this build "
                "directory are signed with it. Set OTA_SIGNING_KEY for releases." % d.getVar("OTA_DEV_KEY_DIR"))
    # The key devices verify with is derived from the signing key, so the two always match.
    derived = os.path.join(b, "public.pem")
    password = {k: v for k, v in ota_secret_env(d).items() if k == "OTA_KEY_PASSWORD"}
    ota_run(d, ["pubkey", "-k", key, "--backend", "openssl", "-o", derived], "OTA_SIGNING_KEY", secrets=password)
    if public and os.path.exists(public):
        with open(public, "rb") as given, open(derived, "rb") as mine:
            if given.read().strip() != mine.read().strip():
                bb.fatal("OTA_SIGNING_PUBLIC_KEY: %s is not the public key of %s" % (public, key))

    record = os.path.join(b, "full_ota_record.json")
    premade = d.getVar("OTA_RECORD_PREMADE")
    if premade and os.path.exists(premade):
        bb.note("Using the OTA record made before the build: %s (remove it to have the build make one)" % premade)
        ota_run(d, ["record", "--from", premade, "-o", record], "OTA_RECORD_PREMADE")
    else:
        args = ["record", "-c", d.getVar("OTA_CONFIG"), "-n", d.getVar("OTA_BUILD_NUMBER"), "-o", record, "--force"]
        if d.getVar("OTA_DEBUG") == "1":
            args.append("-d")
        if d.getVar("OTA_VERSION_NUMBER"):
            args += ["--version-number", d.getVar("OTA_VERSION_NUMBER")]
        os.environ["SOURCE_DATE_EPOCH"] = d.getVar("OTA_RECORD_TIMESTAMP")
        ota_run(d, args, "OTA_CONFIG")
}
do_compile[dirs] = "${B}"
do_compile[cleandirs] = "${B}"
do_compile[file-checksums] += "${OTA_FILE_CHECKSUMS}"
do_compile[vardeps] += "${OTA_VALUE_VARS} OTA_RECORD_TIMESTAMP"
do_compile[vardepsexclude] += "${OTA_PATH_VARS} ${OTA_SECRET_ENV_VARS} BB_ORIGENV"

do_install() {
    install -d ${D}${sysconfdir} ${D}$(dirname ${OTA_DEVICE_KEY_PATH})
    install -m 0644 ${B}/full_ota_record.json ${D}${sysconfdir}/full_ota_record.json
    install -m 0644 ${B}/public.pem ${D}${OTA_DEVICE_KEY_PATH}
}

FILES:${PN} += "${sysconfdir}/full_ota_record.json ${OTA_DEVICE_KEY_PATH}"
# do_ota_package of the image reads both files from the sysroot.
SYSROOT_DIRS += "${sysconfdir}"
