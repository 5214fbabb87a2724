SUMMARY = "The host's python3 as python3-native (tests only)"
inherit host-tool
PROVIDES += "python3-setuptools-native python3-wheel-native"
HOST_TOOL_LINKS = "/usr/bin/python3=${bindir}/python3-native/python3 /usr/bin/python3=${bindir}/python3"
