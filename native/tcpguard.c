/* The TCP/TLS guard: bounds on the connections one source address may hold open.
 *
 * pjsip accepts every TCP and TLS connection and keeps it as long as the peer does: one address
 * held 700 connections, and a half-sent INVITE stayed open for ever (pjsip's initial timeout is
 * off, and would be cancelled by the first byte anyway). This file watches every incoming
 * connection and closes:
 *   - a new connection from a source that already holds `max_per_source` unauthenticated ones;
 *   - a new connection from a source that already holds `max_pending_per_source` connections
 *     without a complete request (none yet, or one begun and not finished), and at each sweep
 *     the excess of those;
 *   - a connection whose request was begun but not completed within `request_timeout_ms`;
 *   - a connection that delivered no complete SIP message within `first_request_timeout_ms`.
 * A connection over which a REGISTER succeeded or an INVITE was admitted is trusted
 * (ss_tcpguard_trusted, called by the registrar): it no longer counts against its source's
 * limits, so 200 phones behind one NAT address each keep their own connection. Only the
 * request timeout still applies to it (a registered phone does not leave half a request).
 *
 * What "a complete message" is comes from pjsip itself: each message parsed off a connection
 * reaches our module's on_rx_request/on_rx_response, and each byte range pjsip throws away
 * (CRLF keep-alives, syntax errors) reaches the shared dropped-data callback (rxdrop.c). Both
 * tell where in the connection's receive buffer they end; bytes beyond that end, or a receive
 * (pjsip_transport.last_recv_ts changed) that produced neither, are a request in progress.
 *
 * Connections are seen through the transport manager's state callback (CONNECTED on accept,
 * DISCONNECTED/SHUTDOWN/DESTROY on close), chained in front of pjsua's. A transport must not be
 * shut down inside that callback, so closing is done from a pj timer: the periodic sweep, or a
 * zero-delay one for a connection refused at accept. Decisions are queued as `security` events
 * (a C ring, so pjsip callbacks never need the GIL) that Python drains and logs.
 *
 * The state here is module-level because pjsip forces it: the transport state callback, the
 * dropped-data callback and module callbacks carry no user pointer. Everything runs on the UA
 * thread (pjsua has no worker threads), so nothing is locked.
 */
#include "softswitch_native.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

/* A live socket needs an ioqueue handle, so the guarded table can never need more slots. */
#define TG_MAX_CONNS PJ_IOQUEUE_MAX_HANDLES
#define TG_BUCKETS (2 * TG_MAX_CONNS) /* transport pointer -> slot */
#define TG_SOURCES (2 * TG_MAX_CONNS) /* per-sweep source counts, open addressing */
#define TG_MAX_EVENTS 2048
#define TG_SWEEP_MS 500
#define TG_MAX_UNWATCHED 64
/* A flood from one address would write a log line per connection: its limit refusals are
 * reported once, then at most every TG_QUIET_MS with the number refused in between. */
#define TG_QUIET_MS 10000
#define TG_QUIET_SLOTS 1024
#define TG_QUIET_PROBE 8

typedef enum {
    TG_CLOSE_CONNECTION_LIMIT = 0, /* the source holds its limit of unauthenticated connections */
    TG_CLOSE_PENDING_LIMIT,        /* the source holds its limit of connections without a complete request */
    TG_CLOSE_REQUEST_TIMEOUT,      /* a request begun and not completed in time */
    TG_CLOSE_SILENT_TIMEOUT,       /* no complete request since the connection opened */
    TG_CLOSE_TABLE_FULL,           /* the guard's table is full (cannot happen below the ioqueue limit) */
    TG_CLOSE_REASONS
} tg_close_reason_t;

static const char *const tg_reason_event[TG_CLOSE_REASONS] = {
    "tcp_connection_limit", "tcp_pending_limit", "tcp_request_timeout", "tcp_silent_timeout", "tcp_table_full"};
static const char *const tg_reason_key[TG_CLOSE_REASONS] = {
    "closed_connection_limit", "closed_pending_limit", "closed_request_timeout", "closed_silent_timeout",
    "closed_table_full"};

typedef enum { TG_FREE = 0, TG_OPEN, TG_CLOSING, TG_SHUT } tg_state_t;

