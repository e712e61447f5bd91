/* Private to the registrar (native/reg_*.c): its tables, its state and the functions its files
 * share. Nothing outside the registrar includes this; the module's public entry points are in
 * softswitch_native.h.
 *
 * Registrar and the SIP edge's gate, as a pjsip module on the pjsua endpoint.
 *
 * pjsua has no registrar: an incoming REGISTER is dropped unanswered. This module sits at
 * priority 63, after the transaction, UA and invite layers and before pjsua's own modules
 * (64), so it sees every request first:
 *   - REGISTER: answered here, statelessly (a stateful answer holds ~12 KB for 32 s), with
 *     digest auth (MD5 and SHA-256, qop=auth), stateless nonces with a lifetime, an nc replay
 *     guard, and the RFC 3261 section 10.3 binding rules.
 *   - initial INVITE: passed to pjsua only when it comes from a fixed-address trunk or carries
 *     valid extension credentials; otherwise challenged (407) or refused. Never routed blindly.
 *   - everything from a throttled source or a refused User-Agent: dropped.
 *   - a trunk address (a fixed trunk's, or where a dynamic trunk registered) is never throttled:
 *     its source address is trivial to forge over UDP, and blocking it would stop the trunk's
 *     calls. What does not belong to the trunk (OPTIONS, REGISTER challenges and failures, other
 *     methods, INVITEs that match no trunk) has its own per-address limits instead; the trunk's
 *     INVITEs meet only the overload gate and the trunk's own call rate (503 with Retry-After).
 *   - overload: an INVITE the gate would admit is answered 503 with Retry-After (statefully, so
 *     its retransmissions and ACK are absorbed) while Python says the process is overloaded
 *     (CPU, loop lag), live inbound calls are at the limit, or the new-call token bucket is empty.
 * A second small module counts every SIP response sent and received, by status code.
 * Python configures users, trunks and policy, and drains events (registrations, expiries,
 * security refusals) from the UA loop. All of this runs on the UA thread (pjsua is set up with
 * no worker threads), so the tables need no locks; Python calls arrive on that same thread.
 */
#ifndef SS_REGISTRAR_INTERNAL_H
#define SS_REGISTRAR_INTERNAL_H

#include "softswitch_native.h"

#include <ctype.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define MAX_CONTACTS_PER_AOR 10
#define MAX_EVENTS 65536
#define NONCE_SLOTS 16384
#define SOURCE_SLOTS 8192
#define CLASSIFY_SLOTS 4096

#define TRUNK_LOG_INTERVAL_MS 10000

typedef enum { ALG_MD5 = 0, ALG_SHA256 = 1 } digest_alg_t;
typedef enum { TRUNK_OPTIONS, TRUNK_REQUESTS } trunk_limit_t;
typedef enum { AUTH_NONE, AUTH_OK, AUTH_BAD, AUTH_STALE } auth_result_t;

/* ---- tables ------------------------------------------------------------------------------ */

/* A token bucket: `rate` tokens a second, holding at most `burst`; full when first used. */
typedef struct token_bucket {
    double tokens;
    pj_uint64_t at; /* monotonic ms of the last take; 0 = never used */
} token_bucket_t;

typedef struct user {
    struct user *next;
    char *username;   /* authorization username (after prefix stripping) */
    char *extension;
    char *group;      /* the extension-user set it came from */
    char ha1_md5[33];
    char ha1_sha256[65];
    int srtp;         /* srtp_use_t of the set (extension_sets.<set>.srtp, or a dynamic trunk's) */
    double cps;       /* a dynamic trunk's max_calls_per_second; 0 = no limit */
    token_bucket_t calls;
} user_t;

