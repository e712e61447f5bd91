/* The gate: which trunk or extension an initial INVITE belongs to, the overload 503 (flag, live
 * inbound calls, new-call rate, a trunk's own rate), the classification Python takes for each
 * admitted call, the response counters module, and on_rx_request, the module's entry point that
 * sends each request to the right concern. */
#include "registrar_internal.h"

/* ---- which trunk or extension an INVITE belongs to ------------------------------------- */

/* The `tk` parameter of the Request-URI: the route token of one of our registrations. */
static int ruri_token(pjsip_rx_data *rdata, char *out, size_t len) {
    pjsip_uri *ruri = rdata->msg_info.msg->line.req.uri;
    if (!PJSIP_URI_SCHEME_IS_SIP(ruri) && !PJSIP_URI_SCHEME_IS_SIPS(ruri)) return 0;
    pjsip_sip_uri *sip = (pjsip_sip_uri *)pjsip_uri_get_uri(ruri);
    pj_str_t name = pj_str("tk");
    pjsip_param *p = pjsip_param_find(&sip->other_param, &name);
    if (!p || p->value.slen <= 0) return 0;
    snprintf(out, len, "%.*s", (int)p->value.slen, p->value.ptr);
    return 1;
}

/* Trunk rows are tried in order: route tokens ("token:<t>", registered fixed trunks) first,
 * then source addresses (unregistered fixed trunks). */
static const trunk_t *match_trunk(RegistrarObject *r, pjsip_rx_data *rdata) {
    char token[96];
    int has_token = ruri_token(rdata, token, sizeof(token));
    for (int i = 0; i < r->ntrunks; i++) {
        const trunk_t *t = &r->trunks[i];
        if (strncmp(t->ip, "token:", 6) == 0) {
            if (has_token && strcmp(t->ip + 6, token) == 0) return t;
            continue;
        }
        if (strcmp(t->ip, rdata->pkt_info.src_name) == 0 && (t->port == 0 || t->port == rdata->pkt_info.src_port))
            return t;
    }
    return NULL;
}

/* A dynamic trunk is recognised by a live binding of its credentials at the INVITE's source. */
static const aor_t *match_dynamic_trunk(RegistrarObject *r, pjsip_rx_data *rdata, user_t **user) {
    pj_uint64_t now = ss_monotonic_ms();
    for (int i = 0; i < 1024; i++)
        for (user_t *u = r->users[i]; u; u = u->next) {
            if (strncmp(u->group, "trunk:", 6) != 0) continue;
            aor_t *a = ss_reg_find_aor(r, u->username, 0, u);
            for (int j = 0; a && j < a->count; j++) {
                binding_t *b = &a->contacts[j];
                if (b->expires_at > now && strcmp(b->source_ip, rdata->pkt_info.src_name) == 0 &&
                    b->source_port == rdata->pkt_info.src_port) {
                    *user = u;
                    return a;
                }
            }
        }
    return NULL;
}

static void remember_classification(RegistrarObject *r, pjsip_rx_data *rdata, const char *kind, const char *ref,
                                    const char *extension, const char *group) {
    /* pjsua reports at most 128 bytes of a Call-ID (pjsua_call_info's buffer): keep the same. */
    const pj_str_t *full = &rdata->msg_info.cid->id;
    pj_str_t trimmed = {full->ptr, full->slen > 128 ? 128 : full->slen};
    const pj_str_t *cid = &trimmed;
    pj_uint32_t h = ss_reg_fnv1a(cid->ptr, (size_t)cid->slen) % CLASSIFY_SLOTS;
    classify_slot_t *s = &r->classified[h];
    free(s->call_id);
    free(s->ref);
    free(s->extension);
    free(s->group);
    memset(s, 0, sizeof(*s));
    s->call_id = malloc((size_t)cid->slen + 1); /* raw: compared with the Call-ID pjsua reports */
    if (s->call_id) {
        memcpy(s->call_id, cid->ptr, (size_t)cid->slen);
        s->call_id[cid->slen] = 0;
    }
    snprintf(s->kind, sizeof(s->kind), "%s", kind);
    s->ref = strdup(ref);
    s->extension = extension ? strdup(extension) : NULL;
    s->group = group ? strdup(group) : NULL;
    s->at = ss_monotonic_ms();
}

