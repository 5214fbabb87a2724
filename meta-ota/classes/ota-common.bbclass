# nooelint: oelint.bbclass.underscores - named like oe-core's core-image, image-artifact-names
# Settings and helpers shared by ota-image.bbclass and the recipes in
# recipes-ota/. Every setting is documented in the README ("Using the layer").
#
# The class is thin on purpose: it reads variables, checks them, and runs the
# ota_build library from the native sysroot (ota-build-native, run by
# python3-native, signing with openssl-native). No OTA logic lives here.

# --- user settings ------------------------------------------------------------
OTA_CONFIG ??= "${OTA_LAYERDIR}/files/partner-ota-conf.json"
# Jenkins sets BUILD_NUMBER; pass it in with
#   export BB_ENV_PASSTHROUGH_ADDITIONS="$BB_ENV_PASSTHROUGH_ADDITIONS BUILD_NUMBER"
OTA_BUILD_NUMBER ??= "${@d.getVar('BUILD_NUMBER') or '0'}"
OTA_DEBUG ??= "0"
OTA_SIGNING_KEY ??= ""
OTA_SIGNING_PUBLIC_KEY ??= ""
OTA_DEV_KEY_DIR ??= "${TOPDIR}/ota-dev-keys"
OTA_DEV_KEY_ALGORITHM ??= "ed25519"
OTA_PAYLOAD_FSTYPE ??= "tar.gz"
OTA_TYPE ??= "5"
OTA_VERSION_NUMBER ??= ""
OTA_UPLOAD ??= "0"
OTA_RECORD_PREMADE ??= "${TMPDIR}/full_ota_record.json"
OTA_RECORD_TIMESTAMP ??= "${SOURCE_DATE_EPOCH}"
OTA_DEVICE_KEY_PATH ??= "${sysconfdir}/ota/ota-signing.pub.pem"
OTA_CREDENTIALS_FILE ??= ""
OTA_IMAGE_FILE ??= ""
# The device agent (recipes-ota/ota-agent): OTA_AGENT = "1" puts it in OTA images.
OTA_AGENT ??= "0"
OTA_AGENT_SERVER ??= "http://ota.example.com:8080"
OTA_AGENT_DEVICE_TYPE ??= ""
OTA_AGENT_SLOTS ??= ""
OTA_AGENT_BOOT_VARIABLE ??= "ota_slot"
OTA_AGENT_BOOT_VALUES ??= ""
OTA_AGENT_BOOT_LIMIT ??= "3"
OTA_AGENT_BOOT_LIMIT[doc] = "Boot attempts a new slot gets before the boot script falls back (1-9): the one limit of the A/B boot contract (the agent writes it into BOOT_<slot>_LEFT; the script only counts down)."
OTA_AGENT_HEALTH_CHECK ??= ""
OTA_AGENT_COMMAND ??= "/sbin/sysupgrade {image}"
OTA_AGENT_POLL_INTERVAL ??= "300"
OTA_AGENT_LOCAL_PORT ??= "5000"
OTA_AGENT_DESCRIPTION ??= "${MACHINE}"
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
OTA_BOOT_FW_ENV_CONFIG ??= "${OTA_BOOT_MOUNT}/uboot.env 0x0000 ${@d.getVar('UBOOT_ENV_SIZE') or '0x20000'}"
OTA_BOOT_FW_ENV_CONFIG[doc] = "The line of /etc/fw_env.config (device or file, offset, size) for fw_setenv: U-Boot's env file on the boot partition, mounted at /uboot."

# --- derived ------------------------------------------------------------------
OTA_SIGNING_KEY_FILE = "${@d.getVar('OTA_SIGNING_KEY') or d.getVar('OTA_DEV_KEY_DIR') + '/ota-signing.key.pem'}"
OTA_PUBLIC_KEY_FILE = "${@d.getVar('OTA_SIGNING_PUBLIC_KEY') or ('' if d.getVar('OTA_SIGNING_KEY') else d.getVar('OTA_DEV_KEY_DIR') + '/ota-signing.pub.pem')}"

# The signatures hold values, not paths: a build number given through the
# environment, and the *content* of the config, key and record files
# ([file-checksums] on the tasks), so that moving the build directory keeps
# sstate valid while a new key, config, version or build number re-runs the
# OTA tasks.
OTA_BUILD_NUMBER[vardepvalue] = "${OTA_BUILD_NUMBER}"
OTA_VALUE_VARS = "OTA_BUILD_NUMBER OTA_DEBUG OTA_VERSION_NUMBER OTA_TYPE OTA_DEV_KEY_ALGORITHM OTA_DEVICE_KEY_PATH"
OTA_PATH_VARS = "OTA_CONFIG OTA_SIGNING_KEY OTA_SIGNING_PUBLIC_KEY OTA_DEV_KEY_DIR OTA_RECORD_PREMADE \
                 OTA_SIGNING_KEY_FILE OTA_PUBLIC_KEY_FILE OTA_LAYERDIR OTA_SOURCE_DIR OTA_CREDENTIALS_FILE TOPDIR TMPDIR"
