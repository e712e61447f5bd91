/* Keep-alives, the registrar's side: which bindings want them, where they go, what an answer or
 * a failure does to a binding, and their counters. Sending and timing are in keepalive.c; this
 * file is the glue between that and the binding table. */
#include "registrar_internal.h"

/* ---- keep-alives: the registrar's side (sending is in keepalive.c) ---------------------------- */

void ss_reg_keepalive_dict_fields(PyObject *d, const binding_t *b) {
    if (!d) return;
    PyObject *reachable = b->ka.unreachable ? Py_False : Py_True;
    PyObject *failures = PyLong_FromUnsignedLong(b->ka.failures);
    if (PyDict_SetItemString(d, "reachable", reachable) < 0 ||
        (failures && PyDict_SetItemString(d, "keepalive_failures", failures) < 0))
        PyErr_Clear();
    Py_XDECREF(failures);
}

/* A new binding gets its id and first keep-alive one interval from now; a refresh (the phone just
 * reached us, and its REGISTER refreshed the NAT mapping) makes an unreachable binding reachable. */
void ss_reg_keepalive_on_register(RegistrarObject *r, aor_t *a, binding_t *b, int is_new) {
    ss_ka_t *ka = &r->keepalive;
    if (is_new || !b->ka.id) {
        b->ka.id = ++ka->next_id;
        b->ka.next_at = ss_monotonic_ms() + ka->interval_ms;
        return;
    }
    b->ka.failures = 0;
    if (b->ka.unreachable) {
        b->ka.unreachable = 0;
        WITH_GIL(ss_reg_push_event(r, "reachable", ss_reg_binding_dict(a, b)));
    }
}

void ss_registrar_keepalive_result(const char *username, pj_uint64_t binding_id, int answered, int code) {
    RegistrarObject *r = ss_reg_the_registrar;
    if (!r) return;
    aor_t *a = ss_reg_find_aor(r, username, 0, NULL);
    for (int i = 0; a && i < a->count; i++) {
        binding_t *b = &a->contacts[i];
        if (b->ka.id != binding_id) continue;
        b->ka.probing = 0;
        if (answered) {
            b->ka.failures = 0;
            if (b->ka.unreachable) {
                b->ka.unreachable = 0;
                WITH_GIL(ss_reg_push_event(r, "reachable", ss_reg_binding_dict(a, b)));
            }
            return;
        }
        b->ka.failures++;
        if (r->keepalive.max_failures && b->ka.failures >= r->keepalive.max_failures && !b->ka.unreachable) {
            b->ka.unreachable = 1;
            r->keepalive.became_unreachable++;
            WITH_GIL(ss_reg_push_event(r, "unreachable", ss_reg_binding_dict(a, b)));
        }
        return;
    }
}

/* "sip:<contact user>@<source>;transport=<t>": where the phone's packets come from (its NAT's
 * mapping), with the user its Contact names. */
void ss_reg_keepalive_target(const binding_t *b, char *out, size_t len) {
    const char *c = b->contact, *colon = strchr(c, ':');
    char user[128] = "";
    if (colon) {
        const char *at = strchr(colon + 1, '@'), *stop = strpbrk(colon + 1, ";?>");
        if (at && (!stop || at < stop)) snprintf(user, sizeof(user), "%.*s@", (int)(at - colon - 1), colon + 1);
    }
    char tp[8];
    size_t n = 0;
    for (; b->transport[n] && n < sizeof(tp) - 1; n++) tp[n] = (char)tolower((unsigned char)b->transport[n]);
    tp[n] = 0;
    int v6 = strchr(b->source_ip, ':') != NULL;
    snprintf(out, len, "sip:%s%s%s%s:%d;transport=%s", user, v6 ? "[" : "", b->source_ip, v6 ? "]" : "",
             b->source_port, tp);
}

int ss_reg_keepalive_wanted(RegistrarObject *r, const binding_t *b) {
    return r->keepalive.method != SS_KA_OFF && (b->nat || !r->keepalive.nat_only);
}

void ss_reg_keepalive_stats(RegistrarObject *r, PyObject *d) {
    if (!d) return;
    const ss_ka_t *ka = &r->keepalive;
    long unreachable = 0;
    for (int i = 0; i < 4096; i++)
        for (aor_t *a = r->aors[i]; a; a = a->next)
            for (int j = 0; j < a->count; j++) unreachable += a->contacts[j].ka.unreachable != 0;
    struct { const char *key; unsigned long long value; } rows[] = {
        {"keepalive_options_sent", ka->sent},       {"keepalive_options_answered", ka->answered},
        {"keepalive_options_failed", ka->failed},   {"keepalive_crlf_sent", ka->crlf_sent},
        {"keepalive_crlf_failed", ka->crlf_failed}, {"keepalive_became_unreachable", ka->became_unreachable},
        {"bindings_unreachable", (unsigned long long)unreachable}};
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(rows[i].value);
        if (!v || PyDict_SetItemString(d, rows[i].key, v) < 0) PyErr_Clear();
        Py_XDECREF(v);
    }
}
