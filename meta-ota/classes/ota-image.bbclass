# nooelint: oelint.bbclass.underscores - named like oe-core's core-image, image-artifact-names
# The image type "hub_update.bin": a signed OTA image. Inherited by images, through
# INHERIT += "ota" (every image) or IMAGE_CLASSES += "ota-image" (local.conf), or
# "inherit ota-image" in an image recipe.
#
# - IMAGE_FSTYPES += "hub_update.bin" asks for it; OTA_AUTO_FSTYPES (default: the type)
#   is appended to IMAGE_FSTYPES of every image with this class: set it to "" to ask per image;
# - IMAGE_CMD:hub_update (with the conversion "bin") wraps the payload type (OTA_PAYLOAD_FSTYPE, an IMAGE_TYPEDEP, so
#   it is built too) with the record and key of the image's /etc into
#   <IMAGE_NAME>.hub_update.bin, with ota-build from ota-build-native; image.bbclass deploys
#   it (do_image_complete, sstate) and makes the <IMAGE_LINK_NAME>.hub_update.bin link;
# - an image with the type gets the package ota-record (/etc/full_ota_record.json and the
#   verification key), and ota-agent with OTA_AGENT = "1";
# - do_ota_upload (only with OTA_UPLOAD = "1") runs ota-build upload.

inherit ota-common

OTA_AUTO_FSTYPES ??= "${OTA_IMAGE_FSTYPE}"
OTA_AUTO_FSTYPES[doc] = "Appended to IMAGE_FSTYPES of every image that inherits ota-image (INHERIT += \"ota\": all images). Set to \"\" and add IMAGE_FSTYPES += \"hub_update.bin\" to the images that are OTA releases."
IMAGE_FSTYPES:append = " ${OTA_AUTO_FSTYPES}"
IMAGE_INSTALL:append = " ${@ota_image_packages(d)}"

# The type is "hub_update" with the conversion "bin" (as tar.gz is tar with gz): a type's name
# cannot hold a dot (image_types.bbclass splits it into conversions). The conversion only
# gives the file its name: IMAGE_CMD:hub_update writes <IMAGE_NAME>.hub_update, "bin" links
# it to <IMAGE_NAME>.hub_update.bin, image.bbclass removes the first and links the second.
IMAGE_TYPES += "hub_update hub_update.bin"
CONVERSIONTYPES += "bin"
# nooelint: oelint.vars.specific - a conversion's override, as image_types.bbclass sets them
CONVERSION_CMD:bin = "ln -f ${IMAGE_NAME}${OTA_IMAGE_NAME_SUFFIX}.${type} ${IMAGE_NAME}${OTA_IMAGE_NAME_SUFFIX}.${type}.bin"
# nooelint: oelint.vars.specific - an image type's override, as image_types.bbclass sets them
IMAGE_TYPEDEP:hub_update = "${OTA_PAYLOAD_FSTYPE}"
# The files image.bbclass names <IMAGE_NAME>.<type>: kirkstone puts IMAGE_NAME_SUFFIX between.
OTA_IMAGE_NAME_SUFFIX = "${@'${IMAGE_NAME_SUFFIX}' if 'kirkstone' in (d.getVar('LAYERSERIES_CORENAMES') or '').split() else ''}"
OTA_IMAGE_NAME_SUFFIX[doc] = "What image.bbclass puts between IMAGE_NAME and the type in a file name (IMAGE_NAME_SUFFIX on kirkstone, nothing later)."
OTA_DEVICE_KEY_NAME = "${@os.path.basename(d.getVar('OTA_DEVICE_KEY_PATH'))}"
OTA_DEVICE_KEY_NAME[doc] = "File name of the deployed verification key (that of OTA_DEVICE_KEY_PATH)."

