/* Answers to malformed and oversized SIP requests (RFC 4475, RFC 3261 8.2 and 21.5.14).
 *
 * Two paths:
 *   - pjsip drops a request it cannot parse (PJSIP_EINVALIDMSG), one that lacks a mandatory header
 *     (PJSIP_EMISSINGHDR) or a TCP message over PJSIP_MAX_PKT_LEN (PJSIP_ERXOVERFLOW) without an
 *     answer. ss_malformed_on_drop scans the raw bytes (start line, Via, CSeq, Call-ID, From, To)
 *     and answers statelessly with raw bytes, back to the packet's source over the same transport
 *     (the registrar makes every parsed request's answer go to its source too, see
 *     respond_to_source): 505, 416, 501 or 400 with a reason naming the problem; 513 for an
 *     oversized TCP request, whose connection is then closed (its framing is lost).
 *   - Requests pjsip parses but that are invalid or ask for what softswitch cannot do:
 *     ss_validate_request, called by the registrar for initial requests, answers 400, 420 or 406.
 *
 * Never answered: responses, ACKs, requests without a Via or CSeq to build an answer from. */
#include "softswitch_native.h"

#include <ctype.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#define MAX_ANSWER 2048
#define MAX_FIELD 512

/* Answers sent, by status code (read by the registrar's stats for /metrics); UA thread only. */
static unsigned long long g_answers[700];

/* ---- raw scanning ------------------------------------------------------------------------------- */

typedef struct {
    const char *ptr;
    size_t len;
} span_t;

/* The raw message's headers we need, each its first occurrence, unfolded (folds kept as they are:
 * the answer copies them, which is allowed). */
typedef struct {
    span_t method, uri, version, start_line;
    int start_parts; /* space-separated parts of the start line */
    span_t via, cseq, call_id, from, to, content_length, authorization;
    int n_via, n_cseq, n_call_id, n_from, n_to;
} raw_msg_t;

static int is_token_char(unsigned char c) { return isalnum(c) || (c && strchr("-.!%*_+`'~", c)); }

static int span_ieq(span_t s, const char *word) {
    size_t n = strlen(word);
    return s.len == n && strncasecmp(s.ptr, word, n) == 0;
}

static span_t trim(span_t s) {
    while (s.len && (s.ptr[0] == ' ' || s.ptr[0] == '\t' || s.ptr[0] == '\r' || s.ptr[0] == '\n')) s.ptr++, s.len--;
    while (s.len && strchr(" \t\r\n", s.ptr[s.len - 1])) s.len--;
    return s;
}

/* The end of the header block: the first empty line, or the end of the data. */
static size_t header_end(const char *p, size_t len) {
    for (size_t i = 0; i + 1 < len; i++) {
        if (p[i] == '\n' && p[i + 1] == '\n') return i + 1;
        if (i + 3 < len && p[i] == '\r' && p[i + 1] == '\n' && p[i + 2] == '\r' && p[i + 3] == '\n') return i + 2;
    }
    return len;
}

static void note_header(raw_msg_t *m, span_t name, span_t value) {
    struct {
        const char *longname, *compact;
        span_t *field;
        int *count;
    } known[] = {
        {"Via", "v", &m->via, &m->n_via},          {"CSeq", NULL, &m->cseq, &m->n_cseq},
        {"Call-ID", "i", &m->call_id, &m->n_call_id}, {"From", "f", &m->from, &m->n_from},
        {"To", "t", &m->to, &m->n_to},             {"Content-Length", "l", &m->content_length, NULL},
        {"Authorization", NULL, &m->authorization, NULL},
    };
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++) {
        if (!span_ieq(name, known[i].longname) && !(known[i].compact && span_ieq(name, known[i].compact))) continue;
        if (!known[i].field->ptr) *known[i].field = value;
        if (known[i].count) (*known[i].count)++;
        return;
    }
}