typedef struct {
    pjsip_transport *tp;
    int next;              /* hash chain, or free list */
    tg_state_t state;
    tg_close_reason_t reason;
    int tls;
    int trusted;           /* a REGISTER succeeded or an INVITE was admitted over it */
    char ip[PJ_INET6_ADDRSTRLEN];
    int port;
    pj_uint64_t connected_at;   /* monotonic ms */
    pj_uint64_t pending_since;  /* monotonic ms since a request is in progress; 0: none */
    unsigned long messages;     /* complete SIP messages delivered */
    /* The receive this accounting belongs to (last_recv_ts at the time), and how far into the
     * receive buffer pjsip got in it: the end of the last message or dropped range. */
    pj_timestamp recv_ts;
    pj_size_t consumed;
    const char *buf;            /* the transport's receive buffer, once a message showed it */
} tg_conn_t;

typedef struct {
    char event[24];
    char ip[PJ_INET6_ADDRSTRLEN];
    int port;
    char transport[8];
    char detail[160];
} tg_event_t;

typedef struct {
    char ip[PJ_INET6_ADDRSTRLEN];
    unsigned gen;
    unsigned pending;
} tg_source_t;

typedef struct {
    char ip[PJ_INET6_ADDRSTRLEN];
    tg_close_reason_t reason;
    pj_uint64_t reported_at; /* monotonic ms; 0: free */
    unsigned long quiet;     /* refusals since, not reported */
} tg_quiet_t;

static struct {
    int installed;
    pjsip_tp_state_callback prev_cb; /* pjsua's: called first, for every transport */
    pjsip_tpmgr *chained_in;         /* the manager whose callback chain still holds ours after close */
    pjsip_module mod;
    pj_timer_entry sweep_timer, close_timer;
    int close_scheduled;
    pjsip_transport *unwatched[TG_MAX_UNWATCHED]; /* refused with no slot: referenced until closed */
    int n_unwatched;
    /* Policy; 0 turns each off. */
    unsigned max_per_source, max_pending_per_source;
    unsigned request_timeout_ms, first_request_timeout_ms;
    tg_conn_t conns[TG_MAX_CONNS];
    int buckets[TG_BUCKETS];
    int free_head;
    int live[2]; /* by tls */
    int live_trusted;
    tg_source_t sources[TG_SOURCES];
    unsigned source_gen;
    tg_quiet_t quiet[TG_QUIET_SLOTS];
    tg_event_t events[TG_MAX_EVENTS];
    unsigned ev_head, ev_count;
    unsigned long long accepted, became_trusted, closed[TG_CLOSE_REASONS], events_dropped;
} g;

static unsigned hash_ptr(const void *p) {
    pj_uint64_t v = (pj_uint64_t)(pj_size_t)p;
    v ^= v >> 33;
    v *= 0xff51afd7ed558ccdULL;
    v ^= v >> 33;
    return (unsigned)(v % TG_BUCKETS);
}

static unsigned hash_str(const char *s) {
    pj_uint32_t h = 2166136261u;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 16777619u;
    return h % TG_SOURCES;
}

static void table_reset(void) {
    memset(g.quiet, 0, sizeof(g.quiet));
    memset(g.conns, 0, sizeof(g.conns));
    for (int i = 0; i < TG_BUCKETS; i++) g.buckets[i] = -1;
    for (int i = 0; i < TG_MAX_CONNS; i++) g.conns[i].next = i + 1 < TG_MAX_CONNS ? i + 1 : -1;
    g.free_head = 0;
    g.live[0] = g.live[1] = 0;
    g.live_trusted = 0;
}

static tg_conn_t *find(const pjsip_transport *tp) {
    for (int i = g.buckets[hash_ptr(tp)]; i >= 0; i = g.conns[i].next)
        if (g.conns[i].tp == tp) return &g.conns[i];
    return NULL;
}

static tg_conn_t *add(pjsip_transport *tp) {
    if (g.free_head < 0) return NULL;
    int i = g.free_head;
    tg_conn_t *c = &g.conns[i];
    g.free_head = c->next;
    memset(c, 0, sizeof(*c));
    unsigned b = hash_ptr(tp);
    c->tp = tp;
    c->next = g.buckets[b];
    g.buckets[b] = i;
    return c;
}

