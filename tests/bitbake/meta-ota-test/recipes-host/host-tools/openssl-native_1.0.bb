SUMMARY = "The host's openssl as openssl-native (tests only)"
inherit host-tool
HOST_TOOL_LINKS = "/usr/bin/openssl=${bindir}/openssl"
