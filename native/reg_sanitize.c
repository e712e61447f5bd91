/* What the edge rewrites before pjsua sees a request: a NATed phone's Contact (to where its
 * packets come from), SIP INFO DTMF as dtmf-relay, SDP connection addresses pjmedia cannot use,
 * and an offer's codecs and SRTP crypto lines per source. Rewriting only: admission decisions
 * are in reg_admission.c. */
#include "registrar_internal.h"

/* ---- NAT: phones whose Contact is not where their packets come from ---------------------------- */

static int nat_source(RegistrarObject *r, const char *ip, int port) {
    if (!r->nat_bindings) return 0;
    pj_uint64_t now = ss_monotonic_ms();
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
pj_bool_t ss_reg_nat_on_rx(pjsip_rx_data *rdata) {
    if (ss_reg_the_registrar && rdata->msg_info.msg) {
        if (rdata->msg_info.msg->type == PJSIP_RESPONSE_MSG ||
            rdata->msg_info.msg->line.req.method.id != PJSIP_REGISTER_METHOD)
            fix_nated_contact(ss_reg_the_registrar, rdata);
        respond_to_source(rdata);
        dtmf_info_as_relay(rdata);
        pjsip_msg *msg = rdata->msg_info.msg;
        if (sanitize_sdp_addresses(rdata) && msg->type == PJSIP_REQUEST_MSG &&
            msg->line.req.method.id == PJSIP_INVITE_METHOD && rdata->msg_info.to && !rdata->msg_info.to->tag.slen) {
            /* A new call offering only media we cannot reach: refused. (In a dialog the silenced
             * offer goes on: refusing a re-INVITE is the dialog's business.) */
            ss_reg_respond(rdata, 488, "Not Acceptable Here");
            return PJ_TRUE;
        }
    }
    return PJ_FALSE;
}

/* ---- offers: codecs and SRTP crypto lines per source (the gate calls ss_reg_filter_offer) ---- */

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
int ss_reg_filter_offer(pjsip_rx_data *rdata, const char *allowed, int srtp) {
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