static void forget(pjsip_transport *tp) {
    unsigned b = hash_ptr(tp);
    for (int *link = &g.buckets[b]; *link >= 0; link = &g.conns[*link].next) {
        tg_conn_t *c = &g.conns[*link];
        if (c->tp != tp) continue;
        int i = *link;
        *link = c->next;
        g.live[c->tls]--;
        if (c->trusted) g.live_trusted--;
        memset(c, 0, sizeof(*c));
        c->next = g.free_head;
        g.free_head = i;
        return;
    }
}

static void push_event(const char *event, const char *ip, int port, int tls, const char *detail) {
    if (g.ev_count == TG_MAX_EVENTS) {
        g.events_dropped++;
        return;
    }
    tg_event_t *e = &g.events[(g.ev_head + g.ev_count++) % TG_MAX_EVENTS];
    snprintf(e->event, sizeof(e->event), "%s", event);
    snprintf(e->ip, sizeof(e->ip), "%s", ip);
    e->port = port;
    snprintf(e->transport, sizeof(e->transport), "%s", tls ? "TLS" : "TCP");
    snprintf(e->detail, sizeof(e->detail), "%s", detail);
}

static int guarded(const pjsip_transport *tp) {
    return tp->dir == PJSIP_TP_DIR_INCOMING && (tp->flag & PJSIP_TRANSPORT_RELIABLE) &&
           !(tp->flag & PJSIP_TRANSPORT_DATAGRAM);
}

/* Whether a limit refusal of ip is reported now; if so, *quiet says how many were not since. */
static int report_refusal(const char *ip, tg_close_reason_t why, unsigned long *quiet) {
    pj_uint64_t now = ss_monotonic_ms();
    unsigned h = (hash_str(ip) ^ (unsigned)why) % TG_QUIET_SLOTS;
    tg_quiet_t *oldest = NULL;
    for (unsigned n = 0; n < TG_QUIET_PROBE; n++) {
        tg_quiet_t *q = &g.quiet[(h + n) % TG_QUIET_SLOTS];
        if (q->reported_at && q->reason == why && strcmp(q->ip, ip) == 0) {
            if (now - q->reported_at < TG_QUIET_MS) {
                q->quiet++;
                return 0;
            }
            *quiet = q->quiet;
            q->quiet = 0;
            q->reported_at = now;
            return 1;
        }
        if (!oldest || q->reported_at < oldest->reported_at) oldest = q;
    }
    snprintf(oldest->ip, sizeof(oldest->ip), "%s", ip); /* a new address takes the stalest slot */
    oldest->reason = why;
    oldest->reported_at = now;
    oldest->quiet = 0;
    *quiet = 0;
    return 1;
}

/* Mark for closing (done from a timer, never inside pjsip's callbacks) and say why. */
static void condemn(tg_conn_t *c, tg_close_reason_t why, const char *detail) {
    if (c->state != TG_OPEN) return;
    c->state = TG_CLOSING;
    c->reason = why;
    g.closed[why]++;
    if (why == TG_CLOSE_CONNECTION_LIMIT || why == TG_CLOSE_PENDING_LIMIT) {
        unsigned long quiet = 0;
        if (!report_refusal(c->ip, why, &quiet)) return;
        if (quiet) {
            char text[sizeof(((tg_event_t *)0)->detail)];
            snprintf(text, sizeof(text), "%s; %lu more refused since the last report", detail, quiet);
            push_event(tg_reason_event[why], c->ip, c->port, c->tls, text);
            return;
        }
    }
    push_event(tg_reason_event[why], c->ip, c->port, c->tls, detail);
}

