/* The `cilium-cni` executable of the one-folder build (scripts/cilium-cni.spec
 * compiles it with scripts/build_launcher.py).
 *
 * With CNI_COMMAND set it is the CNI plugin: it starts the Python interpreter
 * linked into this file (the static libpython3.11.a that Debian's own
 * /usr/bin/python3.11 is built from) on the bundled modules in the
 * `cilium-cni.d` folder beside it, and runs cni.entry.plugin(). Anything else
 * (the command line, the agent) it hands over, by exec and with the same
 * arguments, to the PyInstaller executable of the same bundle,
 * `cilium-cni.d/cilium-cni`.
 *
 * Why: the runtime starts the plugin for every pod, and PyInstaller's
 * bootloader costs ~2.8 ms per start over this (docs/operations.md): it
 * re-executes itself to put its folder in LD_LIBRARY_PATH, loads a shared
 * libpython whose ~39,000 relocations the dynamic linker must process, and
 * runs its bootstrap. Here the interpreter is linked in (non-PIE, like
 * /usr/bin/python3.11), and the RPATH `$ORIGIN/cilium-cni.d` finds the
 * bundled shared libraries without any environment variable.
 *
 * It does not: read the netconf, parse arguments, or run anything but
 * cni.entry.plugin(); a failure to start the interpreter is answered with a
 * CNI error object on stdout, as the plugin answers every other failure.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef CONTENTS_DIR
#define CONTENTS_DIR "cilium-cni.d"
#endif
#define FULL_EXECUTABLE "cilium-cni"
#define LIB_DYNLOAD "python3.11/lib-dynload"
#define INTERNAL_ERROR 999

/* The CNI error object for a plugin call that never reached Python. */
static int cni_error(const char *msg, const char *details)
{
    const char *p;

    printf("{\"cniVersion\": \"1.1.0\", \"code\": %d, \"msg\": \"cilium-cni: %s\", \"details\": \"",
           INTERNAL_ERROR, msg);
    for (p = details ? details : ""; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c < 0x20)
            printf("\\u%04x", c);
        else
            putchar(c);
    }
    printf("\"}");
    fflush(stdout);
    return 1;
}

/* The folder this executable lives in, resolved (symlinks followed). */
static int own_dir(const char *argv0, char *out, size_t size)
{
    char path[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", path, sizeof(path) - 1);
    char *slash;

    if (n > 0) {
        path[n] = '\0';
    } else if (argv0 && strchr(argv0, '/') && realpath(argv0, path)) {
        /* no /proc: the path we were started by */
    } else {
        return -1;
    }
    slash = strrchr(path, '/');
    if (!slash)
        return -1;
    *slash = '\0';
    if ((size_t)snprintf(out, size, "%s", path[0] ? path : "/") >= size)
        return -1;
    return 0;
}

static int set_path(PyConfig *config, wchar_t **field, const char *value)
{
    return PyStatus_Exception(PyConfig_SetBytesString(config, field, value)) ? -1 : 0;
}

static int run_plugin(const char *contents, int argc, char **argv)
{
    char dynload[PATH_MAX];
    wchar_t *w_contents = NULL, *w_dynload = NULL;
    PyPreConfig preconfig;
    PyConfig config;
    PyStatus status;
    PyObject *entry, *result;

    if ((size_t)snprintf(dynload, sizeof(dynload), "%s/%s", contents, LIB_DYNLOAD) >= sizeof(dynload))
        return cni_error("path too long", contents);

    /* As PyInstaller's bootloader does: isolated (no PYTHON* variables, no
     * site, no user site), the locale set so that UTF-8 mode is chosen in a
     * C or POSIX locale, as in the source tree's `python -I -S` launcher. */
    PyPreConfig_InitIsolatedConfig(&preconfig);
    preconfig.utf8_mode = -1;
    preconfig.configure_locale = 1;
    status = Py_PreInitialize(&preconfig);
    if (PyStatus_Exception(status))
        return cni_error("cannot pre-initialize Python", status.err_msg);

    PyConfig_InitIsolatedConfig(&config);
    config.site_import = 0;
    config.write_bytecode = 0;
    config.configure_c_stdio = 1;
    config.install_signal_handlers = 1;
    config.module_search_paths_set = 1;
    w_contents = Py_DecodeLocale(contents, NULL);
    w_dynload = Py_DecodeLocale(dynload, NULL);
    if (!w_contents || !w_dynload
            || PyStatus_Exception(PyWideStringList_Append(&config.module_search_paths, w_contents))
            || PyStatus_Exception(PyWideStringList_Append(&config.module_search_paths, w_dynload))
            || set_path(&config, &config.home, contents) < 0
            || set_path(&config, &config.prefix, contents) < 0
            || set_path(&config, &config.exec_prefix, contents) < 0
            || set_path(&config, &config.base_prefix, contents) < 0
            || set_path(&config, &config.base_exec_prefix, contents) < 0
            || PyStatus_Exception(PyConfig_SetBytesArgv(&config, argc, argv))) {
        PyConfig_Clear(&config);
        return cni_error("cannot configure Python", contents);
    }
    PyMem_RawFree(w_contents);
    PyMem_RawFree(w_dynload);
    status = Py_InitializeFromConfig(&config);
    PyConfig_Clear(&config);
    if (PyStatus_Exception(status))
        return cni_error("cannot start Python", status.err_msg);

    /* plugin() answers the runtime and ends the process itself (os._exit). */
    entry = PyImport_ImportModule("cni.entry");
    if (!entry) {
        PyErr_Print();
        return cni_error("cannot import the plugin from the bundle", contents);
    }
    result = PyObject_CallMethod(entry, "plugin", NULL);
    if (!result) {
        PyErr_Print(); /* exits on SystemExit */
        return cni_error("the plugin failed; see stderr", contents);
    }
    return Py_FinalizeEx() < 0 ? 120 : 0;
}

int main(int argc, char **argv)
{
    char dir[PATH_MAX], contents[PATH_MAX], full[PATH_MAX];
    const char *command = getenv("CNI_COMMAND");
    /* set at all, even empty: the plugin answers an empty or unknown verb with
     * its CNI error object (code 4), as the runtime expects */
    int plugin = command != NULL;

    if (own_dir(argc > 0 ? argv[0] : NULL, dir, sizeof(dir)) < 0
            || (size_t)snprintf(contents, sizeof(contents), "%s/%s", dir, CONTENTS_DIR) >= sizeof(contents)
            || (size_t)snprintf(full, sizeof(full), "%s/%s", contents, FULL_EXECUTABLE) >= sizeof(full)) {
        if (plugin)
            return cni_error("cannot find its own folder", argc > 0 ? argv[0] : "");
        fprintf(stderr, "cilium-cni: cannot find its own folder\n");
        return 1;
    }
    if (plugin)
        return run_plugin(contents, argc, argv);
    execv(full, argv);
    fprintf(stderr, "cilium-cni: cannot run %s: %s\n", full, strerror(errno));
    return 127;
}