# Secrets: read from the environment at task time only, never from the datastore
# into a signature, a log or the task's run script. The upload's network settings
# (OTA_CONNECT_TIMEOUT, OTA_READ_TIMEOUT, OTA_RETRIES) travel the same way: they
# change how long an upload waits, never an output, so they stay out of signatures.
# The secrets proper: the parse warns when one of them is a BitBake variable.
OTA_PASSTHROUGH_SECRETS = "OTA_KEY_PASSWORD OTA_USERNAME OTA_USERPW OTA_AUTH_STRING"
OTA_SECRET_ENV_VARS = "OTA_KEY_PASSWORD OTA_USERNAME OTA_USERPW OTA_AUTH_STRING OTA_CREDENTIALS_FILE OTA_SERVER \
                       OTA_CONNECT_TIMEOUT OTA_READ_TIMEOUT OTA_RETRIES"
# [file-checksums] entries are "path:True" for a file that exists (BitBake checksums it) and
# "path:False" for one that does not (BitBake skips the entry), as oe-core writes them
# (image_types_wic.bbclass: WKS_FILE_CHECKSUM). ota_settings_problem() marks the files as
# parse dependencies, so a key made or removed later re-parses and re-checksums.
OTA_CHECKSUM_FILE_VARS = "OTA_CONFIG OTA_SIGNING_KEY_FILE OTA_PUBLIC_KEY_FILE OTA_RECORD_PREMADE"
OTA_FILE_CHECKSUMS = "${@ota_file_checksums(d, d.getVar('OTA_CHECKSUM_FILE_VARS'))}"
OTA_KEY_CHECKSUMS = "${@ota_file_checksums(d, 'OTA_SIGNING_KEY_FILE')}"
OTA_CONFIG_CHECKSUMS = "${@ota_file_checksums(d, 'OTA_CONFIG')}"
OTA_NATIVE_DEPENDS = "ota-build-native:do_populate_sysroot python3-native:do_populate_sysroot openssl-native:do_populate_sysroot"

def ota_boot_default_commands(d):
    """OTA_BOOT_COMMANDS' default: load the kernel (KERNEL_IMAGETYPE) and ${fdtfile} from the
    slot's /boot, on OTA_BOOT_DEVTYPE at the boot variable's value (dev:part, OTA_AGENT_BOOT_VALUES),
    and boot them with bootz (zImage), booti (Image) or bootm (uImage)."""
    kernel = d.getVar("KERNEL_IMAGETYPE") or "zImage"
    boot = {"Image": "booti", "uImage": "bootm"}.get(kernel, "bootz")
    where = "%s ${%s}" % (d.getVar("OTA_BOOT_DEVTYPE"), d.getVar("OTA_AGENT_BOOT_VARIABLE"))
    return ("load %s ${kernel_addr_r} /boot/%s && load %s ${fdt_addr_r} /boot/${fdtfile} && %s ${kernel_addr_r} - ${fdt_addr_r}"
            % (where, kernel, where, boot))

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

def ota_library(d):
    """The ota_build package of this layer's repository, for parse-time checks
    (stdlib-only; loaded by path, without touching sys.path). None if it cannot
    be loaded by this Python: the first OTA task then reports the problem.
    No bytecode is written: ota_build/__pycache__ in the repository would be
    a change to the sources of ota-build-native and ota-agent."""
    import importlib.util
    import os
    import sys
    if "ota_build" in sys.modules:
        return sys.modules["ota_build"]
    init = os.path.join(d.getVar("OTA_SOURCE_DIR"), "ota_build", "__init__.py")
    dont_write = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    try:
        spec = importlib.util.spec_from_file_location("ota_build", init,
                                                      submodule_search_locations=[os.path.dirname(init)])
        module = importlib.util.module_from_spec(spec)
        sys.modules["ota_build"] = module
        spec.loader.exec_module(module)
        import ota_build.core.config, ota_build.core.errors, ota_build.core.version  # noqa: F401
    except Exception:
        for name in [m for m in sys.modules if m == "ota_build" or m.startswith("ota_build.")]:
            sys.modules.pop(name, None)
        return None
    finally:
        sys.dont_write_bytecode = dont_write
    return module

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
    """Check the settings at parse time; return the loaded config (or None).
    A problem stops the parse with one line naming the variable or field."""
    cfg, problem = ota_settings_problem(d)
    if problem:
        bb.fatal(problem)
    for name in d.getVar("OTA_PASSTHROUGH_SECRETS").split():
        if d.getVar(name):
            bb.warn("%s is a BitBake variable (set in a conf file or passed with BB_ENV_PASSTHROUGH_ADDITIONS): "
                    "BitBake writes every variable into ${TMPDIR}/log/eventlog. Export it in the environment "
                    "only; the OTA tasks read it from there." % name)
    return cfg
