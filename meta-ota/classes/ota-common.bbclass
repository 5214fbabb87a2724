# nooelint: oelint.bbclass.underscores - named like oe-core's core-image, image-artifact-names
# Settings and helpers shared by the classes and recipes of meta-ota. Every setting has a
# [doc] flag here and a row in the README ("Using the layer").
#
# The layer is thin on purpose: it reads variables and runs the ota_build library's tools
# from the native sysroot (ota-build-native, run by python3-native, signing with
# openssl-native). No OTA logic lives here.

# --- user settings ------------------------------------------------------------
OTA_CONFIG ??= "${OTA_LAYERDIR}/files/partner-ota-conf.json"
OTA_CONFIG[doc] = "The partner OTA configuration (JSON: name, version, imageFiles, type; no secrets). Its content is in the OTA tasks' signatures."
# Jenkins sets BUILD_NUMBER; pass it in with
#   export BB_ENV_PASSTHROUGH_ADDITIONS="$BB_ENV_PASSTHROUGH_ADDITIONS BUILD_NUMBER"
OTA_BUILD_NUMBER ??= "${@d.getVar('BUILD_NUMBER') or '0'}"
OTA_BUILD_NUMBER[doc] = "Build number appended to the config's version (1.0.<n>). Default: BUILD_NUMBER from the environment (BB_ENV_PASSTHROUGH_ADDITIONS), else 0."
OTA_DEBUG ??= "0"
OTA_DEBUG[doc] = "1: a debug build ('d' appended to the version, as the seed tools' -d). 0 or 1."
OTA_SIGNING_KEY ??= ""
OTA_SIGNING_KEY[doc] = "Private signing key (PEM: Ed25519, ECDSA P-256, RSA). An encrypted key's password is read from the environment variable OTA_KEY_PASSWORD at task time. Empty: the layer's public development key (warns)."
OTA_SIGNING_PUBLIC_KEY ??= ""
OTA_SIGNING_PUBLIC_KEY[doc] = "Public key of OTA_SIGNING_KEY; if set, checked against the key derived from it."
OTA_DEV_KEY ??= "${OTA_LAYERDIR}/files/dev-keys/ota-dev.key.pem"
OTA_DEV_KEY[doc] = "The development signing key used without OTA_SIGNING_KEY: a published key pair of the layer (files/dev-keys), never for shipping."
OTA_IMAGE_FSTYPE = "hub_update.bin"
OTA_IMAGE_FSTYPE[doc] = "The image type of the signed OTA image (IMAGE_FSTYPES += \"hub_update.bin\"); fixed."
OTA_PAYLOAD_FSTYPE ??= "tar.gz"
OTA_PAYLOAD_FSTYPE[doc] = "Image type wrapped into hub_update.bin (IMAGE_TYPEDEP of the hub_update.bin type, so it is built too)."
OTA_TYPE ??= "5"
OTA_TYPE[doc] = "OTA type in the header and record (5 = HUB); must equal the config's 'type'."
OTA_VERSION_NUMBER ??= ""
OTA_VERSION_NUMBER[doc] = "Explicit versionNumber; empty: derived from the config's version and OTA_BUILD_NUMBER."
OTA_UPLOAD ??= "0"
OTA_UPLOAD[doc] = "1: upload hub_update.bin and its record after the image (task do_ota_upload, network on that task only). 0 or 1."
OTA_RECORD_PREMADE ??= "${TMPDIR}/full_ota_record.json"
OTA_RECORD_PREMADE[doc] = "A record made before the build (partner-ota-hub-uploader --createOTARecord puts it here): used instead of making one when it exists."
OTA_RECORD_TIMESTAMP ??= "${SOURCE_DATE_EPOCH}"
OTA_RECORD_TIMESTAMP[doc] = "Seconds since the epoch: the record's created/updated time (reproducible)."
OTA_DEVICE_KEY_PATH ??= "${sysconfdir}/ota/ota-signing.pub.pem"
OTA_DEVICE_KEY_PATH[doc] = "Where the image holds the public key devices verify hub_update.bin with."
OTA_CREDENTIALS_FILE ??= ""
OTA_CREDENTIALS_FILE[doc] = "JSON file with the upload credentials (username, userpw, auth-string), outside the layer; or the environment variables OTA_USERNAME, OTA_USERPW, OTA_AUTH_STRING."
OTA_IMAGE_FILE ??= "hub_update.bin"
OTA_IMAGE_FILE[doc] = "Stable link name of the last OTA image made, in DEPLOY_DIR_IMAGE."
# The device agent (recipes-ota/ota-agent): OTA_AGENT = "1" puts it in OTA images.
OTA_AGENT ??= "0"
OTA_AGENT[doc] = "1: put the device agent (ota-agent) into OTA images. 0 or 1."
OTA_AGENT_SERVER ??= "http://ota.example.com:8080"
OTA_AGENT_SERVER[doc] = "Base URL of the OTA service the agent asks."
OTA_AGENT_DEVICE_TYPE ??= ""
OTA_AGENT_DEVICE_TYPE[doc] = "deviceTypeId the devices report; empty: the config's deviceTypeId."
OTA_AGENT_SLOTS ??= ""
OTA_AGENT_SLOTS[doc] = "Two A/B root partitions, e.g. 'a=/dev/mmcblk0p2 b=/dev/mmcblk0p3' (A/B installer); empty: the command installer."
OTA_AGENT_BOOT_VARIABLE ??= "ota_slot"
OTA_AGENT_BOOT_VARIABLE[doc] = "U-Boot variable that selects the slot."
OTA_AGENT_BOOT_VALUES ??= ""
OTA_AGENT_BOOT_VALUES[doc] = "The boot variable's value per slot, e.g. 'a=0:2 b=0:3'; empty: the slot names."
OTA_AGENT_BOOT_LIMIT ??= "3"
OTA_AGENT_BOOT_LIMIT[doc] = "Boot attempts a new slot gets before the boot script falls back (1-9): the one limit of the A/B boot contract (the agent writes it into BOOT_<slot>_LEFT; the script only counts down)."
OTA_AGENT_HEALTH_CHECK ??= ""
OTA_AGENT_HEALTH_CHECK[doc] = "Command the agent runs on the new slot before it commits (exit 0 = healthy); empty: the agent reached the server."
OTA_AGENT_REBOOT_COMMAND ??= "reboot"
OTA_AGENT_REBOOT_COMMAND[doc] = "With OTA_AGENT_SLOTS: the command the agent runs to reboot after switching to the new slot and after a failed health check (the boot script then commits or falls back on its own); empty: the agent only reports pending-reboot and waits."
OTA_AGENT_COMMAND ??= "/sbin/sysupgrade {image}"
OTA_AGENT_COMMAND[doc] = "The command installer; {image} is the payload's path."
OTA_AGENT_POLL_INTERVAL ??= "300"
OTA_AGENT_POLL_INTERVAL[doc] = "Seconds between update checks."
OTA_AGENT_LOCAL_PORT ??= "5000"
OTA_AGENT_LOCAL_PORT[doc] = "The agent's local API port (loopback only)."
OTA_AGENT_STATE_DIR ??= "${@'${OTA_FSTAB_DATA_MOUNT}/ota-agent' if d.getVar('OTA_AGENT_SLOTS') and d.getVar('OTA_FSTAB_DATA_DEVICE') else '${localstatedir}/lib/ota-agent'}"
OTA_AGENT_STATE_DIR[doc] = "The agent's state directory on the device (default: on the data partition with OTA_AGENT_SLOTS and OTA_FSTAB_DATA_DEVICE, so both slots share it; else /var/lib/ota-agent)."
OTA_AGENT_DEVICE_DIR ??= "${@'${OTA_FSTAB_DATA_MOUNT}/ota' if d.getVar('OTA_AGENT_SLOTS') and d.getVar('OTA_FSTAB_DATA_DEVICE') else '${sysconfdir}/ota'}"
OTA_AGENT_DEVICE_DIR[doc] = "Where each device's provisioned device-id and device-token files are (default: on the data partition with OTA_AGENT_SLOTS and OTA_FSTAB_DATA_DEVICE, else /etc/ota). With slots it must be mounted by both: an update writes a rootfs without them."
OTA_AGENT_DESCRIPTION ??= "${MACHINE}"
OTA_AGENT_DESCRIPTION[doc] = "The device description the agent reports."
# The boot side (recipes-bsp/ota-boot, docs/boot.md): the A/B boot script and fw_env.config.
# Values in U-Boot syntax (${devtype}, ${kernel_addr_r}, ...) are U-Boot's: BitBake keeps them as written.
OTA_BOOT_ENV_STORAGE ??= "saveenv"
OTA_BOOT_ENV_STORAGE[doc] = "Where the boot script keeps the boot state: saveenv (U-Boot's environment) or file (OTA_BOOT_ENV_FILE on the boot partition)."
OTA_BOOT_ENV_FILE ??= "ota-env.txt"
OTA_BOOT_ENV_FILE[doc] = "File mode: the KEY=value text file on the FAT boot partition (env import/export -t), also the agent's key=value back-end."
OTA_BOOT_DEVTYPE ??= "mmc"
OTA_BOOT_DEVTYPE[doc] = "U-Boot interface of the card or chip that holds the boot partition and the slots (mmc, usb, virtio, ...)."
OTA_BOOT_ENV_DEVICE ??= "${@ota_boot_env_device(d)}"
OTA_BOOT_ENV_DEVICE[doc] = "File mode: U-Boot interface and dev:part of the boot partition (default: partition 1 of the slots' device, from OTA_AGENT_BOOT_VALUES)."
OTA_BOOT_ENV_ADDR ??= "${kernel_addr_r}"
OTA_BOOT_ENV_ADDR[doc] = "File mode: RAM address the env file is loaded to and exported at (before the kernel is loaded)."
OTA_BOOT_ARGS ??= "root=${ota_boot_root} rootwait"
OTA_BOOT_ARGS[doc] = "Appended to U-Boot's bootargs before ota.slot=<slot>; ${ota_boot_root} is the slot's device from OTA_AGENT_SLOTS."
OTA_BOOT_COMMANDS ??= "${@ota_boot_default_commands(d)}"
OTA_BOOT_COMMANDS[doc] = "One line of U-Boot commands that load the slot's kernel and device tree and boot them (default: from the slot's /boot with the boot variable's dev:part)."
OTA_BOOT_ON_FAILURE ??= "reset"
OTA_BOOT_ON_FAILURE[doc] = "U-Boot command run when OTA_BOOT_COMMANDS return (the slot did not boot): reset makes the next boot count another attempt."
OTA_BOOT_MOUNT ??= "/uboot"
OTA_BOOT_MOUNT[doc] = "Where Linux mounts the FAT boot partition (the wks layouts: /uboot): fw_env.config's default, and in file mode the agent's env file ${OTA_BOOT_MOUNT}/${OTA_BOOT_ENV_FILE}."
OTA_FSTAB_BOOT_DEVICE ??= "${@ota_fstab_boot_device(d)}"
OTA_FSTAB_BOOT_DEVICE[doc] = "With OTA_AGENT_SLOTS: the boot partition the rootfs's /etc/fstab mounts at OTA_BOOT_MOUNT, in every slot (default: partition 1 of the first slot's disk, e.g. /dev/mmcblk0p1)."
OTA_FSTAB_DATA_DEVICE ??= ""
OTA_FSTAB_DATA_DEVICE[doc] = "With OTA_AGENT_SLOTS: a partition the rootfs's /etc/fstab mounts at OTA_FSTAB_DATA_MOUNT in every slot (the wks layouts' p4, e.g. /dev/mmcblk0p4); empty: none."
OTA_FSTAB_DATA_MOUNT ??= "/data"
OTA_FSTAB_DATA_MOUNT[doc] = "Where OTA_FSTAB_DATA_DEVICE is mounted."
OTA_BOOT_FW_ENV_CONFIG ??= "${OTA_BOOT_MOUNT}/uboot.env 0x0000 ${@d.getVar('UBOOT_ENV_SIZE') or '0x20000'}"
OTA_BOOT_FW_ENV_CONFIG[doc] = "The line of /etc/fw_env.config (device or file, offset, size) for fw_setenv: U-Boot's env file on the boot partition, mounted at /uboot."