typedef struct binding {
    char *contact;        /* Contact URI as the phone sent it */
    char *call_id;
    pj_uint32_t cseq;
    pj_uint64_t expires_at;   /* monotonic ms */
    pj_uint64_t registered_at; /* wall ms */
    int q1000;
    char source_ip[PJ_INET6_ADDRSTRLEN];
    int source_port;
    char transport[8];
    char *user_agent;
    int nat;              /* Contact host:port differs from where the REGISTER came from */
    ss_ka_binding_t ka;   /* keep-alives (keepalive.c) */
} binding_t;

typedef struct aor {
    struct aor *next;
    char *username;
    char *extension;
    char *group;
    int count;
    binding_t contacts[MAX_CONTACTS_PER_AOR];
} aor_t;

typedef struct trunk {
    char *ref;
    char *ip;
    int port;      /* 0 = any */
    char *codecs;  /* ",pcmu,pcma,telephone-event," allow-list for offers from this trunk; NULL = all */
    int srtp;      /* srtp_use_t for offers from this trunk */
    double cps;    /* new calls a second from this trunk (trunks.<name>.max_calls_per_second); 0 = no limit */
    int bucket_row; /* the row whose `calls` bucket this trunk uses: its token and address rows share one */
    token_bucket_t calls;
} trunk_t;

/* What the gate does to an offer's SRTP (SDES crypto lines), per source. SRTP_UNTOUCHED while no
 * source allows SRTP (pjsua's account then refuses it by itself, as before SRTP existed). */
typedef enum { SRTP_UNTOUCHED = 0, SRTP_DISABLED = 1, SRTP_OPTIONAL = 2, SRTP_MANDATORY = 3 } srtp_use_t;

typedef struct nonce_slot {
    pj_uint32_t key;        /* hash of the nonce */
    pj_uint64_t seen_ms;
    unsigned long max_nc;
    pj_uint32_t last_branch;
} nonce_slot_t;

typedef struct source_slot {
    char ip[PJ_INET6_ADDRSTRLEN];
    pj_uint64_t window_start;
    unsigned failures;
    pj_uint64_t blocked_until;
    double tokens;
    pj_uint64_t tokens_at;
    pj_uint64_t last_seen;
    /* A trunk address's own limits (it is never blocked), and when each kind of its security
     * events was last logged: a forged flood must not flood the log either. */
    token_bucket_t trunk_options, trunk_requests;
    pj_uint64_t options_logged, requests_logged, flood_logged, malformed_logged, failures_quiet_until;
} source_slot_t;

typedef struct classify_slot {
    char *call_id;       /* malloc'd; its first 128 bytes, as pjsua reports it (a longer one was refused) */
    pj_uint64_t at;
    char kind[12];       /* trunk | extension */
    char *ref;           /* trunk ref, or extension username */
    char *extension;
    char *group;
} classify_slot_t;

#define RETRANS_SLOTS 2048

typedef struct retrans_slot {
    pj_uint32_t key;
    pj_uint64_t at;
    pjsip_tx_data *tdata;
} retrans_slot_t;

typedef struct event {
    char kind[16];
    PyObject *data; /* a dict, built on the UA thread, which holds the GIL when it drains */
} event_t;

/* ---- the registrar state ------------------------------------------------------------------ */

/* What the edge decided about a request, counted for /metrics (softswitch_security_decisions_total). */
typedef enum {
    SEC_BLOCKED_AUTH_FAILURES, /* a non-trunk source blocked at auth_failure_limit */
    SEC_BLOCKED_FLOOD,         /* a non-trunk source blocked over the flood rate */
    SEC_DROPPED_BLOCKED,       /* a request from a blocked source, dropped */
    SEC_DROPPED_USER_AGENT,    /* a request with a refused User-Agent, dropped */
    SEC_TRUNK_AUTH_FAILURE,    /* wrong credentials from a trunk address: 403, never a block */
    SEC_TRUNK_NOT_BLOCKED,     /* a trunk address reached auth_failure_limit and stayed unblocked */
    SEC_TRUNK_OVER_FLOOD_RATE, /* a request from a trunk address over the flood rate, let through */
    SEC_TRUNK_OPTIONS_DROPPED, /* OPTIONS from a trunk address over trunk_options_per_second */
    SEC_TRUNK_REQUESTS_DROPPED, /* other non-call requests from a trunk address over trunk_requests_per_second */
    SEC_DECISIONS
} security_decision_t;