ota_check_settings[vardepsexclude] = "${OTA_PASSTHROUGH_SECRETS}"

def ota_settings_problem(d):
    """(config, None) when the settings are usable, else (None, one-line message)."""
    import os
    for var in ("OTA_DEBUG", "OTA_UPLOAD", "OTA_AGENT"):
        if d.getVar(var) not in ("0", "1"):
            return None, "%s = '%s': must be 0 or 1" % (var, d.getVar(var))
    for var in ("OTA_SIGNING_KEY", "OTA_SIGNING_PUBLIC_KEY", "OTA_CREDENTIALS_FILE"):
        path = d.getVar(var)
        if path and not os.path.isfile(path):
            return None, "%s: %s: file not found" % (var, path)
    cred = d.getVar("OTA_CREDENTIALS_FILE")
    repo = os.path.realpath(d.getVar("OTA_SOURCE_DIR") or d.getVar("OTA_LAYERDIR") or "/nonexistent")
    if cred and os.path.realpath(cred).startswith(repo + os.sep):
        return None, "OTA_CREDENTIALS_FILE: %s is inside the meta-ota repository: keep credentials outside the layer" % cred
    ota_type = d.getVar("OTA_TYPE")
    if not ota_type.isdigit() or int(ota_type) > 255:
        return None, "OTA_TYPE = '%s': must be a number from 0 to 255 (5 = HUB)" % ota_type
    config = d.getVar("OTA_CONFIG")
    if not os.path.isfile(config):
        return None, "OTA_CONFIG: %s: configuration file not found" % config
    for var in d.getVar("OTA_CHECKSUM_FILE_VARS").split():
        if d.getVar(var):
            bb.parse.mark_dependency(d, d.getVar(var))
    if ota_library(d) is None:
        return None, None
    from ota_build.core.config import load_config
    from ota_build.core.errors import OtaError
    from ota_build.core.version import derive_version_number, parse_build_number, parse_version_number
    blame = "OTA_CONFIG"
    try:
        cfg = load_config(config, env={})
        blame = "OTA_BUILD_NUMBER"
        build = parse_build_number(d.getVar("OTA_BUILD_NUMBER"))
        blame = "OTA_VERSION_NUMBER"
        if d.getVar("OTA_VERSION_NUMBER"):
            parse_version_number(d.getVar("OTA_VERSION_NUMBER"))
        else:
            derive_version_number(cfg.version, build)
    except OtaError as exc:
        return None, "%s: %s" % (blame, str(exc).replace("--version-number", "OTA_VERSION_NUMBER"))
    if int(ota_type) != cfg.ota_type:
        return None, ("OTA_TYPE = '%s' but field 'type' of OTA_CONFIG (%s) is %d: make them the same"
                      % (ota_type, config, cfg.ota_type))
    return cfg, None

def ota_secret_env(d):
    """The secrets the library reads from its environment, taken from the
    BitBake environment (BB_ORIGENV, or BB_ENV_PASSTHROUGH_ADDITIONS) at task
    time. OTA_CREDENTIALS_FILE may also be a BitBake variable (a path)."""
    env = {}
    origenv = d.getVar("BB_ORIGENV", False)
    for name in d.getVar("OTA_SECRET_ENV_VARS").split():
        value = d.getVar(name) or (origenv.getVar(name) if origenv else None)
        if value:
            env[name] = value
    return env
ota_secret_env[vardepsexclude] = "BB_ORIGENV ${OTA_SECRET_ENV_VARS}"

def ota_run(d, args, blame, module="ota_build.cli.build", secrets=None, cwd=None):
    """Run the ota_build library from the native sysroot. The logged command
    line never holds a secret; secrets only go into the child's environment.
    On failure, stop the task with the library's one-line error, prefixed by
    the variable (``blame``) to look at."""
    import os
    import shlex
    import subprocess
    native = d.getVar("STAGING_BINDIR_NATIVE")
    python = os.path.join(native, "python3-native", "python3")
    env = dict(os.environ)
    for name in d.getVar("OTA_SECRET_ENV_VARS").split():
        env.pop(name, None)
    env.update({
        "PATH": "%s:%s" % (native, env.get("PATH", "")),
        "PYTHONPATH": os.path.join(d.getVar("STAGING_DATADIR_NATIVE"), "ota-build"),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONNOUSERSITE": "1",
    })
    env.update(secrets or {})
    cmd = [python, "-m", module] + [str(a) for a in args]
    bb.note("Running: " + " ".join(shlex.quote(a) for a in cmd[1:]))
    proc = subprocess.run(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True)
    if proc.stdout.strip():
        bb.note(proc.stdout.strip())
    if proc.returncode != 0:
        lines = [l for l in proc.stderr.strip().splitlines() if l.strip() and not l.startswith("usage:")]
        bb.fatal("%s: %s" % (blame, lines[-1] if lines else "ota_build exited with %d" % proc.returncode))
    return proc.stdout
ota_run[vardepsexclude] = "${OTA_SECRET_ENV_VARS}"
