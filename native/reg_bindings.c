/* RFC 3261 section 10.3 bindings: the address-of-record table, REGISTER handling (expiry
 * rules, Contact and Call-ID/CSeq checks, wildcard removal, NAT detection) and the 200's
 * Contact list. The registrar's reason to exist: pjsua answers no REGISTER. */
#include "registrar_internal.h"

/* ---- bindings ------------------------------------------------------------------------------ */

aor_t *ss_reg_find_aor(RegistrarObject *r, const char *username, int create, user_t *u) {
    pj_uint32_t h = ss_reg_fnv1a(username, strlen(username)) % 4096;
    for (aor_t *a = r->aors[h]; a; a = a->next)
        if (strcmp(a->username, username) == 0) return a;
    if (!create) return NULL;
    aor_t *a = calloc(1, sizeof(aor_t));
    a->username = strdup(username);
    a->extension = strdup(u->extension);
    a->group = strdup(u->group);
    a->next = r->aors[h];
    r->aors[h] = a;
    return a;
}

void ss_reg_binding_free(binding_t *b) {
    if (b->nat && ss_reg_the_registrar) ss_reg_the_registrar->nat_bindings--;
    free(b->contact);
    free(b->call_id);
    free(b->user_agent);
    memset(b, 0, sizeof(*b));
}

PyObject *ss_reg_binding_dict(aor_t *a, binding_t *b) {
    pj_uint64_t now = ss_monotonic_ms();
    long remaining = b->expires_at > now ? (long)((b->expires_at - now + 999) / 1000) : 0;
    PyObject *d = Py_BuildValue("{s:s,s:s,s:s,s:s,s:l,s:K,s:s,s:i,s:s,s:s,s:O,s:d,s:s}", "username", a->username,
                         "extension", a->extension, "group", a->group, "contact", b->contact, "expires",
                         remaining, "registered_at_ms", (unsigned long long)b->registered_at, "source_ip",
                         b->source_ip, "source_port", b->source_port, "transport", b->transport,
                         "user_agent", b->user_agent ? b->user_agent : "", "nat", b->nat ? Py_True : Py_False,
                         "q", b->q1000 / 1000.0, "call_id", b->call_id);
    ss_reg_keepalive_dict_fields(d, b);
    return d;
}

void ss_reg_remove_binding(RegistrarObject *r, aor_t *a, int i, const char *why) {
    WITH_GIL(ss_reg_push_event(r, why, ss_reg_binding_dict(a, &a->contacts[i])));
    ss_reg_binding_free(&a->contacts[i]);
    for (int j = i; j < a->count - 1; j++) a->contacts[j] = a->contacts[j + 1];
    a->count--;
    memset(&a->contacts[a->count], 0, sizeof(binding_t));
}

/* The Contact's URI itself (no display name, no angle brackets), with all its parameters. */
static int uri_to_str(const pjsip_uri *uri, char *buf, size_t len) {
    int n = pjsip_uri_print(PJSIP_URI_IN_CONTACT_HDR, pjsip_uri_get_uri((pjsip_uri *)uri), buf, len - 1);
    if (n < 0) n = 0;
    buf[n] = 0;
    return n;
}

/* Whether the Contact's host:port is not where the REGISTER came from (NAT). */
static int contact_is_natted(const pjsip_uri *uri, pjsip_rx_data *rdata) {
    const pjsip_sip_uri *sip = (const pjsip_sip_uri *)pjsip_uri_get_uri((pjsip_uri *)uri);
    if (!PJSIP_URI_SCHEME_IS_SIP(uri) && !PJSIP_URI_SCHEME_IS_SIPS(uri)) return 0;
    /* No port: 5061 for TLS (sips: or ;transport=tls), 5060 otherwise (RFC 3263). */
    int tls = PJSIP_URI_SCHEME_IS_SIPS(uri) || pj_stricmp2(&sip->transport_param, "tls") == 0;
    int port = sip->port ? sip->port : (tls ? 5061 : 5060);
    char host[PJ_INET6_ADDRSTRLEN + 2];
    snprintf(host, sizeof(host), "%.*s", (int)sip->host.slen, sip->host.ptr);
    return strcmp(host, rdata->pkt_info.src_name) != 0 || port != rdata->pkt_info.src_port;
}

