SUMMARY = "Debian's rpm as rpm-native: package QA's rpmdeps (tests only)"
inherit host-tool
HOST_TOOL_LINKS = "/usr/bin/rpm=${bindir}/rpm /usr/lib/rpm/rpmdeps=${libdir}/rpm/rpmdeps"