typedef struct {
    PyObject_HEAD
    int installed;
    pjsip_module mod;
    pjsip_module nat_mod;
    char realm[128];
    unsigned min_expires, max_expires, default_expires, nonce_ttl;
    unsigned fail_limit, fail_window, block_seconds;
    double flood_rate, flood_burst;
    double trunk_options_rate, trunk_requests_rate; /* per trunk address; 0 = no limit */
    int challenge_sha256, challenge_md5, sha256_first;
    unsigned char secret[32];
    user_t *users[1024];
    aor_t *aors[4096];
    trunk_t *trunks;
    int ntrunks;
    int ndynamic_trunks; /* users whose group is "trunk:<name>": when 0, no binding makes a trunk address */
    char **blocked_agents;
    int nblocked_agents;
    nonce_slot_t nonces[NONCE_SLOTS];
    source_slot_t sources[SOURCE_SLOTS];
    classify_slot_t classified[CLASSIFY_SLOTS];
    retrans_slot_t retrans[RETRANS_SLOTS];
    PyObject *events; /* list */
    long nat_bindings; /* live bindings behind NAT: when 0, no Contact needs fixing */
    ss_ka_t keepalive;  /* keep-alives to bindings: policy, OPTIONS in flight, counters */
    /* Overload control (limits of 0 are off). live_inbound is set by Python every loop turn;
     * passed_since_sync counts the INVITEs admitted since, which have no leg in that count yet. */
    unsigned max_concurrent, retry_after;
    double cps, cps_tokens;
    pj_uint64_t cps_at;
    int overloaded; /* OVERLOAD_NONE, OVERLOAD_CPU or OVERLOAD_LOOP_LAG */
    long live_inbound, passed_since_sync;
    unsigned long long n_overload[5]; /* by refusal_t */
    unsigned long long n_security[SEC_DECISIONS];
    /* SIP responses by status code, sent and received (every transmission, retransmissions too). */
    pjsip_module count_mod;
    unsigned long long responses_sent[700], responses_received[700];
    unsigned long long n_register, n_register_ok, n_challenges, n_auth_failures, n_dropped, n_invite_passed,
        n_invite_challenged, n_invite_refused, n_423, n_500, n_retransmissions;
} RegistrarObject;

typedef enum { OVERLOAD_NONE = 0, OVERLOAD_CPU = 1, OVERLOAD_LOOP_LAG = 2 } overload_t;
typedef enum {
    REFUSED_CONCURRENT = 0,
    REFUSED_RATE = 1,
    REFUSED_CPU = 2,
    REFUSED_LOOP_LAG = 3,
    REFUSED_TRUNK_RATE = 4 /* the calling trunk's own max_calls_per_second */
} refusal_t;

/* pjsip callbacks run inside libHandleEvents, which the SWIG binding calls with the GIL
 * released: take it around anything that touches Python objects. */
#define WITH_GIL(block)                                     \
    do {                                                    \
        PyGILState_STATE _g = PyGILState_Ensure();          \
        block;                                              \
        PyGILState_Release(_g);                             \
    } while (0)

/* The module callbacks find their registrar through this pointer: one registrar per process,
 * like the one pjsua endpoint it is attached to (pjsip callbacks carry no user data). Defined in
 * reg_common.c. */
extern RegistrarObject *ss_reg_the_registrar;

