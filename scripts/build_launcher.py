"""Compile scripts/launcher.c, the one-folder build's `cilium-cni` (used by
scripts/cilium-cni.spec).

The launcher links the static libpython of the interpreter that runs the
build (Debian's python3.11: libpython3.11-dev), so that the bundle's .pyc
files and extension modules (collected by PyInstaller from the same
interpreter) match it. Needs a C compiler; fails the build, with what is
missing, rather than fall back to a slower executable.
"""

import os
import re
import shutil
import subprocess
import sys
import sysconfig

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "launcher.c")


class LauncherError(Exception):
    pass


def _static_libpython():
    name = sysconfig.get_config_var("LIBRARY") or ""
    libpl = sysconfig.get_config_var("LIBPL") or ""
    path = os.path.join(libpl, name)
    if not name.endswith(".a") or not os.path.isfile(path):
        raise LauncherError("no static libpython at '%s' (install libpython%s-dev)"
                            % (path, sysconfig.get_config_var("VERSION")))
    return path


def _check_headers(include):
    try:
        with open(os.path.join(include, "patchlevel.h")) as f:
            found = re.search(r'#define PY_VERSION\s+"([^"]+)"', f.read())
    except OSError as exc:
        raise LauncherError("no Python headers in '%s' (install libpython%s-dev): %s"
                            % (include, sysconfig.get_config_var("VERSION"), exc)) from None
    running = "%d.%d.%d" % sys.version_info[:3]
    if not found or found.group(1).split("+")[0] != running:
        raise LauncherError("Python headers in '%s' are %s, the build runs %s"
                            % (include, found.group(1) if found else "unknown", running))


def compile_launcher(dest, contents_dir):
    """Build the launcher at `dest`, finding the bundle in `contents_dir` beside it."""
    if sys.version_info[:2] != (3, 11):
        raise LauncherError("launcher.c names python3.11/lib-dynload; the build runs %d.%d"
                            % sys.version_info[:2])
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise LauncherError("no C compiler (install gcc)")
    include = sysconfig.get_config_var("INCLUDEPY")
    _check_headers(include)
    libs = (sysconfig.get_config_var("MODLIBS") or "").split() + \
        (sysconfig.get_config_var("LIBS") or "").split() + \
        (sysconfig.get_config_var("SYSLIBS") or "").split()
    cmd = [cc, "-O2", "-Wall", "-Werror", '-DCONTENTS_DIR="%s"' % contents_dir, "-o", dest, SOURCE,
           "-I" + include,
           _static_libpython(), *dict.fromkeys(libs),
           # Like /usr/bin/python3.11: not position-independent (no relocation
           # of the interpreter at start), and exporting the C API to the
           # extension modules it loads.
           "-no-pie", "-Xlinker", "-export-dynamic", "-Wl,-O1", "-s",
           # DT_RPATH (not RUNPATH): also searched for the libraries of the
           # extension modules it loads, so no LD_LIBRARY_PATH is needed.
           "-Wl,--disable-new-dtags", "-Wl,-rpath,$ORIGIN/" + contents_dir]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise LauncherError("compiling %s failed:\n%s\n%s" % (SOURCE, " ".join(cmd), proc.stderr))
    return dest