/* Splits the raw bytes into start line and headers (continuation lines belong to their header). */
static void scan_raw(const char *data, size_t len, raw_msg_t *m) {
    memset(m, 0, sizeof(*m));
    size_t end = header_end(data, len), i = 0;
    while (i < end && data[i] != '\r' && data[i] != '\n') i++;
    m->start_line = (span_t){data, i};
    /* start line parts, split on single spaces so that doubled or trailing ones show */
    span_t parts[3] = {{0}};
    size_t from = 0;
    for (size_t k = 0; k <= m->start_line.len; k++) {
        if (k == m->start_line.len || data[k] == ' ') {
            if (m->start_parts < 3) parts[m->start_parts] = (span_t){data + from, k - from};
            m->start_parts++;
            from = k + 1;
        }
    }
    m->method = parts[0], m->uri = parts[1], m->version = parts[2];
    while (i < end) {
        while (i < end && (data[i] == '\r' || data[i] == '\n')) i++;
        size_t line = i;
        /* the header runs to a line end not followed by a space or tab (a fold) */
        size_t stop = i;
        while (stop < end) {
            if (data[stop] == '\n' && !(stop + 1 < end && (data[stop + 1] == ' ' || data[stop + 1] == '\t'))) break;
            stop++;
        }
        const char *colon = memchr(data + line, ':', stop - line);
        if (colon) {
            span_t name = trim((span_t){data + line, (size_t)(colon - (data + line))});
            span_t value = trim((span_t){colon + 1, (size_t)(data + stop - colon - 1)});
            note_header(m, name, value);
        }
        i = stop + 1;
    }
}

/* The CSeq header's method (after the number). */
static span_t cseq_method(span_t cseq) {
    size_t i = 0;
    while (i < cseq.len && !isspace((unsigned char)cseq.ptr[i])) i++;
    return trim((span_t){cseq.ptr + i, cseq.len - i});
}

static int valid_token(span_t s) {
    if (!s.len) return 0;
    for (size_t i = 0; i < s.len; i++)
        if (!is_token_char((unsigned char)s.ptr[i])) return 0;
    return 1;
}

/* The methods softswitch (pjsip/pjsua) implements; anything else valid is a 501. */
static int known_method(span_t m) {
    static const char *methods[] = {"INVITE",  "ACK",    "BYE",       "CANCEL",  "OPTIONS", "REGISTER", "PRACK",
                                    "UPDATE",  "INFO",   "REFER",     "NOTIFY",  "SUBSCRIBE", "MESSAGE", "PUBLISH"};
    for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++)
        if (m.len == strlen(methods[i]) && memcmp(m.ptr, methods[i], m.len) == 0) return 1;
    return 0;
}

/* The Request-URI's scheme (RFC 3986: ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ) ":"), or an empty span. */
static span_t uri_scheme(span_t uri) {
    size_t i = 0;
    if (!uri.len || !isalpha((unsigned char)uri.ptr[0])) return (span_t){NULL, 0};
    while (i < uri.len && (isalnum((unsigned char)uri.ptr[i]) || strchr("+-.", uri.ptr[i]))) i++;
    if (i == uri.len || uri.ptr[i] != ':') return (span_t){NULL, 0};
    return (span_t){uri.ptr, i};
}

static int quotes_balanced(span_t s) {
    int open = 0;
    for (size_t i = 0; i < s.len; i++) {
        if (open && s.ptr[i] == '\\' && i + 1 < s.len) {
            i++;
            continue;
        }
        if (s.ptr[i] == '"') open = !open;
    }
    return !open;
}

/* A signed decimal that does not fit in 31 bits (RFC 3261: CSeq < 2**31). */
static int number_out_of_range(span_t s) {
    s = trim(s);
    size_t i = 0, digits = 0;
    unsigned long long v = 0;
    if (i < s.len && s.ptr[i] == '-') return 1;
    while (i < s.len && isdigit((unsigned char)s.ptr[i])) {
        if (++digits > 10) return 1;
        v = v * 10 + (unsigned)(s.ptr[i++] - '0');
    }
    return digits == 0 || v >= 2147483648ULL;
}