# The signed image, then checked as the device will check it, with the key in the image's
# /etc; the record and the key are deployed beside it, with stable links (the last image
# made wins: SSTATE_ALLOW_OVERLAP_FILES). The key's password reaches ota-build through
# the task's environment (ota_export_secrets), never through this script.
IMAGE_CMD:hub_update () {
	base=${IMAGE_NAME}${OTA_IMAGE_NAME_SUFFIX}
	ota_tool OTA_SIGNING_KEY ota-build package ${IMGDEPLOYDIR}/$base.${OTA_PAYLOAD_FSTYPE} \
		-r ${IMAGE_ROOTFS}${sysconfdir}/full_ota_record.json -k ${OTA_SIGNING_KEY_FILE} --backend openssl \
		-o ${IMGDEPLOYDIR}/$base.hub_update
	ota_tool OTA_SIGNING_PUBLIC_KEY ota-build verify ${IMGDEPLOYDIR}/$base.hub_update \
		-k ${IMAGE_ROOTFS}${OTA_DEVICE_KEY_PATH} -t ${OTA_TYPE} --backend openssl
	install -m 0644 ${IMAGE_ROOTFS}${sysconfdir}/full_ota_record.json ${IMGDEPLOYDIR}/$base.full_ota_record.json
	install -m 0644 ${IMAGE_ROOTFS}${OTA_DEVICE_KEY_PATH} ${IMGDEPLOYDIR}/$base.${OTA_DEVICE_KEY_NAME}
	for name in full_ota_record.json ${OTA_DEVICE_KEY_NAME}; do
		ln -sf $base.$name ${IMGDEPLOYDIR}/${IMAGE_LINK_NAME}.$name
		ln -sf $base.$name ${IMGDEPLOYDIR}/$name
	done
	ln -sf $base.hub_update.bin ${IMGDEPLOYDIR}/${OTA_IMAGE_FILE}
	if [ -z "${OTA_SIGNING_KEY}" ]; then
		bbwarn "OTA_SIGNING_KEY is not set: $base.hub_update.bin is signed with the layer's published development key. Set OTA_SIGNING_KEY before shipping."
	fi
}
IMAGE_CMD:hub_update[vardepsexclude] = "${OTA_PATH_VARS}"
do_image_hub_update[depends] += "${OTA_NATIVE_DEPENDS}"
do_image_hub_update[prefuncs] += "ota_export_secrets"
do_image_hub_update[ota-secrets] = "OTA_KEY_PASSWORD"
do_image_hub_update[file-checksums] += "${OTA_KEY_CHECKSUMS}"
# A build directory used with meta-ota before the image type (its do_ota_package deployed
# the same file names under its own sstate manifest): image.bbclass would refuse to install
# "files already in a shared area". Before do_image_complete installs, remove that task's
# files and manifest once, as "bitbake -c cleansstate" would have.
python ota_forget_legacy_deploy () {
    manifest = d.expand("${SSTATE_MANFILEPREFIX}.ota_package")
    if os.path.exists(manifest):
        bb.note("meta-ota: removing what the earlier do_ota_package deployed (%s)" % manifest)
        sstate_clean_manifest(manifest, d)
}
do_image_complete[prefuncs] += "ota_forget_legacy_deploy"
do_image_complete_setscene[prefuncs] += "ota_forget_legacy_deploy"
SSTATE_ALLOW_OVERLAP_FILES += "${DEPLOY_DIR_IMAGE}/${OTA_IMAGE_FILE} ${DEPLOY_DIR_IMAGE}/full_ota_record.json \
                               ${DEPLOY_DIR_IMAGE}/${OTA_DEVICE_KEY_NAME}"

