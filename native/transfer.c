/* Call transfer (REFER, RFC 3515) for softswitch as a B2BUA.
 *
 * pjsua's own REFER handling (on_call_transferred) always dials the Refer-To URI itself from the
 * same account, and pjsua2 can only refuse it. softswitch must resolve and dial the target
 * itself, so REFERs are taken before pjsua sees them:
 *  - `mod-ss-xfer-attach` (priority 31, before the UA layer) adds the dialog usage below to the
 *    dialog of every in-dialog REFER, on its way in (no per-call setup, any call of any account);
 *  - `mod-ss-xfer` (a dialog usage, priority 47, before mod_inv and so before pjsua) answers the
 *    REFER in the transaction's Trying state. pjsua acts on a REFER only while its transaction is
 *    still Trying (pjsua_call_on_tsx_state_changed), so it never dials.
 * The decision is Python's, synchronously (a handler called with the GIL): a response code for
 * the REFER. 2xx creates the implicit "refer" subscription (pjsip_xfer_create_uas, 202, a first
 * NOTIFY "100 Trying"); `transfer_notify` then reports progress as message/sipfrag NOTIFYs. */
#include "softswitch_native.h"

#include <pjsip-simple/evsub.h>
#include <pjsip-ua/sip_xfer.h>
#include <pjsua-lib/pjsua_internal.h>

#define MAX_TRANSFERS 1024

typedef struct xfer_entry {
    unsigned id; /* 0: free */
    pjsip_evsub *sub; /* NULL: no subscription (Refer-Sub: false) or terminated */
    pjsip_dialog *dlg;
} xfer_entry;

static xfer_entry g_xfers[MAX_TRANSFERS];
static unsigned g_next_id = 1;
static PyObject *g_handler; /* handler(handle, call_id, refer_to, referred_by) -> int */

static pj_bool_t attach_on_rx_request(pjsip_rx_data *rdata);
static void usage_on_tsx_state(pjsip_transaction *tsx, pjsip_event *e);

static pjsip_module g_attach_mod = {
    NULL, NULL, {"mod-ss-xfer-attach", 18}, -1, PJSIP_MOD_PRIORITY_UA_PROXY_LAYER - 1,
    NULL, NULL, NULL, NULL, &attach_on_rx_request, NULL, NULL, NULL, NULL,
};

static pjsip_module g_usage_mod = {
    NULL, NULL, {"mod-ss-xfer", 11}, -1, PJSIP_MOD_PRIORITY_DIALOG_USAGE - 1,
    NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, &usage_on_tsx_state,
};

static int is_refer(const pjsip_method *m) { return pjsip_method_cmp(m, pjsip_get_refer_method()) == 0; }

static pj_bool_t attach_on_rx_request(pjsip_rx_data *rdata) {
    pjsip_msg *msg = rdata->msg_info.msg;
    if (!is_refer(&msg->line.req.method) || !rdata->msg_info.to || !rdata->msg_info.from ||
        !rdata->msg_info.cid || rdata->msg_info.to->tag.slen == 0)
        return PJ_FALSE;
    pjsip_dialog *dlg = pjsip_ua_find_dialog(&rdata->msg_info.cid->id, &rdata->msg_info.to->tag,
                                             &rdata->msg_info.from->tag, PJ_TRUE);
    if (!dlg) return PJ_FALSE; /* the UA layer answers 481 */
    if (!pjsip_dlg_has_usage(dlg, &g_usage_mod)) pjsip_dlg_add_usage(dlg, &g_usage_mod, NULL);
    pjsip_dlg_dec_lock(dlg);
    return PJ_FALSE;
}

static xfer_entry *find_entry(unsigned id) {
    if (!id) return NULL;
    xfer_entry *e = &g_xfers[id % MAX_TRANSFERS];
    return e->id == id ? e : NULL;
}