/* What a dropped request deserves: a status code and reason phrase, or 0 for silence. */
static int decide_dropped(const raw_msg_t *m, pj_status_t why, const char **reason) {
    if (why == PJSIP_ERXOVERFLOW) {
        *reason = "Message Too Large";
        return 513;
    }
    if (m->start_parts < 3) {
        *reason = "Bad Request (malformed Request-Line)";
        return 400;
    }
    span_t version = m->start_parts == 3 ? m->version : (span_t){NULL, 0};
    if (m->start_parts == 3 && !(version.len == 7 && memcmp(version.ptr, "SIP/2.0", 7) == 0) &&
        version.len > 4 && strncasecmp(version.ptr, "SIP/", 4) == 0) {
        *reason = "Version Not Supported";
        return 505;
    }
    if (m->start_parts != 3 || !valid_token(m->method) || !m->uri.len) {
        *reason = m->uri.len && m->uri.ptr[0] == '<' ? "Bad Request (Request-URI in angle brackets)"
                                                      : "Bad Request (malformed Request-Line)";
        return 400;
    }
    if (m->uri.ptr[0] == '<') {
        *reason = "Bad Request (Request-URI in angle brackets)";
        return 400;
    }
    span_t cm = cseq_method(m->cseq);
    if (cm.len != m->method.len || memcmp(cm.ptr, m->method.ptr, cm.len) != 0) {
        *reason = "Bad Request (CSeq method does not match the Request-Line)";
        return 400;
    }
    span_t scheme = uri_scheme(m->uri);
    if (!scheme.len) {
        *reason = "Bad Request (malformed Request-URI)";
        return 400;
    }
    if (!span_ieq(scheme, "sip") && !span_ieq(scheme, "sips") && !span_ieq(scheme, "tel")) {
        *reason = "Unsupported URI Scheme";
        return 416;
    }
    if (!known_method(m->method)) {
        *reason = "Not Implemented";
        return 501;
    }
    if (why == PJSIP_EMISSINGHDR || !m->n_call_id || !m->n_from || !m->n_to) {
        *reason = !m->n_call_id ? "Bad Request (missing Call-ID)"
                  : !m->n_from  ? "Bad Request (missing From)"
                  : !m->n_to    ? "Bad Request (missing To)"
                                : "Bad Request (missing mandatory header)";
        return 400;
    }
    if (!quotes_balanced(m->to) || !quotes_balanced(m->from)) {
        *reason = !quotes_balanced(m->to) ? "Bad Request (unbalanced quotes in To)"
                                          : "Bad Request (unbalanced quotes in From)";
        return 400;
    }
    if (m->content_length.ptr && (m->content_length.len == 0 || m->content_length.ptr[0] == '-')) {
        *reason = "Bad Request (negative or empty Content-Length)";
        return 400;
    }
    if (number_out_of_range(m->cseq)) {
        *reason = "Bad Request (CSeq number out of range)";
        return 400;
    }
    if (memmem(m->via.ptr, m->via.len, ";;", 2) || memmem(m->via.ptr, m->via.len, ";,", 2)) {
        *reason = "Bad Request (malformed Via)";
        return 400;
    }
    if (span_ieq(m->method, "REGISTER") && m->authorization.ptr &&
        !(m->authorization.len >= 7 && strncasecmp(m->authorization.ptr, "Digest ", 7) == 0)) {
        /* RFC 4475 3.3.7: credentials in a scheme we do not know are no credentials: challenge */
        *reason = "Unauthorized";
        return 401;
    }
    *reason = "Bad Request (unparsable header)";
    return 400;
}

/* ---- raw answers ------------------------------------------------------------------------------- */

static size_t append(char *buf, size_t at, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static size_t append(char *buf, size_t at, const char *fmt, ...) {
    if (at >= MAX_ANSWER) return at;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf + at, MAX_ANSWER - at, fmt, ap);
    va_end(ap);
    if (n < 0) return at;
    return at + (size_t)n >= MAX_ANSWER ? MAX_ANSWER : at + (size_t)n;
}

/* Copies a header value into the answer, cut at MAX_FIELD and with line ends removed (a folded
 * value stays one line). */
