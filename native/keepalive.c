/* Keep-alives to registered bindings: what keeps a phone behind NAT reachable.
 *
 * A NAT forgets a UDP mapping after 30 s to a few minutes of silence, and then INVITEs to the
 * phone's source address are lost. The registrar's sweep (Registrar.keepalive in reg_python.c,
 * with reg_keepalive.c; driven from the UA loop) asks this file to send, per binding:
 *   - OPTIONS: a request through our own transaction user, to the binding's source address over
 *     its transport (UDP from the SIP port, TCP/TLS over the phone's own connection). Any final
 *     response from the phone proves the path works; a transport error, or no answer within the
 *     answer time (pjsip's Timer F is 32 s, so we end the transaction ourselves), is a failure.
 *   - CRLF: a double CRLF (RFC 5626 section 3.5.1 for connections; on UDP the datagram refreshes
 *     the pinhole). Nothing answers it, so it proves nothing about reachability.
 * Everything runs on the UA thread, like the registrar's tables it reports to.
 */
#include "softswitch_native.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

struct ss_ka_probe {
    ss_ka_probe_t *next;
    char username[128];
    pj_uint64_t binding_id;
    pjsip_transaction *tsx; /* NULL once the transaction is destroyed */
    pj_uint64_t deadline;   /* monotonic ms */
    int reported;
};

/* The transaction callbacks find the keep-alive state through this pointer: one per process,
 * like the registrar that owns it. The module is static, not in the registrar object: a
 * transaction still running at shutdown keeps pointing at its transaction user after the
 * registrar is closed and freed, and pjsip calls it when libDestroy ends the transaction. */
static ss_ka_t *the_keepalive;
static pjsip_module ka_mod = {NULL, NULL, {"mod-softswitch-keepalive", 24}, -1, PJSIP_MOD_PRIORITY_APPLICATION};

static void report(ss_ka_t *ka, ss_ka_probe_t *p, int answered, int code) {
    if (p->reported) return;
    p->reported = 1;
    if (answered) ka->answered++;
    else ka->failed++;
    ss_registrar_keepalive_result(p->username, p->binding_id, answered, code);
}

static void unlink_probe(ss_ka_t *ka, ss_ka_probe_t *p) {
    for (ss_ka_probe_t **it = &ka->probes; *it; it = &(*it)->next)
        if (*it == p) {
            *it = p->next;
            return;
        }
}

static void on_tsx_state(pjsip_transaction *tsx, pjsip_event *event) {
    ss_ka_t *ka = the_keepalive;
    if (!ka || ka_mod.id < 0) return; /* closed: the probes are gone */
    ss_ka_probe_t *p = (ss_ka_probe_t *)tsx->mod_data[ka_mod.id];
    if (!p) return;
    if (tsx->state >= PJSIP_TSX_STATE_COMPLETED && !p->reported) {
        /* Only a response from the far end counts: a timeout, our own termination and transport
         * errors all arrive with other event types (and a locally made 408 or 503). */
        int answered = event->type == PJSIP_EVENT_TSX_STATE && event->body.tsx_state.type == PJSIP_EVENT_RX_MSG;
        report(ka, p, answered, tsx->status_code);
    }
    if (tsx->state == PJSIP_TSX_STATE_DESTROYED) {
        tsx->mod_data[ka_mod.id] = NULL;
        p->tsx = NULL;
        unlink_probe(ka, p);
        free(p);
    }
}

int ss_ka_install(ss_ka_t *ka) {
    if (ka->installed) return 0;
    ka_mod.on_tsx_state = &on_tsx_state;
    pj_status_t st = pjsip_endpt_register_module(pjsua_get_pjsip_endpt(), &ka_mod);
    if (st != PJ_SUCCESS) {
        ss_raise_pj("pjsip_endpt_register_module (keepalive)", st);
        return -1;
    }
    ka->installed = 1;
    the_keepalive = ka;
    return 0;
}

void ss_ka_uninstall(ss_ka_t *ka) {
    if (!ka->installed) return;
    /* Probes still in flight: their transactions are destroyed with the endpoint and must not
     * call back into a registrar that is gone. */
    for (ss_ka_probe_t *p = ka->probes, *next; p; p = next) {
        next = p->next;
        if (p->tsx && ka_mod.id >= 0) p->tsx->mod_data[ka_mod.id] = NULL;
        free(p);
    }
    ka->probes = NULL;
    if (the_keepalive == ka) the_keepalive = NULL;
    if (pjsua_get_state() != PJSUA_STATE_NULL) pjsip_endpt_unregister_module(pjsua_get_pjsip_endpt(), &ka_mod);
    ka->installed = 0;
}

