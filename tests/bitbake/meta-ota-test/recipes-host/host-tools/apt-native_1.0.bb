SUMMARY = "Debian's apt as apt-native, with oe-core's apt.conf.sample (tests only)"
inherit host-tool
HOST_TOOL_LINKS = "/usr/bin/apt-get=${bindir}/apt-get /usr/bin/apt-cache=${bindir}/apt-cache \
                   /usr/bin/apt-ftparchive=${bindir}/apt-ftparchive /usr/bin/apt-config=${bindir}/apt-config \
                   /usr/lib/apt/methods=${libdir}/apt/methods"
SSTATE_SCAN_FILES += "apt.conf.sample"
do_install:append() {
	install -d ${D}${sysconfdir}/apt ${D}${localstatedir}/cache/apt/archives/partial ${D}${localstatedir}/lib/apt/lists/partial
	install -d ${D}${localstatedir}/log/apt ${D}${localstatedir}/lib/dpkg
	customize_apt_conf_sample
}
# apt.conf.sample as oe-core's apt recipe writes it (meta/recipes-devtools/apt/apt_*.bb)
customize_apt_conf_sample() {
	cat > ${D}${sysconfdir}/apt/apt.conf.sample << EOF
Dir "${STAGING_DIR_NATIVE}/"
{
   State "var/lib/apt/"
   {
      Lists "#APTCONF#/lists/";
      status "#ROOTFS#/var/lib/dpkg/status";
   };
   Cache "var/cache/apt/"
   {
      Archives "archives/";
      pkgcache "";
      srcpkgcache "";
   };
   Bin "${STAGING_BINDIR_NATIVE}/"
   {
      methods "${STAGING_LIBDIR}/apt/methods/";
      gzip "/bin/gzip";
      dpkg "dpkg";
      dpkg-source "dpkg-source";
      dpkg-buildpackage "dpkg-buildpackage";
      apt-get "apt-get";
      apt-cache "apt-cache";
   };
   Etc "#APTCONF#"
   {
      Preferences "preferences";
   };
   Log "var/log/apt";
};

APT
{
  Install-Recommends "true";
  Immediate-Configure "false";
  Architecture "i586";
  Get
  {
     Assume-Yes "true";
  };
};

Acquire
{
  AllowInsecureRepositories "true";
};

DPkg::Options {"--root=#ROOTFS#";"--admindir=#ROOTFS#/var/lib/dpkg";"--force-all";"--no-force-overwrite";"--no-debsig"};
DPkg::Path "";
EOF
}