static size_t append_header(char *buf, size_t at, const char *name, span_t value) {
    char clean[MAX_FIELD + 1];
    size_t n = 0;
    for (size_t i = 0; i < value.len && n < MAX_FIELD; i++) {
        char c = value.ptr[i];
        if (c == '\r' || c == '\n') continue;
        clean[n++] = (c == '\0') ? ' ' : c;
    }
    clean[n] = 0;
    return append(buf, at, "%s: %s\r\n", name, clean);
}

/* The methods pjsip's endpoint advertises in Allow (pjsua, the registrar, transfer). */
static size_t append_capability(char *buf, size_t at, pjsip_hdr_e type, const char *name) {
    const pjsip_hdr *cap = pjsip_endpt_get_capability(pjsua_get_pjsip_endpt(), type, NULL);
    if (!cap) return at;
    const pjsip_generic_array_hdr *arr = (const pjsip_generic_array_hdr *)cap;
    at = append(buf, at, "%s: ", name);
    for (unsigned i = 0; i < arr->count; i++)
        at = append(buf, at, "%s%.*s", i ? ", " : "", (int)arr->values[i].slen, arr->values[i].ptr);
    return append(buf, at, "\r\n");
}

/* Builds the answer: Via, From, To (tagged when untagged), Call-ID and CSeq copied. */
static size_t build_answer(char *buf, const raw_msg_t *m, int code, const char *reason, const char *src_ip) {
    size_t at = append(buf, 0, "SIP/2.0 %d %s\r\n", code, reason);
    at = append_header(buf, at, "Via", m->via);
    if (m->from.ptr) at = append_header(buf, at, "From", m->from);
    if (m->to.ptr) {
        at = append_header(buf, at, "To", m->to);
        /* RFC 3261 8.2.6.2: a To tag on a response outside a dialog */
        if (!memmem(m->to.ptr, m->to.len, "tag=", 4) && at > 2 && at < MAX_ANSWER) at = append(buf, at - 2, ";tag=ss%llx\r\n", (unsigned long long)pj_rand());
    }
    if (m->call_id.ptr) at = append_header(buf, at, "Call-ID", m->call_id);
    at = append_header(buf, at, "CSeq", m->cseq);
    if (code == 501 || code == 405) at = append_capability(buf, at, PJSIP_H_ALLOW, "Allow");
    if (code == 416) at = append(buf, at, "Accept: application/sdp\r\n");
    if (code == 401 && at < MAX_ANSWER) at += ss_registrar_challenge_lines(src_ip, buf + at, MAX_ANSWER - at);
    return append(buf, at, "Server: softswitch\r\nContent-Length: 0\r\n\r\n");
}

/* Closes a TCP/TLS connection whose framing is lost, after the drop callback has returned (the
 * transport is in use by pjsip's read loop there). shutdown2(force) marks it shut down and the
 * last dec_ref destroys it at once (not after the idle time): an incoming server transport holds
 * no other reference when no transaction uses it. */
typedef struct {
    pj_timer_entry timer;
    pj_pool_t *pool;
    pjsip_transport *tp;
} close_job_t;

static void close_connection_cb(pj_timer_heap_t *heap, pj_timer_entry *entry) {
    PJ_UNUSED_ARG(heap);
    close_job_t *job = (close_job_t *)entry->user_data;
    pjsip_transport_shutdown2(job->tp, PJ_TRUE);
    pjsip_transport_dec_ref(job->tp);
    pj_pool_release(job->pool);
}

static void close_connection_soon(pjsip_transport *tp) {
    pjsip_endpoint *endpt = pjsua_get_pjsip_endpt();
    pj_pool_t *pool = pjsip_endpt_create_pool(endpt, "ss-close", 256, 256);
    if (!pool) return;
    close_job_t *job = PJ_POOL_ZALLOC_T(pool, close_job_t);
    job->pool = pool;
    job->tp = tp;
    pjsip_transport_add_ref(tp);
    pj_timer_entry_init(&job->timer, 1, job, &close_connection_cb);
    pj_time_val now = {0, 0};
    if (pjsip_endpt_schedule_timer(endpt, &job->timer, &now) != PJ_SUCCESS) {
        pjsip_transport_dec_ref(tp);
        pj_pool_release(pool);
    }
}