/* ---- overload control -------------------------------------------------------------------------- */

/* Whether a new call the gate would admit must be refused now, and why; checked in this order:
 * the overloaded flag, live inbound calls, the new-call rate. An admitted call takes a token and
 * counts as live until Python's next sync. */
static int overload_refusal(RegistrarObject *r, refusal_t *why) {
    if (r->overloaded) {
        *why = r->overloaded == OVERLOAD_CPU ? REFUSED_CPU : REFUSED_LOOP_LAG;
        return 1;
    }
    if (r->max_concurrent && r->live_inbound + r->passed_since_sync >= (long)r->max_concurrent) {
        *why = REFUSED_CONCURRENT;
        return 1;
    }
    if (r->cps > 0) {
        pj_uint64_t now = ss_monotonic_ms();
        double burst = r->cps < 1.0 ? 1.0 : r->cps;
        r->cps_tokens += (double)(now - r->cps_at) / 1000.0 * r->cps;
        if (r->cps_tokens > burst) r->cps_tokens = burst;
        r->cps_at = now;
        if (r->cps_tokens < 1.0) {
            *why = REFUSED_RATE;
            return 1;
        }
        r->cps_tokens -= 1.0;
    }
    r->passed_since_sync++;
    return 0;
}

/* 503 with Retry-After through a UAS transaction: it retransmits the 503 over UDP until the ACK,
 * answers a retransmitted INVITE with the same 503 and absorbs the ACK, so none of them reaches
 * pjsua (no call is created). Stateless only if the transaction cannot be made. */
static void refuse_overloaded(RegistrarObject *r, pjsip_rx_data *rdata, refusal_t why) {
    r->n_overload[why]++;
    char value[16];
    snprintf(value, sizeof(value), "%u", r->retry_after);
    pj_str_t name = pj_str("Retry-After"), hvalue = pj_str(value), reason = pj_str("Service Unavailable");
    pjsip_hdr hdrs;
    pj_list_init(&hdrs);
    pjsip_generic_string_hdr *h = pjsip_generic_string_hdr_create(rdata->tp_info.pool, &name, &hvalue);
    pj_list_push_back(&hdrs, h);
    if (pjsip_endpt_respond(pjsua_get_pjsip_endpt(), NULL, rdata, 503, &reason, &hdrs, NULL, NULL) == PJ_SUCCESS)
        return;
    pjsip_tx_data *tdata = ss_reg_new_response(rdata, 503, "Service Unavailable");
    if (!tdata) return;
    pjsip_msg_add_hdr(tdata->msg, (pjsip_hdr *)pjsip_hdr_clone(tdata->pool, h));
    ss_reg_send_stateless(rdata, tdata);
}

/* Admits (PJ_FALSE: pjsua creates the call) or answers 503 (PJ_TRUE), for an INVITE the gate
 * classified; the classification is kept only for an admitted one. A trunk's call also takes a
 * token from the trunk's own call bucket (`calls`, `cps` a second, holding one second's worth),
 * checked first; that token is given back when the process-wide gate refuses the call. */
static pj_bool_t admit(RegistrarObject *r, pjsip_rx_data *rdata, const char *kind, const char *ref,
                       const char *extension, const char *group, token_bucket_t *calls, double cps) {
    refusal_t why;
    if (calls && !ss_reg_bucket_take(calls, cps, cps < 1.0 ? 1.0 : cps)) {
        refuse_overloaded(r, rdata, REFUSED_TRUNK_RATE);
        return PJ_TRUE;
    }
    if (overload_refusal(r, &why)) {
        if (calls && cps > 0) calls->tokens += 1.0;
        refuse_overloaded(r, rdata, why);
        return PJ_TRUE;
    }
    remember_classification(r, rdata, kind, ref, extension, group);
    r->n_invite_passed++;
    ss_tcpguard_trusted(rdata->tp_info.transport);
    return PJ_FALSE;
}

/* ---- SIP responses by status code ---------------------------------------------------------------- */

/* Runs before the transaction layer (it consumes responses); never consumes one itself. */
pj_bool_t ss_reg_count_on_rx_response(pjsip_rx_data *rdata) {
    RegistrarObject *r = ss_reg_the_registrar;
    int code = rdata->msg_info.msg ? rdata->msg_info.msg->line.status.code : 0;
    if (r && code > 0 && code < 700) __atomic_fetch_add(&r->responses_received[code], 1, __ATOMIC_RELAXED);
    return PJ_FALSE;
}

