SUMMARY = "Debian's quilt as quilt-native: patching oe-core's ldconfig-native (tests only)"
inherit host-tool
HOST_TOOL_LINKS = "/usr/bin/quilt=${bindir}/quilt"
