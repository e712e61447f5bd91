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

/* Monotonic milliseconds: the one clock every native part times its limits and timeouts by. */
pj_uint64_t ss_monotonic_ms(void);

int ss_is_pj_thread(void);
/* Sets a RuntimeError and returns -1 unless called on a thread pjlib knows (the UA thread). */
int ss_require_pj_thread(void);
/* Sets a RuntimeError naming the pjproject call and its error text; returns NULL. */
PyObject *ss_raise_pj(const char *what, pj_status_t status);

/* transfer.c: REFER taken before pjsua (which would dial the target itself). */
PyObject *ss_transfer_install(PyObject *self, PyObject *handler);
PyObject *ss_transfer_notify(PyObject *self, PyObject *args);
PyObject *ss_dialog_call(PyObject *self, PyObject *args);

/* ---- keep-alives to registered bindings (keepalive.c) -------------------------------------- */

typedef enum { SS_KA_OFF = 0, SS_KA_OPTIONS = 1, SS_KA_CRLF = 2 } ss_ka_method_t;

/* A binding's keep-alive state, kept in the registrar's binding. */
typedef struct {
    pj_uint64_t id;      /* unique for the process: an OPTIONS answer finds its binding by it */
    pj_uint64_t next_at; /* monotonic ms of the next keep-alive */
    unsigned failures;   /* OPTIONS keep-alives in a row that got no answer */
    int unreachable;     /* failures reached the limit: not rung until it answers or registers again */
    int probing;         /* an OPTIONS keep-alive is in flight */
} ss_ka_binding_t;

typedef struct ss_ka_probe ss_ka_probe_t;

typedef struct {
    int installed;    /* its transaction user (keepalive.c) is registered */
    ss_ka_method_t method;
    unsigned interval_ms;
    int nat_only;          /* only bindings whose Contact is not where they registered from */
    unsigned max_failures; /* unanswered OPTIONS in a row that make a binding unreachable; 0 = never */
    char from_uri[256];
    ss_ka_probe_t *probes; /* OPTIONS in flight */
    pj_uint64_t next_id;
    unsigned long long sent, answered, failed, crlf_sent, crlf_failed, became_unreachable;
} ss_ka_t;

int ss_ka_install(ss_ka_t *ka);
void ss_ka_uninstall(ss_ka_t *ka);
/* An OPTIONS to target_uri (the binding's source address) whose outcome is reported once, to
 * ss_registrar_keepalive_result, within answer_ms. */
pj_status_t ss_ka_send_options(ss_ka_t *ka, const char *username, pj_uint64_t binding_id, const char *target_uri,
                               const char *to_uri, unsigned answer_ms);
/* A double CRLF (RFC 5626 3.5.1) to ip:port over the binding's transport (UDP from the SIP port,
 * TCP/TLS over the phone's own connection). */
pj_status_t ss_ka_send_crlf(ss_ka_t *ka, const char *ip, int port, const char *transport);
/* Ends the OPTIONS keep-alives whose answer time is over (reported as not answered). */
void ss_ka_expire_probes(ss_ka_t *ka);
/* Defined by the registrar: the outcome of one OPTIONS keep-alive. */
void ss_registrar_keepalive_result(const char *username, pj_uint64_t binding_id, int answered, int code);

/* ---- the transport manager's dropped-data callback, shared (rxdrop.c) ------------------------ */

/* One handler of pjsip's dropped-data notifications (CRLF keep-alives, syntax errors, TCP
 * overflow). It may set dd->len as pjsip documents for PJSIP_EINVALIDMSG. */
typedef void (*ss_rxdrop_handler)(pjsip_tp_dropped_data *dd);
/* Adds a handler (installs the callback on first use; UA thread); 0 on success, -1 when full. */
int ss_rxdrop_add(ss_rxdrop_handler handler);
void ss_rxdrop_remove(ss_rxdrop_handler handler);

/* ---- bounds on incoming TCP/TLS connections per source (tcpguard.c) ------------------------- */

/* The module functions tcpguard_configure, _close, _poll_events, _stats (added in module.c). */
extern PyMethodDef ss_tcpguard_methods[];
/* A REGISTER succeeded or an INVITE was admitted over tp: its connection no longer counts
 * against its source's limits. Any transport may be passed (UDP and unwatched ones are ignored). */
void ss_tcpguard_trusted(pjsip_transport *tp);

/* ---- answers to malformed and oversized requests (malformed.c) ------------------------------- */

/* Registers the dropped-data handler that answers requests pjsip drops (400, 416, 501, 505, 513). */
int ss_malformed_install(void);
void ss_malformed_on_drop(pjsip_tp_dropped_data *dd);
/* For an initial request pjsip parsed: the code it must be refused with (400, 406, 420, 501, 513),
 * with the problem in *reason, and with `answer` set, that answer sent; 0 when it may go on. */
int ss_validate_request(pjsip_rx_data *rdata, const char **reason, int answer);
/* Defined by the registrar: WWW-Authenticate lines (each CRLF-ended) for a REGISTER from src_ip
 * that pjsip could not parse; returns the bytes written (0 when none fit or no registrar). */
size_t ss_registrar_challenge_lines(const char *src_ip, char *buf, size_t size);
/* Adds the answers sent so far, "edge_answer_<code>": n, to a stats dict. */
void ss_malformed_stats(PyObject *stats);

#endif