/* Runs among the last on the way out (priority just above the transport layer), so it counts
 * what is really sent: stateless answers, transaction responses and their retransmissions. */
pj_status_t ss_reg_count_on_tx_response(pjsip_tx_data *tdata) {
    RegistrarObject *r = ss_reg_the_registrar;
    int code = tdata->msg ? tdata->msg->line.status.code : 0;
    if (r && code > 0 && code < 700) __atomic_fetch_add(&r->responses_sent[code], 1, __ATOMIC_RELAXED);
    return PJ_SUCCESS;
}

/* ---- the INVITE gate, and the module's entry point --------------------------------------- */

static pj_bool_t handle_invite(RegistrarObject *r, pjsip_rx_data *rdata, source_slot_t *src, int trunk_address) {
    const trunk_t *t = match_trunk(r, rdata);
    if (t) {
        if (!ss_reg_filter_offer(rdata, t->codecs, t->srtp)) {
            ss_reg_respond(rdata, 488, "Not Acceptable Here");
            return PJ_TRUE;
        }
        trunk_t *row = &r->trunks[t->bucket_row];
        return admit(r, rdata, "trunk", t->ref, NULL, NULL, &row->calls, row->cps);
    }
    user_t *dyn_user = NULL;
    const aor_t *dyn = match_dynamic_trunk(r, rdata, &dyn_user);
    if (dyn) {
        if (!ss_reg_filter_offer(rdata, NULL, dyn_user->srtp)) {
            ss_reg_respond(rdata, 488, "Not Acceptable Here");
            return PJ_TRUE;
        }
        return admit(r, rdata, "extension", dyn->username, dyn->extension, dyn->group, &dyn_user->calls,
                     dyn_user->cps);
    }
    user_t *u = NULL;
    auth_result_t ar = ss_reg_verify_digest(r, rdata, 1, &u);
    if (ar == AUTH_OK) {
        if (!ss_reg_filter_offer(rdata, NULL, u->srtp)) {
            ss_reg_respond(rdata, 488, "Not Acceptable Here");
            return PJ_TRUE;
        }
        return admit(r, rdata, "extension", u->username, u->extension, u->group, NULL, 0);
    }
    /* Not the trunk's call (a phone behind its address, or a forgery): the address's own limit. */
    if (trunk_address && !ss_reg_trunk_limit_admits(r, rdata, src, TRUNK_REQUESTS)) return PJ_TRUE;
    if (ar == AUTH_BAD) {
        r->n_invite_refused++;
        ss_reg_respond(rdata, 403, "Forbidden");
        ss_reg_auth_failed(r, rdata, src, trunk_address, "INVITE digest rejected");
        return PJ_TRUE;
    }
    /* No credentials (or stale ones): challenge. Nothing unauthenticated is ever routed. */
    pjsip_tx_data *tdata = ss_reg_new_response(rdata, 407, NULL);
    if (!tdata) return PJ_TRUE;
    ss_reg_add_challenges(r, tdata, rdata, 1, ar == AUTH_STALE);
    r->n_invite_challenged++;
    ss_reg_send_stateless(rdata, tdata);
    if (ar == AUTH_NONE) ss_reg_security_event(r, "invite_challenged", rdata, "INVITE from an unknown source");
    return PJ_TRUE;
}

static int agent_refused(RegistrarObject *r, pjsip_rx_data *rdata) {
    if (!r->nblocked_agents) return 0;
    pjsip_generic_string_hdr *uah = (pjsip_generic_string_hdr *)pjsip_msg_find_hdr_by_name(
        rdata->msg_info.msg, &(pj_str_t){"User-Agent", 10}, NULL);
    if (!uah) return 0;
    char ua[256];
    snprintf(ua, sizeof(ua), "%.*s", (int)uah->hvalue.slen, uah->hvalue.ptr);
    for (char *p = ua; *p; p++) *p = (char)tolower((unsigned char)*p);
    for (int i = 0; i < r->nblocked_agents; i++)
        if (strstr(ua, r->blocked_agents[i])) return 1;
    return 0;
}