static xfer_entry *new_entry(void) {
    for (unsigned n = 0; n < MAX_TRANSFERS; n++) {
        unsigned id = g_next_id++;
        if (!g_next_id) g_next_id = 1;
        if (!id) continue;
        xfer_entry *e = &g_xfers[id % MAX_TRANSFERS];
        if (e->id == 0) {
            e->id = id;
            e->sub = NULL;
            e->dlg = NULL;
            return e;
        }
    }
    return NULL;
}

/* The subscription ended (final NOTIFY sent, refreshed out, the far end gone): forget it. */
static void xfer_on_evsub_state(pjsip_evsub *sub, pjsip_event *event) {
    if (pjsip_evsub_get_state(sub) != PJSIP_EVSUB_STATE_TERMINATED) return;
    xfer_entry *e = (xfer_entry *)pjsip_evsub_get_mod_data(sub, g_usage_mod.id);
    if (e && e->sub == sub) {
        e->sub = NULL;
        e->id = 0;
    }
    pjsip_evsub_set_mod_data(sub, g_usage_mod.id, NULL);
}

static void str_of(char *buf, size_t size, const pj_str_t *s) {
    size_t n = (size_t)s->slen < size - 1 ? (size_t)s->slen : size - 1;
    memcpy(buf, s->ptr, n);
    buf[n] = '\0';
}

/* Python decides: a SIP response code for the REFER (500 if the handler fails). */
static int ask_python(unsigned handle, int call_id, const char *refer_to, const char *referred_by) {
    int code = 500;
    PyGILState_STATE g = PyGILState_Ensure();
    if (g_handler) {
        PyObject *r = PyObject_CallFunction(g_handler, "Iiss", handle, call_id, refer_to, referred_by);
        if (r) {
            long v = PyLong_AsLong(r);
            if (!PyErr_Occurred() && v >= 200 && v <= 699) code = (int)v;
            Py_DECREF(r);
        }
        if (PyErr_Occurred()) PyErr_Print();
    } else {
        code = 503; /* shutting down */
    }
    PyGILState_Release(g);
    return code;
}