pj_status_t ss_ka_send_options(ss_ka_t *ka, const char *username, pj_uint64_t binding_id, const char *target_uri,
                               const char *to_uri, unsigned answer_ms) {
    if (!ka->installed) return PJ_EINVALIDOP;
    pjsip_endpoint *endpt = pjsua_get_pjsip_endpt();
    pj_str_t target = pj_str((char *)target_uri), from = pj_str(ka->from_uri), to = pj_str((char *)to_uri);
    pjsip_tx_data *tdata = NULL;
    pj_status_t st = pjsip_endpt_create_request(endpt, &pjsip_options_method, &target, &from, &to, NULL, NULL, -1,
                                                NULL, &tdata);
    if (st != PJ_SUCCESS) return st;
    pjsip_transaction *tsx = NULL;
    st = pjsip_tsx_create_uac(&ka_mod, tdata, &tsx);
    if (st != PJ_SUCCESS) {
        pjsip_tx_data_dec_ref(tdata);
        return st;
    }
    ss_ka_probe_t *p = calloc(1, sizeof(*p));
    if (!p) {
        pjsip_tsx_terminate(tsx, PJSIP_SC_INTERNAL_SERVER_ERROR); /* the request goes with it */
        return PJ_ENOMEM;
    }
    snprintf(p->username, sizeof(p->username), "%s", username);
    p->binding_id = binding_id;
    p->tsx = tsx;
    p->deadline = ss_monotonic_ms() + answer_ms;
    p->next = ka->probes;
    ka->probes = p;
    tsx->mod_data[ka_mod.id] = p;
    ka->sent++;
    st = pjsip_tsx_send_msg(tsx, NULL);
    if (st != PJ_SUCCESS) {
        pjsip_tx_data_dec_ref(tdata);
        /* The probe may be gone already (the transaction was destroyed inside the send); if it
         * is still listed, it failed now and its transaction is ended. */
        for (ss_ka_probe_t *it = ka->probes; it; it = it->next)
            if (it == p) {
                report(ka, p, 0, PJSIP_SC_SERVICE_UNAVAILABLE);
                if (p->tsx && p->tsx->state < PJSIP_TSX_STATE_TERMINATED)
                    pjsip_tsx_terminate(p->tsx, PJSIP_SC_SERVICE_UNAVAILABLE);
                break;
            }
        return PJ_SUCCESS; /* sent and failed: the failure is counted and reported */
    }
    return PJ_SUCCESS;
}

pj_status_t ss_ka_send_crlf(ss_ka_t *ka, const char *ip, int port, const char *transport) {
    pj_str_t name = pj_str((char *)transport), host = pj_str((char *)ip);
    pjsip_transport_type_e type = pjsip_transport_get_type_from_name(&name);
    if (type == PJSIP_TRANSPORT_UNSPECIFIED) return PJ_EINVAL;
    pj_sockaddr addr;
    pj_status_t st = pj_sockaddr_init(strchr(ip, ':') ? pj_AF_INET6() : pj_AF_INET(), &addr, &host, (pj_uint16_t)port);
    if (st != PJ_SUCCESS) return st;
    static const char crlf[] = "\r\n\r\n";
    st = pjsip_tpmgr_send_raw(pjsip_endpt_get_tpmgr(pjsua_get_pjsip_endpt()), type, NULL, NULL, crlf, 4, &addr,
                              pj_sockaddr_get_len(&addr), NULL, NULL);
    if (st == PJ_EPENDING) st = PJ_SUCCESS;
    if (st == PJ_SUCCESS) ka->crlf_sent++;
    else ka->crlf_failed++;
    return st;
}

void ss_ka_expire_probes(ss_ka_t *ka) {
    if (!ka->probes) return;
    pj_uint64_t now = ss_monotonic_ms();
    for (ss_ka_probe_t *p = ka->probes, *next; p; p = next) {
        next = p->next; /* terminating may destroy (and free) p, never another probe */
        if (p->reported || now < p->deadline) continue;
        if (p->tsx && p->tsx->state < PJSIP_TSX_STATE_TERMINATED) pjsip_tsx_terminate(p->tsx, PJSIP_SC_REQUEST_TIMEOUT);
        else report(ka, p, 0, PJSIP_SC_REQUEST_TIMEOUT);
    }
}
