/* Registrar and the SIP edge's gate, as a pjsip module on the pjsua endpoint.
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

/* ---- small helpers ----------------------------------------------------------------------- */

static pj_uint64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (pj_uint64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static pj_uint64_t wall_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (pj_uint64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static pj_uint32_t fnv1a(const char *s, size_t n) {
    pj_uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

/* Strings that reach Python as str must be valid UTF-8: bytes outside printable ASCII become '?'
 * (a Latin-1 User-Agent made every later bindings() call raise UnicodeDecodeError). */
static void ascii_only(char *s) {
    for (; s && *s; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s > 0x7e) *s = '?';
}

static char *dup_pjstr(const pj_str_t *s) {
    char *out = malloc((size_t)s->slen + 1);
    if (out) {
        memcpy(out, s->ptr, (size_t)s->slen);
        out[s->slen] = 0;
        ascii_only(out);
    }
    return out;
}

static int pjstr_eq(const pj_str_t *a, const char *b) {
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

typedef enum { ALG_MD5 = 0, ALG_SHA256 = 1 } digest_alg_t;

/* hex(H(parts joined by ':')) into out (33 or 65 bytes). */
static void digest_hex(digest_alg_t alg, char *out, const char *const *parts, const size_t *lens, int nparts) {
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

static const char *const SECURITY_DECISION_NAMES[SEC_DECISIONS] = {
    "blocked_auth_failures", "blocked_flood",     "dropped_blocked_source", "dropped_user_agent",
    "trunk_auth_failure",    "trunk_not_blocked", "trunk_over_flood_rate",  "trunk_options_dropped",
    "trunk_requests_dropped"};

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

/* The module callbacks find their registrar through this pointer: one registrar per process,
 * like the one pjsua endpoint it is attached to. */
static RegistrarObject *the_registrar;

static void push_event(RegistrarObject *r, const char *kind, PyObject *data) {
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

/* pjsip callbacks run inside libHandleEvents, which the SWIG binding calls with the GIL
 * released: take it around anything that touches Python objects. */
#define WITH_GIL(block)                                     \
    do {                                                    \
        PyGILState_STATE _g = PyGILState_Ensure();          \
        block;                                              \
        PyGILState_Release(_g);                             \
    } while (0)

static void security_event(RegistrarObject *r, const char *what, pjsip_rx_data *rdata, const char *detail) {
    char ua[128] = "";
    pjsip_generic_string_hdr *uah = (pjsip_generic_string_hdr *)pjsip_msg_find_hdr_by_name(
        rdata->msg_info.msg, &(pj_str_t){"User-Agent", 10}, NULL);
    if (uah) snprintf(ua, sizeof(ua), "%.*s", (int)uah->hvalue.slen, uah->hvalue.ptr);
    ascii_only(ua);
    const pjsip_method *m = &rdata->msg_info.msg->line.req.method;
    WITH_GIL(push_event(r, "security",
                        Py_BuildValue("{s:s,s:s,s:i,s:s,s:s#,s:s,s:s}", "event", what, "source_ip",
                                      rdata->pkt_info.src_name, "source_port", rdata->pkt_info.src_port,
                                      "transport", rdata->tp_info.transport->type_name, "method",
                                      m->name.ptr, (Py_ssize_t)m->name.slen, "user_agent", ua, "detail",
                                      detail ? detail : "")));
}

/* ---- users ---------------------------------------------------------------------------------- */

static user_t *find_user(RegistrarObject *r, const pj_str_t *username) {
    pj_uint32_t h = fnv1a(username->ptr, (size_t)username->slen) % 1024;
    for (user_t *u = r->users[h]; u; u = u->next)
        if (pjstr_eq(username, u->username)) return u;
    return NULL;
}

static void free_users(RegistrarObject *r) {
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

/* ---- nonces: stateless, "<ts hex>.<hmac hex>", bound to the source address ------------------- */

static void nonce_mac(RegistrarObject *r, const char *ts_hex, const char *src_ip, char out[33]) {
    const char *parts[3] = {(const char *)r->secret, ts_hex, src_ip};
    size_t lens[3] = {sizeof(r->secret), strlen(ts_hex), strlen(src_ip)};
    digest_hex(ALG_MD5, out, parts, lens, 3);
}

/* "<seconds hex><8 hex unique>.<mac>": unique per challenge, so each nonce has its own nc. */
static void make_nonce(RegistrarObject *r, const char *src_ip, char out[80]) {
    static pj_uint32_t counter;
    char ts[32], mac[33];
    snprintf(ts, sizeof(ts), "%llx%08x", (unsigned long long)(wall_ms() / 1000), ++counter ^ pj_rand());
    nonce_mac(r, ts, src_ip, mac);
    snprintf(out, 80, "%s.%s", ts, mac);
}

/* 1 = valid and fresh, 0 = forged/foreign, -1 = genuine but expired (answer stale=true). */
static int check_nonce(RegistrarObject *r, const pj_str_t *nonce, const char *src_ip) {
    char buf[80], mac[33];
    if (nonce->slen <= 0 || nonce->slen >= (pj_ssize_t)sizeof(buf)) return 0;
    memcpy(buf, nonce->ptr, (size_t)nonce->slen);
    buf[nonce->slen] = 0;
    char *dot = strchr(buf, '.');
    if (!dot) return 0;
    *dot = 0;
    nonce_mac(r, buf, src_ip, mac);
    if (strcmp(mac, dot + 1) != 0) return 0;
    if (strlen(buf) <= 8) return 0;
    buf[strlen(buf) - 8] = 0; /* drop the unique part: the rest is the time */
    unsigned long long ts = strtoull(buf, NULL, 16);
    unsigned long long now = wall_ms() / 1000;
    if (ts > now + 5 || now - ts > r->nonce_ttl) return -1;
    return 1;
}

/* nc must grow for each nonce; a retransmission (same Via branch) may repeat it. */
static int nc_fresh(RegistrarObject *r, const pj_str_t *nonce, unsigned long nc, pj_uint32_t branch) {
    pj_uint32_t key = fnv1a(nonce->ptr, (size_t)nonce->slen);
    pj_uint64_t now = now_ms();
    nonce_slot_t *s = &r->nonces[key % NONCE_SLOTS];
    if (s->key != key || now - s->seen_ms > (pj_uint64_t)r->nonce_ttl * 1000 + 60000) {
        s->key = key;
        s->max_nc = nc;
        s->last_branch = branch;
        s->seen_ms = now;
        return 1;
    }
    s->seen_ms = now;
    if (nc > s->max_nc) {
        s->max_nc = nc;
        s->last_branch = branch;
        return 1;
    }
    return nc == s->max_nc && branch == s->last_branch;
}

/* ---- sources: auth-failure throttling and flood control ---------------------------------- */

static source_slot_t *source_of(RegistrarObject *r, const char *ip) {
    pj_uint32_t h = fnv1a(ip, strlen(ip));
    pj_uint64_t now = now_ms();
    for (int probe = 0; probe < 8; probe++) {
        source_slot_t *s = &r->sources[(h + probe) % SOURCE_SLOTS];
        if (strcmp(s->ip, ip) == 0) {
            s->last_seen = now;
            return s;
        }
        if (!s->ip[0] || (now - s->last_seen > 600000 && s->blocked_until < now)) {
            memset(s, 0, sizeof(*s));
            snprintf(s->ip, sizeof(s->ip), "%s", ip);
            s->tokens = r->flood_burst;
            s->tokens_at = now;
            s->last_seen = now;
            return s;
        }
    }
    /* Table crowded: reuse the home slot (an attacker cannot evict a blocked entry early). */
    source_slot_t *s = &r->sources[h % SOURCE_SLOTS];
    if (s->blocked_until > now) return s;
    memset(s, 0, sizeof(*s));
    snprintf(s->ip, sizeof(s->ip), "%s", ip);
    s->tokens = r->flood_burst;
    s->tokens_at = s->last_seen = now;
    return s;
}

static int source_blocked(RegistrarObject *r, source_slot_t *s) { return s->blocked_until > now_ms(); }

/* Token bucket per source: 0 when this request is over the flood limit. */
static int source_admit(RegistrarObject *r, source_slot_t *s) {
    if (r->flood_rate <= 0) return 1;
    pj_uint64_t now = now_ms();
    s->tokens += (double)(now - s->tokens_at) / 1000.0 * r->flood_rate;
    if (s->tokens > r->flood_burst) s->tokens = r->flood_burst;
    s->tokens_at = now;
    if (s->tokens < 1.0) return 0;
    s->tokens -= 1.0;
    return 1;
}

/* A trunk address's security events of one kind are logged at most this often (every one is counted). */
#define TRUNK_LOG_INTERVAL_MS 10000

static int trunk_log_due(pj_uint64_t *logged) {
    pj_uint64_t now = now_ms();
    if (*logged && now - *logged < TRUNK_LOG_INTERVAL_MS) return 0;
    *logged = now;
    return 1;
}

/* Takes a token from `b`: 0 when it is empty (a rate of 0 is no limit). */
static int bucket_take(token_bucket_t *b, double rate, double burst) {
    if (rate <= 0) return 1;
    pj_uint64_t now = now_ms();
    b->tokens = b->at ? b->tokens + (double)(now - b->at) / 1000.0 * rate : burst;
    if (b->tokens > burst) b->tokens = burst;
    b->at = now;
    if (b->tokens < 1.0) return 0;
    b->tokens -= 1.0;
    return 1;
}

/* Counts one auth failure in the source's window; 1 when it reaches auth_failure_limit (the
 * count then starts again). */
static int failure_limit_reached(RegistrarObject *r, source_slot_t *s) {
    pj_uint64_t now = now_ms();
    if (now - s->window_start > (pj_uint64_t)r->fail_window * 1000) {
        s->window_start = now;
        s->failures = 0;
    }
    s->failures++;
    if (r->fail_limit && s->failures >= r->fail_limit) {
        s->failures = 0;
        return 1;
    }
    return 0;
}

/* An auth failure (the caller answered 403). A source that is no trunk address is blocked at the
 * limit, as a password cracker should be. A trunk address never is: anyone can send a wrong
 * password with the trunk's address as source, and a block would silence the trunk's calls. Each
 * failure is counted; they are logged as from any source up to the limit, which is logged as the
 * block it did not cause, and then not again until the failure window has passed. */
static void auth_failed(RegistrarObject *r, pjsip_rx_data *rdata, source_slot_t *s, int trunk_address,
                        const char *what) {
    r->n_auth_failures++;
    char detail[160];
    if (!trunk_address) {
        int blocked = failure_limit_reached(r, s);
        if (blocked) {
            s->blocked_until = now_ms() + (pj_uint64_t)r->block_seconds * 1000;
            r->n_security[SEC_BLOCKED_AUTH_FAILURES]++;
        }
        security_event(r, blocked ? "auth_failure_blocked" : "auth_failure", rdata, what);
        return;
    }
    r->n_security[SEC_TRUNK_AUTH_FAILURE]++;
    int at_limit = failure_limit_reached(r, s);
    if (at_limit) r->n_security[SEC_TRUNK_NOT_BLOCKED]++;
    pj_uint64_t now = now_ms();
    if (now < s->failures_quiet_until) return;
    if (at_limit) s->failures_quiet_until = now + (pj_uint64_t)r->fail_window * 1000;
    snprintf(detail, sizeof(detail), "%s; %s", what,
             at_limit ? "auth_failure_limit reached from a trunk address: not blocked, its calls go on"
                      : "from a trunk address: never blocked");
    security_event(r, at_limit ? "trunk_auth_failure_limit" : "trunk_auth_failure", rdata, detail);
}

/* ---- responses --------------------------------------------------------------------------- */

static void add_challenges(RegistrarObject *r, pjsip_tx_data *tdata, pjsip_rx_data *rdata, int proxy, int stale) {
    char nonce[80];
    make_nonce(r, rdata->pkt_info.src_name, nonce);
    const char *algs[2];
    int n = 0;
    if (r->sha256_first) {
        if (r->challenge_sha256) algs[n++] = "SHA-256";
        if (r->challenge_md5) algs[n++] = "MD5";
    } else {
        if (r->challenge_md5) algs[n++] = "MD5";
        if (r->challenge_sha256) algs[n++] = "SHA-256";
    }
    for (int i = 0; i < n; i++) {
        pjsip_www_authenticate_hdr *h = proxy ? pjsip_proxy_authenticate_hdr_create(tdata->pool)
                                              : pjsip_www_authenticate_hdr_create(tdata->pool);
        pj_strdup2(tdata->pool, &h->scheme, "Digest");
        pj_strdup2(tdata->pool, &h->challenge.digest.realm, r->realm);
        pj_strdup2(tdata->pool, &h->challenge.digest.nonce, nonce);
        pj_strdup2(tdata->pool, &h->challenge.digest.algorithm, algs[i]);
        pj_strdup2(tdata->pool, &h->challenge.digest.qop, "auth");
        h->challenge.digest.stale = stale;
        pjsip_msg_add_hdr(tdata->msg, (pjsip_hdr *)h);
    }
}

/* For malformed.c: the challenge of add_challenges as raw header lines, for a REGISTER pjsip could
 * not parse (credentials in an unknown scheme are no credentials, RFC 4475 3.3.7). */
size_t ss_registrar_challenge_lines(const char *src_ip, char *buf, size_t size) {
    RegistrarObject *r = the_registrar;
    if (!r || !size) return 0;
    char nonce[80];
    make_nonce(r, src_ip, nonce);
    size_t at = 0;
    const char *algs[2] = {r->sha256_first ? "SHA-256" : "MD5", r->sha256_first ? "MD5" : "SHA-256"};
    for (int i = 0; i < 2; i++) {
        int on = strcmp(algs[i], "MD5") == 0 ? r->challenge_md5 : r->challenge_sha256;
        if (!on) continue;
        int n = snprintf(buf + at, size - at, "WWW-Authenticate: Digest realm=\"%s\", nonce=\"%s\", algorithm=%s, qop=\"auth\"\r\n",
                         r->realm, nonce, algs[i]);
        if (n < 0 || (size_t)n >= size - at) break;
        at += (size_t)n;
    }
    return at;
}

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
    return fnv1a(buf, n > 0 && n < (int)sizeof(buf) ? (size_t)n : sizeof(buf) - 1);
}

static void cache_response(RegistrarObject *r, pjsip_rx_data *rdata, pjsip_tx_data *tdata) {
    pj_uint32_t key = retrans_key(rdata);
    retrans_slot_t *slot = &r->retrans[key % RETRANS_SLOTS];
    if (slot->tdata) pjsip_tx_data_dec_ref(slot->tdata);
    pjsip_tx_data_add_ref(tdata);
    slot->tdata = tdata;
    slot->key = key;
    slot->at = now_ms();
}

/* 1 when rdata is a retransmission we answered already (the cached answer is sent again). */
static int resend_cached(RegistrarObject *r, pjsip_rx_data *rdata) {
    pj_uint32_t key = retrans_key(rdata);
    retrans_slot_t *slot = &r->retrans[key % RETRANS_SLOTS];
    if (!slot->tdata || slot->key != key || now_ms() - slot->at > 32000) return 0;
    pjsip_response_addr addr;
    if (pjsip_get_response_addr(slot->tdata->pool, rdata, &addr) != PJ_SUCCESS) return 0;
    pjsip_tx_data_add_ref(slot->tdata);
    if (pjsip_endpt_send_response(pjsua_get_pjsip_endpt(), &addr, slot->tdata, NULL, NULL) != PJ_SUCCESS)
        pjsip_tx_data_dec_ref(slot->tdata);
    r->n_retransmissions++;
    return 1;
}

static void free_retrans(RegistrarObject *r) {
    for (int i = 0; i < RETRANS_SLOTS; i++)
        if (r->retrans[i].tdata) {
            pjsip_tx_data_dec_ref(r->retrans[i].tdata);
            r->retrans[i].tdata = NULL;
        }
}

static pj_status_t send_stateless(pjsip_rx_data *rdata, pjsip_tx_data *tdata) {
    pjsip_response_addr addr;
    pjsip_endpoint *endpt = pjsua_get_pjsip_endpt();
    pj_status_t st = pjsip_get_response_addr(tdata->pool, rdata, &addr);
    if (st == PJ_SUCCESS && the_registrar) cache_response(the_registrar, rdata, tdata);
    if (st == PJ_SUCCESS) st = pjsip_endpt_send_response(endpt, &addr, tdata, NULL, NULL);
    if (st != PJ_SUCCESS) pjsip_tx_data_dec_ref(tdata);
    return st;
}

static pjsip_tx_data *new_response(pjsip_rx_data *rdata, int code, const char *reason) {
    pjsip_tx_data *tdata = NULL;
    pj_str_t r = pj_str((char *)reason);
    if (pjsip_endpt_create_response(pjsua_get_pjsip_endpt(), rdata, code, reason ? &r : NULL, &tdata) != PJ_SUCCESS)
        return NULL;
    return tdata;
}

static void respond(pjsip_rx_data *rdata, int code, const char *reason) {
    pjsip_tx_data *tdata = new_response(rdata, code, reason);
    if (tdata) send_stateless(rdata, tdata);
}

/* ---- digest verification ----------------------------------------------------------------- */

typedef enum { AUTH_NONE, AUTH_OK, AUTH_BAD, AUTH_STALE } auth_result_t;

/* Checks the Authorization (or Proxy-Authorization) header of rdata. Unknown users and wrong
 * passwords give the same result, so the two cannot be told apart from outside. */
static auth_result_t verify_digest(RegistrarObject *r, pjsip_rx_data *rdata, int proxy, user_t **user_out) {
    pjsip_hdr_e type = proxy ? PJSIP_H_PROXY_AUTHORIZATION : PJSIP_H_AUTHORIZATION;
    pjsip_authorization_hdr *h = NULL, *it = NULL;
    /* Prefer credentials for our realm if the phone sent several. */
    while ((it = (pjsip_authorization_hdr *)pjsip_msg_find_hdr(rdata->msg_info.msg, type,
                                                                it ? it->next : NULL)) != NULL) {
        if (pj_stricmp2(&it->scheme, "Digest") == 0 && pjstr_eq(&it->credential.digest.realm, r->realm)) {
            h = it;
            break;
        }
        if (!h) h = it;
    }
    if (!h) return AUTH_NONE;
    if (pj_stricmp2(&h->scheme, "Digest") != 0) return AUTH_BAD;
    pjsip_digest_credential *c = &h->credential.digest;
    digest_alg_t alg;
    if (c->algorithm.slen == 0 || pj_stricmp2(&c->algorithm, "MD5") == 0) alg = ALG_MD5;
    else if (pj_stricmp2(&c->algorithm, "SHA-256") == 0) alg = ALG_SHA256;
    else return AUTH_BAD;
    if ((alg == ALG_MD5 && !r->challenge_md5) || (alg == ALG_SHA256 && !r->challenge_sha256)) return AUTH_BAD;
    if (!pjstr_eq(&c->realm, r->realm)) return AUTH_BAD;

    int fresh = check_nonce(r, &c->nonce, rdata->pkt_info.src_name);
    if (fresh == 0) return AUTH_BAD;

    user_t *u = find_user(r, &c->username);
    char expected[65];
    const pjsip_method *m = &rdata->msg_info.msg->line.req.method;
    char ha2[65];
    {
        const char *parts[2] = {m->name.ptr, c->uri.ptr};
        size_t lens[2] = {(size_t)m->name.slen, (size_t)c->uri.slen};
        digest_hex(alg, ha2, parts, lens, 2);
    }
    /* An unknown user is checked against a throwaway HA1, so timing does not tell either. */
    const char *ha1 = u ? (alg == ALG_SHA256 ? u->ha1_sha256 : u->ha1_md5) : "0000000000000000000000000000000000000000000000000000000000000000";
    size_t ha1len = alg == ALG_SHA256 ? 64 : 32;
    if (c->qop.slen) {
        if (pj_stricmp2(&c->qop, "auth") != 0 || c->nc.slen == 0 || c->cnonce.slen == 0) return AUTH_BAD;
        const char *parts[6] = {ha1, c->nonce.ptr, c->nc.ptr, c->cnonce.ptr, c->qop.ptr, ha2};
        size_t lens[6] = {ha1len, (size_t)c->nonce.slen, (size_t)c->nc.slen, (size_t)c->cnonce.slen,
                          (size_t)c->qop.slen, strlen(ha2)};
        digest_hex(alg, expected, parts, lens, 6);
    } else {
        const char *parts[3] = {ha1, c->nonce.ptr, ha2};
        size_t lens[3] = {ha1len, (size_t)c->nonce.slen, strlen(ha2)};
        digest_hex(alg, expected, parts, lens, 3);
    }
    if (!u || (size_t)c->response.slen != strlen(expected) ||
        pj_strnicmp2(&c->response, expected, strlen(expected)) != 0)
        return AUTH_BAD;
    if (fresh < 0) return AUTH_STALE;
    if (c->qop.slen) {
        char ncbuf[16];
        snprintf(ncbuf, sizeof(ncbuf), "%.*s", (int)c->nc.slen, c->nc.ptr);
        pjsip_via_hdr *via = rdata->msg_info.via;
        pj_uint32_t branch = via ? fnv1a(via->branch_param.ptr, (size_t)via->branch_param.slen) : 0;
        if (!nc_fresh(r, &c->nonce, strtoul(ncbuf, NULL, 16), branch)) return AUTH_STALE;
    }
    *user_out = u;
    return AUTH_OK;
}

/* ---- bindings ------------------------------------------------------------------------------ */

static aor_t *find_aor(RegistrarObject *r, const char *username, int create, user_t *u) {
    pj_uint32_t h = fnv1a(username, strlen(username)) % 4096;
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

static void binding_free(binding_t *b) {
    if (b->nat && the_registrar) the_registrar->nat_bindings--;
    free(b->contact);
    free(b->call_id);
    free(b->user_agent);
    memset(b, 0, sizeof(*b));
}

static void keepalive_dict_fields(PyObject *d, const binding_t *b);

static PyObject *binding_dict(aor_t *a, binding_t *b) {
    pj_uint64_t now = now_ms();
    long remaining = b->expires_at > now ? (long)((b->expires_at - now + 999) / 1000) : 0;
    PyObject *d = Py_BuildValue("{s:s,s:s,s:s,s:s,s:l,s:K,s:s,s:i,s:s,s:s,s:O,s:d,s:s}", "username", a->username,
                         "extension", a->extension, "group", a->group, "contact", b->contact, "expires",
                         remaining, "registered_at_ms", (unsigned long long)b->registered_at, "source_ip",
                         b->source_ip, "source_port", b->source_port, "transport", b->transport,
                         "user_agent", b->user_agent ? b->user_agent : "", "nat", b->nat ? Py_True : Py_False,
                         "q", b->q1000 / 1000.0, "call_id", b->call_id);
    keepalive_dict_fields(d, b);
    return d;
}

static void remove_binding(RegistrarObject *r, aor_t *a, int i, const char *why) {
    WITH_GIL(push_event(r, why, binding_dict(a, &a->contacts[i])));
    binding_free(&a->contacts[i]);
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
    pj_uint64_t now = now_ms();
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

static void keepalive_on_register(RegistrarObject *r, aor_t *a, binding_t *b, int is_new);

static unsigned requested_expires(RegistrarObject *r, pjsip_contact_hdr *c, pjsip_expires_hdr *eh) {
    if (c && c->expires != PJSIP_EXPIRES_NOT_SPECIFIED) return c->expires;
    if (eh) return eh->ivalue;
    return r->default_expires;
}

/* `ar` and `u` are verify_digest's verdict on this REGISTER (the caller needs it first: a trunk
 * address's limit applies to everything but a valid registration). */
static void handle_register(RegistrarObject *r, pjsip_rx_data *rdata, source_slot_t *src, int trunk_address,
                            auth_result_t ar, user_t *u) {
    pjsip_msg *msg = rdata->msg_info.msg;
    r->n_register++;
    if (ar == AUTH_NONE || ar == AUTH_STALE) {
        pjsip_tx_data *tdata = new_response(rdata, 401, NULL);
        if (!tdata) return;
        add_challenges(r, tdata, rdata, 0, ar == AUTH_STALE);
        r->n_challenges++;
        send_stateless(rdata, tdata);
        return;
    }
    if (ar == AUTH_BAD) {
        respond(rdata, 403, "Forbidden");
        auth_failed(r, rdata, src, trunk_address, "REGISTER digest rejected");
        return;
    }
    /* The AOR (To user) must be the authenticated user's own. */
    const pjsip_sip_uri *to = (const pjsip_sip_uri *)pjsip_uri_get_uri(rdata->msg_info.to->uri);
    if (!PJSIP_URI_SCHEME_IS_SIP(rdata->msg_info.to->uri) && !PJSIP_URI_SCHEME_IS_SIPS(rdata->msg_info.to->uri)) {
        respond(rdata, 404, "Not Found");
        return;
    }
    if (!pjstr_eq(&to->user, u->username) && !pjstr_eq(&to->user, u->extension)) {
        respond(rdata, 403, "Forbidden");
        security_event(r, "aor_mismatch", rdata, "To user is not the authenticated user");
        return;
    }

    pjsip_expires_hdr *eh = (pjsip_expires_hdr *)pjsip_msg_find_hdr(msg, PJSIP_H_EXPIRES, NULL);
    const pj_str_t *call_id = &rdata->msg_info.cid->id;
    pj_uint32_t cseq = rdata->msg_info.cseq->cseq;
    aor_t *a = find_aor(r, u->username, 0, u);

    /* First pass: validate every contact (star rules, expiry bounds) before changing anything. */
    int star = 0, ncontacts = 0;
    for (pjsip_contact_hdr *c = (pjsip_contact_hdr *)pjsip_msg_find_hdr(msg, PJSIP_H_CONTACT, NULL); c;
         c = (pjsip_contact_hdr *)pjsip_msg_find_hdr(msg, PJSIP_H_CONTACT, c->next)) {
        ncontacts++;
        if (c->star) star = 1;
        unsigned exp = requested_expires(r, c, eh);
        if (!c->star && exp > 0 && exp < r->min_expires) {
            pjsip_tx_data *tdata = new_response(rdata, 423, "Interval Too Brief");
            if (!tdata) return;
            char v[16];
            snprintf(v, sizeof(v), "%u", r->min_expires);
            pj_str_t hn = pj_str("Min-Expires"), hv;
            pj_strdup2(tdata->pool, &hv, v);
            pjsip_msg_add_hdr(tdata->msg, (pjsip_hdr *)pjsip_generic_string_hdr_create(tdata->pool, &hn, &hv));
            r->n_423++;
            send_stateless(rdata, tdata);
            return;
        }
    }
    if (star && (ncontacts > 1 || !eh || eh->ivalue != 0)) {
        respond(rdata, 400, "Invalid Contact: * needs Expires: 0 and no other Contact");
        return;
    }

    if (star) {
        if (a) {
            for (int i = a->count - 1; i >= 0; i--) {
                binding_t *b = &a->contacts[i];
                if (pjstr_eq(call_id, b->call_id) && cseq <= b->cseq) continue;
                remove_binding(r, a, i, "unregistered");
            }
        }
    } else if (ncontacts) {
        if (!a) a = find_aor(r, u->username, 1, u);
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
                if (pjstr_eq(call_id, b->call_id) && cseq < b->cseq) {
                    r->n_500++;
                    respond(rdata, 500, "Out of order CSeq");
                    return;
                }
            }
            if (exp == 0) {
                if (found >= 0) remove_binding(r, a, found, "unregistered");
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
                    remove_binding(r, a, oldest, "unregistered");
                }
                b = &a->contacts[a->count++];
                memset(b, 0, sizeof(*b));
                b->contact = strdup(uri_buf);
                ascii_only(b->contact);
                b->registered_at = wall_ms();
            } else {
                b = &a->contacts[found];
                free(b->call_id);
                free(b->user_agent);
            }
            b->call_id = dup_pjstr(call_id);
            b->cseq = cseq;
            b->expires_at = now_ms() + (pj_uint64_t)exp * 1000;
            b->q1000 = c->q1000 > 0 ? c->q1000 : 1000;
            snprintf(b->source_ip, sizeof(b->source_ip), "%s", rdata->pkt_info.src_name);
            b->source_port = rdata->pkt_info.src_port;
            snprintf(b->transport, sizeof(b->transport), "%s", rdata->tp_info.transport->type_name);
            pjsip_generic_string_hdr *uah = (pjsip_generic_string_hdr *)pjsip_msg_find_hdr_by_name(
                msg, &(pj_str_t){"User-Agent", 10}, NULL);
            b->user_agent = uah ? dup_pjstr(&uah->hvalue) : NULL;
            if (b->nat) r->nat_bindings--;
            b->nat = contact_is_natted(c->uri, rdata);
            if (b->nat) r->nat_bindings++;
            keepalive_on_register(r, a, b, is_new);
            WITH_GIL(push_event(r, is_new ? "registered" : "refreshed", binding_dict(a, b)));
        }
    }
    pjsip_tx_data *tdata = new_response(rdata, 200, NULL);
    if (!tdata) return;
    add_contacts_to_response(a, tdata);
    r->n_register_ok++;
    ss_tcpguard_trusted(rdata->tp_info.transport);
    send_stateless(rdata, tdata);
}

/* ---- NAT: phones whose Contact is not where their packets come from ---------------------------- */

static int nat_source(RegistrarObject *r, const char *ip, int port) {
    if (!r->nat_bindings) return 0;
    pj_uint64_t now = now_ms();
    for (int i = 0; i < 4096; i++)
        for (aor_t *a = r->aors[i]; a; a = a->next)
            for (int j = 0; j < a->count; j++) {
                binding_t *b = &a->contacts[j];
                if (b->nat && b->expires_at > now && b->source_port == port && strcmp(b->source_ip, ip) == 0)
                    return 1;
            }
    return 0;
}

/* A NATed phone's Contact (in its 200 OK, or in requests it sends) names an address we cannot
 * reach; point it at where the message came from, so ACK, BYE and re-INVITEs reach the phone. */
static void fix_nated_contact(RegistrarObject *r, pjsip_rx_data *rdata) {
    if (!nat_source(r, rdata->pkt_info.src_name, rdata->pkt_info.src_port)) return;
    pjsip_contact_hdr *c = (pjsip_contact_hdr *)pjsip_msg_find_hdr(rdata->msg_info.msg, PJSIP_H_CONTACT, NULL);
    if (!c || c->star || !c->uri) return;
    if (!PJSIP_URI_SCHEME_IS_SIP(c->uri) && !PJSIP_URI_SCHEME_IS_SIPS(c->uri)) return;
    pjsip_sip_uri *sip = (pjsip_sip_uri *)pjsip_uri_get_uri(c->uri);
    pj_strdup2(rdata->tp_info.pool, &sip->host, rdata->pkt_info.src_name);
    sip->port = rdata->pkt_info.src_port;
}

/* Responses go back to where a request came from (RFC 3581 rport, forced as NAT-aware servers do):
 * a phone behind NAT names its private port in Via, and without rport RFC 3261 would answer
 * there, where nothing arrives. Over connections the response uses the connection anyway. */
static void respond_to_source(pjsip_rx_data *rdata) {
    pjsip_via_hdr *via = rdata->msg_info.via;
    if (!via || rdata->msg_info.msg->type != PJSIP_REQUEST_MSG || via->maddr_param.slen) return;
    if (PJSIP_TRANSPORT_IS_RELIABLE(rdata->tp_info.transport)) return;
    if (via->rport_param <= 0) via->rport_param = rdata->pkt_info.src_port;
}

/* ---- SIP INFO DTMF (added for the flow layer's DTMF relay) ------------------------------------ */

/* pjsua answers and reports (onDtmfDigit, method SIP INFO) only application/dtmf-relay
 * ("Signal=5"); an INFO carrying application/dtmf (body "5") gets "500 Unhandled by dialog
 * usages". Rewritten here, before any layer reads it, into the dtmf-relay form (first digit of
 * the body), so phones using either form reach flows and get their 200. */
static int is_dtmf_digit(char c) { return c && strchr("0123456789*#ABCDabcd", c) != NULL; }

/* Finds `key` (case-insensitive) in body[0..len) and returns what follows "key *= *", or NULL. */
static const char *relay_value(const char *body, size_t len, const char *key) {
    size_t klen = strlen(key);
    for (size_t i = 0; i + klen <= len; i++) {
        if (strncasecmp(body + i, key, klen) != 0) continue;
        const char *p = body + i + klen, *end = body + len;
        int equals = 0;
        while (p < end && (*p == ' ' || *p == '\t' || *p == '=')) equals += (*p++ == '=');
        if (equals == 1 && p < end) return p;
    }
    return NULL;
}

/* SIP INFO DTMF reaches pjsua only as canonical application/dtmf-relay ("Signal=5\r\nDuration=160\r\n").
 * pjsua answers application/dtmf with 500, and its dtmf-relay parser steps past a CRLF the body may
 * not have (a body "Signal=5" aborted the process on a pj_strstr assertion). A body with no digit
 * is replaced by one pjsua reads as "no signal". */
static void dtmf_info_as_relay(pjsip_rx_data *rdata) {
    pjsip_msg *msg = rdata->msg_info.msg;
    if (msg->type != PJSIP_REQUEST_MSG || pj_stricmp2(&msg->line.req.method.name, "INFO") != 0) return;
    pjsip_msg_body *body = msg->body;
    if (!body || pj_stricmp2(&body->content_type.type, "application") != 0) return;
    int plain = pj_stricmp2(&body->content_type.subtype, "dtmf") == 0;
    if (!plain && pj_stricmp2(&body->content_type.subtype, "dtmf-relay") != 0) return;
    const char *data = (const char *)body->data;
    size_t len = body->data ? body->len : 0;
    char digit = 0;
    unsigned long duration = 160;
    if (plain) {
        const char *p = data, *end = data + len;
        while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')) p++;
        if (p < end && is_dtmf_digit(*p)) digit = *p;
    } else {
        const char *sig = relay_value(data, len, "signal");
        if (sig && is_dtmf_digit(*sig)) digit = *sig;
        const char *dur = relay_value(data, len, "duration");
        if (dur && *dur >= '0' && *dur <= '9') {
            duration = 0;
            for (const char *end = data + len; dur < end && *dur >= '0' && *dur <= '9' && duration < 100000; dur++)
                duration = duration * 10 + (unsigned long)(*dur - '0');
            if (duration < 1 || duration > 10000) duration = 160;
        }
    }
    if (plain && !digit) return; /* not a digit: left as it is (pjsua refuses application/dtmf) */
    char *text = pj_pool_alloc(rdata->tp_info.pool, 48);
    int n = digit ? snprintf(text, 48, "Signal=%c\r\nDuration=%lu\r\n", toupper((unsigned char)digit), duration)
                  : snprintf(text, 48, "Invalid=1\r\n\r\n");
    body->data = text; /* NUL-terminated: pjsua reads it with pj_str() */
    body->len = (unsigned)n;
    body->content_type.subtype = pj_str("dtmf-relay");
}

/* An SDP connection address pjmedia cannot use as declared: "IN IP4" with an IPv6 literal (after
 * the IPv4 parse fails pjmedia retries it as IPv6 and aborts in tp_attach on a pj_sockaddr_get_len
 * assertion), or IPv6, which our IPv4-only media transports cannot reach. Such addresses become
 * "IN IP4 0.0.0.0" (no media from or to that side) before any layer parses the body; the call goes
 * on, silent, instead of the process aborting. Applies to c= and a=rtcp: lines in every message. */
static int bad_media_address(const char *line, const char *end) {
    /* line points after "c=" or after the port of "a=rtcp:<port> " */
    const char *p = line;
    while (p < end && (*p == ' ' || *p == '\t')) p++;
    if (end - p < 2 || strncasecmp(p, "IN", 2) != 0) return 0;
    p += 2;
    while (p < end && (*p == ' ' || *p == '\t')) p++;
    if (end - p >= 3 && strncasecmp(p, "IP6", 3) == 0) return 1;
    if (end - p < 3 || strncasecmp(p, "IP4", 3) != 0) return 0;
    p += 3;
    for (; p < end; p++)
        if (*p == ':') return 1;
    return 0;
}

static int sanitize_sdp_addresses(pjsip_rx_data *rdata) {
    pjsip_msg_body *body = rdata->msg_info.msg->body;
    if (!body || !body->data || !body->len || pj_stricmp2(&body->content_type.type, "application") != 0 ||
        pj_stricmp2(&body->content_type.subtype, "sdp") != 0)
        return 0;
    const char *data = (const char *)body->data, *end = data + body->len;
    char *out = NULL, *o = NULL;
    for (const char *line = data; line < end;) {
        const char *eol = line;
        while (eol < end && *eol != '\r' && *eol != '\n') eol++;
        const char *addr = NULL;
        if (eol - line > 2 && line[0] == 'c' && line[1] == '=') {
            addr = line + 2;
        } else if (eol - line > 7 && strncmp(line, "a=rtcp:", 7) == 0) {
            const char *q = line + 7;
            while (q < eol && *q >= '0' && *q <= '9') q++;
            if (q < eol && (*q == ' ' || *q == '\t')) addr = q;
        }
        int bad = addr && bad_media_address(addr, eol);
        if (bad && !out) {
            out = pj_pool_alloc(rdata->tp_info.pool, body->len + 64 * 8 + 1);
            memcpy(out, data, (size_t)(line - data));
            o = out + (line - data);
        }
        if (out) {
            const char *next = eol;
            while (next < end && (*next == '\r' || *next == '\n')) next++;
            if (bad && (o - out) + (addr - line) + 20 + (next - eol) <= (long)body->len + 64 * 8) {
                memcpy(o, line, (size_t)(addr - line));
                o += addr - line;
                o += sprintf(o, "%sIN IP4 0.0.0.0", addr[0] == ' ' ? " " : (line[0] == 'a' ? " " : ""));
            } else {
                memcpy(o, line, (size_t)(eol - line));
                o += eol - line;
            }
            memcpy(o, eol, (size_t)(next - eol));
            o += next - eol;
            line = next;
        } else {
            line = eol;
            while (line < end && (*line == '\r' || *line == '\n')) line++;
        }
    }
    if (out) {
        *o = 0;
        body->data = out;
        body->len = (unsigned)(o - out);
    }
    return out != NULL;
}

/* Runs before the transaction layer (which would consume responses), for every message. */
static pj_bool_t nat_on_rx(pjsip_rx_data *rdata) {
    if (the_registrar && rdata->msg_info.msg) {
        if (rdata->msg_info.msg->type == PJSIP_RESPONSE_MSG ||
            rdata->msg_info.msg->line.req.method.id != PJSIP_REGISTER_METHOD)
            fix_nated_contact(the_registrar, rdata);
        respond_to_source(rdata);
        dtmf_info_as_relay(rdata);
        pjsip_msg *msg = rdata->msg_info.msg;
        if (sanitize_sdp_addresses(rdata) && msg->type == PJSIP_REQUEST_MSG &&
            msg->line.req.method.id == PJSIP_INVITE_METHOD && rdata->msg_info.to && !rdata->msg_info.to->tag.slen) {
            /* A new call offering only media we cannot reach: refused. (In a dialog the silenced
             * offer goes on: refusing a re-INVITE is the dialog's business.) */
            respond(rdata, 488, "Not Acceptable Here");
            return PJ_TRUE;
        }
    }
    return PJ_FALSE;
}

/* ---- the INVITE gate ------------------------------------------------------------------------ */

static const char *static_pt_name(unsigned pt) {
    switch (pt) {
    case 0: return "pcmu";
    case 8: return "pcma";
    case 9: return "g722";
    default: return NULL;
    }
}

/* SDES crypto suites pjmedia's SRTP transport can use (RFC 4568, RFC 6188, RFC 7714). */
static int known_crypto_suite(const pj_str_t *value) {
    static const char *suites[] = {"AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32", "AES_256_CM_HMAC_SHA1_80",
                                   "AES_256_CM_HMAC_SHA1_32", "AES_192_CM_HMAC_SHA1_80", "AES_192_CM_HMAC_SHA1_32",
                                   "AEAD_AES_256_GCM", "AEAD_AES_128_GCM", NULL};
    /* "<tag> <suite> inline:..." */
    const char *p = value->ptr, *end = value->ptr + value->slen;
    while (p < end && *p != ' ') p++;
    while (p < end && *p == ' ') p++;
    const char *suite = p;
    while (p < end && *p != ' ') p++;
    for (int i = 0; suites[i]; i++)
        if ((size_t)(p - suite) == strlen(suites[i]) && strncmp(suite, suites[i], (size_t)(p - suite)) == 0) return 1;
    return 0;
}

/* Applies a source's SRTP use to one audio m-line of its offer. Returns whether the m-line is still
 * usable; sets *changed when crypto lines were removed. mandatory: SDES with a suite we know, on
 * RTP/AVP (offered as optional) or RTP/SAVP. disabled: a secure profile is unusable, crypto lines
 * on RTP/AVP are removed so that pjsua answers plain RTP. */
static int srtp_media_usable(pjmedia_sdp_media *media, int srtp, int *changed) {
    int secure = pj_strstr(&media->desc.transport, &(pj_str_t){"SAVP", 4}) != NULL;
    if (srtp == SRTP_MANDATORY) {
        for (unsigned i = 0; i < media->attr_count; i++)
            if (pj_stricmp2(&media->attr[i]->name, "crypto") == 0 && known_crypto_suite(&media->attr[i]->value))
                return 1;
        return 0;
    }
    if (srtp == SRTP_DISABLED) {
        if (secure) return 0;
        for (unsigned i = 0; i < media->attr_count;) {
            if (pj_stricmp2(&media->attr[i]->name, "crypto") == 0) {
                pjmedia_sdp_attr_remove(&media->attr_count, media->attr, media->attr[i]);
                *changed = 1;
                continue;
            }
            i++;
        }
    }
    return 1;
}

/* Removes from the INVITE's SDP offer every audio format not in `allowed` (",name,name,"), so
 * pjsua negotiates only what this trunk may use, and applies the source's SRTP use (srtp_use_t).
 * Returns 0 if nothing usable is left (the caller answers 488). */
static int filter_offer(pjsip_rx_data *rdata, const char *allowed, int srtp) {
    pjsip_msg_body *body = rdata->msg_info.msg->body;
    if ((!allowed && srtp == SRTP_UNTOUCHED) || !body || body->len == 0 ||
        pj_stricmp2(&body->content_type.subtype, "sdp") != 0)
        return 1;
    pj_pool_t *pool = rdata->tp_info.pool;
    char *text = pj_pool_alloc(pool, body->len + 1);
    memcpy(text, body->data, body->len);
    text[body->len] = 0;
    pjmedia_sdp_session *sdp = NULL;
    if (pjmedia_sdp_parse(pool, text, body->len, &sdp) != PJ_SUCCESS) return 1; /* pjsua answers the bad SDP */
    int usable = 0, srtp_usable = 0, changed = 0;
    for (unsigned m = 0; m < sdp->media_count; m++) {
        pjmedia_sdp_media *media = sdp->media[m];
        if (pj_stricmp2(&media->desc.media, "audio") != 0) continue;
        if (srtp != SRTP_UNTOUCHED && media->desc.port != 0 && srtp_media_usable(media, srtp, &changed))
            srtp_usable = 1;
        if (!allowed) continue;
        changed = 1;
        unsigned kept = 0;
        for (unsigned f = 0; f < media->desc.fmt_count; f++) {
            pj_str_t *fmt = &media->desc.fmt[f];
            unsigned pt = (unsigned)pj_strtoul(fmt);
            char name[40] = "";
            const char *known = static_pt_name(pt);
            if (known) snprintf(name, sizeof(name), "%s", known);
            pjmedia_sdp_attr *a = pjmedia_sdp_media_find_attr2(media, "rtpmap", fmt);
            pjmedia_sdp_rtpmap rtpmap;
            if (a && pjmedia_sdp_attr_get_rtpmap(a, &rtpmap) == PJ_SUCCESS)
                snprintf(name, sizeof(name), "%.*s", (int)rtpmap.enc_name.slen, rtpmap.enc_name.ptr);
            for (char *c = name; *c; c++) *c = (char)tolower((unsigned char)*c);
            char needle[48];
            snprintf(needle, sizeof(needle), ",%s,", name);
            if (name[0] && strstr(allowed, needle)) {
                media->desc.fmt[kept++] = *fmt;
                if (strcmp(name, "telephone-event") != 0) usable = 1;
                continue;
            }
            /* Dropped: its rtpmap and fmtp go with it. */
            for (unsigned i = 0; i < media->attr_count;) {
                pjmedia_sdp_attr *at = media->attr[i];
                if ((pj_stricmp2(&at->name, "rtpmap") == 0 || pj_stricmp2(&at->name, "fmtp") == 0) &&
                    at->value.slen >= fmt->slen && pj_strncmp(&at->value, fmt, (pj_size_t)fmt->slen) == 0 &&
                    (at->value.slen == fmt->slen || at->value.ptr[fmt->slen] == ' ')) {
                    pjmedia_sdp_attr_remove(&media->attr_count, media->attr, at);
                    continue;
                }
                i++;
            }
        }
        media->desc.fmt_count = kept;
    }
    if (!allowed) usable = 1;
    if (!usable || (srtp != SRTP_UNTOUCHED && !srtp_usable)) return 0;
    if (!changed) return 1;
    /* Reprinted, it is no longer than the offer plus pjmedia's normalising (a long offer did not fit
     * a fixed 4 KB and went through unfiltered). */
    size_t room = (size_t)body->len + 4096;
    char *out = pj_pool_alloc(pool, room);
    int len = pjmedia_sdp_print(sdp, out, room);
    if (len <= 0) return 0; /* cannot be reprinted: refused rather than passed unfiltered */
    body->data = out;
    body->len = (unsigned)len;
    return 1;
}

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
    pj_uint64_t now = now_ms();
    for (int i = 0; i < 1024; i++)
        for (user_t *u = r->users[i]; u; u = u->next) {
            if (strncmp(u->group, "trunk:", 6) != 0) continue;
            aor_t *a = find_aor(r, u->username, 0, u);
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

/* Whether `ip` is a trunk's: a fixed trunk's address (any source port: forging the port is as easy
 * as forging the address, and the throttling is per address), or where a dynamic trunk holds a
 * live registration. */
static int is_trunk_address(RegistrarObject *r, const char *ip) {
    for (int i = 0; i < r->ntrunks; i++)
        if (strncmp(r->trunks[i].ip, "token:", 6) != 0 && strcmp(r->trunks[i].ip, ip) == 0) return 1;
    if (!r->ndynamic_trunks) return 0;
    pj_uint64_t now = now_ms();
    for (int i = 0; i < 1024; i++)
        for (user_t *u = r->users[i]; u; u = u->next) {
            if (strncmp(u->group, "trunk:", 6) != 0) continue;
            aor_t *a = find_aor(r, u->username, 0, u);
            for (int j = 0; a && j < a->count; j++)
                if (a->contacts[j].expires_at > now && strcmp(a->contacts[j].source_ip, ip) == 0) return 1;
        }
    return 0;
}

typedef enum { TRUNK_OPTIONS, TRUNK_REQUESTS } trunk_limit_t;

/* A trunk address's own limits, for requests that are not the trunk's calls: OPTIONS
 * (security.trunk_options_per_second), and REGISTER challenges and failures, INVITEs that match no
 * trunk and every other method (security.trunk_requests_per_second); each bucket holds two
 * seconds' worth. Over one, the request is dropped: not answered, so a forged flood sends nothing
 * to the real trunk, and never a block, so the trunk's INVITEs and OPTIONS within the rate go on.
 * Every drop is counted; one in TRUNK_LOG_INTERVAL_MS is logged. */
static int trunk_limit_admits(RegistrarObject *r, pjsip_rx_data *rdata, source_slot_t *s, trunk_limit_t which) {
    int options = which == TRUNK_OPTIONS;
    double rate = options ? r->trunk_options_rate : r->trunk_requests_rate;
    if (bucket_take(options ? &s->trunk_options : &s->trunk_requests, rate, 2 * rate)) return 1;
    r->n_dropped++;
    r->n_security[options ? SEC_TRUNK_OPTIONS_DROPPED : SEC_TRUNK_REQUESTS_DROPPED]++;
    if (trunk_log_due(options ? &s->options_logged : &s->requests_logged))
        security_event(r, options ? "trunk_options_limited" : "trunk_requests_limited", rdata,
                       options ? "OPTIONS from a trunk address over security.trunk_options_per_second: dropped, "
                                 "the address is not blocked"
                               : "request from a trunk address over security.trunk_requests_per_second: dropped, "
                                 "the address is not blocked");
    return 0;
}

static void remember_classification(RegistrarObject *r, pjsip_rx_data *rdata, const char *kind, const char *ref,
                                    const char *extension, const char *group) {
    /* pjsua reports at most 128 bytes of a Call-ID (pjsua_call_info's buffer): keep the same. */
    const pj_str_t *full = &rdata->msg_info.cid->id;
    pj_str_t trimmed = {full->ptr, full->slen > 128 ? 128 : full->slen};
    const pj_str_t *cid = &trimmed;
    pj_uint32_t h = fnv1a(cid->ptr, (size_t)cid->slen) % CLASSIFY_SLOTS;
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
    s->at = now_ms();
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
        pj_uint64_t now = now_ms();
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
    pjsip_tx_data *tdata = new_response(rdata, 503, "Service Unavailable");
    if (!tdata) return;
    pjsip_msg_add_hdr(tdata->msg, (pjsip_hdr *)pjsip_hdr_clone(tdata->pool, h));
    send_stateless(rdata, tdata);
}

/* Admits (PJ_FALSE: pjsua creates the call) or answers 503 (PJ_TRUE), for an INVITE the gate
 * classified; the classification is kept only for an admitted one. A trunk's call also takes a
 * token from the trunk's own call bucket (`calls`, `cps` a second, holding one second's worth),
 * checked first; that token is given back when the process-wide gate refuses the call. */
static pj_bool_t admit(RegistrarObject *r, pjsip_rx_data *rdata, const char *kind, const char *ref,
                       const char *extension, const char *group, token_bucket_t *calls, double cps) {
    refusal_t why;
    if (calls && !bucket_take(calls, cps, cps < 1.0 ? 1.0 : cps)) {
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
static pj_bool_t count_on_rx_response(pjsip_rx_data *rdata) {
    RegistrarObject *r = the_registrar;
    int code = rdata->msg_info.msg ? rdata->msg_info.msg->line.status.code : 0;
    if (r && code > 0 && code < 700) __atomic_fetch_add(&r->responses_received[code], 1, __ATOMIC_RELAXED);
    return PJ_FALSE;
}

/* Runs among the last on the way out (priority just above the transport layer), so it counts
 * what is really sent: stateless answers, transaction responses and their retransmissions. */
static pj_status_t count_on_tx_response(pjsip_tx_data *tdata) {
    RegistrarObject *r = the_registrar;
    int code = tdata->msg ? tdata->msg->line.status.code : 0;
    if (r && code > 0 && code < 700) __atomic_fetch_add(&r->responses_sent[code], 1, __ATOMIC_RELAXED);
    return PJ_SUCCESS;
}

static pj_bool_t handle_invite(RegistrarObject *r, pjsip_rx_data *rdata, source_slot_t *src, int trunk_address) {
    const trunk_t *t = match_trunk(r, rdata);
    if (t) {
        if (!filter_offer(rdata, t->codecs, t->srtp)) {
            respond(rdata, 488, "Not Acceptable Here");
            return PJ_TRUE;
        }
        trunk_t *row = &r->trunks[t->bucket_row];
        return admit(r, rdata, "trunk", t->ref, NULL, NULL, &row->calls, row->cps);
    }
    user_t *dyn_user = NULL;
    const aor_t *dyn = match_dynamic_trunk(r, rdata, &dyn_user);
    if (dyn) {
        if (!filter_offer(rdata, NULL, dyn_user->srtp)) {
            respond(rdata, 488, "Not Acceptable Here");
            return PJ_TRUE;
        }
        return admit(r, rdata, "extension", dyn->username, dyn->extension, dyn->group, &dyn_user->calls,
                     dyn_user->cps);
    }
    user_t *u = NULL;
    auth_result_t ar = verify_digest(r, rdata, 1, &u);
    if (ar == AUTH_OK) {
        if (!filter_offer(rdata, NULL, u->srtp)) {
            respond(rdata, 488, "Not Acceptable Here");
            return PJ_TRUE;
        }
        return admit(r, rdata, "extension", u->username, u->extension, u->group, NULL, 0);
    }
    /* Not the trunk's call (a phone behind its address, or a forgery): the address's own limit. */
    if (trunk_address && !trunk_limit_admits(r, rdata, src, TRUNK_REQUESTS)) return PJ_TRUE;
    if (ar == AUTH_BAD) {
        r->n_invite_refused++;
        respond(rdata, 403, "Forbidden");
        auth_failed(r, rdata, src, trunk_address, "INVITE digest rejected");
        return PJ_TRUE;
    }
    /* No credentials (or stale ones): challenge. Nothing unauthenticated is ever routed. */
    pjsip_tx_data *tdata = new_response(rdata, 407, NULL);
    if (!tdata) return PJ_TRUE;
    add_challenges(r, tdata, rdata, 1, ar == AUTH_STALE);
    r->n_invite_challenged++;
    send_stateless(rdata, tdata);
    if (ar == AUTH_NONE) security_event(r, "invite_challenged", rdata, "INVITE from an unknown source");
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

static pj_bool_t on_rx_request(pjsip_rx_data *rdata) {
    RegistrarObject *r = the_registrar;
    if (!r) return PJ_FALSE;
    pjsip_method_e mid = rdata->msg_info.msg->line.req.method.id;
    /* In-dialog requests and ACKs belong to calls already admitted. */
    int initial = rdata->msg_info.to && rdata->msg_info.to->tag.slen == 0;
    if (!initial || mid == PJSIP_ACK_METHOD || mid == PJSIP_CANCEL_METHOD) return PJ_FALSE;

    source_slot_t *src = source_of(r, rdata->pkt_info.src_name);
    int trunk_address = is_trunk_address(r, rdata->pkt_info.src_name);
    if (!trunk_address && source_blocked(r, src)) {
        r->n_dropped++;
        r->n_security[SEC_DROPPED_BLOCKED]++;
        return PJ_TRUE; /* silently: a blocked scanner learns nothing */
    }
    if (!source_admit(r, src)) {
        if (!trunk_address) {
            /* Over the flood limit: the source is ignored for the block time, at once. */
            r->n_dropped++;
            r->n_security[SEC_BLOCKED_FLOOD]++;
            src->blocked_until = now_ms() + (pj_uint64_t)r->block_seconds * 1000;
            security_event(r, "flood_blocked", rdata, "request rate over the flood limit");
            return PJ_TRUE;
        }
        /* A trunk address is never blocked: its INVITEs meet the overload gate, the rest its own limits. */
        r->n_security[SEC_TRUNK_OVER_FLOOD_RATE]++;
        if (trunk_log_due(&src->flood_logged))
            security_event(r, "trunk_over_flood_rate", rdata,
                           "request rate from a trunk address over the flood limit: not blocked");
    }
    if (agent_refused(r, rdata)) {
        r->n_dropped++;
        r->n_security[SEC_DROPPED_USER_AGENT]++;
        security_event(r, "user_agent_refused", rdata, "User-Agent on the refusal list");
        return PJ_TRUE;
    }
    const char *malformed = NULL;
    if (ss_validate_request(rdata, &malformed, 0)) {
        /* Refused (400, 406, 420, 501, 513: malformed.c). From a trunk address the answers share
         * its request limit, so forged garbage makes softswitch send nothing much to the real trunk;
         * the log line is kept to one per source every 10 s (every refusal is counted). */
        if (!trunk_address || trunk_limit_admits(r, rdata, src, TRUNK_REQUESTS)) {
            ss_validate_request(rdata, &malformed, 1);
            if (trunk_log_due(&src->malformed_logged)) security_event(r, "malformed_request", rdata, malformed);
        }
        return PJ_TRUE;
    }
    if ((mid == PJSIP_REGISTER_METHOD || mid == PJSIP_INVITE_METHOD) && resend_cached(r, rdata)) return PJ_TRUE;
    if (mid == PJSIP_REGISTER_METHOD) {
        user_t *u = NULL;
        auth_result_t ar = verify_digest(r, rdata, 0, &u);
        /* A valid registration from a trunk address always passes (a dynamic trunk's refresh, a phone
         * behind the same address), and so does a right answer to a nonce gone stale (it gets a fresh
         * challenge): the nonce is bound to the address and sent there, so a forger who does not
         * receive its traffic can make neither. Other challenges and the failures are limited. */
        if (trunk_address && ar != AUTH_OK && ar != AUTH_STALE && !trunk_limit_admits(r, rdata, src, TRUNK_REQUESTS))
            return PJ_TRUE;
        handle_register(r, rdata, src, trunk_address, ar, u);
        return PJ_TRUE;
    }
    if (mid == PJSIP_INVITE_METHOD) return handle_invite(r, rdata, src, trunk_address);
    if (trunk_address &&
        !trunk_limit_admits(r, rdata, src, mid == PJSIP_OPTIONS_METHOD ? TRUNK_OPTIONS : TRUNK_REQUESTS))
        return PJ_TRUE;
    return PJ_FALSE;
}

/* ---- Python API ------------------------------------------------------------------------------ */

/* The tables are the UA thread's: refuse calls from any other thread instead of racing. */
#define UA_ONLY(ret) \
    if (ss_require_pj_thread()) return ret

/* ---- keep-alives: the registrar's side (sending is in keepalive.c) ---------------------------- */

static void keepalive_dict_fields(PyObject *d, const binding_t *b) {
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
static void keepalive_on_register(RegistrarObject *r, aor_t *a, binding_t *b, int is_new) {
    ss_ka_t *ka = &r->keepalive;
    if (is_new || !b->ka.id) {
        b->ka.id = ++ka->next_id;
        b->ka.next_at = now_ms() + ka->interval_ms;
        return;
    }
    b->ka.failures = 0;
    if (b->ka.unreachable) {
        b->ka.unreachable = 0;
        WITH_GIL(push_event(r, "reachable", binding_dict(a, b)));
    }
}

void ss_registrar_keepalive_result(const char *username, pj_uint64_t binding_id, int answered, int code) {
    RegistrarObject *r = the_registrar;
    if (!r) return;
    aor_t *a = find_aor(r, username, 0, NULL);
    for (int i = 0; a && i < a->count; i++) {
        binding_t *b = &a->contacts[i];
        if (b->ka.id != binding_id) continue;
        b->ka.probing = 0;
        if (answered) {
            b->ka.failures = 0;
            if (b->ka.unreachable) {
                b->ka.unreachable = 0;
                WITH_GIL(push_event(r, "reachable", binding_dict(a, b)));
            }
            return;
        }
        b->ka.failures++;
        if (r->keepalive.max_failures && b->ka.failures >= r->keepalive.max_failures && !b->ka.unreachable) {
            b->ka.unreachable = 1;
            r->keepalive.became_unreachable++;
            WITH_GIL(push_event(r, "unreachable", binding_dict(a, b)));
        }
        return;
    }
}

/* "sip:<contact user>@<source>;transport=<t>": where the phone's packets come from (its NAT's
 * mapping), with the user its Contact names. */
static void keepalive_target(const binding_t *b, char *out, size_t len) {
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

static int keepalive_wanted(RegistrarObject *r, const binding_t *b) {
    return r->keepalive.method != SS_KA_OFF && (b->nat || !r->keepalive.nat_only);
}

/* keepalive() -> keep-alives sent now: every binding whose time has come gets one. */
static PyObject *Registrar_keepalive(RegistrarObject *self, PyObject *unused) {
    UA_ONLY(NULL);
    ss_ka_t *ka = &self->keepalive;
    ss_ka_expire_probes(ka);
    if (ka->method == SS_KA_OFF) return PyLong_FromLong(0);
    pj_uint64_t now = now_ms();
    unsigned answer_ms = ka->interval_ms < 32000 ? ka->interval_ms : 32000;
    long n = 0;
    for (int i = 0; i < 4096; i++)
        for (aor_t *a = self->aors[i]; a; a = a->next)
            for (int j = 0; j < a->count; j++) {
                binding_t *b = &a->contacts[j];
                if (b->expires_at <= now || !keepalive_wanted(self, b)) continue;
                if (!b->ka.next_at) b->ka.next_at = now + ka->interval_ms; /* keep-alives were just turned on */
                if (now < b->ka.next_at || b->ka.probing) continue;
                b->ka.next_at = now + ka->interval_ms;
                n++;
                if (ka->method == SS_KA_CRLF) {
                    ss_ka_send_crlf(ka, b->source_ip, b->source_port, b->transport);
                    continue;
                }
                char target[PJ_INET6_ADDRSTRLEN + 200], to[1100];
                keepalive_target(b, target, sizeof(target));
                snprintf(to, sizeof(to), "<%s>", b->contact);
                b->ka.probing = 1;
                /* a = the AOR, b may move (bindings shift on removal): the answer finds it by id */
                pj_uint64_t id = b->ka.id;
                if (ss_ka_send_options(ka, a->username, id, target, to, answer_ms) != PJ_SUCCESS) {
                    ka->failed++;
                    ss_registrar_keepalive_result(a->username, id, 0, 0);
                }
            }
    return PyLong_FromLong(n);
}

/* configure_keepalive(method, interval_seconds, nat_only, max_failures, from_uri). */
static PyObject *Registrar_configure_keepalive(RegistrarObject *self, PyObject *args, PyObject *kwds) {
    UA_ONLY(NULL);
    static char *kwlist[] = {"method", "interval_seconds", "nat_only", "max_failures", "from_uri", NULL};
    const char *method = "options", *from_uri = "sip:softswitch@localhost";
    double interval = 30;
    int nat_only = 1;
    unsigned max_failures = 3;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|sdpIs", kwlist, &method, &interval, &nat_only, &max_failures,
                                     &from_uri))
        return NULL;
    ss_ka_method_t m;
    if (strcmp(method, "off") == 0) m = SS_KA_OFF;
    else if (strcmp(method, "options") == 0) m = SS_KA_OPTIONS;
    else if (strcmp(method, "crlf") == 0) m = SS_KA_CRLF;
    else {
        PyErr_Format(PyExc_ValueError, "keep-alive method must be options, crlf or off, not %s", method);
        return NULL;
    }
    if (interval < 0.1 || interval > 86400) {
        PyErr_SetString(PyExc_ValueError, "keep-alive interval_seconds must be between 0.1 and 86400");
        return NULL;
    }
    ss_ka_t *ka = &self->keepalive;
    unsigned interval_ms = (unsigned)(interval * 1000 + 0.5);
    if (interval_ms != ka->interval_ms || m != ka->method) {
        /* A new policy starts a fresh schedule: every binding's next keep-alive is one interval away. */
        for (int i = 0; i < 4096; i++)
            for (aor_t *a = self->aors[i]; a; a = a->next)
                for (int j = 0; j < a->count; j++) a->contacts[j].ka.next_at = 0;
    }
    ka->method = m;
    ka->interval_ms = interval_ms;
    ka->nat_only = nat_only;
    ka->max_failures = max_failures;
    snprintf(ka->from_uri, sizeof(ka->from_uri), "%s", from_uri);
    Py_RETURN_NONE;
}

static void keepalive_stats(RegistrarObject *r, PyObject *d) {
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



static int Registrar_init(RegistrarObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"realm", NULL};
    const char *realm = "softswitch";
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|s", kwlist, &realm)) return -1;
    if (self->installed) {
        PyErr_SetString(PyExc_RuntimeError, "Registrar already initialised");
        return -1;
    }
    if (the_registrar) {
        PyErr_SetString(PyExc_RuntimeError, "a Registrar is already installed on this endpoint");
        return -1;
    }
    if (ss_require_pj_thread()) return -1;
    snprintf(self->realm, sizeof(self->realm), "%s", realm);
    self->min_expires = 60;
    self->max_expires = 3600;
    self->default_expires = 600;
    self->nonce_ttl = 300;
    self->fail_limit = 10;
    self->fail_window = 60;
    self->block_seconds = 300;
    self->flood_rate = 0;
    self->flood_burst = 100;
    self->trunk_options_rate = 10;
    self->trunk_requests_rate = 50;
    self->challenge_md5 = 1;
    self->challenge_sha256 = 1;
    self->sha256_first = 0;
    pj_create_random_string((char *)self->secret, sizeof(self->secret));
    self->events = PyList_New(0);
    if (!self->events) return -1;

    memset(&self->mod, 0, sizeof(self->mod));
    self->mod.name = pj_str("mod-softswitch-registrar");
    self->mod.id = -1;
    self->mod.priority = PJSIP_MOD_PRIORITY_APPLICATION - 1; /* 63: before pjsua (64) */
    self->mod.on_rx_request = &on_rx_request;
    memset(&self->nat_mod, 0, sizeof(self->nat_mod));
    self->nat_mod.name = pj_str("mod-softswitch-nat");
    self->nat_mod.id = -1;
    self->nat_mod.priority = PJSIP_MOD_PRIORITY_TSX_LAYER - 1;
    self->nat_mod.on_rx_request = &nat_on_rx;
    self->nat_mod.on_rx_response = &nat_on_rx;
    memset(&self->count_mod, 0, sizeof(self->count_mod));
    self->count_mod.name = pj_str("mod-softswitch-response-counter");
    self->count_mod.id = -1;
    self->count_mod.priority = PJSIP_MOD_PRIORITY_TRANSPORT_LAYER + 1;
    self->count_mod.on_rx_response = &count_on_rx_response;
    self->count_mod.on_tx_response = &count_on_tx_response;
    self->retry_after = 5;
    self->cps_at = now_ms();
    pjsip_endpoint *endpt = pjsua_get_pjsip_endpt();
    pj_status_t st = pjsip_endpt_register_module(endpt, &self->mod);
    if (st != PJ_SUCCESS) {
        ss_raise_pj("pjsip_endpt_register_module", st);
        return -1;
    }
    st = pjsip_endpt_register_module(endpt, &self->nat_mod);
    if (st != PJ_SUCCESS) {
        pjsip_endpt_unregister_module(endpt, &self->mod);
        ss_raise_pj("pjsip_endpt_register_module (nat)", st);
        return -1;
    }
    st = pjsip_endpt_register_module(endpt, &self->count_mod);
    if (st != PJ_SUCCESS) {
        pjsip_endpt_unregister_module(endpt, &self->nat_mod);
        pjsip_endpt_unregister_module(endpt, &self->mod);
        ss_raise_pj("pjsip_endpt_register_module (response counter)", st);
        return -1;
    }
    self->keepalive.method = SS_KA_OPTIONS;
    self->keepalive.interval_ms = 30000;
    self->keepalive.nat_only = 1;
    self->keepalive.max_failures = 3;
    snprintf(self->keepalive.from_uri, sizeof(self->keepalive.from_uri), "sip:softswitch@localhost");
    if (ss_ka_install(&self->keepalive) < 0) {
        pjsip_endpt_unregister_module(endpt, &self->count_mod);
        pjsip_endpt_unregister_module(endpt, &self->nat_mod);
        pjsip_endpt_unregister_module(endpt, &self->mod);
        return -1;
    }
    pj_str_t reg = pj_str("REGISTER");
    pjsip_endpt_add_capability(endpt, &self->mod, PJSIP_H_ALLOW, NULL, 1, &reg);
    if (ss_malformed_install() < 0) PJ_LOG(2, ("registrar.c", "No room for the malformed-request handler"));
    self->installed = 1;
    the_registrar = self;
    return 0;
}

static void free_trunks(RegistrarObject *r) {
    for (int i = 0; i < r->ntrunks; i++) {
        free(r->trunks[i].ref);
        free(r->trunks[i].ip);
        free(r->trunks[i].codecs);
    }
    free(r->trunks);
    r->trunks = NULL;
    r->ntrunks = 0;
}

static void free_agents(RegistrarObject *r) {
    for (int i = 0; i < r->nblocked_agents; i++) free(r->blocked_agents[i]);
    free(r->blocked_agents);
    r->blocked_agents = NULL;
    r->nblocked_agents = 0;
}

static void free_aors(RegistrarObject *r) {
    for (int i = 0; i < 4096; i++) {
        aor_t *a = r->aors[i];
        while (a) {
            aor_t *next = a->next;
            for (int j = 0; j < a->count; j++) binding_free(&a->contacts[j]);
            free(a->username);
            free(a->extension);
            free(a->group);
            free(a);
            a = next;
        }
        r->aors[i] = NULL;
    }
    for (int i = 0; i < CLASSIFY_SLOTS; i++) {
        free(r->classified[i].call_id);
        free(r->classified[i].ref);
        free(r->classified[i].extension);
        free(r->classified[i].group);
        memset(&r->classified[i], 0, sizeof(classify_slot_t));
    }
}

static PyObject *Registrar_close(RegistrarObject *self, PyObject *unused) {
    if (self->installed) {
        if (pjsua_get_state() != PJSUA_STATE_NULL) {
            free_retrans(self);
            ss_ka_uninstall(&self->keepalive);
            pjsip_endpt_unregister_module(pjsua_get_pjsip_endpt(), &self->count_mod);
            pjsip_endpt_unregister_module(pjsua_get_pjsip_endpt(), &self->nat_mod);
            pjsip_endpt_unregister_module(pjsua_get_pjsip_endpt(), &self->mod);
        }
        self->installed = 0;
        if (the_registrar == self) the_registrar = NULL;
    }
    Py_RETURN_NONE;
}

static void Registrar_dealloc(RegistrarObject *self) {
    if (self->installed && ss_is_pj_thread()) Registrar_close(self, NULL);
    if (the_registrar == self) the_registrar = NULL;
    free_users(self);
    free_aors(self);
    free_trunks(self);
    free_agents(self);
    Py_XDECREF(self->events);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* configure(**policy): expiry bounds, nonce lifetime, throttling, flood limit, algorithms. */
static PyObject *Registrar_configure(RegistrarObject *self, PyObject *args, PyObject *kwds) {
    UA_ONLY(NULL);
    static char *kwlist[] = {"min_expires", "max_expires", "default_expires", "nonce_ttl", "fail_limit",
                             "fail_window", "block_seconds", "flood_rate", "flood_burst", "md5", "sha256",
                             "sha256_first", "trunk_options_rate", "trunk_requests_rate", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|IIIIIIIddpppdd", kwlist, &self->min_expires, &self->max_expires,
                                     &self->default_expires, &self->nonce_ttl, &self->fail_limit, &self->fail_window,
                                     &self->block_seconds, &self->flood_rate, &self->flood_burst,
                                     &self->challenge_md5, &self->challenge_sha256, &self->sha256_first,
                                     &self->trunk_options_rate, &self->trunk_requests_rate))
        return NULL;
    if (!self->challenge_md5 && !self->challenge_sha256) {
        self->challenge_md5 = 1;
        PyErr_SetString(PyExc_ValueError, "at least one digest algorithm (md5, sha256) must be enabled");
        return NULL;
    }
    Py_RETURN_NONE;
}

/* set_users([(username, password, extension, group), ...]): replaces the credential table. */
static PyObject *Registrar_set_users(RegistrarObject *self, PyObject *arg) {
    UA_ONLY(NULL);
    PyObject *seq = PySequence_Fast(arg, "set_users expects a sequence of (username, password, extension, group)");
    if (!seq) return NULL;
    user_t *fresh[1024] = {0};
    int ndynamic = 0;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    for (Py_ssize_t i = 0; i < n; i++) {
        const char *username, *password, *extension, *group;
        int srtp = SRTP_UNTOUCHED;
        double cps = 0;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "ssss|id", &username, &password, &extension, &group,
                              &srtp, &cps)) {
            Py_DECREF(seq);
            for (int k = 0; k < 1024; k++)
                while (fresh[k]) {
                    user_t *next = fresh[k]->next;
                    free(fresh[k]->username); free(fresh[k]->extension); free(fresh[k]->group); free(fresh[k]);
                    fresh[k] = next;
                }
            return NULL;
        }
        user_t *u = calloc(1, sizeof(user_t));
        u->username = strdup(username);
        u->extension = strdup(extension);
        u->group = strdup(group);
        u->srtp = srtp;
        u->cps = cps;
        if (strncmp(group, "trunk:", 6) == 0) ndynamic++;
        const char *parts[3] = {username, self->realm, password};
        size_t lens[3] = {strlen(username), strlen(self->realm), strlen(password)};
        digest_hex(ALG_MD5, u->ha1_md5, parts, lens, 3);
        digest_hex(ALG_SHA256, u->ha1_sha256, parts, lens, 3);
        pj_uint32_t h = fnv1a(username, strlen(username)) % 1024;
        u->next = fresh[h];
        fresh[h] = u;
    }
    Py_DECREF(seq);
    free_users(self);
    memcpy(self->users, fresh, sizeof(fresh));
    self->ndynamic_trunks = ndynamic;
    Py_RETURN_NONE;
}

/* set_trunks([(ref, ip, port[, codecs[, srtp[, max_calls_per_second]]]), ...]): fixed-address
 * trunks, matched by source (port 0 = any); codecs is ",pcmu,telephone-event," style, the formats
 * offers from that trunk may keep; srtp an srtp_use_t; rows with the same ref share one call-rate
 * bucket (0 = no limit), which starts full. */
static PyObject *Registrar_set_trunks(RegistrarObject *self, PyObject *arg) {
    UA_ONLY(NULL);
    PyObject *seq = PySequence_Fast(arg, "set_trunks expects a sequence of (ref, ip, port)");
    if (!seq) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    trunk_t *fresh = calloc((size_t)n + 1, sizeof(trunk_t));
    for (Py_ssize_t i = 0; i < n; i++) {
        const char *ref, *ip, *codecs = NULL;
        int port, srtp = SRTP_UNTOUCHED;
        double cps = 0;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "ssi|zid", &ref, &ip, &port, &codecs, &srtp, &cps)) {
            for (Py_ssize_t k = 0; k < i; k++) { free(fresh[k].ref); free(fresh[k].ip); free(fresh[k].codecs); }
            free(fresh);
            Py_DECREF(seq);
            return NULL;
        }
        fresh[i].ref = strdup(ref);
        fresh[i].ip = strdup(ip);
        fresh[i].port = port;
        fresh[i].codecs = codecs && codecs[0] ? strdup(codecs) : NULL;
        fresh[i].srtp = srtp;
        fresh[i].cps = cps;
        fresh[i].bucket_row = (int)i;
        for (Py_ssize_t k = 0; k < i; k++)
            if (strcmp(fresh[k].ref, ref) == 0) {
                fresh[i].bucket_row = (int)k;
                break;
            }
    }
    Py_DECREF(seq);
    free_trunks(self);
    self->trunks = fresh;
    self->ntrunks = (int)n;
    Py_RETURN_NONE;
}

/* set_refused_user_agents([substring, ...]): case-insensitive User-Agent substrings to drop. */
static PyObject *Registrar_set_refused_user_agents(RegistrarObject *self, PyObject *arg) {
    UA_ONLY(NULL);
    PyObject *seq = PySequence_Fast(arg, "expects a sequence of strings");
    if (!seq) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    char **fresh = calloc((size_t)n + 1, sizeof(char *));
    for (Py_ssize_t i = 0; i < n; i++) {
        const char *s = PyUnicode_AsUTF8(PySequence_Fast_GET_ITEM(seq, i));
        if (!s) {
            for (Py_ssize_t k = 0; k < i; k++) free(fresh[k]);
            free(fresh);
            Py_DECREF(seq);
            return NULL;
        }
        fresh[i] = strdup(s);
        for (char *p = fresh[i]; *p; p++) *p = (char)tolower((unsigned char)*p);
    }
    Py_DECREF(seq);
    free_agents(self);
    self->blocked_agents = fresh;
    self->nblocked_agents = (int)n;
    Py_RETURN_NONE;
}

/* expire() -> number of bindings that expired now (each also queued as an "expired" event). */
static PyObject *Registrar_expire(RegistrarObject *self, PyObject *unused) {
    UA_ONLY(NULL);
    pj_uint64_t now = now_ms();
    long n = 0;
    for (int i = 0; i < 4096; i++)
        for (aor_t *a = self->aors[i]; a; a = a->next)
            for (int j = a->count - 1; j >= 0; j--)
                if (a->contacts[j].expires_at <= now) {
                    remove_binding(self, a, j, "expired");
                    n++;
                }
    for (int i = 0; i < CLASSIFY_SLOTS; i++) {
        classify_slot_t *s = &self->classified[i];
        if (s->call_id && now - s->at > 64000) {
            free(s->call_id); free(s->ref); free(s->extension); free(s->group);
            memset(s, 0, sizeof(*s));
        }
    }
    return PyLong_FromLong(n);
}

static PyObject *Registrar_poll_events(RegistrarObject *self, PyObject *unused) {
    UA_ONLY(NULL);
    PyObject *out = self->events;
    self->events = PyList_New(0);
    return out;
}

/* bindings(username=None) -> list of dicts, live bindings only. */
static PyObject *Registrar_bindings(RegistrarObject *self, PyObject *args) {
    UA_ONLY(NULL);
    const char *username = NULL;
    if (!PyArg_ParseTuple(args, "|z", &username)) return NULL;
    PyObject *list = PyList_New(0);
    pj_uint64_t now = now_ms();
    for (int i = 0; i < 4096 && list; i++)
        for (aor_t *a = self->aors[i]; a; a = a->next) {
            if (username && strcmp(username, a->username) != 0) continue;
            for (int j = 0; j < a->count; j++) {
                if (a->contacts[j].expires_at <= now) continue;
                PyObject *d = binding_dict(a, &a->contacts[j]);
                if (!d || PyList_Append(list, d) < 0) {
                    Py_XDECREF(d);
                    Py_DECREF(list);
                    return NULL;
                }
                Py_DECREF(d);
            }
        }
    return list;
}

/* take_classification(call_id) -> (kind, ref, extension, group) or None, removing it. */
static PyObject *Registrar_take_classification(RegistrarObject *self, PyObject *arg) {
    UA_ONLY(NULL);
    Py_ssize_t len;
    const char *cid = PyUnicode_AsUTF8AndSize(arg, &len);
    if (!cid) return NULL;
    classify_slot_t *s = &self->classified[fnv1a(cid, (size_t)len) % CLASSIFY_SLOTS];
    if (!s->call_id || strcmp(s->call_id, cid) != 0) Py_RETURN_NONE;
    PyObject *out = Py_BuildValue("(sszz)", s->kind, s->ref, s->extension, s->group);
    free(s->call_id); free(s->ref); free(s->extension); free(s->group);
    memset(s, 0, sizeof(*s));
    return out;
}

static PyObject *Registrar_unblock(RegistrarObject *self, PyObject *arg) {
    UA_ONLY(NULL);
    const char *ip = PyUnicode_AsUTF8(arg);
    if (!ip) return NULL;
    for (int i = 0; i < SOURCE_SLOTS; i++)
        if (strcmp(self->sources[i].ip, ip) == 0) memset(&self->sources[i], 0, sizeof(source_slot_t));
    Py_RETURN_NONE;
}

static PyObject *Registrar_blocked_sources(RegistrarObject *self, PyObject *unused) {
    UA_ONLY(NULL);
    PyObject *list = PyList_New(0);
    pj_uint64_t now = now_ms();
    for (int i = 0; i < SOURCE_SLOTS && list; i++)
        if (self->sources[i].ip[0] && self->sources[i].blocked_until > now) {
            PyObject *item = Py_BuildValue("(sd)", self->sources[i].ip,
                                           (double)(self->sources[i].blocked_until - now) / 1000.0);
            PyList_Append(list, item);
            Py_XDECREF(item);
        }
    return list;
}

static PyObject *Registrar_stats(RegistrarObject *self, PyObject *unused) {
    UA_ONLY(NULL);
    long bindings = 0;
    for (int i = 0; i < 4096; i++)
        for (aor_t *a = self->aors[i]; a; a = a->next) bindings += a->count;
    PyObject *d = Py_BuildValue("{s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:l,s:K,s:K,s:K,s:K,s:l,s:O}", "register",
                         self->n_register, "register_ok", self->n_register_ok, "challenges", self->n_challenges,
                         "auth_failures", self->n_auth_failures, "dropped", self->n_dropped, "invite_passed",
                         self->n_invite_passed, "invite_challenged", self->n_invite_challenged, "invite_refused",
                         self->n_invite_refused, "interval_too_brief", self->n_423, "out_of_order", self->n_500,
                         "retransmissions", self->n_retransmissions, "bindings", bindings, "overload_concurrent",
                         self->n_overload[REFUSED_CONCURRENT], "overload_rate", self->n_overload[REFUSED_RATE],
                         "overload_cpu", self->n_overload[REFUSED_CPU], "overload_loop_lag",
                         self->n_overload[REFUSED_LOOP_LAG], "live_inbound",
                         self->live_inbound + self->passed_since_sync, "overloaded",
                         self->overloaded ? Py_True : Py_False);
    if (!d) return NULL;
    PyObject *trunk_rate = PyLong_FromUnsignedLongLong(self->n_overload[REFUSED_TRUNK_RATE]);
    if (!trunk_rate || PyDict_SetItemString(d, "overload_trunk_rate", trunk_rate) < 0) PyErr_Clear();
    Py_XDECREF(trunk_rate);
    for (int i = 0; i < SEC_DECISIONS; i++) { /* "security_<decision>": the edge's decisions, by name */
        char key[64];
        snprintf(key, sizeof(key), "security_%s", SECURITY_DECISION_NAMES[i]);
        PyObject *n = PyLong_FromUnsignedLongLong(self->n_security[i]);
        if (!n || PyDict_SetItemString(d, key, n) < 0) PyErr_Clear();
        Py_XDECREF(n);
    }
    keepalive_stats(self, d);
    ss_malformed_stats(d);
    return d;
}

/* configure_limits(max_concurrent, calls_per_second, retry_after): 0 turns a limit off. */
static PyObject *Registrar_configure_limits(RegistrarObject *self, PyObject *args, PyObject *kwds) {
    UA_ONLY(NULL);
    static char *kwlist[] = {"max_concurrent", "calls_per_second", "retry_after", NULL};
    unsigned max_concurrent = 0, retry_after = 5;
    double cps = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "IdI", kwlist, &max_concurrent, &cps, &retry_after)) return NULL;
    if (cps < 0) {
        PyErr_SetString(PyExc_ValueError, "calls_per_second must be >= 0 (0 = no limit)");
        return NULL;
    }
    self->max_concurrent = max_concurrent;
    self->retry_after = retry_after;
    if (cps != self->cps) {
        self->cps = cps;
        self->cps_tokens = cps < 1.0 ? 1.0 : cps; /* a new limit starts with a full bucket */
        self->cps_at = now_ms();
    }
    Py_RETURN_NONE;
}

/* set_overloaded(None | "cpu" | "loop_lag"): while set, every new call is refused. */
static PyObject *Registrar_set_overloaded(RegistrarObject *self, PyObject *arg) {
    UA_ONLY(NULL);
    if (arg == Py_None) {
        self->overloaded = OVERLOAD_NONE;
        Py_RETURN_NONE;
    }
    const char *reason = PyUnicode_Check(arg) ? PyUnicode_AsUTF8(arg) : NULL;
    if (reason && strcmp(reason, "cpu") == 0) self->overloaded = OVERLOAD_CPU;
    else if (reason && strcmp(reason, "loop_lag") == 0) self->overloaded = OVERLOAD_LOOP_LAG;
    else {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "set_overloaded expects None, \"cpu\" or \"loop_lag\"");
        return NULL;
    }
    Py_RETURN_NONE;
}

/* sync_live_inbound(n): the live inbound legs now; INVITEs admitted before are in n. */
static PyObject *Registrar_sync_live_inbound(RegistrarObject *self, PyObject *arg) {
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred()) return NULL;
    self->live_inbound = n < 0 ? 0 : n;
    self->passed_since_sync = 0;
    Py_RETURN_NONE;
}

/* overload_refusals() -> (concurrent, rate, cpu, loop_lag, trunk_rate): cumulative, cheap to poll. */
static PyObject *Registrar_overload_refusals(RegistrarObject *self, PyObject *unused) {
    return Py_BuildValue("(KKKKK)", self->n_overload[REFUSED_CONCURRENT], self->n_overload[REFUSED_RATE],
                         self->n_overload[REFUSED_CPU], self->n_overload[REFUSED_LOOP_LAG],
                         self->n_overload[REFUSED_TRUNK_RATE]);
}

/* sip_response_counts() -> {("sent" | "received", code): count}, non-zero entries only. */
static PyObject *Registrar_sip_response_counts(RegistrarObject *self, PyObject *unused) {
    PyObject *out = PyDict_New();
    if (!out) return NULL;
    for (int dir = 0; dir < 2; dir++) {
        unsigned long long *counts = dir ? self->responses_received : self->responses_sent;
        for (int code = 0; code < 700; code++) {
            unsigned long long n = __atomic_load_n(&counts[code], __ATOMIC_RELAXED);
            if (!n) continue;
            PyObject *key = Py_BuildValue("(si)", dir ? "received" : "sent", code);
            PyObject *value = PyLong_FromUnsignedLongLong(n);
            if (!key || !value || PyDict_SetItem(out, key, value) < 0) {
                Py_XDECREF(key);
                Py_XDECREF(value);
                Py_DECREF(out);
                return NULL;
            }
            Py_DECREF(key);
            Py_DECREF(value);
        }
    }
    return out;
}

static PyObject *Registrar_get_realm(RegistrarObject *self, void *c) { return PyUnicode_FromString(self->realm); }

static PyMethodDef Registrar_methods[] = {
    {"configure", (PyCFunction)(void (*)(void))Registrar_configure, METH_VARARGS | METH_KEYWORDS, "Set the policy."},
    {"set_users", (PyCFunction)Registrar_set_users, METH_O, "Replace the credential table."},
    {"set_trunks", (PyCFunction)Registrar_set_trunks, METH_O, "Replace the fixed-address trunk table."},
    {"set_refused_user_agents", (PyCFunction)Registrar_set_refused_user_agents, METH_O, "User-Agent substrings to drop."},
    {"expire", (PyCFunction)Registrar_expire, METH_NOARGS, "Remove expired bindings; returns how many."},
    {"poll_events", (PyCFunction)Registrar_poll_events, METH_NOARGS, "Events since the last poll: [(kind, dict)]."},
    {"bindings", (PyCFunction)Registrar_bindings, METH_VARARGS, "Live bindings, optionally of one username."},
    {"take_classification", (PyCFunction)Registrar_take_classification, METH_O, "How an admitted INVITE was classified."},
    {"unblock", (PyCFunction)Registrar_unblock, METH_O, "Lift a throttle on a source IP."},
    {"blocked_sources", (PyCFunction)Registrar_blocked_sources, METH_NOARGS, "[(ip, seconds left)]."},
    {"stats", (PyCFunction)Registrar_stats, METH_NOARGS, "Counters."},
    {"configure_limits", (PyCFunction)(void (*)(void))Registrar_configure_limits, METH_VARARGS | METH_KEYWORDS,
     "Overload limits: max_concurrent, calls_per_second, retry_after (0 = off)."},
    {"set_overloaded", (PyCFunction)Registrar_set_overloaded, METH_O, "None, 'cpu' or 'loop_lag'."},
    {"sync_live_inbound", (PyCFunction)Registrar_sync_live_inbound, METH_O, "Live inbound legs now."},
    {"overload_refusals", (PyCFunction)Registrar_overload_refusals, METH_NOARGS,
     "(concurrent, rate, cpu, loop_lag, trunk_rate) refusals so far."},
    {"sip_response_counts", (PyCFunction)Registrar_sip_response_counts, METH_NOARGS,
     "{(\"sent\"|\"received\", code): count}."},
    {"keepalive", (PyCFunction)Registrar_keepalive, METH_NOARGS, "Send the keep-alives that are due; returns how many."},
    {"configure_keepalive", (PyCFunction)(void (*)(void))Registrar_configure_keepalive, METH_VARARGS | METH_KEYWORDS,
     "Keep-alive policy: method (options, crlf, off), interval_seconds, nat_only, max_failures, from_uri."},
    {"close", (PyCFunction)Registrar_close, METH_NOARGS, "Unregister the module (UA thread)."},
    {NULL}};

static PyGetSetDef Registrar_getset[] = {{"realm", (getter)Registrar_get_realm, NULL, NULL, NULL}, {NULL}};

PyTypeObject RegistrarType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "_softswitch_native.Registrar",
    .tp_basicsize = sizeof(RegistrarObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The registrar and INVITE gate: a pjsip module at priority 63 on the pjsua endpoint.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Registrar_init,
    .tp_dealloc = (destructor)Registrar_dealloc,
    .tp_methods = Registrar_methods,
    .tp_getset = Registrar_getset,
};
