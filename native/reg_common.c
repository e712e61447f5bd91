/* The registrar's shared plumbing: clocks, hashing and string helpers, the event list Python
 * drains, the user table, and stateless responses with the retransmission cache. Every other
 * reg_*.c file uses these; they live here so that no concern owns another's helpers.
 * Also the one definition of ss_reg_the_registrar (see registrar_internal.h). */
#include "registrar_internal.h"

/* ---- small helpers ----------------------------------------------------------------------- */

pj_uint64_t ss_reg_wall_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (pj_uint64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

pj_uint32_t ss_reg_fnv1a(const char *s, size_t n) {
    pj_uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

/* Strings that reach Python as str must be valid UTF-8: bytes outside printable ASCII become '?'
 * (a Latin-1 User-Agent made every later bindings() call raise UnicodeDecodeError). */
void ss_reg_ascii_only(char *s) {
    for (; s && *s; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s > 0x7e) *s = '?';
}

char *ss_reg_dup_pjstr(const pj_str_t *s) {
    char *out = malloc((size_t)s->slen + 1);
    if (out) {
        memcpy(out, s->ptr, (size_t)s->slen);
        out[s->slen] = 0;
        ss_reg_ascii_only(out);
    }
    return out;
}

int ss_reg_pjstr_eq(const pj_str_t *a, const char *b) {
    size_t n = strlen(b);
    return (size_t)a->slen == n && memcmp(a->ptr, b, n) == 0;
}

static void hex_encode(const unsigned char *in, size_t n, char *out) {
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[2 * n] = 0;
}

/* hex(H(parts joined by ':')) into out (33 or 65 bytes). */
void ss_reg_digest_hex(digest_alg_t alg, char *out, const char *const *parts, const size_t *lens, int nparts) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_DigestInit_ex(ctx, alg == ALG_SHA256 ? EVP_sha256() : EVP_md5(), NULL);
    for (int i = 0; i < nparts; i++) {
        if (i) EVP_DigestUpdate(ctx, ":", 1);
        EVP_DigestUpdate(ctx, parts[i], lens[i]);
    }
    EVP_DigestFinal_ex(ctx, md, &mdlen);
    EVP_MD_CTX_free(ctx);
    hex_encode(md, mdlen, out);
}

/* The module callbacks find their registrar through this pointer: one registrar per process,
 * like the one pjsua endpoint it is attached to. */
RegistrarObject *ss_reg_the_registrar;

void ss_reg_push_event(RegistrarObject *r, const char *kind, PyObject *data) {
    if (!data) {
        PyErr_Clear();
        return;
    }
    if (PyList_GET_SIZE(r->events) < MAX_EVENTS) {
        PyObject *item = Py_BuildValue("(sN)", kind, data);
        if (item) {
            PyList_Append(r->events, item);
            Py_DECREF(item);
        } else {
            PyErr_Clear();
        }
    } else {
        Py_DECREF(data);
    }
}

void ss_reg_security_event(RegistrarObject *r, const char *what, pjsip_rx_data *rdata, const char *detail) {
    char ua[128] = "";
    pjsip_generic_string_hdr *uah = (pjsip_generic_string_hdr *)pjsip_msg_find_hdr_by_name(
        rdata->msg_info.msg, &(pj_str_t){"User-Agent", 10}, NULL);
    if (uah) snprintf(ua, sizeof(ua), "%.*s", (int)uah->hvalue.slen, uah->hvalue.ptr);
    ss_reg_ascii_only(ua);
    const pjsip_method *m = &rdata->msg_info.msg->line.req.method;
    WITH_GIL(ss_reg_push_event(r, "security",
                        Py_BuildValue("{s:s,s:s,s:i,s:s,s:s#,s:s,s:s}", "event", what, "source_ip",
                                      rdata->pkt_info.src_name, "source_port", rdata->pkt_info.src_port,
                                      "transport", rdata->tp_info.transport->type_name, "method",
                                      m->name.ptr, (Py_ssize_t)m->name.slen, "user_agent", ua, "detail",
                                      detail ? detail : "")));
}

/* ---- users ---------------------------------------------------------------------------------- */

user_t *ss_reg_find_user(RegistrarObject *r, const pj_str_t *username) {
    pj_uint32_t h = ss_reg_fnv1a(username->ptr, (size_t)username->slen) % 1024;
    for (user_t *u = r->users[h]; u; u = u->next)
        if (ss_reg_pjstr_eq(username, u->username)) return u;
    return NULL;
}

void ss_reg_free_users(RegistrarObject *r) {
    for (int i = 0; i < 1024; i++) {
        user_t *u = r->users[i];
        while (u) {
            user_t *next = u->next;
            free(u->username);
            free(u->extension);
            free(u->group);
            free(u);
            u = next;
        }
        r->users[i] = NULL;
    }
}

/* ---- stateless responses, and the cache that answers their retransmissions --------------- */

/* The retransmission cache: the last response sent for a request (source, Via branch, CSeq),
 * so a retransmitted request gets the very same answer (same nonce) without being processed
 * again, as a transaction would give it, at a fraction of a transaction's memory. */
static pj_uint32_t retrans_key(pjsip_rx_data *rdata) {
    char buf[256];
    pjsip_via_hdr *via = rdata->msg_info.via;
    int n = snprintf(buf, sizeof(buf), "%s:%d|%.*s|%u|%.*s", rdata->pkt_info.src_name, rdata->pkt_info.src_port,
                     via ? (int)via->branch_param.slen : 0, via ? via->branch_param.ptr : "",
                     rdata->msg_info.cseq ? rdata->msg_info.cseq->cseq : 0,
                     (int)rdata->msg_info.msg->line.req.method.name.slen, rdata->msg_info.msg->line.req.method.name.ptr);
    return ss_reg_fnv1a(buf, n > 0 && n < (int)sizeof(buf) ? (size_t)n : sizeof(buf) - 1);
}

static void cache_response(RegistrarObject *r, pjsip_rx_data *rdata, pjsip_tx_data *tdata) {
    pj_uint32_t key = retrans_key(rdata);
    retrans_slot_t *slot = &r->retrans[key % RETRANS_SLOTS];
    if (slot->tdata) pjsip_tx_data_dec_ref(slot->tdata);
    pjsip_tx_data_add_ref(tdata);
    slot->tdata = tdata;
    slot->key = key;
    slot->at = ss_monotonic_ms();
}

/* 1 when rdata is a retransmission we answered already (the cached answer is sent again). */
int ss_reg_resend_cached(RegistrarObject *r, pjsip_rx_data *rdata) {
    pj_uint32_t key = retrans_key(rdata);
    retrans_slot_t *slot = &r->retrans[key % RETRANS_SLOTS];
    if (!slot->tdata || slot->key != key || ss_monotonic_ms() - slot->at > 32000) return 0;
    pjsip_response_addr addr;
    if (pjsip_get_response_addr(slot->tdata->pool, rdata, &addr) != PJ_SUCCESS) return 0;
    pjsip_tx_data_add_ref(slot->tdata);
    if (pjsip_endpt_send_response(pjsua_get_pjsip_endpt(), &addr, slot->tdata, NULL, NULL) != PJ_SUCCESS)
        pjsip_tx_data_dec_ref(slot->tdata);
    r->n_retransmissions++;
    return 1;
}

void ss_reg_free_retrans(RegistrarObject *r) {
    for (int i = 0; i < RETRANS_SLOTS; i++)
        if (r->retrans[i].tdata) {
            pjsip_tx_data_dec_ref(r->retrans[i].tdata);
            r->retrans[i].tdata = NULL;
        }
}

pj_status_t ss_reg_send_stateless(pjsip_rx_data *rdata, pjsip_tx_data *tdata) {
    pjsip_response_addr addr;
    pjsip_endpoint *endpt = pjsua_get_pjsip_endpt();
    pj_status_t st = pjsip_get_response_addr(tdata->pool, rdata, &addr);
    if (st == PJ_SUCCESS && ss_reg_the_registrar) cache_response(ss_reg_the_registrar, rdata, tdata);
    if (st == PJ_SUCCESS) st = pjsip_endpt_send_response(endpt, &addr, tdata, NULL, NULL);
    if (st != PJ_SUCCESS) pjsip_tx_data_dec_ref(tdata);
    return st;
}

pjsip_tx_data *ss_reg_new_response(pjsip_rx_data *rdata, int code, const char *reason) {
    pjsip_tx_data *tdata = NULL;
    pj_str_t r = pj_str((char *)reason);
    if (pjsip_endpt_create_response(pjsua_get_pjsip_endpt(), rdata, code, reason ? &r : NULL, &tdata) != PJ_SUCCESS)
        return NULL;
    return tdata;
}

void ss_reg_respond(pjsip_rx_data *rdata, int code, const char *reason) {
    pjsip_tx_data *tdata = ss_reg_new_response(rdata, code, reason);
    if (tdata) ss_reg_send_stateless(rdata, tdata);
}