static void close_condemned(void) {
    /* Closing reports DISCONNECTED, which forgets the slot: close from a copy of the list. */
    static pjsip_transport *doomed[TG_MAX_CONNS];
    int n = 0;
    for (int i = 0; i < TG_MAX_CONNS; i++)
        if (g.conns[i].tp && g.conns[i].state == TG_CLOSING) {
            g.conns[i].state = TG_SHUT;
            doomed[n++] = g.conns[i].tp;
        }
    for (int i = 0; i < n; i++) {
        pjsip_transport *tp = doomed[i];
        pjsip_transport_add_ref(tp); /* alive through the callbacks that shutting down makes */
        /* The peer sees its connection end now, even while a transaction still holds the
         * transport (pjsip then frees it when the transaction ends). */
        if (!(tp->flag & PJSIP_TRANSPORT_SECURE)) {
            pj_sock_t sock = pjsip_tcp_transport_get_socket(tp);
            if (sock != PJ_INVALID_SOCKET) pj_sock_shutdown(sock, PJ_SHUT_RDWR);
        }
        /* force: reported as DISCONNECTED, and destroyed at once when nothing else uses it. */
        pjsip_transport_shutdown2(tp, PJ_TRUE);
        pjsip_transport_dec_ref(tp);
    }
    for (int i = 0; i < g.n_unwatched; i++) {
        pjsip_transport_shutdown2(g.unwatched[i], PJ_TRUE);
        pjsip_transport_dec_ref(g.unwatched[i]);
    }
    g.n_unwatched = 0;
}

static void on_close_timer(pj_timer_heap_t *th, pj_timer_entry *e) {
    g.close_scheduled = 0;
    if (g.installed) close_condemned();
}

static void schedule_close(void) {
    if (g.close_scheduled) return;
    pj_time_val now = {0, 0};
    if (pjsip_endpt_schedule_timer(pjsua_get_pjsip_endpt(), &g.close_timer, &now) == PJ_SUCCESS)
        g.close_scheduled = 1;
}

/* ---- what arrives on a connection ---------------------------------------------------------- */

/* pjsip just finished a message or a dropped range: what follows it in the buffer is the start of
 * the next request, so its clock starts now (a connection that keeps completing requests is
 * never timed out, however its bytes are split). */
static void update_pending(tg_conn_t *c) {
    c->pending_since = c->consumed >= c->tp->last_recv_len ? 0 : ss_monotonic_ms();
}

/* pjsip got as far as `end` in the receive it is processing now. */
static void consumed_to(tg_conn_t *c, const char *buf, const char *end, pj_size_t len_if_unknown) {
    if (pj_cmp_timestamp(&c->recv_ts, &c->tp->last_recv_ts) != 0) {
        c->recv_ts = c->tp->last_recv_ts;
        c->consumed = 0;
    }
    if (buf && end >= buf && end <= buf + PJSIP_MAX_PKT_LEN) c->consumed = (pj_size_t)(end - buf);
    else c->consumed += len_if_unknown; /* only drops, and only before any message showed the buffer */
    update_pending(c);
}

static pj_bool_t on_rx_msg(pjsip_rx_data *rdata) {
    pjsip_transport *tp = rdata->tp_info.transport;
    if (!g.installed || !tp || (tp->flag & PJSIP_TRANSPORT_DATAGRAM)) return PJ_FALSE;
    tg_conn_t *c = find(tp);
    if (!c) return PJ_FALSE;
    c->buf = rdata->pkt_info.packet;
    c->messages++;
    consumed_to(c, c->buf, rdata->msg_info.msg_buf + rdata->msg_info.len, 0);
    return PJ_FALSE; /* only watching */
}

static void on_rx_dropped(pjsip_tp_dropped_data *dd) {
    if (!g.installed || !dd->tp || (dd->tp->flag & PJSIP_TRANSPORT_DATAGRAM)) return;
    tg_conn_t *c = find(dd->tp);
    if (!c || dd->len == 0) return;
    consumed_to(c, c->buf, (const char *)dd->data + dd->len, dd->len);
}

/* ---- connections opening and closing ------------------------------------------------------- */

