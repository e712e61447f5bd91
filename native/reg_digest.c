/* Digest authentication: stateless nonces bound to the source address, the nc replay guard,
 * the WWW-/Proxy-Authenticate challenges (also for the malformed-REGISTER path in malformed.c)
 * and verifying an Authorization header against the user table. Kept apart so that the rules a
 * credential must meet, and the nonce key's uses, can be read in one place. */
#include "registrar_internal.h"

/* ---- nonces: stateless, "<ts hex>.<hmac hex>", bound to the source address ------------------- */

static void nonce_mac(RegistrarObject *r, const char *ts_hex, const char *src_ip, char out[33]) {
    const char *parts[3] = {(const char *)r->secret, ts_hex, src_ip};
    size_t lens[3] = {sizeof(r->secret), strlen(ts_hex), strlen(src_ip)};
    ss_reg_digest_hex(ALG_MD5, out, parts, lens, 3);
}

/* "<seconds hex><8 hex unique>.<mac>": unique per challenge, so each nonce has its own nc. */
static void make_nonce(RegistrarObject *r, const char *src_ip, char out[80]) {
    static pj_uint32_t counter;
    char ts[32], mac[33];
    snprintf(ts, sizeof(ts), "%llx%08x", (unsigned long long)(ss_reg_wall_ms() / 1000), ++counter ^ pj_rand());
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
    unsigned long long now = ss_reg_wall_ms() / 1000;
    if (ts > now + 5 || now - ts > r->nonce_ttl) return -1;
    return 1;
}

/* nc must grow for each nonce; a retransmission (same Via branch) may repeat it. */
static int nc_fresh(RegistrarObject *r, const pj_str_t *nonce, unsigned long nc, pj_uint32_t branch) {
    pj_uint32_t key = ss_reg_fnv1a(nonce->ptr, (size_t)nonce->slen);
    pj_uint64_t now = ss_monotonic_ms();
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

/* ---- challenges ------------------------------------------------------------------------- */

void ss_reg_add_challenges(RegistrarObject *r, pjsip_tx_data *tdata, pjsip_rx_data *rdata, int proxy, int stale) {
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
    RegistrarObject *r = ss_reg_the_registrar;
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

/* ---- digest verification ----------------------------------------------------------------- */

/* Checks the Authorization (or Proxy-Authorization) header of rdata. Unknown users and wrong
 * passwords give the same result, so the two cannot be told apart from outside. */
auth_result_t ss_reg_verify_digest(RegistrarObject *r, pjsip_rx_data *rdata, int proxy, user_t **user_out) {
    pjsip_hdr_e type = proxy ? PJSIP_H_PROXY_AUTHORIZATION : PJSIP_H_AUTHORIZATION;
    pjsip_authorization_hdr *h = NULL, *it = NULL;
    /* Prefer credentials for our realm if the phone sent several. */
    while ((it = (pjsip_authorization_hdr *)pjsip_msg_find_hdr(rdata->msg_info.msg, type,
                                                                it ? it->next : NULL)) != NULL) {
        if (pj_stricmp2(&it->scheme, "Digest") == 0 && ss_reg_pjstr_eq(&it->credential.digest.realm, r->realm)) {
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
    if (!ss_reg_pjstr_eq(&c->realm, r->realm)) return AUTH_BAD;

    int fresh = check_nonce(r, &c->nonce, rdata->pkt_info.src_name);
    if (fresh == 0) return AUTH_BAD;

    user_t *u = ss_reg_find_user(r, &c->username);
    char expected[65];
    const pjsip_method *m = &rdata->msg_info.msg->line.req.method;
    char ha2[65];
    {
        const char *parts[2] = {m->name.ptr, c->uri.ptr};
        size_t lens[2] = {(size_t)m->name.slen, (size_t)c->uri.slen};
        ss_reg_digest_hex(alg, ha2, parts, lens, 2);
    }
    /* An unknown user is checked against a throwaway HA1, so timing does not tell either. */
    const char *ha1 = u ? (alg == ALG_SHA256 ? u->ha1_sha256 : u->ha1_md5) : "0000000000000000000000000000000000000000000000000000000000000000";
    size_t ha1len = alg == ALG_SHA256 ? 64 : 32;
    if (c->qop.slen) {
        if (pj_stricmp2(&c->qop, "auth") != 0 || c->nc.slen == 0 || c->cnonce.slen == 0) return AUTH_BAD;
        const char *parts[6] = {ha1, c->nonce.ptr, c->nc.ptr, c->cnonce.ptr, c->qop.ptr, ha2};
        size_t lens[6] = {ha1len, (size_t)c->nonce.slen, (size_t)c->nc.slen, (size_t)c->cnonce.slen,
                          (size_t)c->qop.slen, strlen(ha2)};
        ss_reg_digest_hex(alg, expected, parts, lens, 6);
    } else {
        const char *parts[3] = {ha1, c->nonce.ptr, ha2};
        size_t lens[3] = {ha1len, (size_t)c->nonce.slen, strlen(ha2)};
        ss_reg_digest_hex(alg, expected, parts, lens, 3);
    }
    if (!u || (size_t)c->response.slen != strlen(expected) ||
        pj_strnicmp2(&c->response, expected, strlen(expected)) != 0)
        return AUTH_BAD;
    if (fresh < 0) return AUTH_STALE;
    if (c->qop.slen) {
        char ncbuf[16];
        snprintf(ncbuf, sizeof(ncbuf), "%.*s", (int)c->nc.slen, c->nc.ptr);
        pjsip_via_hdr *via = rdata->msg_info.via;
        pj_uint32_t branch = via ? ss_reg_fnv1a(via->branch_param.ptr, (size_t)via->branch_param.slen) : 0;
        if (!nc_fresh(r, &c->nonce, strtoul(ncbuf, NULL, 16), branch)) return AUTH_STALE;
    }
    *user_out = u;
    return AUTH_OK;
}
