/* Shared declarations of softswitch's native extension module. The module links against the
 * same pjproject shared libraries as the pjsua2 SWIG module, so the process holds one copy. */
#ifndef SOFTSWITCH_NATIVE_H
#define SOFTSWITCH_NATIVE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pjsua-lib/pjsua.h>

/* pjproject 2.14 gave pjmedia_port a group lock and made conference removal asynchronous. */
#if defined(PJ_VERSION_NUM) && PJ_VERSION_NUM >= ((2 << 24) | (14 << 16))
#define SS_PJ_PORT_HAS_GRP_LOCK 1
#else
#define SS_PJ_PORT_HAS_GRP_LOCK 0
#endif

extern PyTypeObject FramePortType;
extern PyTypeObject RegistrarType;

int ss_is_pj_thread(void);
/* Sets a RuntimeError and returns -1 unless called on a thread pjlib knows (the UA thread). */
int ss_require_pj_thread(void);
/* Sets a RuntimeError naming the pjproject call and its error text; returns NULL. */
PyObject *ss_raise_pj(const char *what, pj_status_t status);

/* transfer.c: REFER taken before pjsua (which would dial the target itself). */
PyObject *ss_transfer_install(PyObject *self, PyObject *handler);
PyObject *ss_transfer_notify(PyObject *self, PyObject *args);
PyObject *ss_dialog_call(PyObject *self, PyObject *args);

#endif