/* The UDP packet's rdata, for its source address. The drop notice carries no address, but its data
 * pointer lies in the rdata's pkt_info.packet array (pjsip_rx_data is public), preceded only by
 * the CR/LF bytes pjsip skipped. Walking back over those bytes one at a time, every candidate
 * start stays inside the real rdata until the one whose transport and packet length match (an
 * rdata is at least as long as the bytes before its packet array). */
static pjsip_rx_data *udp_rdata_of(const pjsip_tp_dropped_data *dd) {
    const char *data = (const char *)dd->data;
    for (size_t skipped = 0; skipped <= 64; skipped++) {
        if (skipped && data[-(ptrdiff_t)skipped] != '\r' && data[-(ptrdiff_t)skipped] != '\n') return NULL;
        pjsip_rx_data *rdata =
            (pjsip_rx_data *)(data - skipped - offsetof(pjsip_rx_data, pkt_info.packet));
        if (rdata->tp_info.transport == dd->tp && rdata->pkt_info.len == (pj_ssize_t)(skipped + dd->len)) return rdata;
    }
    return NULL;
}

static void count_answer(int code) {
    if (code > 0 && code < 700) g_answers[code]++;
}

void ss_malformed_on_drop(pjsip_tp_dropped_data *dd) {
    if (dd->status != PJSIP_EINVALIDMSG && dd->status != PJSIP_EMISSINGHDR && dd->status != PJSIP_ERXOVERFLOW) return;
    if (!dd->tp || !dd->data || !dd->len) return;
    int reliable = (dd->tp->flag & PJSIP_TRANSPORT_RELIABLE) != 0;
    if (dd->status == PJSIP_ERXOVERFLOW && reliable) close_connection_soon(dd->tp); /* framing lost */

    raw_msg_t m;
    scan_raw((const char *)dd->data, dd->len, &m);
    if (m.start_parts < 1 || (m.method.len >= 4 && strncmp(m.method.ptr, "SIP/", 4) == 0)) return; /* a response */
    if (span_ieq(m.method, "ACK") || !m.via.ptr || !m.cseq.ptr) return;
    if (span_ieq(cseq_method(m.cseq), "ACK")) return;

    const char *reason = "Bad Request";
    int code = decide_dropped(&m, dd->status, &reason);
    if (!code) return;

    pj_sockaddr addr;
    int addr_len;
    if (reliable) {
        pj_memcpy(&addr, &dd->tp->key.rem_addr, sizeof(addr));
        addr_len = dd->tp->addr_len;
    } else {
        pjsip_rx_data *rdata = udp_rdata_of(dd);
        if (!rdata) return;
        if (rdata->pkt_info.len >= PJSIP_MAX_PKT_LEN) { /* cut short at the read limit */
            code = 513;
            reason = "Message Too Large";
        }
        pj_memcpy(&addr, &rdata->pkt_info.src_addr, sizeof(addr));
        addr_len = rdata->pkt_info.src_addr_len;
    }
    char answer[MAX_ANSWER], src_ip[PJ_INET6_ADDRSTRLEN] = "";
    pj_sockaddr_print(&addr, src_ip, sizeof(src_ip), 0);
    size_t len = build_answer(answer, &m, code, reason, src_ip);
    pjsip_tpselector sel;
    pj_bzero(&sel, sizeof(sel));
    sel.type = PJSIP_TPSELECTOR_TRANSPORT;
    sel.u.transport = dd->tp;
    pj_status_t st = pjsip_tpmgr_send_raw(pjsip_endpt_get_tpmgr(pjsua_get_pjsip_endpt()),
                                          (pjsip_transport_type_e)dd->tp->key.type, &sel, NULL, answer, len,
                                          &addr, addr_len, NULL, NULL);
    if (st == PJ_SUCCESS || st == PJ_EPENDING) {
        count_answer(code);
        PJ_LOG(3, ("malformed.c", "Answered %d %s to a dropped %.*s request from %s transport", code, reason,
                   (int)(m.method.len > 32 ? 32 : m.method.len), m.method.ptr, dd->tp->type_name));
    }
}