static void on_connected(pjsip_transport *tp) {
    if (find(tp)) return; /* TLS reports CONNECTED once the handshake is done; never twice */
    char ip[PJ_INET6_ADDRSTRLEN] = "";
    pj_sockaddr_print(&tp->key.rem_addr, ip, sizeof(ip), 0);
    int port = pj_sockaddr_get_port(&tp->key.rem_addr);
    int tls = (tp->flag & PJSIP_TRANSPORT_SECURE) ? 1 : 0;
    g.accepted++;
    /* The source's unauthenticated connections, and those without a complete request yet. */
    unsigned untrusted = 0, pending = 0;
    for (int i = 0; i < TG_MAX_CONNS; i++) {
        const tg_conn_t *o = &g.conns[i];
        if (!o->tp || o->state != TG_OPEN || o->trusted || strcmp(o->ip, ip) != 0) continue;
        untrusted++;
        if (!o->messages || o->pending_since) pending++;
    }
    tg_conn_t *c = add(tp);
    if (!c) {
        /* No slot (more connections than the ioqueue has handles: not expected). Nothing would
         * bound this connection, so it is closed like a refused one, from the timer. */
        g.closed[TG_CLOSE_TABLE_FULL]++;
        push_event(tg_reason_event[TG_CLOSE_TABLE_FULL], ip, port, tls, "no room to watch another connection");
        if (g.n_unwatched < TG_MAX_UNWATCHED) {
            pjsip_transport_add_ref(tp); /* keeps the pointer valid until the timer closes it */
            g.unwatched[g.n_unwatched++] = tp;
            schedule_close();
        }
        return;
    }
    c->state = TG_OPEN;
    c->tls = tls;
    snprintf(c->ip, sizeof(c->ip), "%s", ip);
    c->port = port;
    c->connected_at = ss_monotonic_ms();
    c->recv_ts = tp->last_recv_ts;
    g.live[tls]++;
    char detail[160];
    if (g.max_per_source && untrusted + 1 > g.max_per_source) {
        snprintf(detail, sizeof(detail), "%u unauthenticated connections from this address already (limit %u)",
                 untrusted, g.max_per_source);
        condemn(c, TG_CLOSE_CONNECTION_LIMIT, detail);
        schedule_close();
    } else if (g.max_pending_per_source && pending + 1 > g.max_pending_per_source) {
        snprintf(detail, sizeof(detail), "%u connections without a complete request from this address (limit %u)",
                 pending, g.max_pending_per_source);
        condemn(c, TG_CLOSE_PENDING_LIMIT, detail);
        schedule_close();
    }
}

static void on_tp_state(pjsip_transport *tp, pjsip_transport_state state, const pjsip_transport_state_info *info) {
    if (g.prev_cb) g.prev_cb(tp, state, info);
    if (!g.installed || !tp || !guarded(tp)) return;
    switch (state) {
    case PJSIP_TP_STATE_CONNECTED:
        on_connected(tp);
        break;
    case PJSIP_TP_STATE_DISCONNECTED:
    case PJSIP_TP_STATE_SHUTDOWN:
    case PJSIP_TP_STATE_DESTROY:
        forget(tp);
        break;
    default:
        break;
    }
}

/* ---- the sweep ------------------------------------------------------------------------------- */

static tg_source_t *source_slot(const char *ip) {
    for (unsigned h = hash_str(ip), n = 0; n < TG_SOURCES; h = (h + 1) % TG_SOURCES, n++) {
        tg_source_t *s = &g.sources[h];
        if (s->gen != g.source_gen) {
            s->gen = g.source_gen;
            snprintf(s->ip, sizeof(s->ip), "%s", ip);
            s->pending = 0;
            return s;
        }
        if (strcmp(s->ip, ip) == 0) return s;
    }
    return NULL; /* twice as many slots as connections: not reached */
}

static void sweep(void) {
    pj_uint64_t now = ss_monotonic_ms();
    if (++g.source_gen == 0) {
        memset(g.sources, 0, sizeof(g.sources));
        g.source_gen = 1;
    }
    char detail[160];
    for (int i = 0; i < TG_MAX_CONNS; i++) {
        tg_conn_t *c = &g.conns[i];
        if (!c->tp || c->state != TG_OPEN) continue;
        /* Bytes arrived that made no message and were not dropped: a request in progress. */
        if (pj_cmp_timestamp(&c->recv_ts, &c->tp->last_recv_ts) != 0 && !c->pending_since) c->pending_since = now;
        if (g.request_timeout_ms && c->pending_since && now - c->pending_since >= g.request_timeout_ms) {
            snprintf(detail, sizeof(detail), "request not completed within %u ms", g.request_timeout_ms);
            condemn(c, TG_CLOSE_REQUEST_TIMEOUT, detail);
            continue;
        }
        if (c->trusted) continue;
        if (g.first_request_timeout_ms && !c->messages && now - c->connected_at >= g.first_request_timeout_ms) {
            snprintf(detail, sizeof(detail), "no complete request within %u ms of connecting",
                     g.first_request_timeout_ms);
            condemn(c, TG_CLOSE_SILENT_TIMEOUT, detail);
            continue;
        }
        if (g.max_pending_per_source && (!c->messages || c->pending_since)) {
            tg_source_t *s = source_slot(c->ip);
            if (s && ++s->pending > g.max_pending_per_source) {
                snprintf(detail, sizeof(detail), "over %u connections without a complete request from this address",
                         g.max_pending_per_source);
                condemn(c, TG_CLOSE_PENDING_LIMIT, detail);
            }
        }
    }
    close_condemned();
}