# --- derived ------------------------------------------------------------------
OTA_SIGNING_KEY_FILE = "${@d.getVar('OTA_SIGNING_KEY') or d.getVar('OTA_DEV_KEY')}"
OTA_SIGNING_KEY_FILE[doc] = "The key the OTA tasks sign with: OTA_SIGNING_KEY, else OTA_DEV_KEY."
OTA_PUBLIC_KEY_FILE = "${@d.getVar('OTA_SIGNING_PUBLIC_KEY') or ('' if d.getVar('OTA_SIGNING_KEY') else d.getVar('OTA_DEV_KEY').replace('.key.pem', '.pub.pem'))}"
OTA_PUBLIC_KEY_FILE[doc] = "The public key checked against the signing key: OTA_SIGNING_PUBLIC_KEY, or the development key's."

# The signatures hold values, not paths: a build number given through the environment, and
# the *content* of the config, key and record files ([file-checksums] on the tasks), so that
# moving the build directory keeps sstate valid while a new key, config, version or build
# number re-runs the OTA tasks.
OTA_BUILD_NUMBER[vardepvalue] = "${OTA_BUILD_NUMBER}"
OTA_VALUE_VARS = "OTA_BUILD_NUMBER OTA_DEBUG OTA_VERSION_NUMBER OTA_TYPE OTA_DEVICE_KEY_PATH"
OTA_VALUE_VARS[doc] = "Variables whose values change a release: in the signature of ota-record's do_compile."
OTA_PATH_VARS = "OTA_CONFIG OTA_SIGNING_KEY OTA_SIGNING_PUBLIC_KEY OTA_DEV_KEY OTA_RECORD_PREMADE \
                 OTA_SIGNING_KEY_FILE OTA_PUBLIC_KEY_FILE OTA_LAYERDIR OTA_SOURCE_DIR OTA_CREDENTIALS_FILE TOPDIR TMPDIR"