pj_bool_t ss_reg_on_rx_request(pjsip_rx_data *rdata) {
    RegistrarObject *r = ss_reg_the_registrar;
    if (!r) return PJ_FALSE;
    pjsip_method_e mid = rdata->msg_info.msg->line.req.method.id;
    /* In-dialog requests and ACKs belong to calls already admitted. */
    int initial = rdata->msg_info.to && rdata->msg_info.to->tag.slen == 0;
    if (!initial || mid == PJSIP_ACK_METHOD || mid == PJSIP_CANCEL_METHOD) return PJ_FALSE;

    source_slot_t *src = ss_reg_source_of(r, rdata->pkt_info.src_name);
    int trunk_address = ss_reg_is_trunk_address(r, rdata->pkt_info.src_name);
    if (!trunk_address && ss_reg_source_blocked(r, src)) {
        r->n_dropped++;
        r->n_security[SEC_DROPPED_BLOCKED]++;
        return PJ_TRUE; /* silently: a blocked scanner learns nothing */
    }
    if (!ss_reg_source_admit(r, src)) {
        if (!trunk_address) {
            /* Over the flood limit: the source is ignored for the block time, at once. */
            r->n_dropped++;
            r->n_security[SEC_BLOCKED_FLOOD]++;
            src->blocked_until = ss_monotonic_ms() + (pj_uint64_t)r->block_seconds * 1000;
            ss_reg_security_event(r, "flood_blocked", rdata, "request rate over the flood limit");
            return PJ_TRUE;
        }
        /* A trunk address is never blocked: its INVITEs meet the overload gate, the rest its own limits. */
        r->n_security[SEC_TRUNK_OVER_FLOOD_RATE]++;
        if (ss_reg_trunk_log_due(&src->flood_logged))
            ss_reg_security_event(r, "trunk_over_flood_rate", rdata,
                           "request rate from a trunk address over the flood limit: not blocked");
    }
    if (agent_refused(r, rdata)) {
        r->n_dropped++;
        r->n_security[SEC_DROPPED_USER_AGENT]++;
        ss_reg_security_event(r, "user_agent_refused", rdata, "User-Agent on the refusal list");
        return PJ_TRUE;
    }
    const char *malformed = NULL;
    if (ss_validate_request(rdata, &malformed, 0)) {
        /* Refused (400, 406, 420, 501, 513: malformed.c). From a trunk address the answers share
         * its request limit, so forged garbage makes softswitch send nothing much to the real trunk;
         * the log line is kept to one per source every 10 s (every refusal is counted). */
        if (!trunk_address || ss_reg_trunk_limit_admits(r, rdata, src, TRUNK_REQUESTS)) {
            ss_validate_request(rdata, &malformed, 1);
            if (ss_reg_trunk_log_due(&src->malformed_logged)) ss_reg_security_event(r, "malformed_request", rdata, malformed);
        }
        return PJ_TRUE;
    }
    if ((mid == PJSIP_REGISTER_METHOD || mid == PJSIP_INVITE_METHOD) && ss_reg_resend_cached(r, rdata)) return PJ_TRUE;
    if (mid == PJSIP_REGISTER_METHOD) {
        user_t *u = NULL;
        auth_result_t ar = ss_reg_verify_digest(r, rdata, 0, &u);
        /* A valid registration from a trunk address always passes (a dynamic trunk's refresh, a phone
         * behind the same address), and so does a right answer to a nonce gone stale (it gets a fresh
         * challenge): the nonce is bound to the address and sent there, so a forger who does not
         * receive its traffic can make neither. Other challenges and the failures are limited. */
        if (trunk_address && ar != AUTH_OK && ar != AUTH_STALE && !ss_reg_trunk_limit_admits(r, rdata, src, TRUNK_REQUESTS))
            return PJ_TRUE;
        ss_reg_handle_register(r, rdata, src, trunk_address, ar, u);
        return PJ_TRUE;
    }
    if (mid == PJSIP_INVITE_METHOD) return handle_invite(r, rdata, src, trunk_address);
    if (trunk_address &&
        !ss_reg_trunk_limit_admits(r, rdata, src, mid == PJSIP_OPTIONS_METHOD ? TRUNK_OPTIONS : TRUNK_REQUESTS))
        return PJ_TRUE;
    return PJ_FALSE;
}