static void on_sweep_timer(pj_timer_heap_t *th, pj_timer_entry *e) {
    if (!g.installed) return;
    sweep();
    pj_time_val delay = {0, TG_SWEEP_MS};
    pjsip_endpt_schedule_timer(pjsua_get_pjsip_endpt(), &g.sweep_timer, &delay);
}

/* ---- the registrar's side -------------------------------------------------------------------- */

void ss_tcpguard_trusted(pjsip_transport *tp) {
    if (!g.installed || !tp || (tp->flag & PJSIP_TRANSPORT_DATAGRAM)) return;
    tg_conn_t *c = find(tp);
    if (!c || c->trusted) return;
    c->trusted = 1;
    g.live_trusted++;
    g.became_trusted++;
}

/* ---- install and uninstall ------------------------------------------------------------------- */

static int install(void) {
    pjsip_endpoint *endpt = pjsua_get_pjsip_endpt();
    table_reset();
    memset(&g.mod, 0, sizeof(g.mod));
    g.mod.name = pj_str("mod-softswitch-tcpguard");
    g.mod.id = -1;
    /* Just above the transport layer: it sees every message before anyone can consume it. */
    g.mod.priority = PJSIP_MOD_PRIORITY_TRANSPORT_LAYER + 1;
    g.mod.on_rx_request = &on_rx_msg;
    g.mod.on_rx_response = &on_rx_msg;
    pj_status_t st = pjsip_endpt_register_module(endpt, &g.mod);
    if (st != PJ_SUCCESS) {
        ss_raise_pj("pjsip_endpt_register_module (tcp guard)", st);
        return -1;
    }
    if (ss_rxdrop_add(&on_rx_dropped) < 0) {
        pjsip_endpt_unregister_module(endpt, &g.mod);
        PyErr_SetString(PyExc_RuntimeError, "cannot add the TCP guard's dropped-data handler (rxdrop.c is full)");
        return -1;
    }
    pjsip_tpmgr *mgr = pjsip_endpt_get_tpmgr(endpt);
    if (g.chained_in != mgr) {
        /* Not in this manager's chain yet (a closed guard whose callback someone else wrapped
         * is still called, and would loop if put in front again). */
        g.prev_cb = pjsip_tpmgr_get_state_cb(mgr);
        pjsip_tpmgr_set_state_cb(mgr, &on_tp_state);
        g.chained_in = mgr;
    }
    pj_timer_entry_init(&g.sweep_timer, 0, NULL, &on_sweep_timer);
    pj_timer_entry_init(&g.close_timer, 0, NULL, &on_close_timer);
    g.installed = 1;
    pj_time_val delay = {0, TG_SWEEP_MS};
    pjsip_endpt_schedule_timer(endpt, &g.sweep_timer, &delay);
    return 0;
}

static void uninstall(void) {
    if (!g.installed) return;
    g.installed = 0;
    if (pjsua_get_state() == PJSUA_STATE_NULL) return;
    pjsip_endpoint *endpt = pjsua_get_pjsip_endpt();
    pjsip_endpt_cancel_timer(endpt, &g.sweep_timer);
    if (g.close_scheduled) pjsip_endpt_cancel_timer(endpt, &g.close_timer);
    g.close_scheduled = 0;
    /* Give pjsua its callback back unless someone chained in front of ours since; then ours
     * stays in the chain and only forwards (g.installed is 0). */
    pjsip_tpmgr *mgr = pjsip_endpt_get_tpmgr(endpt);
    if (pjsip_tpmgr_get_state_cb(mgr) == &on_tp_state) {
        pjsip_tpmgr_set_state_cb(mgr, g.prev_cb);
        g.prev_cb = NULL;
        g.chained_in = NULL;
    }
    for (int i = 0; i < g.n_unwatched; i++) pjsip_transport_dec_ref(g.unwatched[i]);
    g.n_unwatched = 0;
    ss_rxdrop_remove(&on_rx_dropped);
    pjsip_endpt_unregister_module(endpt, &g.mod);
    table_reset();
}