/* ---- parsed requests --------------------------------------------------------------------------- */

/* The raw start line of a parsed request: exactly METHOD SP URI SP SIP/2.0 (RFC 3261 7.1). */
static const char *start_line_problem(pjsip_rx_data *rdata) {
    raw_msg_t m;
    scan_raw(rdata->msg_info.msg_buf, (size_t)rdata->msg_info.len, &m);
    if (m.start_parts != 3 || !m.method.len || !m.uri.len || !m.version.len)
        return m.start_line.len && m.start_line.ptr[m.start_line.len - 1] == ' ' ? "trailing space in the Request-Line"
                                                                                : "extra spaces in the Request-Line";
    /* '?' may appear in the user part; headers follow the host (RFC 3261 19.1.1, table 1) */
    const char *host = m.uri.ptr;
    for (const char *q = m.uri.ptr; q < m.uri.ptr + m.uri.len; q++)
        if (*q == '@') host = q + 1;
    if (memchr(host, '?', (size_t)(m.uri.ptr + m.uri.len - host)) && (uri_scheme(m.uri).len == 3 || uri_scheme(m.uri).len == 4))
        return "Request-URI with headers";
    /* over UDP the datagram is the message: a Content-Length beyond it is an error (RFC 3261 18.3) */
    if (!(rdata->tp_info.transport->flag & PJSIP_TRANSPORT_RELIABLE) && rdata->msg_info.clen) {
        size_t head = header_end(rdata->msg_info.msg_buf, (size_t)rdata->msg_info.len);
        size_t body = (size_t)rdata->msg_info.len > head + 2 ? (size_t)rdata->msg_info.len - head - 2 : 0;
        if (rdata->msg_info.clen->len > 0 && (size_t)rdata->msg_info.clen->len > body)
            return "Content-Length larger than the datagram";
    }
    return NULL;
}

/* Raw header values by name (long or compact form), for checks pjsip's parser does not make. */
static int raw_headers(pjsip_rx_data *rdata, const char *longname, const char *compact, span_t *out, int max) {
    const char *data = rdata->msg_info.msg_buf;
    size_t end = header_end(data, (size_t)rdata->msg_info.len), i = 0;
    int n = 0;
    while (i < end && data[i] != '\n') i++;
    i++;
    while (i < end) {
        size_t line = i, stop = i;
        while (stop < end) {
            if (data[stop] == '\n' && !(stop + 1 < end && (data[stop + 1] == ' ' || data[stop + 1] == '\t'))) break;
            stop++;
        }
        const char *colon = memchr(data + line, ':', stop - line);
        if (colon) {
            span_t name = trim((span_t){data + line, (size_t)(colon - (data + line))});
            if (span_ieq(name, longname) || (compact && span_ieq(name, compact))) {
                if (n < max) out[n] = trim((span_t){colon + 1, (size_t)(data + stop - colon - 1)});
                n++;
            }
        }
        i = stop + 1;
    }
    return n;
}

/* name-addr problems RFC 4475 3.1.2.13/14 name: spaces inside <>, an unquoted display name that is
 * not tokens (a comma, say). */
static int bad_name_addr(span_t v) {
    const char *lt = memchr(v.ptr, '<', v.len);
    if (!lt) return 0;
    size_t before = (size_t)(lt - v.ptr);
    if (before && v.ptr[0] != '"') {
        for (size_t i = 0; i < before; i++)
            /* UTF-8 (>= 0x80) is let through: phones write unquoted non-ASCII names */
            if (!is_token_char((unsigned char)v.ptr[i]) && v.ptr[i] != ' ' && v.ptr[i] != '\t' &&
                (unsigned char)v.ptr[i] < 0x80)
                return 1;
    }
    const char *gt = memchr(lt, '>', v.len - before);
    if (!gt) return 0;
    return lt[1] == ' ' || lt[1] == '\t' || gt[-1] == ' ' || gt[-1] == '\t';
}

