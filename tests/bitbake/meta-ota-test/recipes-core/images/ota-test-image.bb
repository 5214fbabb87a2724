SUMMARY = "An image holding only meta-ota's packages: the tests' real OTA release"
LICENSE = "MIT"
IMAGE_INSTALL = ""
IMAGE_LINGUAS = ""
IMAGE_FSTYPES = "tar.gz"
inherit core-image
# no run-postinsts (nothing to run on first boot), no SDKs (their toolchains are not built here)
ROOTFS_BOOTSTRAP_INSTALL = ""
# (populate_sdk_ext is inherited after this file: its tasks go when the recipe is finalised)
python () {
    for task in ("do_populate_sdk", "do_populate_sdk_ext", "do_sdk_depends"):
        if task in (d.getVar("__BBTASKS", False) or []):
            bb.build.deltask(task, d)
}
