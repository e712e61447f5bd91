/* Per-source state: auth-failure throttling and the block list, flood control, and the limits a
 * trunk address gets instead of a block (OPTIONS and other non-call requests). One table keyed
 * by source IP, so every decision about "who is sending this" is made in one place. */
#include "registrar_internal.h"

/* ---- sources: auth-failure throttling and flood control ---------------------------------- */

source_slot_t *ss_reg_source_of(RegistrarObject *r, const char *ip) {
    pj_uint32_t h = ss_reg_fnv1a(ip, strlen(ip));
    pj_uint64_t now = ss_monotonic_ms();
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

int ss_reg_source_blocked(RegistrarObject *r, source_slot_t *s) { return s->blocked_until > ss_monotonic_ms(); }

/* Token bucket per source: 0 when this request is over the flood limit. */
int ss_reg_source_admit(RegistrarObject *r, source_slot_t *s) {
    if (r->flood_rate <= 0) return 1;
    pj_uint64_t now = ss_monotonic_ms();
    s->tokens += (double)(now - s->tokens_at) / 1000.0 * r->flood_rate;
    if (s->tokens > r->flood_burst) s->tokens = r->flood_burst;
    s->tokens_at = now;
    if (s->tokens < 1.0) return 0;
    s->tokens -= 1.0;
    return 1;
}

/* A trunk address's security events of one kind are logged at most this often (every one is counted). */

int ss_reg_trunk_log_due(pj_uint64_t *logged) {
    pj_uint64_t now = ss_monotonic_ms();
    if (*logged && now - *logged < TRUNK_LOG_INTERVAL_MS) return 0;
    *logged = now;
    return 1;
}

/* Takes a token from `b`: 0 when it is empty (a rate of 0 is no limit). */
int ss_reg_bucket_take(token_bucket_t *b, double rate, double burst) {
    if (rate <= 0) return 1;
    pj_uint64_t now = ss_monotonic_ms();
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
    pj_uint64_t now = ss_monotonic_ms();
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
void ss_reg_auth_failed(RegistrarObject *r, pjsip_rx_data *rdata, source_slot_t *s, int trunk_address,
                        const char *what) {
    r->n_auth_failures++;
    char detail[160];
    if (!trunk_address) {
        int blocked = failure_limit_reached(r, s);
        if (blocked) {
            s->blocked_until = ss_monotonic_ms() + (pj_uint64_t)r->block_seconds * 1000;
            r->n_security[SEC_BLOCKED_AUTH_FAILURES]++;
        }
        ss_reg_security_event(r, blocked ? "auth_failure_blocked" : "auth_failure", rdata, what);
        return;
    }
    r->n_security[SEC_TRUNK_AUTH_FAILURE]++;
    int at_limit = failure_limit_reached(r, s);
    if (at_limit) r->n_security[SEC_TRUNK_NOT_BLOCKED]++;
    pj_uint64_t now = ss_monotonic_ms();
    if (now < s->failures_quiet_until) return;
    if (at_limit) s->failures_quiet_until = now + (pj_uint64_t)r->fail_window * 1000;
    snprintf(detail, sizeof(detail), "%s; %s", what,
             at_limit ? "auth_failure_limit reached from a trunk address: not blocked, its calls go on"
                      : "from a trunk address: never blocked");
    ss_reg_security_event(r, at_limit ? "trunk_auth_failure_limit" : "trunk_auth_failure", rdata, detail);
}

/* ---- trunk addresses: never blocked, limited instead ------------------------------------ */

/* Whether `ip` is a trunk's: a fixed trunk's address (any source port: forging the port is as easy
 * as forging the address, and the throttling is per address), or where a dynamic trunk holds a
 * live registration. */
int ss_reg_is_trunk_address(RegistrarObject *r, const char *ip) {
    for (int i = 0; i < r->ntrunks; i++)
        if (strncmp(r->trunks[i].ip, "token:", 6) != 0 && strcmp(r->trunks[i].ip, ip) == 0) return 1;
    if (!r->ndynamic_trunks) return 0;
    pj_uint64_t now = ss_monotonic_ms();
    for (int i = 0; i < 1024; i++)
        for (user_t *u = r->users[i]; u; u = u->next) {
            if (strncmp(u->group, "trunk:", 6) != 0) continue;
            aor_t *a = ss_reg_find_aor(r, u->username, 0, u);
            for (int j = 0; a && j < a->count; j++)
                if (a->contacts[j].expires_at > now && strcmp(a->contacts[j].source_ip, ip) == 0) return 1;
        }
    return 0;
}

/* A trunk address's own limits, for requests that are not the trunk's calls: OPTIONS
 * (security.trunk_options_per_second), and REGISTER challenges and failures, INVITEs that match no
 * trunk and every other method (security.trunk_requests_per_second); each bucket holds two
 * seconds' worth. Over one, the request is dropped: not answered, so a forged flood sends nothing
 * to the real trunk, and never a block, so the trunk's INVITEs and OPTIONS within the rate go on.
 * Every drop is counted; one in TRUNK_LOG_INTERVAL_MS is logged. */
int ss_reg_trunk_limit_admits(RegistrarObject *r, pjsip_rx_data *rdata, source_slot_t *s, trunk_limit_t which) {
    int options = which == TRUNK_OPTIONS;
    double rate = options ? r->trunk_options_rate : r->trunk_requests_rate;
    if (ss_reg_bucket_take(options ? &s->trunk_options : &s->trunk_requests, rate, 2 * rate)) return 1;
    r->n_dropped++;
    r->n_security[options ? SEC_TRUNK_OPTIONS_DROPPED : SEC_TRUNK_REQUESTS_DROPPED]++;
    if (ss_reg_trunk_log_due(options ? &s->options_logged : &s->requests_logged))
        ss_reg_security_event(r, options ? "trunk_options_limited" : "trunk_requests_limited", rdata,
                       options ? "OPTIONS from a trunk address over security.trunk_options_per_second: dropped, "
                                 "the address is not blocked"
                               : "request from a trunk address over security.trunk_requests_per_second: dropped, "
                                 "the address is not blocked");
    return 0;
}