OTA_PATH_VARS[doc] = "Paths kept out of signatures (vardepsexclude): their files' content counts instead ([file-checksums])."
# Secrets: read from the environment at task time only, never from the datastore into a
# signature, a log or the task's run script. The upload's network settings
# (OTA_CONNECT_TIMEOUT, OTA_READ_TIMEOUT, OTA_RETRIES) travel the same way: they change how
# long an upload waits, never an output, so they stay out of signatures.
OTA_PASSTHROUGH_SECRETS = "OTA_KEY_PASSWORD OTA_USERNAME OTA_USERPW OTA_AUTH_STRING"
OTA_PASSTHROUGH_SECRETS[doc] = "The secrets proper: the parse warns when one of them is a BitBake variable."
OTA_SECRET_ENV_VARS = "OTA_KEY_PASSWORD OTA_USERNAME OTA_USERPW OTA_AUTH_STRING OTA_CREDENTIALS_FILE OTA_SERVER \
                       OTA_CONNECT_TIMEOUT OTA_READ_TIMEOUT OTA_RETRIES"
OTA_SECRET_ENV_VARS[doc] = "Environment variables the OTA tools read at task time (from BB_ORIGENV), never in a signature or run script."
# [file-checksums] entries are "path:True" for a file that exists (BitBake checksums it) and
# "path:False" for one that does not (BitBake skips the entry), as oe-core writes them
# (image_types_wic.bbclass: WKS_FILE_CHECKSUM). ota_settings_problem() marks the files as
# parse dependencies, so a file made or removed later re-parses and re-checksums.
OTA_CHECKSUM_FILE_VARS = "OTA_CONFIG OTA_SIGNING_KEY_FILE OTA_PUBLIC_KEY_FILE OTA_RECORD_PREMADE"
OTA_CHECKSUM_FILE_VARS[doc] = "The files whose content is in ota-record's signature."
OTA_FILE_CHECKSUMS = "${@ota_file_checksums(d, d.getVar('OTA_CHECKSUM_FILE_VARS'))}"
OTA_FILE_CHECKSUMS[doc] = "[file-checksums] entries of OTA_CHECKSUM_FILE_VARS."
OTA_KEY_CHECKSUMS = "${@ota_file_checksums(d, 'OTA_SIGNING_KEY_FILE')}"
OTA_KEY_CHECKSUMS[doc] = "[file-checksums] entry of the signing key."
OTA_CONFIG_CHECKSUMS = "${@ota_file_checksums(d, 'OTA_CONFIG')}"
OTA_CONFIG_CHECKSUMS[doc] = "[file-checksums] entry of the config."
OTA_NATIVE_DEPENDS = "ota-build-native:do_populate_sysroot openssl-native:do_populate_sysroot"
OTA_NATIVE_DEPENDS[doc] = "The native tools of the OTA tasks: ota-build-native (which brings python3-native) and openssl-native."