# A/B: the boot partition (the boot state, fw_env.config's file) and the data partition are
# mounted by the rootfs's own /etc/fstab, so every slot mounts them, also one written by an
# update from the payload; wic's fstab edit reaches only the slots of a flashed card (the wks
# layouts turn it off: the slots are the payload's rootfs, byte for byte).
ota_rootfs_fstab () {
	fstab=${IMAGE_ROOTFS}${sysconfdir}/fstab
	if [ ! -f $fstab ]; then
		bbwarn "the rootfs has no ${sysconfdir}/fstab: nothing mounts ${OTA_BOOT_MOUNT}, where the A/B boot state is (install base-files, or mount it yourself)"
		return 0
	fi
	if [ -z "${OTA_FSTAB_BOOT_DEVICE}" ]; then
		bbwarn "OTA_FSTAB_BOOT_DEVICE is empty (no partition number in the first slot of OTA_AGENT_SLOTS): ${sysconfdir}/fstab does not mount ${OTA_BOOT_MOUNT}"
	fi
	for entry in "${OTA_FSTAB_BOOT_DEVICE} ${OTA_BOOT_MOUNT} vfat" "${OTA_FSTAB_DATA_DEVICE} ${OTA_FSTAB_DATA_MOUNT} auto"; do
		set -- $entry
		[ $# -eq 3 ] || continue
		if ! awk -v m="$2" '$1 !~ /^#/ && $2 == m { found = 1 } END { exit !found }' $fstab; then
			printf '%s\t%s\t%s\tdefaults\t0\t0\n' "$1" "$2" "$3" >> $fstab
		fi
		install -d ${IMAGE_ROOTFS}$2
	done
}
ROOTFS_POSTPROCESS_COMMAND += "${@'ota_rootfs_fstab;' if d.getVar('OTA_AGENT_SLOTS') and ota_image_wanted(d) else ''}"

def ota_image_wanted(d):
    """Whether this image makes the hub_update.bin type."""
    fstypes = (d.getVar("IMAGE_FSTYPES") or "").split()
    return d.getVar("OTA_IMAGE_FSTYPE") in fstypes

def ota_image_packages(d):
    """The packages an image with the type gets: the record and key, and the agent with OTA_AGENT = "1"."""
    if not ota_image_wanted(d):
        return ""
    return "ota-record" + (" ota-agent" if d.getVar("OTA_AGENT") == "1" else "")

python () {
    if not ota_image_wanted(d):
        return
    ota_check_settings(d)
    if d.getVar("OTA_UPLOAD") == "1":
        bb.build.addtask("do_ota_upload", "do_build", "do_image_complete", d)
        d.appendVarFlag("do_ota_upload", "depends", " " + d.getVar("OTA_UPLOAD_NATIVE_DEPENDS"))
}

# Native tools of the upload beyond OTA_NATIVE_DEPENDS: the Python packages of the ota_build
# client (requests and what it imports), pure-Python wheels, no toolchain.
OTA_UPLOAD_NATIVE_DEPENDS ??= "ota-upload-deps-native:do_populate_sysroot"
OTA_UPLOAD_NATIVE_DEPENDS[doc] = "Native dependencies of do_ota_upload beyond the OTA tools (default: the client's Python packages, ota-upload-deps-native)."

# The upload writes the record back (with the server's url and id): a copy in OTA_UPLOADDIR,
# never the deployed one.
OTA_UPLOADDIR = "${WORKDIR}/ota-upload"
OTA_UPLOADDIR[doc] = "do_ota_upload's directory: the copy of the record the upload completes."
do_ota_upload () {
	cp ${DEPLOY_DIR_IMAGE}/${IMAGE_LINK_NAME}.full_ota_record.json ${OTA_UPLOADDIR}/full_ota_record.json
	ota_tool OTA_UPLOAD ota-build upload -c ${OTA_CONFIG} --no-progress -r ${OTA_UPLOADDIR}/full_ota_record.json \
		-i ${DEPLOY_DIR_IMAGE}/${IMAGE_LINK_NAME}.hub_update.bin
}
do_ota_upload[dirs] = "${OTA_UPLOADDIR}"
do_ota_upload[cleandirs] = "${OTA_UPLOADDIR}"
do_ota_upload[network] = "1"
do_ota_upload[doc] = "Uploads the OTA image and its record to the OTA service (OTA_UPLOAD = 1) with ota-build upload"
do_ota_upload[depends] += "${OTA_NATIVE_DEPENDS}"
do_ota_upload[prefuncs] += "ota_export_secrets"
do_ota_upload[ota-secrets] = "${OTA_SECRET_ENV_VARS}"
do_ota_upload[file-checksums] += "${OTA_CONFIG_CHECKSUMS}"
do_ota_upload[vardepsexclude] += "${OTA_PATH_VARS} ${OTA_SECRET_ENV_VARS} BB_ORIGENV"