static void add_contacts_to_response(aor_t *a, pjsip_tx_data *tdata) {
    if (!a) return;
    pj_uint64_t now = ss_monotonic_ms();
    for (int i = 0; i < a->count; i++) {
        binding_t *b = &a->contacts[i];
        char line[1200];
        unsigned long remaining = b->expires_at > now ? (unsigned long)((b->expires_at - now + 999) / 1000) : 0;
        snprintf(line, sizeof(line), "<%s>;expires=%lu", b->contact, remaining);
        pj_str_t hname = pj_str("Contact"), hvalue;
        pj_strdup2(tdata->pool, &hvalue, line);
        pjsip_generic_string_hdr *h = pjsip_generic_string_hdr_create(tdata->pool, &hname, &hvalue);
        pjsip_msg_add_hdr(tdata->msg, (pjsip_hdr *)h);
    }
    /* Date header, which phones use to set their clock. */
    char date[64];
    time_t t = time(NULL);
    struct tm tmv;
    gmtime_r(&t, &tmv);
    strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S GMT", &tmv);
    pj_str_t dname = pj_str("Date"), dvalue;
    pj_strdup2(tdata->pool, &dvalue, date);
    pjsip_msg_add_hdr(tdata->msg, (pjsip_hdr *)pjsip_generic_string_hdr_create(tdata->pool, &dname, &dvalue));
}

static unsigned requested_expires(RegistrarObject *r, pjsip_contact_hdr *c, pjsip_expires_hdr *eh) {
    if (c && c->expires != PJSIP_EXPIRES_NOT_SPECIFIED) return c->expires;
    if (eh) return eh->ivalue;
    return r->default_expires;
}

/* `ar` and `u` are verify_digest's verdict on this REGISTER (the caller needs it first: a trunk
 * address's limit applies to everything but a valid registration). */