def ota_boot_default_commands(d):
    """OTA_BOOT_COMMANDS' default: load the kernel (KERNEL_IMAGETYPE) and ${fdtfile} from the
    slot's /boot, on OTA_BOOT_DEVTYPE at the boot variable's value (dev:part, OTA_AGENT_BOOT_VALUES),
    and boot them with bootz (zImage), booti (Image) or bootm (uImage)."""
    kernel = d.getVar("KERNEL_IMAGETYPE") or "zImage"
    boot = {"Image": "booti", "uImage": "bootm"}.get(kernel, "bootz")
    where = "%s ${%s}" % (d.getVar("OTA_BOOT_DEVTYPE"), d.getVar("OTA_AGENT_BOOT_VARIABLE"))
    return ("load %s ${kernel_addr_r} /boot/%s && load %s ${fdt_addr_r} /boot/${fdtfile} && %s ${kernel_addr_r} - ${fdt_addr_r}"
            % (where, kernel, where, boot))

def ota_fstab_boot_device(d):
    """Partition 1 of the disk that holds the first slot of OTA_AGENT_SLOTS (/dev/mmcblk0p2 -> /dev/mmcblk0p1)."""
    import re
    slots = (d.getVar("OTA_AGENT_SLOTS") or "").split()
    match = re.fullmatch(r"[A-Za-z0-9]+=(/dev/\S*?\D)\d+", slots[0]) if slots else None
    return match.group(1) + "1" if match else ""


