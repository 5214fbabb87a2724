SUMMARY = "Debian's dpkg as dpkg-native (tests only)"
inherit host-tool
HOST_TOOL_LINKS = "${@' '.join('/usr/bin/%s=${bindir}/%s' % (t, t) for t in 'dpkg dpkg-deb dpkg-divert dpkg-maintscript-helper dpkg-query dpkg-realpath dpkg-split dpkg-statoverride dpkg-trigger'.split())} \
                   /sbin/start-stop-daemon=${bindir}/start-stop-daemon"