/* ---- Python API ------------------------------------------------------------------------------ */

static PyObject *tcpguard_configure(PyObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"max_per_source", "max_pending_per_source", "request_timeout_ms",
                             "first_request_timeout_ms", NULL};
    unsigned max_per_source, max_pending, request_ms, first_ms;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "IIII", kwlist, &max_per_source, &max_pending, &request_ms,
                                     &first_ms))
        return NULL;
    if (ss_require_pj_thread()) return NULL;
    if (!g.installed && install() < 0) return NULL;
    g.max_per_source = max_per_source;
    g.max_pending_per_source = max_pending;
    g.request_timeout_ms = request_ms;
    g.first_request_timeout_ms = first_ms;
    Py_RETURN_NONE;
}

static PyObject *tcpguard_close(PyObject *self, PyObject *unused) {
    if (g.installed && ss_is_pj_thread()) uninstall();
    Py_RETURN_NONE;
}

static PyObject *tcpguard_poll_events(PyObject *self, PyObject *unused) {
    PyObject *list = PyList_New(0);
    while (list && g.ev_count) {
        tg_event_t *e = &g.events[g.ev_head];
        PyObject *d = Py_BuildValue("{s:s,s:s,s:i,s:s,s:s,s:s,s:s}", "event", e->event, "source_ip", e->ip,
                                    "source_port", e->port, "transport", e->transport, "method", "", "user_agent",
                                    "", "detail", e->detail);
        if (!d || PyList_Append(list, d) < 0) {
            Py_XDECREF(d);
            Py_DECREF(list);
            return NULL;
        }
        Py_DECREF(d);
        g.ev_head = (g.ev_head + 1) % TG_MAX_EVENTS;
        g.ev_count--;
    }
    return list;
}

static PyObject *tcpguard_stats(PyObject *self, PyObject *unused) {
    int pending = 0;
    for (int i = 0; i < TG_MAX_CONNS; i++)
        if (g.conns[i].tp && g.conns[i].state == TG_OPEN && (g.conns[i].pending_since || !g.conns[i].messages))
            pending++;
    PyObject *d = Py_BuildValue("{s:O,s:i,s:i,s:i,s:i,s:K,s:K,s:K}", "installed", g.installed ? Py_True : Py_False,
                                "connections_tcp", g.live[0], "connections_tls", g.live[1], "connections_trusted",
                                g.live_trusted, "connections_pending", pending, "accepted", g.accepted,
                                "became_trusted", g.became_trusted, "events_dropped", g.events_dropped);
    for (int r = 0; d && r < TG_CLOSE_REASONS; r++) {
        PyObject *v = PyLong_FromUnsignedLongLong(g.closed[r]);
        if (!v || PyDict_SetItemString(d, tg_reason_key[r], v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(d);
            return NULL;
        }
        Py_DECREF(v);
    }
    return d;
}

PyMethodDef ss_tcpguard_methods[] = {
    {"tcpguard_configure", (PyCFunction)(void (*)(void))tcpguard_configure, METH_VARARGS | METH_KEYWORDS,
     "tcpguard_configure(max_per_source, max_pending_per_source, request_timeout_ms, first_request_timeout_ms): "
     "install the TCP/TLS guard (UA thread) or change its limits; 0 turns a limit off."},
    {"tcpguard_close", tcpguard_close, METH_NOARGS, "Uninstall the TCP/TLS guard (UA thread)."},
    {"tcpguard_poll_events", tcpguard_poll_events, METH_NOARGS,
     "The guard's security events since the last poll: [dict] shaped like the registrar's."},
    {"tcpguard_stats", tcpguard_stats, METH_NOARGS, "Live connections (by transport, trusted, pending) and counters."},
    {NULL}};