def ota_boot_env_device(d):
    """OTA_BOOT_ENV_DEVICE's default: partition 1 (the boot partition of the layer's wks layouts)
    of the device the slots' boot values name ("a=0:2 b=0:3": "mmc 0:1"); without dev:part
    values, where U-Boot's distro boot found the script."""
    import re
    values = [v.partition("=")[2] for v in (d.getVar("OTA_AGENT_BOOT_VALUES") or "").split()]
    if values and re.fullmatch(r"[0-9]+:[0-9]+", values[0]):
        return "%s %s:1" % (d.getVar("OTA_BOOT_DEVTYPE"), values[0].split(":")[0])
    return "${devtype} ${devnum}:${distro_bootpart}"

def ota_file_checksums(d, names):
    """[file-checksums] entries for the files the variables ``names`` name: "path:True" when
    the file exists (so BitBake checksums its content), "path:False" when it does not."""
    import os
    paths = [d.getVar(v) for v in names.split()]
    return " ".join("%s:%s" % (p, os.path.exists(p)) for p in paths if p)

def ota_source_uris(d, parts=""):
    """SRC_URI entries for the ota_build package next to the layer, one file:// per source
    file: the fetcher checksums what SRC_URI names, and a directory entry would include
    the __pycache__ that running the tests (or Python) leaves in the repository.
    ``parts``: only these sub-packages (with the package's __init__.py); all when empty.
    The directories are parse dependencies, so an added or removed file re-parses."""
    import os
    top = os.path.join(d.getVar("OTA_SOURCE_DIR"), "ota_build")
    wanted = parts.split()
    uris = []
    for root, dirs, files in os.walk(top):
        rel = os.path.relpath(root, top)
        dirs[:] = sorted(x for x in dirs if x != "__pycache__" and (rel != "." or not wanted or x in wanted))
        bb.parse.mark_dependency(d, root)
        for name in sorted(files):
            if name.endswith((".pyc", ".pyo")) or name.startswith("."):
                continue
            if rel == "." and wanted and name != "__init__.py":
                continue
            uris.append("file://" + os.path.normpath(os.path.join("ota_build", rel, name)))
    return " ".join(uris)

def ota_check_settings(d):
    """Check the settings at parse time: a problem stops the parse with one line naming
    the variable (and the config field)."""
    problem = ota_settings_problem(d)
    if problem:
        bb.fatal(problem)
    for name in d.getVar("OTA_PASSTHROUGH_SECRETS").split():
        if d.getVar(name):
            bb.warn("%s is a BitBake variable (set in a conf file or passed with BB_ENV_PASSTHROUGH_ADDITIONS): "
                    "BitBake writes every variable into ${TMPDIR}/log/eventlog. Export it in the environment "
                    "only; the OTA tasks read it from there." % name)
ota_check_settings[vardepsexclude] = "${OTA_PASSTHROUGH_SECRETS}"

