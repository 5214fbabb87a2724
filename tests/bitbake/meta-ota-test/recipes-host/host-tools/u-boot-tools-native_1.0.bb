SUMMARY = "The host's mkimage as u-boot-tools-native (tests only)"
inherit host-tool
PROVIDES = "u-boot-mkimage-native"
HOST_TOOL_LINKS = "/usr/bin/mkimage=${bindir}/mkimage"
