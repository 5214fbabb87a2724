# nooelint: oelint.bbclass.underscores - named like oe-core's core-image, image-artifact-names
# Make an image an OTA release: "inherit ota-image" in an image recipe, or
# INHERIT += "ota" in local.conf for every image.
#
# - the image's rootfs gets /etc/full_ota_record.json and the verification key
#   (package ota-record, added to IMAGE_INSTALL);
# - the payload image type (OTA_PAYLOAD_FSTYPE, default tar.gz) is added to
#   IMAGE_FSTYPES;
# - do_ota_package (after do_image_complete) wraps the payload into the signed
#   hub_update.bin and deploys it with the record and the public key;
# - do_ota_upload (only with OTA_UPLOAD = "1") uploads them.

inherit ota-common

IMAGE_FSTYPES:append = " ${OTA_PAYLOAD_FSTYPE}"
IMAGE_INSTALL:append = " ota-record ${@'ota-agent' if d.getVar('OTA_AGENT') == '1' else ''}"

OTA_DEPLOYDIR = "${WORKDIR}/deploy-ota"
OTA_UPLOADDIR = "${WORKDIR}/ota-upload"
# Native tools of the upload: the ota_build client uses requests, whose oe-core
# native recipe pulls rust-native. Only a build with OTA_UPLOAD = "1" pays it.
OTA_UPLOAD_NATIVE_DEPENDS ??= "python3-requests-native:do_populate_sysroot"

python () {
    import os
    cfg = ota_check_settings(d)
    if cfg is not None and not d.getVar("OTA_IMAGE_FILE"):
        d.setVar("OTA_IMAGE_FILE", cfg.image_file)
    elif not d.getVar("OTA_IMAGE_FILE"):
        d.setVar("OTA_IMAGE_FILE", "hub_update.bin")
    fstype = d.getVar("OTA_PAYLOAD_FSTYPE")
    known = set((d.getVar("IMAGE_TYPES") or "").split())
    conversions = set((d.getVar("CONVERSIONTYPES") or "").split())
    base, _, conv = fstype.partition(".")
    if fstype not in known and not (base in known and conv in conversions):
        bb.fatal("OTA_PAYLOAD_FSTYPE = '%s': not an image type this build knows (e.g. tar.gz, ext4, wic)" % fstype)
    if os.sep in d.getVar("OTA_IMAGE_FILE"):
        bb.fatal("OTA_IMAGE_FILE = '%s': must be a file name" % d.getVar("OTA_IMAGE_FILE"))
    if d.getVar("OTA_UPLOAD") == "1":
        bb.build.addtask("do_ota_upload", "do_build", "do_ota_package", d)
        d.appendVarFlag("do_ota_upload", "depends", " " + d.getVar("OTA_UPLOAD_NATIVE_DEPENDS"))
}