def ota_settings_problem(d):
    """None when the settings are usable, else a one-line message. The config, build and
    version numbers are checked by the library (ota_build.core.bbenv) in a Python of its
    own (-I -B: no bytecode, nothing of the parser's sys.path or sys.modules), so the
    parser imports nothing of ota_build; a Python that cannot run it leaves the check to
    the first OTA task, which reports the same line."""
    import os
    import shutil
    import subprocess
    import sys
    for var in ("OTA_DEBUG", "OTA_UPLOAD", "OTA_AGENT"):
        if d.getVar(var) not in ("0", "1"):
            return "%s = '%s': must be 0 or 1" % (var, d.getVar(var))
    for var in ("OTA_SIGNING_KEY", "OTA_SIGNING_PUBLIC_KEY", "OTA_CREDENTIALS_FILE"):
        path = d.getVar(var)
        if path and not os.path.isfile(path):
            return "%s: %s: file not found" % (var, path)
    cred = d.getVar("OTA_CREDENTIALS_FILE")
    repo = os.path.realpath(d.getVar("OTA_SOURCE_DIR") or d.getVar("OTA_LAYERDIR") or "/nonexistent")
    if cred and os.path.realpath(cred).startswith(repo + os.sep):
        return "OTA_CREDENTIALS_FILE: %s is inside the meta-ota repository: keep credentials outside the layer" % cred
    ota_type = d.getVar("OTA_TYPE")
    if not ota_type.isdigit() or int(ota_type) > 255:
        return "OTA_TYPE = '%s': must be a number from 0 to 255 (5 = HUB)" % ota_type
    config = d.getVar("OTA_CONFIG")
    if not os.path.isfile(config):
        return "OTA_CONFIG: %s: configuration file not found" % config
    for var in d.getVar("OTA_CHECKSUM_FILE_VARS").split():
        if d.getVar(var):
            bb.parse.mark_dependency(d, d.getVar(var))
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from ota_build.core.bbenv import layer_settings_problem; "
            "print(layer_settings_problem(*sys.argv[2:]) or '')")
    args = [d.getVar("OTA_SOURCE_DIR"), config, d.getVar("OTA_BUILD_NUMBER"), d.getVar("OTA_VERSION_NUMBER"), ota_type]
    # The parser's interpreter: sys.executable is not always a Python (kirkstone's server names
    # bitbake-server there, which refuses to run the check), /proc/self/exe is the running binary.
    python = next((p for p in (sys.executable, os.path.realpath("/proc/self/exe"), shutil.which("python3") or "")
                   if os.path.basename(p).startswith("python") and os.access(p, os.X_OK)), None)
    if not python:
        return None
    try:
        proc = subprocess.run([python, "-I", "-B", "-c", code] + args, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, universal_newlines=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() or None if proc.returncode == 0 else None

def ota_secret_env(d, names):
    """The values of the secret environment variables ``names`` (of OTA_SECRET_ENV_VARS),
    taken from BitBake's original environment (BB_ORIGENV) at task time.
    OTA_CREDENTIALS_FILE may also be a BitBake variable (a path)."""
    env = {}
    origenv = d.getVar("BB_ORIGENV", False)
    for name in names.split():
        if name not in d.getVar("OTA_SECRET_ENV_VARS").split():
            continue
        value = (d.getVar(name) if name == "OTA_CREDENTIALS_FILE" else None) or (origenv.getVar(name) if origenv else None)
        if value:
            env[name] = value
    return env
ota_secret_env[vardepsexclude] = "BB_ORIGENV ${OTA_SECRET_ENV_VARS}"

# A prefunc of the tasks that run an OTA tool needing secrets: puts the secrets named by the
# task's [ota-secrets] flag into this task process's environment, which the task's shell
# function (and the tool) inherit. Never written to the run script, the log or a signature.
python ota_export_secrets() {
    import os
    names = d.getVarFlag("do_" + d.getVar("BB_CURRENTTASK"), "ota-secrets") or ""
    os.environ.update(ota_secret_env(d, names))
}
ota_export_secrets[vardepsexclude] = "BB_ORIGENV BB_CURRENTTASK ${OTA_SECRET_ENV_VARS}"

# Runs a tool of ota-build-native (on PATH from the native sysroot). A failure stops the
# task with the tool's own one-line error, prefixed by the variable to look at ($1).
ota_tool() {
	blame=$1
	shift
	bbnote "Running: $*"
	if ! "$@" 2>${T}/ota-tool.err; then
		bbfatal "$blame: $(grep -v '^usage:' ${T}/ota-tool.err | grep . | tail -n 1)"
	fi
	cat ${T}/ota-tool.err >&2
}
