SUMMARY = "Debian's pseudo as pseudo-native, the build's fakeroot (tests only)"
inherit host-tool
PROVIDES += "virtual/fakeroot-native"
HOST_TOOL_LINKS = "/usr/bin/pseudo=${bindir}/pseudo /usr/bin/pseudodb=${bindir}/pseudodb /usr/bin/pseudolog=${bindir}/pseudolog \
                   /usr/lib/x86_64-linux-gnu/pseudo/libpseudo.so=${prefix}/lib/pseudo/lib/libpseudo.so \
                   /usr/lib/x86_64-linux-gnu/pseudo/libpseudo.so=${prefix}/lib/pseudo/lib64/libpseudo.so"
