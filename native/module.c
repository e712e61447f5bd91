/* _softswitch_native: softswitch's own C code that runs inside pjproject.
 * FramePort (frameport.c) and thin conference-bridge helpers that work by slot id, so Python
 * can connect any two bridge ports (calls, players, recorders, frame ports) without pjsua2
 * AudioMedia objects for ports pjsua2 does not know. */
#include "softswitch_native.h"

/* pjsua keeps its conference bridge in pjsua_var.mconf; 2.12 has no public getter, and the
 * per-connection level (pjmedia_conf_adjust_conn_level) is only reachable through it. */
#include <pjsua-lib/pjsua_internal.h>

pj_uint64_t ss_monotonic_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (pj_uint64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int ss_is_pj_thread(void) { return pj_thread_is_registered() ? 1 : 0; }

int ss_require_pj_thread(void) {
    if (pjsua_get_state() != PJSUA_STATE_RUNNING && pjsua_get_state() != PJSUA_STATE_INIT &&
        pjsua_get_state() != PJSUA_STATE_STARTING) {
        PyErr_SetString(PyExc_RuntimeError, "the pjsua library is not running (call libCreate/libInit first)");
        return -1;
    }
    if (!pj_thread_is_registered()) {
        PyErr_SetString(PyExc_RuntimeError,
                        "pjproject objects must be used from the UA thread (this thread is not registered with pjlib)");
        return -1;
    }
    return 0;
}

PyObject *ss_raise_pj(const char *what, pj_status_t status) {
    char msg[PJ_ERR_MSG_SIZE];
    pj_strerror(status, msg, sizeof(msg));
    PyErr_Format(PyExc_RuntimeError, "%s failed: %s (status %d)", what, msg, (int)status);
    return NULL;
}

/* A level (1.0 = unchanged, 0 = mute) as pjmedia's normalised adjustment (-128 .. +n). */
static int level_to_adj(double level) {
    if (level < 0) level = 0;
    return (int)(level * 128.0 + 0.5) - 128;
}

static PyObject *conf_connect(PyObject *self, PyObject *args) {
    int src, dst;
    double level = 1.0;
    if (!PyArg_ParseTuple(args, "ii|d", &src, &dst, &level)) return NULL;
    if (ss_require_pj_thread()) return NULL;
    pjsua_conf_connect_param prm;
    pjsua_conf_connect_param_default(&prm);
    prm.level = (float)(level < 0 ? 0 : level);
    pj_status_t st = pjsua_conf_connect2(src, dst, &prm);
    if (st != PJ_SUCCESS) return ss_raise_pj("pjsua_conf_connect", st);
    Py_RETURN_NONE;
}

/* conf_adjust_conn_level(src, dst, level): scale only what src sends to dst (ducking a prompt
 * or a bridged peer for one listener, leaving everything else src feeds untouched). */
static PyObject *conf_adjust_conn_level(PyObject *self, PyObject *args) {
    int src, dst;
    double level;
    if (!PyArg_ParseTuple(args, "iid", &src, &dst, &level)) return NULL;
    if (ss_require_pj_thread()) return NULL;
    if (!pjsua_var.mconf) {
        PyErr_SetString(PyExc_RuntimeError, "the conference bridge is not running");
        return NULL;
    }
    if (src < 0 || dst < 0) {
        PyErr_SetString(PyExc_ValueError, "slots must be >= 0");
        return NULL;
    }
    pj_status_t st = pjmedia_conf_adjust_conn_level(pjsua_var.mconf, (unsigned)src, (unsigned)dst,
                                                    level_to_adj(level));
    if (st != PJ_SUCCESS) return ss_raise_pj("pjmedia_conf_adjust_conn_level (are the slots connected?)", st);
    Py_RETURN_NONE;
}

static PyObject *conf_disconnect(PyObject *self, PyObject *args) {
    int src, dst;
    if (!PyArg_ParseTuple(args, "ii", &src, &dst)) return NULL;
    if (ss_require_pj_thread()) return NULL;
    pj_status_t st = pjsua_conf_disconnect(src, dst);
    if (st != PJ_SUCCESS && st != PJ_EINVAL) return ss_raise_pj("pjsua_conf_disconnect", st);
    Py_RETURN_NONE;
}

static PyObject *conf_adjust_levels(PyObject *self, PyObject *args) {
    int slot;
    double rx, tx;
    if (!PyArg_ParseTuple(args, "idd", &slot, &rx, &tx)) return NULL;
    if (ss_require_pj_thread()) return NULL;
    pj_status_t st = pjsua_conf_adjust_rx_level(slot, (float)(rx < 0 ? 0 : rx));
    if (st == PJ_SUCCESS) st = pjsua_conf_adjust_tx_level(slot, (float)(tx < 0 ? 0 : tx));
    if (st != PJ_SUCCESS) return ss_raise_pj("pjsua_conf_adjust_level", st);
    Py_RETURN_NONE;
}

static PyObject *conf_max_ports(PyObject *self, PyObject *unused) {
    return PyLong_FromUnsignedLong(pjsua_conf_get_max_ports());
}

static PyObject *conf_active_ports(PyObject *self, PyObject *unused) {
    return PyLong_FromUnsignedLong(pjsua_conf_get_active_ports());
}

static PyObject *conf_listeners(PyObject *self, PyObject *arg) {
    int slot = (int)PyLong_AsLong(arg);
    if (PyErr_Occurred()) return NULL;
    if (ss_require_pj_thread()) return NULL;
    pjsua_conf_port_info info;
    pj_status_t st = pjsua_conf_get_port_info(slot, &info);
    if (st != PJ_SUCCESS) return ss_raise_pj("pjsua_conf_get_port_info", st);
    PyObject *list = PyList_New(info.listener_cnt);
    for (unsigned i = 0; list && i < info.listener_cnt; i++)
        PyList_SET_ITEM(list, i, PyLong_FromLong(info.listeners[i]));
    return list;
}

/* player_clear_eof(slot): take a file player's end-of-file callback away. A looping WAV player
 * whose end-of-file callback is set returns one empty frame at every wrap-around (pjmedia's
 * file_get_frame). pjsua2 always sets that callback, so a looped tone or hold music had a 20 ms
 * hole per loop. A player that loops forever needs no end-of-file: clearing the callback makes
 * pjmedia rewind within the same frame. A player being closed uses it too, so that pjmedia's
 * event thread no longer calls it back. */
static PyObject *player_clear_eof(PyObject *self, PyObject *arg) {
    int slot = (int)PyLong_AsLong(arg);
    if (PyErr_Occurred()) return NULL;
    if (ss_require_pj_thread()) return NULL;
    for (unsigned i = 0; i < PJ_ARRAY_SIZE(pjsua_var.player); i++) {
        if (pjsua_var.player[i].port && (int)pjsua_var.player[i].slot == slot) {
            pj_status_t st = pjmedia_wav_player_set_eof_cb2(pjsua_var.player[i].port, NULL, NULL);
            if (st != PJ_SUCCESS) return ss_raise_pj("pjmedia_wav_player_set_eof_cb2", st);
            Py_RETURN_NONE;
        }
    }
    PyErr_Format(PyExc_ValueError, "no file player on bridge slot %d", slot);
    return NULL;
}

/* One RTP port cursor for every account's outbound calls. pjsua keeps a next-RTP-port cursor per
 * account that starts at the range's first port and tries 100 pairs from there. softswitch creates
 * an account per caller ID (and per provider connection), so a fresh account's first call scanned
 * only the bottom 100 pairs: once long calls held those, its outbound calls failed with "Address
 * already in use" however free the rest of the range was. rtp_cursor_enter(acc) moves the
 * account's cursor to where the last outbound call left off; rtp_cursor_leave(acc) remembers it. */
static unsigned g_rtp_cursor;

static int valid_acc(int acc) {
    if (acc < 0 || acc >= (int)PJ_ARRAY_SIZE(pjsua_var.acc) || !pjsua_var.acc[acc].valid) {
        PyErr_Format(PyExc_ValueError, "no pjsua account %d", acc);
        return 0;
    }
    return 1;
}

static PyObject *rtp_cursor_enter(PyObject *self, PyObject *arg) {
    int acc = (int)PyLong_AsLong(arg);
    if (PyErr_Occurred()) return NULL;
    if (ss_require_pj_thread()) return NULL;
    if (!valid_acc(acc)) return NULL;
    if (g_rtp_cursor) pjsua_var.acc[acc].next_rtp_port = (pj_uint16_t)g_rtp_cursor;
    Py_RETURN_NONE;
}

static PyObject *rtp_cursor_leave(PyObject *self, PyObject *arg) {
    int acc = (int)PyLong_AsLong(arg);
    if (PyErr_Occurred()) return NULL;
    if (ss_require_pj_thread()) return NULL;
    if (!valid_acc(acc)) return NULL;
    if (pjsua_var.acc[acc].next_rtp_port) g_rtp_cursor = pjsua_var.acc[acc].next_rtp_port;
    return PyLong_FromUnsignedLong(g_rtp_cursor);
}

static PyObject *limits(PyObject *self, PyObject *unused) {
    return Py_BuildValue("{s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:s}", "max_calls", PJSUA_MAX_CALLS, "max_accounts",
                         PJSUA_MAX_ACC, "max_players",
                         PJSUA_MAX_PLAYERS, "max_recorders", PJSUA_MAX_RECORDERS, "max_conf_ports",
                         PJSUA_MAX_CONF_PORTS, "ioqueue_max_handles", PJ_IOQUEUE_MAX_HANDLES,
                         "max_tsx", PJSIP_MAX_TSX_COUNT, "pj_version", PJ_VERSION);
}

static PyMethodDef methods[] = {
    {"conf_connect", conf_connect, METH_VARARGS, "conf_connect(src_slot, dst_slot, level=1.0): audio flows src -> dst, scaled by level."},
    {"conf_adjust_conn_level", conf_adjust_conn_level, METH_VARARGS, "conf_adjust_conn_level(src_slot, dst_slot, level): rescale one existing connection."},
    {"conf_disconnect", conf_disconnect, METH_VARARGS, "conf_disconnect(src_slot, dst_slot)."},
    {"conf_adjust_levels", conf_adjust_levels, METH_VARARGS, "conf_adjust_levels(slot, rx_level, tx_level)."},
    {"conf_max_ports", conf_max_ports, METH_NOARGS, "Bridge capacity in ports."},
    {"conf_active_ports", conf_active_ports, METH_NOARGS, "Ports currently on the bridge."},
    {"conf_listeners", conf_listeners, METH_O, "Slots that receive audio from this slot."},
    {"player_clear_eof", player_clear_eof, METH_O, "player_clear_eof(slot): clear a file player's end-of-file callback (a loop rewinds without an empty frame; a closing player is no longer called back)."},
    {"rtp_cursor_enter", rtp_cursor_enter, METH_O, "rtp_cursor_enter(acc_id): the account's next RTP port continues from the shared outbound cursor."},
    {"rtp_cursor_leave", rtp_cursor_leave, METH_O, "rtp_cursor_leave(acc_id) -> port: remember where the account's cursor is now."},
    {"transfer_install", ss_transfer_install, METH_O, "transfer_install(handler or None): take in-dialog REFERs before pjsua; handler(handle, call_id, refer_to, referred_by) -> SIP code (2xx accepts: 202 and NOTIFY 100)."},
    {"transfer_notify", ss_transfer_notify, METH_VARARGS, "transfer_notify(handle, code, reason, final) -> bool: NOTIFY the referrer with a sipfrag status line."},
    {"dialog_call", ss_dialog_call, METH_VARARGS, "dialog_call(call_id, tag1, tag2) -> pjsua call id or -1 (Replaces)."},
    {"limits", limits, METH_NOARGS, "The compile-time limits of the pjproject build this module uses."},
    {NULL}};

static struct PyModuleDef moduledef = {PyModuleDef_HEAD_INIT, "_softswitch_native",
                                       "softswitch's native media code, sharing pjproject with pjsua2.", -1, methods};

PyMODINIT_FUNC PyInit__softswitch_native(void) {
    if (PyType_Ready(&FramePortType) < 0 || PyType_Ready(&RegistrarType) < 0) return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (!m) return NULL;
    if (PyModule_AddFunctions(m, ss_tcpguard_methods) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&FramePortType);
    if (PyModule_AddObject(m, "FramePort", (PyObject *)&FramePortType) < 0) {
        Py_DECREF(&FramePortType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&RegistrarType);
    if (PyModule_AddObject(m, "Registrar", (PyObject *)&RegistrarType) < 0) {
        Py_DECREF(&RegistrarType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