python do_ota_package() {
    import os
    import shutil
    deploy = d.getVar("DEPLOY_DIR_IMAGE")
    fstype = d.getVar("OTA_PAYLOAD_FSTYPE")
    candidates = [d.getVar("IMAGE_LINK_NAME") + "." + fstype,
                  d.getVar("IMAGE_NAME") + d.getVar("IMAGE_NAME_SUFFIX") + "." + fstype,
                  d.getVar("IMAGE_NAME") + "." + fstype]
    payload = next((os.path.join(deploy, c) for c in candidates if os.path.exists(os.path.join(deploy, c))), None)
    if payload is None:
        bb.fatal("OTA_PAYLOAD_FSTYPE: no %s image in %s (is '%s' in IMAGE_FSTYPES?)" % (fstype, deploy, fstype))
    payload = os.path.realpath(payload)

    sysroot = d.getVar("RECIPE_SYSROOT")
    record = sysroot + d.getVar("sysconfdir") + "/full_ota_record.json"
    public = sysroot + d.getVar("OTA_DEVICE_KEY_PATH")
    key = d.getVar("OTA_SIGNING_KEY_FILE")
    if not d.getVar("OTA_SIGNING_KEY"):
        bb.warn("OTA_SIGNING_KEY is not set: %s is signed with the development key %s (made once for this build "
                "directory). Set OTA_SIGNING_KEY to your release key before shipping."
                % (d.getVar("OTA_IMAGE_FILE"), key))

    outdir = d.getVar("OTA_DEPLOYDIR")
    name = d.getVar("IMAGE_NAME")
    image_file = d.getVar("OTA_IMAGE_FILE")
    versioned = "%s.%s" % (name, image_file)
    out = os.path.join(outdir, versioned)
    secrets = {k: v for k, v in ota_secret_env(d).items() if k == "OTA_KEY_PASSWORD"}
    ota_run(d, ["package", payload, "-r", record, "-k", key, "--backend", "openssl", "-o", out],
            "OTA_SIGNING_KEY", secrets=secrets)
    # Check it as the device will, with the key installed in its /etc.
    ota_run(d, ["verify", out, "-k", public, "-t", d.getVar("OTA_TYPE"), "--backend", "openssl"],
            "OTA_SIGNING_PUBLIC_KEY")

    files = {image_file: versioned,
             "full_ota_record.json": name + ".full_ota_record.json",
             os.path.basename(public): name + "." + os.path.basename(public)}
    shutil.copyfile(record, os.path.join(outdir, files["full_ota_record.json"]))
    shutil.copyfile(public, os.path.join(outdir, files[os.path.basename(public)]))
    for link, target in files.items():
        for alias in (link, d.getVar("IMAGE_LINK_NAME") + "." + link):
            os.symlink(target, os.path.join(outdir, alias))
}
do_ota_package[dirs] = "${OTA_DEPLOYDIR}"
do_ota_package[cleandirs] = "${OTA_DEPLOYDIR}"
do_ota_package[depends] += "${OTA_NATIVE_DEPENDS} ota-record:do_populate_sysroot"
do_ota_package[file-checksums] += "${OTA_KEY_CHECKSUMS}"
do_ota_package[vardeps] += "OTA_PAYLOAD_FSTYPE OTA_TYPE OTA_IMAGE_FILE OTA_DEVICE_KEY_PATH"
do_ota_package[vardepsexclude] += "${OTA_PATH_VARS} ${OTA_SECRET_ENV_VARS} BB_ORIGENV DATETIME"
# Deployed like images (removed again when the task re-runs or is cleaned),
# without an sstate archive: a signed release is made by the build that signs it.
SSTATETASKS += "do_ota_package"
do_ota_package[sstate-inputdirs] = "${OTA_DEPLOYDIR}"
do_ota_package[sstate-outputdirs] = "${DEPLOY_DIR_IMAGE}"
SSTATE_SKIP_CREATION:task-ota-package = "1"
# The stable names (hub_update.bin, full_ota_record.json, the key) point at the
# last image packaged when several images inherit ota-image.
SSTATE_ALLOW_OVERLAP_FILES += "${DEPLOY_DIR_IMAGE}/${OTA_IMAGE_FILE} ${DEPLOY_DIR_IMAGE}/full_ota_record.json \
                               ${DEPLOY_DIR_IMAGE}/${@os.path.basename(d.getVar('OTA_DEVICE_KEY_PATH'))}"

python do_ota_package_setscene() {
    sstate_setscene(d)
}
addtask do_ota_package_setscene
do_ota_package[doc] = "Wraps the payload image into the signed OTA image (hub_update.bin) and deploys it with the record and the public key"
addtask ota_package after do_image_complete before do_build

python do_ota_upload() {
    import os
    deploy = d.getVar("DEPLOY_DIR_IMAGE")
    workdir = d.getVar("OTA_UPLOADDIR")
    image_file = d.getVar("OTA_IMAGE_FILE")
    for name in (image_file, "full_ota_record.json"):
        os.symlink(os.path.realpath(os.path.join(deploy, d.getVar("IMAGE_LINK_NAME") + "." + name)),
                   os.path.join(workdir, name))
    args = ["-c", d.getVar("OTA_CONFIG"), "-n", d.getVar("OTA_BUILD_NUMBER"), "-s", "--uploadOTAImage"]
    if d.getVar("OTA_DEBUG") == "1":
        args.insert(4, "-d")
    ota_run(d, args, "OTA_UPLOAD", module="ota_build.cli.compat", secrets=ota_secret_env(d), cwd=workdir)
}
do_ota_upload[network] = "1"
do_ota_upload[doc] = "Uploads the OTA image and its record to the OTA service (OTA_UPLOAD = 1)"
do_ota_upload[dirs] = "${OTA_UPLOADDIR}"
do_ota_upload[cleandirs] = "${OTA_UPLOADDIR}"
do_ota_upload[depends] += "${OTA_NATIVE_DEPENDS}"
do_ota_upload[file-checksums] += "${OTA_CONFIG_CHECKSUMS}"
do_ota_upload[vardeps] += "OTA_BUILD_NUMBER OTA_DEBUG OTA_IMAGE_FILE"
do_ota_upload[vardepsexclude] += "${OTA_PATH_VARS} ${OTA_SECRET_ENV_VARS} BB_ORIGENV"
