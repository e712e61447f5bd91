/* The Python `Registrar` type: construction (installing the three pjsip modules), teardown,
 * configuration tables (users, trunks, refused User-Agents, limits, keep-alive policy) and the
 * read side Python polls (events, bindings, blocked sources, counters). Every method runs on
 * the UA thread (UA_ONLY). */
#include "registrar_internal.h"

/* Names of security_decision_t, as stats() reports them (security_<name>). */
static const char *const SECURITY_DECISION_NAMES[SEC_DECISIONS] = {
    "blocked_auth_failures", "blocked_flood",     "dropped_blocked_source", "dropped_user_agent",
    "trunk_auth_failure",    "trunk_not_blocked", "trunk_over_flood_rate",  "trunk_options_dropped",
    "trunk_requests_dropped"};

/* ---- Python API ------------------------------------------------------------------------------ */

/* The tables are the UA thread's: refuse calls from any other thread instead of racing. */
#define UA_ONLY(ret) \
    if (ss_require_pj_thread()) return ret

/* keepalive() -> keep-alives sent now: every binding whose time has come gets one. */
static PyObject *Registrar_keepalive(RegistrarObject *self, PyObject *unused) {
    UA_ONLY(NULL);
    ss_ka_t *ka = &self->keepalive;
    ss_ka_expire_probes(ka);
    if (ka->method == SS_KA_OFF) return PyLong_FromLong(0);
    pj_uint64_t now = ss_monotonic_ms();
    unsigned answer_ms = ka->interval_ms < 32000 ? ka->interval_ms : 32000;
    long n = 0;
    for (int i = 0; i < 4096; i++)
        for (aor_t *a = self->aors[i]; a; a = a->next)
            for (int j = 0; j < a->count; j++) {
                binding_t *b = &a->contacts[j];
                if (b->expires_at <= now || !ss_reg_keepalive_wanted(self, b)) continue;
                if (!b->ka.next_at) b->ka.next_at = now + ka->interval_ms; /* keep-alives were just turned on */
                if (now < b->ka.next_at || b->ka.probing) continue;
                b->ka.next_at = now + ka->interval_ms;
                n++;
                if (ka->method == SS_KA_CRLF) {
                    ss_ka_send_crlf(ka, b->source_ip, b->source_port, b->transport);
                    continue;
                }
                char target[PJ_INET6_ADDRSTRLEN + 200], to[1100];
                ss_reg_keepalive_target(b, target, sizeof(target));
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

static int Registrar_init(RegistrarObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"realm", NULL};
    const char *realm = "softswitch";
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|s", kwlist, &realm)) return -1;
    if (self->installed) {
        PyErr_SetString(PyExc_RuntimeError, "Registrar already initialised");
        return -1;
    }
    if (ss_reg_the_registrar) {
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
    self->mod.on_rx_request = &ss_reg_on_rx_request;
    memset(&self->nat_mod, 0, sizeof(self->nat_mod));
    self->nat_mod.name = pj_str("mod-softswitch-nat");
    self->nat_mod.id = -1;
    self->nat_mod.priority = PJSIP_MOD_PRIORITY_TSX_LAYER - 1;
    self->nat_mod.on_rx_request = &ss_reg_nat_on_rx;
    self->nat_mod.on_rx_response = &ss_reg_nat_on_rx;
    memset(&self->count_mod, 0, sizeof(self->count_mod));
    self->count_mod.name = pj_str("mod-softswitch-response-counter");
    self->count_mod.id = -1;
    self->count_mod.priority = PJSIP_MOD_PRIORITY_TRANSPORT_LAYER + 1;
    self->count_mod.on_rx_response = &ss_reg_count_on_rx_response;
    self->count_mod.on_tx_response = &ss_reg_count_on_tx_response;
    self->retry_after = 5;
    self->cps_at = ss_monotonic_ms();
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
    ss_reg_the_registrar = self;
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
            for (int j = 0; j < a->count; j++) ss_reg_binding_free(&a->contacts[j]);
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
            ss_reg_free_retrans(self);
            ss_ka_uninstall(&self->keepalive);
            pjsip_endpt_unregister_module(pjsua_get_pjsip_endpt(), &self->count_mod);
            pjsip_endpt_unregister_module(pjsua_get_pjsip_endpt(), &self->nat_mod);
            pjsip_endpt_unregister_module(pjsua_get_pjsip_endpt(), &self->mod);
        }
        self->installed = 0;
        if (ss_reg_the_registrar == self) ss_reg_the_registrar = NULL;
    }
    Py_RETURN_NONE;
}

static void Registrar_dealloc(RegistrarObject *self) {
    if (self->installed && ss_is_pj_thread()) Registrar_close(self, NULL);
    if (ss_reg_the_registrar == self) ss_reg_the_registrar = NULL;
    ss_reg_free_users(self);
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
        ss_reg_digest_hex(ALG_MD5, u->ha1_md5, parts, lens, 3);
        ss_reg_digest_hex(ALG_SHA256, u->ha1_sha256, parts, lens, 3);
        pj_uint32_t h = ss_reg_fnv1a(username, strlen(username)) % 1024;
        u->next = fresh[h];
        fresh[h] = u;
    }
    Py_DECREF(seq);
    ss_reg_free_users(self);
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
    pj_uint64_t now = ss_monotonic_ms();
    long n = 0;
    for (int i = 0; i < 4096; i++)
        for (aor_t *a = self->aors[i]; a; a = a->next)
            for (int j = a->count - 1; j >= 0; j--)
                if (a->contacts[j].expires_at <= now) {
                    ss_reg_remove_binding(self, a, j, "expired");
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
    pj_uint64_t now = ss_monotonic_ms();
    for (int i = 0; i < 4096 && list; i++)
        for (aor_t *a = self->aors[i]; a; a = a->next) {
            if (username && strcmp(username, a->username) != 0) continue;
            for (int j = 0; j < a->count; j++) {
                if (a->contacts[j].expires_at <= now) continue;
                PyObject *d = ss_reg_binding_dict(a, &a->contacts[j]);
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
    classify_slot_t *s = &self->classified[ss_reg_fnv1a(cid, (size_t)len) % CLASSIFY_SLOTS];
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
    pj_uint64_t now = ss_monotonic_ms();
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
    ss_reg_keepalive_stats(self, d);
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
        self->cps_at = ss_monotonic_ms();
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