static int count_hdrs(pjsip_msg *msg, pjsip_hdr_e type) {
    int n = 0;
    for (pjsip_hdr *h = msg->hdr.next; h != &msg->hdr; h = h->next) n += h->type == type;
    return n;
}

static int is_supported(const pj_str_t *option) {
    const pjsip_generic_array_hdr *supported = (const pjsip_generic_array_hdr *)pjsip_endpt_get_capability(
        pjsua_get_pjsip_endpt(), PJSIP_H_SUPPORTED, NULL);
    for (unsigned j = 0; supported && j < supported->count; j++)
        if (pj_stricmp(option, &supported->values[j]) == 0) return 1;
    return 0;
}

/* The Require options pjsip does not list in its Supported capability (100rel, timer, replaces...
 * are there), as an Unsupported header; NULL when all are supported. */
static pjsip_unsupported_hdr *unsupported_options(pjsip_rx_data *rdata) {
    pjsip_unsupported_hdr *uns = NULL;
    for (pjsip_require_hdr *req = (pjsip_require_hdr *)pjsip_msg_find_hdr(rdata->msg_info.msg, PJSIP_H_REQUIRE, NULL);
         req; req = (pjsip_require_hdr *)pjsip_msg_find_hdr(rdata->msg_info.msg, PJSIP_H_REQUIRE, req->next)) {
        for (unsigned i = 0; i < req->count; i++) {
            if (is_supported(&req->values[i])) continue;
            if (!uns) uns = pjsip_unsupported_hdr_create(rdata->tp_info.pool);
            if (uns->count < PJSIP_GENERIC_ARRAY_MAX_COUNT) uns->values[uns->count++] = req->values[i];
        }
    }
    return uns;
}

/* An INVITE whose Accept lists media types but none that SDP answers could have. */
static int accepts_no_sdp(pjsip_rx_data *rdata) {
    if (rdata->msg_info.msg->line.req.method.id != PJSIP_INVITE_METHOD) return 0;
    int listed = 0;
    for (pjsip_accept_hdr *a = (pjsip_accept_hdr *)pjsip_msg_find_hdr(rdata->msg_info.msg, PJSIP_H_ACCEPT, NULL); a;
         a = (pjsip_accept_hdr *)pjsip_msg_find_hdr(rdata->msg_info.msg, PJSIP_H_ACCEPT, a->next)) {
        for (unsigned i = 0; i < a->count; i++) {
            listed++;
            const pj_str_t *v = &a->values[i];
            if (pj_strnicmp2(v, "application/sdp", 15) == 0 || pj_strnicmp2(v, "application/*", 13) == 0 ||
                pj_strnicmp2(v, "*/*", 3) == 0)
                return 0;
        }
    }
    return listed > 0;
}

static void send_parsed_answer(pjsip_rx_data *rdata, int code, const char *reason, pjsip_hdr *extra) {
    pjsip_endpoint *endpt = pjsua_get_pjsip_endpt();
    pjsip_tx_data *tdata = NULL;
    pj_str_t r = pj_str((char *)reason);
    if (pjsip_endpt_create_response(endpt, rdata, code, &r, &tdata) != PJ_SUCCESS) return;
    if (extra) pjsip_msg_add_hdr(tdata->msg, (pjsip_hdr *)pjsip_hdr_clone(tdata->pool, extra));
    pjsip_response_addr res_addr;
    if (pjsip_get_response_addr(tdata->pool, rdata, &res_addr) != PJ_SUCCESS ||
        pjsip_endpt_send_response(endpt, &res_addr, tdata, NULL, NULL) != PJ_SUCCESS) {
        pjsip_tx_data_dec_ref(tdata);
        return;
    }
    count_answer(code);
}