static void handle_refer(pjsip_dialog *dlg, pjsip_rx_data *rdata) {
    static const pj_str_t STR_REFER_TO = {"Refer-To", 8}, STR_REFER_TO_SHORT = {"r", 1};
    static const pj_str_t STR_REFER_SUB = {"Refer-Sub", 9}, STR_REFERRED_BY = {"Referred-By", 11};
    static const pj_str_t STR_REFERRED_BY_SHORT = {"b", 1};
    pjsip_msg *msg = rdata->msg_info.msg;

    pjsua_call *call = pjsua_var.mod.id >= 0 ? (pjsua_call *)dlg->mod_data[pjsua_var.mod.id] : NULL;
    if (!call || !call->inv || call->hanging_up) {
        pjsip_dlg_respond(dlg, rdata, 481, NULL, NULL, NULL);
        return;
    }
    /* RFC 3515 2.4.1: exactly one Refer-To value, else 400. */
    pjsip_generic_string_hdr *refer_to = (pjsip_generic_string_hdr *)pjsip_msg_find_hdr_by_names(
        msg, &STR_REFER_TO, &STR_REFER_TO_SHORT, NULL);
    if (!refer_to || pjsip_msg_find_hdr_by_names(msg, &STR_REFER_TO, &STR_REFER_TO_SHORT, refer_to->next) ||
        refer_to->hvalue.slen == 0) {
        pj_str_t reason = pj_str(refer_to ? "Exactly one Refer-To is allowed" : "Missing Refer-To");
        pjsip_dlg_respond(dlg, rdata, 400, &reason, NULL, NULL);
        return;
    }
    pjsip_generic_string_hdr *refer_sub =
        (pjsip_generic_string_hdr *)pjsip_msg_find_hdr_by_name(msg, &STR_REFER_SUB, NULL);
    int no_sub = refer_sub && pj_strnicmp2(&refer_sub->hvalue, "false", 5) == 0; /* RFC 4488 */
    pjsip_generic_string_hdr *by = (pjsip_generic_string_hdr *)pjsip_msg_find_hdr_by_names(
        msg, &STR_REFERRED_BY, &STR_REFERRED_BY_SHORT, NULL);

    char target[1024], referred_by[512] = "";
    str_of(target, sizeof(target), &refer_to->hvalue);
    if (by) str_of(referred_by, sizeof(referred_by), &by->hvalue);

    xfer_entry *entry = new_entry();
    if (!entry) {
        pj_str_t reason = pj_str("Too many transfers in progress");
        pjsip_dlg_respond(dlg, rdata, 503, &reason, NULL, NULL);
        return;
    }
    int code = ask_python(entry->id, call->index, target, referred_by);
    if (code >= 300) {
        entry->id = 0;
        pjsip_dlg_respond(dlg, rdata, code, NULL, NULL, NULL);
        return;
    }
    if (no_sub) {
        /* No subscription: 2xx with Refer-Sub: false; progress is not reported. */
        pjsip_tx_data *tdata;
        if (pjsip_dlg_create_response(dlg, rdata, code, NULL, &tdata) == PJ_SUCCESS) {
            pj_str_t no = pj_str("false");
            pjsip_msg_add_hdr(tdata->msg, (pjsip_hdr *)pjsip_generic_string_hdr_create(tdata->pool, &STR_REFER_SUB, &no));
            pjsip_dlg_send_response(dlg, pjsip_rdata_get_tsx(rdata), tdata);
        }
        entry->dlg = dlg; /* id kept, sub NULL: notify calls are accepted and do nothing */
        return;
    }
    pjsip_evsub_user cb;
    pj_bzero(&cb, sizeof(cb));
    cb.on_evsub_state = &xfer_on_evsub_state;
    pjsip_evsub *sub;
    pj_status_t st = pjsip_xfer_create_uas(dlg, &cb, rdata, &sub);
    if (st != PJ_SUCCESS) {
        entry->id = 0;
        pjsip_dlg_respond(dlg, rdata, 500, NULL, NULL, NULL);
        return;
    }
    entry->sub = sub;
    entry->dlg = dlg;
    pjsip_evsub_set_mod_data(sub, g_usage_mod.id, entry);
    pjsip_hdr hdrs;
    pj_list_init(&hdrs);
    if (refer_sub) {
        pj_str_t yes = pj_str("true");
        pj_list_push_back(&hdrs, pjsip_generic_string_hdr_create(dlg->pool, &STR_REFER_SUB, &yes));
    }
    pjsip_xfer_accept(sub, rdata, code, &hdrs);
    /* RFC 3515 2.4.4: the first NOTIFY right after accepting, "100 Trying". */
    pjsip_tx_data *tdata;
    if (pjsip_xfer_notify(sub, PJSIP_EVSUB_STATE_ACTIVE, 100, NULL, &tdata) == PJ_SUCCESS)
        pjsip_xfer_send_request(sub, tdata);
}

static void usage_on_tsx_state(pjsip_transaction *tsx, pjsip_event *e) {
    if (tsx->role != PJSIP_ROLE_UAS || tsx->state != PJSIP_TSX_STATE_TRYING || !is_refer(&tsx->method)) return;
    if (e->type != PJSIP_EVENT_TSX_STATE || e->body.tsx_state.type != PJSIP_EVENT_RX_MSG) return;
    pjsip_dialog *dlg = pjsip_tsx_get_dlg(tsx);
    if (!dlg) return;
    handle_refer(dlg, e->body.tsx_state.src.rdata);
}