void ss_reg_handle_register(RegistrarObject *r, pjsip_rx_data *rdata, source_slot_t *src, int trunk_address,
                            auth_result_t ar, user_t *u) {
    pjsip_msg *msg = rdata->msg_info.msg;
    r->n_register++;
    if (ar == AUTH_NONE || ar == AUTH_STALE) {
        pjsip_tx_data *tdata = ss_reg_new_response(rdata, 401, NULL);
        if (!tdata) return;
        ss_reg_add_challenges(r, tdata, rdata, 0, ar == AUTH_STALE);
        r->n_challenges++;
        ss_reg_send_stateless(rdata, tdata);
        return;
    }
    if (ar == AUTH_BAD) {
        ss_reg_respond(rdata, 403, "Forbidden");
        ss_reg_auth_failed(r, rdata, src, trunk_address, "REGISTER digest rejected");
        return;
    }
    /* The AOR (To user) must be the authenticated user's own. */
    const pjsip_sip_uri *to = (const pjsip_sip_uri *)pjsip_uri_get_uri(rdata->msg_info.to->uri);
    if (!PJSIP_URI_SCHEME_IS_SIP(rdata->msg_info.to->uri) && !PJSIP_URI_SCHEME_IS_SIPS(rdata->msg_info.to->uri)) {
        ss_reg_respond(rdata, 404, "Not Found");
        return;
    }
    if (!ss_reg_pjstr_eq(&to->user, u->username) && !ss_reg_pjstr_eq(&to->user, u->extension)) {
        ss_reg_respond(rdata, 403, "Forbidden");
        ss_reg_security_event(r, "aor_mismatch", rdata, "To user is not the authenticated user");
        return;
    }

    pjsip_expires_hdr *eh = (pjsip_expires_hdr *)pjsip_msg_find_hdr(msg, PJSIP_H_EXPIRES, NULL);
    const pj_str_t *call_id = &rdata->msg_info.cid->id;
    pj_uint32_t cseq = rdata->msg_info.cseq->cseq;
    aor_t *a = ss_reg_find_aor(r, u->username, 0, u);

    /* First pass: validate every contact (star rules, expiry bounds) before changing anything. */
    int star = 0, ncontacts = 0;
    for (pjsip_contact_hdr *c = (pjsip_contact_hdr *)pjsip_msg_find_hdr(msg, PJSIP_H_CONTACT, NULL); c;
         c = (pjsip_contact_hdr *)pjsip_msg_find_hdr(msg, PJSIP_H_CONTACT, c->next)) {
        ncontacts++;
        if (c->star) star = 1;
        unsigned exp = requested_expires(r, c, eh);
        if (!c->star && exp > 0 && exp < r->min_expires) {
            pjsip_tx_data *tdata = ss_reg_new_response(rdata, 423, "Interval Too Brief");
            if (!tdata) return;
            char v[16];
            snprintf(v, sizeof(v), "%u", r->min_expires);
            pj_str_t hn = pj_str("Min-Expires"), hv;
            pj_strdup2(tdata->pool, &hv, v);
            pjsip_msg_add_hdr(tdata->msg, (pjsip_hdr *)pjsip_generic_string_hdr_create(tdata->pool, &hn, &hv));
            r->n_423++;
            ss_reg_send_stateless(rdata, tdata);
            return;
        }
    }
    if (star && (ncontacts > 1 || !eh || eh->ivalue != 0)) {
        ss_reg_respond(rdata, 400, "Invalid Contact: * needs Expires: 0 and no other Contact");
        return;
    }

    if (star) {
        if (a) {
            for (int i = a->count - 1; i >= 0; i--) {
                binding_t *b = &a->contacts[i];
                if (ss_reg_pjstr_eq(call_id, b->call_id) && cseq <= b->cseq) continue;
                ss_reg_remove_binding(r, a, i, "unregistered");
            }
        }
    } else if (ncontacts) {
        if (!a) a = ss_reg_find_aor(r, u->username, 1, u);
        char uri_buf[1024];
        for (pjsip_contact_hdr *c = (pjsip_contact_hdr *)pjsip_msg_find_hdr(msg, PJSIP_H_CONTACT, NULL); c;
             c = (pjsip_contact_hdr *)pjsip_msg_find_hdr(msg, PJSIP_H_CONTACT, c->next)) {
            uri_to_str(c->uri, uri_buf, sizeof(uri_buf));
            unsigned exp = requested_expires(r, c, eh);
            if (exp > r->max_expires) exp = r->max_expires;
            int found = -1;
            for (int i = 0; i < a->count; i++)
                if (strcmp(a->contacts[i].contact, uri_buf) == 0) found = i;
            if (found >= 0) {
                binding_t *b = &a->contacts[found];
                if (ss_reg_pjstr_eq(call_id, b->call_id) && cseq < b->cseq) {
                    r->n_500++;
                    ss_reg_respond(rdata, 500, "Out of order CSeq");
                    return;
                }
            }
            if (exp == 0) {
                if (found >= 0) ss_reg_remove_binding(r, a, found, "unregistered");
                continue;
            }
            binding_t *b;
            int is_new = found < 0;
            if (is_new) {
                if (a->count == MAX_CONTACTS_PER_AOR) {
                    /* Full: the binding closest to expiry makes room. */
                    int oldest = 0;
                    for (int i = 1; i < a->count; i++)
                        if (a->contacts[i].expires_at < a->contacts[oldest].expires_at) oldest = i;
                    ss_reg_remove_binding(r, a, oldest, "unregistered");
                }
                b = &a->contacts[a->count++];
                memset(b, 0, sizeof(*b));
                b->contact = strdup(uri_buf);
                ss_reg_ascii_only(b->contact);
                b->registered_at = ss_reg_wall_ms();
            } else {
                b = &a->contacts[found];
                free(b->call_id);
                free(b->user_agent);
            }
            b->call_id = ss_reg_dup_pjstr(call_id);
            b->cseq = cseq;
            b->expires_at = ss_monotonic_ms() + (pj_uint64_t)exp * 1000;
            b->q1000 = c->q1000 > 0 ? c->q1000 : 1000;
            snprintf(b->source_ip, sizeof(b->source_ip), "%s", rdata->pkt_info.src_name);
            b->source_port = rdata->pkt_info.src_port;
            snprintf(b->transport, sizeof(b->transport), "%s", rdata->tp_info.transport->type_name);
            pjsip_generic_string_hdr *uah = (pjsip_generic_string_hdr *)pjsip_msg_find_hdr_by_name(
                msg, &(pj_str_t){"User-Agent", 10}, NULL);
            b->user_agent = uah ? ss_reg_dup_pjstr(&uah->hvalue) : NULL;
            if (b->nat) r->nat_bindings--;
            b->nat = contact_is_natted(c->uri, rdata);
            if (b->nat) r->nat_bindings++;
            ss_reg_keepalive_on_register(r, a, b, is_new);
            WITH_GIL(ss_reg_push_event(r, is_new ? "registered" : "refreshed", ss_reg_binding_dict(a, b)));
        }
    }
    pjsip_tx_data *tdata = ss_reg_new_response(rdata, 200, NULL);
    if (!tdata) return;
    add_contacts_to_response(a, tdata);
    r->n_register_ok++;
    ss_tcpguard_trusted(rdata->tp_info.transport);
    ss_reg_send_stateless(rdata, tdata);
}