int ss_validate_request(pjsip_rx_data *rdata, const char **reason_out, int answer) {
    pjsip_msg *msg = rdata->msg_info.msg;
    static char reason[160]; /* the reason phrase lives until the registrar logs it */
    if (!(rdata->tp_info.transport->flag & PJSIP_TRANSPORT_RELIABLE) && rdata->pkt_info.len >= PJSIP_MAX_PKT_LEN) {
        /* pjsip reads PJSIP_MAX_PKT_LEN octets of a datagram: a longer one arrived cut short */
        *reason_out = "datagram over the message size limit";
        if (answer) send_parsed_answer(rdata, 513, "Message Too Large", NULL);
        return 513;
    }
    const char *problem = start_line_problem(rdata);
    span_t values[4];
    if (!problem && rdata->msg_info.cseq && pjsip_method_cmp(&rdata->msg_info.cseq->method, &msg->line.req.method))
        problem = "CSeq method does not match the Request-Line";
    if (!problem && (count_hdrs(msg, PJSIP_H_CALL_ID) > 1 || count_hdrs(msg, PJSIP_H_CSEQ) > 1 ||
                     count_hdrs(msg, PJSIP_H_FROM) > 1 || count_hdrs(msg, PJSIP_H_TO) > 1 ||
                     count_hdrs(msg, PJSIP_H_MAX_FORWARDS) > 1))
        problem = "a header that must appear once appears twice";
    if (!problem && raw_headers(rdata, "Content-Length", "l", values, 4) > 1)
        problem = "more than one Content-Length";
    if (!problem) {
        static const struct { const char *name, *compact; } addr_headers[] = {{"To", "t"}, {"From", "f"}, {"Contact", "m"}};
        for (size_t k = 0; k < 3 && !problem; k++) {
            int n = raw_headers(rdata, addr_headers[k].name, addr_headers[k].compact, values, 4);
            for (int i = 0; i < n && i < 4 && !problem; i++)
                if (bad_name_addr(values[i])) {
                    snprintf(reason, sizeof(reason), "malformed name-addr in %s", addr_headers[k].name);
                    problem = reason;
                }
        }
    }
    if (!problem && raw_headers(rdata, "Date", NULL, values, 1) > 0 &&
        (values[0].len < 3 || memcmp(values[0].ptr + values[0].len - 3, "GMT", 3) != 0))
        problem = "Date not in GMT";
    if (problem) {
        static char full[200];
        snprintf(full, sizeof(full), "Bad Request (%s)", problem);
        *reason_out = full;
        if (answer) send_parsed_answer(rdata, 400, full, NULL);
        return 400;
    }
    pjsip_unsupported_hdr *uns = unsupported_options(rdata);
    if (uns) {
        /* RFC 3261 8.2.2.3: 420 listing in Unsupported the Require options we do not support */
        *reason_out = "Require lists an unsupported extension";
        if (answer) send_parsed_answer(rdata, 420, "Bad Extension", (pjsip_hdr *)uns);
        return 420;
    }
    if (msg->line.req.method.id == PJSIP_OTHER_METHOD && !known_method((span_t){msg->line.req.method.name.ptr,
                                                                         (size_t)msg->line.req.method.name.slen})) {
        /* RFC 3261 8.2.1: an unknown method gets 501 with Allow */
        *reason_out = "unknown method";
        pjsip_hdr *allow = (pjsip_hdr *)pjsip_endpt_get_capability(pjsua_get_pjsip_endpt(), PJSIP_H_ALLOW, NULL);
        if (answer) send_parsed_answer(rdata, 501, "Not Implemented",
                           allow);
        return 501;
    }
    if (accepts_no_sdp(rdata)) {
        *reason_out = "Accept lists no type an answer could have";
        if (answer) send_parsed_answer(rdata, 406, "Not Acceptable", NULL);
        return 406;
    }
    return 0;
}

void ss_malformed_stats(PyObject *stats) {
    for (int code = 0; stats && code < 700; code++) {
        if (!g_answers[code]) continue;
        char key[32];
        snprintf(key, sizeof(key), "edge_answer_%d", code);
        PyObject *v = PyLong_FromUnsignedLongLong(g_answers[code]);
        if (!v || PyDict_SetItemString(stats, key, v) < 0) PyErr_Clear();
        Py_XDECREF(v);
    }
}

int ss_malformed_install(void) { return ss_rxdrop_add(&ss_malformed_on_drop); }