/* ---- Python API ------------------------------------------------------------------------ */
PyObject *ss_transfer_install(PyObject *self, PyObject *handler) {
    if (handler != Py_None && !PyCallable_Check(handler)) {
        PyErr_SetString(PyExc_TypeError, "transfer_install needs a callable (or None to stop taking REFERs)");
        return NULL;
    }
    if (ss_require_pj_thread()) return NULL;
    if (handler == Py_None) {
        Py_CLEAR(g_handler);
        Py_RETURN_NONE;
    }
    pjsip_endpoint *endpt = pjsua_get_pjsip_endpt();
    if (g_usage_mod.id == -1) {
        /* A new endpoint (its destruction unregistered the modules): forget the old transfers. */
        memset(g_xfers, 0, sizeof(g_xfers));
        pj_status_t st = pjsip_endpt_register_module(endpt, &g_usage_mod);
        if (st != PJ_SUCCESS) return ss_raise_pj("pjsip_endpt_register_module (transfer usage)", st);
    }
    if (g_attach_mod.id == -1) {
        pj_status_t st = pjsip_endpt_register_module(endpt, &g_attach_mod);
        if (st != PJ_SUCCESS) return ss_raise_pj("pjsip_endpt_register_module (transfer)", st);
    }
    Py_INCREF(handler);
    Py_XSETREF(g_handler, handler);
    Py_RETURN_NONE;
}

/* transfer_notify(handle, code, reason, final) -> bool: a NOTIFY with "SIP/2.0 code reason". */
PyObject *ss_transfer_notify(PyObject *self, PyObject *args) {
    unsigned handle;
    int code, final;
    const char *reason;
    if (!PyArg_ParseTuple(args, "Iisp", &handle, &code, &reason, &final)) return NULL;
    if (ss_require_pj_thread()) return NULL;
    if (code < 100 || code > 699) {
        PyErr_SetString(PyExc_ValueError, "a sipfrag status code is 100..699");
        return NULL;
    }
    xfer_entry *e = find_entry(handle);
    if (!e) Py_RETURN_FALSE;
    if (!e->sub) {
        if (final) e->id = 0; /* Refer-Sub: false */
        Py_RETURN_FALSE;
    }
    pjsip_evsub *sub = e->sub;
    pjsip_dialog *dlg = e->dlg;
    pj_str_t text = pj_str((char *)reason);
    pjsip_tx_data *tdata;
    pjsip_dlg_inc_lock(dlg);
    pj_status_t st = pjsip_xfer_notify(sub, final ? PJSIP_EVSUB_STATE_TERMINATED : PJSIP_EVSUB_STATE_ACTIVE, code,
                                       text.slen ? &text : NULL, &tdata);
    if (st == PJ_SUCCESS) st = pjsip_xfer_send_request(sub, tdata);
    if (st != PJ_SUCCESS && final && e->id == handle && e->sub == sub) {
        pjsip_evsub_terminate(sub, PJ_TRUE); /* no NOTIFY possible: end it here */
    }
    pjsip_dlg_dec_lock(dlg);
    if (st != PJ_SUCCESS) return ss_raise_pj("pjsip_xfer_notify", st);
    Py_RETURN_TRUE;
}

/* dialog_call(call_id, tag1, tag2) -> pjsua call id or -1: the call whose dialog has this
 * Call-ID and these two tags (either as local/remote), for Replaces (RFC 3891). */
PyObject *ss_dialog_call(PyObject *self, PyObject *args) {
    const char *cid, *t1, *t2;
    if (!PyArg_ParseTuple(args, "sss", &cid, &t1, &t2)) return NULL;
    if (ss_require_pj_thread()) return NULL;
    pj_str_t c = pj_str((char *)cid), a = pj_str((char *)t1), b = pj_str((char *)t2);
    for (int order = 0; order < 2; order++) {
        pjsip_dialog *dlg = pjsip_ua_find_dialog(&c, order ? &b : &a, order ? &a : &b, PJ_TRUE);
        if (!dlg) continue;
        int id = -1;
        pjsua_call *call = pjsua_var.mod.id >= 0 ? (pjsua_call *)dlg->mod_data[pjsua_var.mod.id] : NULL;
        if (call && call->inv) id = call->index;
        pjsip_dlg_dec_lock(dlg);
        if (id >= 0) return PyLong_FromLong(id);
    }
    return PyLong_FromLong(-1);
}