/* reg_common.c (helpers, events, users, responses) */
pj_uint64_t ss_reg_wall_ms(void);
pj_uint32_t ss_reg_fnv1a(const char *s, size_t n);
void ss_reg_ascii_only(char *s);
char *ss_reg_dup_pjstr(const pj_str_t *s);
int ss_reg_pjstr_eq(const pj_str_t *a, const char *b);
void ss_reg_digest_hex(digest_alg_t alg, char *out, const char *const *parts, const size_t *lens, int nparts);
void ss_reg_push_event(RegistrarObject *r, const char *kind, PyObject *data);
void ss_reg_security_event(RegistrarObject *r, const char *what, pjsip_rx_data *rdata, const char *detail);
user_t *ss_reg_find_user(RegistrarObject *r, const pj_str_t *username);
void ss_reg_free_users(RegistrarObject *r);
int ss_reg_resend_cached(RegistrarObject *r, pjsip_rx_data *rdata);
void ss_reg_free_retrans(RegistrarObject *r);
pj_status_t ss_reg_send_stateless(pjsip_rx_data *rdata, pjsip_tx_data *tdata);
pjsip_tx_data *ss_reg_new_response(pjsip_rx_data *rdata, int code, const char *reason);
void ss_reg_respond(pjsip_rx_data *rdata, int code, const char *reason);

/* reg_digest.c (digest auth and nonces) */
void ss_reg_add_challenges(RegistrarObject *r, pjsip_tx_data *tdata, pjsip_rx_data *rdata, int proxy, int stale);
auth_result_t ss_reg_verify_digest(RegistrarObject *r, pjsip_rx_data *rdata, int proxy, user_t **user_out);

/* reg_sources.c (sources: throttling, block list, flood, trunk-address limits) */
source_slot_t *ss_reg_source_of(RegistrarObject *r, const char *ip);
int ss_reg_source_blocked(RegistrarObject *r, source_slot_t *s);
int ss_reg_source_admit(RegistrarObject *r, source_slot_t *s);
int ss_reg_trunk_log_due(pj_uint64_t *logged);
int ss_reg_bucket_take(token_bucket_t *b, double rate, double burst);
void ss_reg_auth_failed(RegistrarObject *r, pjsip_rx_data *rdata, source_slot_t *s, int trunk_address,
                        const char *what);
int ss_reg_is_trunk_address(RegistrarObject *r, const char *ip);
int ss_reg_trunk_limit_admits(RegistrarObject *r, pjsip_rx_data *rdata, source_slot_t *s, trunk_limit_t which);

/* reg_bindings.c (bindings and REGISTER) */
aor_t *ss_reg_find_aor(RegistrarObject *r, const char *username, int create, user_t *u);
void ss_reg_binding_free(binding_t *b);
PyObject *ss_reg_binding_dict(aor_t *a, binding_t *b);
void ss_reg_remove_binding(RegistrarObject *r, aor_t *a, int i, const char *why);
void ss_reg_handle_register(RegistrarObject *r, pjsip_rx_data *rdata, source_slot_t *src, int trunk_address,
                            auth_result_t ar, user_t *u);

/* reg_keepalive.c (keep-alive glue) */
void ss_reg_keepalive_dict_fields(PyObject *d, const binding_t *b);
void ss_reg_keepalive_on_register(RegistrarObject *r, aor_t *a, binding_t *b, int is_new);
void ss_reg_keepalive_target(const binding_t *b, char *out, size_t len);
int ss_reg_keepalive_wanted(RegistrarObject *r, const binding_t *b);
void ss_reg_keepalive_stats(RegistrarObject *r, PyObject *d);

/* reg_sanitize.c (rewriting: NAT Contact, INFO DTMF, SDP) */
pj_bool_t ss_reg_nat_on_rx(pjsip_rx_data *rdata);
int ss_reg_filter_offer(pjsip_rx_data *rdata, const char *allowed, int srtp);

/* reg_admission.c (the INVITE gate, overload, counters, dispatch) */
pj_bool_t ss_reg_count_on_rx_response(pjsip_rx_data *rdata);
pj_status_t ss_reg_count_on_tx_response(pjsip_tx_data *tdata);
pj_bool_t ss_reg_on_rx_request(pjsip_rx_data *rdata);

#endif
