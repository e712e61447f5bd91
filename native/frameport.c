/* FramePort: a pjmedia port that joins the conference bridge and moves 20 ms frames between
 * the bridge's clock thread and two lock-free single-producer/single-consumer rings.
 *
 * Why: pjproject 2.12 has no AudioMediaPort, and a Python callback per frame on the clock
 * thread costs ~45 us and stalls every call when the GIL is busy (shared/spec/pjsip.md). Here
 * the clock thread only copies memory; Python drains and fills the rings in batches from the
 * UA thread. No Python code ever runs on the clock thread for this port.
 *
 *   rx ring: producer = clock thread (put_frame, audio the bridge delivers to us)
 *            consumer = UA thread (read_into)
 *   tx ring: producer = UA thread (write)
 *            consumer = clock thread (get_frame; an empty ring yields a NONE frame = silence)
 *
 * keep_newest mode (taps): when the rx ring is full the clock thread drops the *oldest* frame
 * instead of the new one, so an unread tap always holds the last `capacity` frames (a leg's
 * pre-roll) with no Python work at all until someone reads it. Moving the tail from the
 * producer breaks the SPSC contract, so in that mode both sides take a small mutex around rx
 * (a 320-byte copy under an uncontended futex; tx stays lock-free).
 */
#include "softswitch_native.h"

#include <stdatomic.h>
#include <string.h>

#define SIGNATURE PJMEDIA_SIG_CLASS_PORT_AUD('S', 'F')

typedef struct ring {
    _Atomic uint32_t head;      /* frames written (producer) */
    _Atomic uint32_t tail;      /* frames read (consumer) */
    uint32_t capacity;          /* frames, a power of two */
    uint32_t spf;               /* samples per frame */
    int16_t *samples;           /* capacity * spf */
} ring_t;

typedef struct native_port {
    pjmedia_port base;
    pj_pool_t *pool;
    ring_t rx;
    ring_t tx;
    _Atomic uint32_t tx_flush;  /* generation counter: the consumer drops queued tx when it changes */
    uint32_t tx_flush_seen;
    int keep_newest;            /* rx full: overwrite the oldest frame (under rx_lock) */
    pj_mutex_t *rx_lock;        /* only in keep_newest mode */
    _Atomic uint64_t rx_frames, rx_overruns, tx_frames, tx_underruns, rx_empty, rx_overwritten;
} native_port_t;

typedef struct {
    PyObject_HEAD
    native_port_t *port;
    int slot;
    unsigned clock_rate;
    unsigned spf;
    /* Samples of a partial frame handed to write() and not yet queued. */
    int16_t *pending;
    unsigned pending_len;
} FramePortObject;

static uint32_t round_pow2(uint32_t v) {
    uint32_t p = 1;
    while (p < v) p <<= 1;
    return p;
}

static pj_status_t ring_init(ring_t *r, pj_pool_t *pool, uint32_t frames, uint32_t spf) {
    r->capacity = round_pow2(frames);
    r->spf = spf;
    r->samples = pj_pool_calloc(pool, (pj_size_t)r->capacity * spf, sizeof(int16_t));
    atomic_init(&r->head, 0);
    atomic_init(&r->tail, 0);
    return r->samples ? PJ_SUCCESS : PJ_ENOMEM;
}

static inline uint32_t ring_count(ring_t *r) {
    return atomic_load_explicit(&r->head, memory_order_acquire) -
           atomic_load_explicit(&r->tail, memory_order_acquire);
}

/* Producer side: returns 0 when full (the frame is dropped, never blocks the clock). */
static inline int ring_push(ring_t *r, const int16_t *frame) {
    uint32_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
    uint32_t tail = atomic_load_explicit(&r->tail, memory_order_acquire);
    if (head - tail >= r->capacity) return 0;
    int16_t *dst = r->samples + (size_t)(head & (r->capacity - 1)) * r->spf;
    if (frame) memcpy(dst, frame, r->spf * sizeof(int16_t));
    else memset(dst, 0, r->spf * sizeof(int16_t));
    atomic_store_explicit(&r->head, head + 1, memory_order_release);
    return 1;
}

/* Consumer side: copies one frame out, 0 when empty. */
static inline int ring_pop(ring_t *r, int16_t *out) {
    uint32_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
    uint32_t head = atomic_load_explicit(&r->head, memory_order_acquire);
    if (head == tail) return 0;
    memcpy(out, r->samples + (size_t)(tail & (r->capacity - 1)) * r->spf, r->spf * sizeof(int16_t));
    atomic_store_explicit(&r->tail, tail + 1, memory_order_release);
    return 1;
}

/* keep_newest mode: make room by dropping the oldest frame (caller holds rx_lock). */
static inline void ring_drop_oldest_if_full(native_port_t *p) {
    ring_t *r = &p->rx;
    uint32_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
    uint32_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
    if (head - tail >= r->capacity) {
        atomic_store_explicit(&r->tail, tail + 1, memory_order_release);
        atomic_fetch_add_explicit(&p->rx_overwritten, 1, memory_order_relaxed);
    }
}

static inline void rx_enter(native_port_t *p) {
    if (p->rx_lock) pj_mutex_lock(p->rx_lock);
}

static inline void rx_leave(native_port_t *p) {
    if (p->rx_lock) pj_mutex_unlock(p->rx_lock);
}

/* ---- clock thread ---------------------------------------------------------------------- */

static pj_status_t port_put_frame(pjmedia_port *this_port, pjmedia_frame *frame) {
    native_port_t *p = (native_port_t *)this_port;
    const int16_t *audio = NULL;
    if (frame->type == PJMEDIA_FRAME_TYPE_AUDIO && frame->size >= p->rx.spf * sizeof(int16_t))
        audio = (const int16_t *)frame->buf;
    else
        atomic_fetch_add_explicit(&p->rx_empty, 1, memory_order_relaxed);
    if (p->keep_newest) {
        rx_enter(p);
        ring_drop_oldest_if_full(p);
        ring_push(&p->rx, audio);
        rx_leave(p);
        atomic_fetch_add_explicit(&p->rx_frames, 1, memory_order_relaxed);
        return PJ_SUCCESS;
    }
    /* Silence is queued too, so a reader sees real time pass (VAD, recorders, AI streams). */
    if (ring_push(&p->rx, audio))
        atomic_fetch_add_explicit(&p->rx_frames, 1, memory_order_relaxed);
    else
        atomic_fetch_add_explicit(&p->rx_overruns, 1, memory_order_relaxed);
    return PJ_SUCCESS;
}

static pj_status_t port_get_frame(pjmedia_port *this_port, pjmedia_frame *frame) {
    native_port_t *p = (native_port_t *)this_port;
    uint32_t flush = atomic_load_explicit(&p->tx_flush, memory_order_acquire);
    if (flush != p->tx_flush_seen) {
        /* Barge-in: drop everything queued before the flush request, at once. */
        p->tx_flush_seen = flush;
        atomic_store_explicit(&p->tx.tail, atomic_load_explicit(&p->tx.head, memory_order_acquire),
                              memory_order_release);
    }
    if (frame->size < p->tx.spf * sizeof(int16_t) || !ring_pop(&p->tx, (int16_t *)frame->buf)) {
        atomic_fetch_add_explicit(&p->tx_underruns, 1, memory_order_relaxed);
        frame->type = PJMEDIA_FRAME_TYPE_NONE;
        frame->size = 0;
        return PJ_SUCCESS;
    }
    atomic_fetch_add_explicit(&p->tx_frames, 1, memory_order_relaxed);
    frame->type = PJMEDIA_FRAME_TYPE_AUDIO;
    frame->size = p->tx.spf * sizeof(int16_t);
    return PJ_SUCCESS;
}

static pj_status_t port_on_destroy(pjmedia_port *this_port) {
    native_port_t *p = (native_port_t *)this_port;
    pj_pool_t *pool = p->pool;
    p->pool = NULL;
    if (p->rx_lock) {
        pj_mutex_destroy(p->rx_lock);
        p->rx_lock = NULL;
    }
    if (pool) pj_pool_release(pool);
    return PJ_SUCCESS;
}

/* ---- Python object (UA thread only) ---------------------------------------------------- */

static int FramePort_init(FramePortObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"name", "clock_rate", "ptime_ms", "capacity_frames", "keep_newest",
                             "tx_capacity_frames", NULL};
    const char *name = "frameport";
    unsigned clock_rate = 8000, ptime_ms = 20, capacity = 64, tx_capacity = 0;
    int keep_newest = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|sIIIpI", kwlist, &name, &clock_rate, &ptime_ms,
                                     &capacity, &keep_newest, &tx_capacity))
        return -1;
    if (tx_capacity == 0) tx_capacity = capacity;
    if (self->port) {
        PyErr_SetString(PyExc_RuntimeError, "FramePort is already initialised");
        return -1;
    }
    if (clock_rate < 8000 || clock_rate > 48000 || ptime_ms < 10 || ptime_ms > 60 || capacity < 2 ||
        capacity > 65536 || tx_capacity < 2 || tx_capacity > 65536) {
        PyErr_SetString(PyExc_ValueError,
                        "FramePort needs clock_rate 8000..48000, ptime_ms 10..60, capacity_frames and "
                        "tx_capacity_frames 2..65536");
        return -1;
    }
    if (ss_require_pj_thread() != 0) return -1;

    unsigned spf = clock_rate * ptime_ms / 1000;
    pj_pool_t *pool = pjsua_pool_create(
        "frameport", 1024 + ((pj_size_t)round_pow2(capacity) + round_pow2(tx_capacity)) * spf * 2, 1024);
    if (!pool) {
        PyErr_NoMemory();
        return -1;
    }
    native_port_t *p = pj_pool_zalloc(pool, sizeof(native_port_t));
    p->pool = pool;
    pj_str_t pname;
    pj_strdup2_with_null(pool, &pname, name);
    pjmedia_port_info_init(&p->base.info, &pname, SIGNATURE, clock_rate, 1, 16, spf);
    p->base.put_frame = &port_put_frame;
    p->base.get_frame = &port_get_frame;
    p->base.on_destroy = &port_on_destroy;
    if (ring_init(&p->rx, pool, capacity, spf) != PJ_SUCCESS ||
        ring_init(&p->tx, pool, tx_capacity, spf) != PJ_SUCCESS) {
        pj_pool_release(pool);
        PyErr_NoMemory();
        return -1;
    }
    if (keep_newest) {
        pj_status_t lst = pj_mutex_create_simple(pool, "fprx", &p->rx_lock);
        if (lst != PJ_SUCCESS) {
            pj_pool_release(pool);
            return ss_raise_pj("pj_mutex_create_simple", lst), -1;
        }
        p->keep_newest = 1;
    }
#if SS_PJ_PORT_HAS_GRP_LOCK
    /* pjproject >= 2.14 removes conference ports asynchronously: the port must live until
     * the bridge lets go of it, which the group lock's reference count tracks. */
    pj_status_t st = pjmedia_port_init_grp_lock(&p->base, pool, NULL);
    if (st != PJ_SUCCESS) {
        pj_pool_release(pool);
        return ss_raise_pj("pjmedia_port_init_grp_lock", st), -1;
    }
#endif
    int slot = -1;
    pj_status_t status = pjsua_conf_add_port(pool, &p->base, &slot);
    if (status != PJ_SUCCESS) {
        pjmedia_port_destroy(&p->base);
        ss_raise_pj("pjsua_conf_add_port (is the bridge full? see PJSUA_MAX_CONF_PORTS)", status);
        return -1;
    }
    self->pending = PyMem_Calloc(spf, sizeof(int16_t));
    if (!self->pending) {
        pjsua_conf_remove_port(slot);
        pjmedia_port_destroy(&p->base);
        PyErr_NoMemory();
        return -1;
    }
    self->port = p;
    self->slot = slot;
    self->clock_rate = clock_rate;
    self->spf = spf;
    self->pending_len = 0;
    return 0;
}

static int check_open(FramePortObject *self) {
    if (!self->port) {
        PyErr_SetString(PyExc_RuntimeError, "FramePort is closed");
        return -1;
    }
    return 0;
}

static void frameport_release(FramePortObject *self) {
    if (!self->port) return;
    native_port_t *p = self->port;
    self->port = NULL;
    pjsua_conf_remove_port(self->slot);
    self->slot = -1;
    pjmedia_port_destroy(&p->base);
}

static PyObject *FramePort_close(FramePortObject *self, PyObject *unused) {
    if (self->port && ss_require_pj_thread() != 0) return NULL;
    frameport_release(self);
    Py_RETURN_NONE;
}

static void FramePort_dealloc(FramePortObject *self) {
    /* Only release from a pjlib thread; otherwise leak rather than crash (close() is the API). */
    if (self->port && ss_is_pj_thread()) frameport_release(self);
    PyMem_Free(self->pending);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* read_into(buffer) -> samples written: drains whole frames from rx into a writable int16
 * buffer (a numpy array, bytearray or memoryview), as many as fit and are available. */
static PyObject *FramePort_read_into(FramePortObject *self, PyObject *arg) {
    if (check_open(self)) return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) != 0) return NULL;
    size_t max_frames = (size_t)view.len / (self->spf * sizeof(int16_t));
    size_t n = 0;
    int16_t *out = (int16_t *)view.buf;
    rx_enter(self->port);
    while (n < max_frames && ring_pop(&self->port->rx, out + n * self->spf)) n++;
    rx_leave(self->port);
    PyBuffer_Release(&view);
    return PyLong_FromSize_t(n * self->spf);
}

/* read(max_frames=-1) -> bytes of int16 samples (whole frames). */
static PyObject *FramePort_read(FramePortObject *self, PyObject *args) {
    long max_frames = -1;
    if (!PyArg_ParseTuple(args, "|l", &max_frames)) return NULL;
    if (check_open(self)) return NULL;
    uint32_t avail = ring_count(&self->port->rx);
    if (max_frames >= 0 && (uint32_t)max_frames < avail) avail = (uint32_t)max_frames;
    PyObject *bytes = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)avail * self->spf * sizeof(int16_t));
    if (!bytes) return NULL;
    int16_t *out = (int16_t *)PyBytes_AS_STRING(bytes);
    uint32_t n = 0;
    rx_enter(self->port);
    while (n < avail && ring_pop(&self->port->rx, out + (size_t)n * self->spf)) n++;
    rx_leave(self->port);
    if (n < avail && _PyBytes_Resize(&bytes, (Py_ssize_t)n * self->spf * sizeof(int16_t)) != 0) return NULL;
    return bytes;
}

/* write(buffer) -> samples accepted. Queues int16 samples for the bridge to pull; a trailing
 * partial frame is kept and completed by the next write. Stops when the tx ring is full. */
static PyObject *FramePort_write(FramePortObject *self, PyObject *arg) {
    if (check_open(self)) return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_C_CONTIGUOUS) != 0) return NULL;
    if (view.len % (Py_ssize_t)sizeof(int16_t)) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "write() needs 16-bit samples (an even number of bytes)");
        return NULL;
    }
    const int16_t *in = (const int16_t *)view.buf;
    size_t total = (size_t)view.len / sizeof(int16_t), used = 0;
    ring_t *tx = &self->port->tx;
    for (;;) {
        size_t need = self->spf - self->pending_len;
        size_t take = total - used < need ? total - used : need;
        if (self->pending_len == 0 && take == self->spf) {
            if (!ring_push(tx, in + used)) break;
            used += take;
            continue;
        }
        if (take == 0) break;
        if (self->pending_len + take == self->spf && ring_count(tx) >= tx->capacity) break;
        memcpy(self->pending + self->pending_len, in + used, take * sizeof(int16_t));
        self->pending_len += (unsigned)take;
        used += take;
        if (self->pending_len == self->spf) {
            ring_push(tx, self->pending);
            self->pending_len = 0;
        }
    }
    PyBuffer_Release(&view);
    return PyLong_FromSize_t(used);
}

/* clear_tx(): drop queued outgoing audio at once (barge-in). The clock thread applies it on its
 * next pull, so nothing queued before this call is played. */
static PyObject *FramePort_clear_tx(FramePortObject *self, PyObject *unused) {
    if (check_open(self)) return NULL;
    self->pending_len = 0;
    atomic_fetch_add_explicit(&self->port->tx_flush, 1, memory_order_acq_rel);
    Py_RETURN_NONE;
}

static PyObject *FramePort_clear_rx(FramePortObject *self, PyObject *unused) {
    if (check_open(self)) return NULL;
    ring_t *rx = &self->port->rx;
    rx_enter(self->port);
    atomic_store_explicit(&rx->tail, atomic_load_explicit(&rx->head, memory_order_acquire),
                          memory_order_release);
    rx_leave(self->port);
    Py_RETURN_NONE;
}

static PyObject *FramePort_stats(FramePortObject *self, PyObject *unused) {
    if (check_open(self)) return NULL;
    native_port_t *p = self->port;
    return Py_BuildValue(
        "{s:K,s:K,s:K,s:K,s:K,s:K,s:I,s:I}", "rx_frames",
        (unsigned long long)atomic_load(&p->rx_frames), "rx_overwritten",
        (unsigned long long)atomic_load(&p->rx_overwritten), "rx_overruns",
        (unsigned long long)atomic_load(&p->rx_overruns), "rx_silent",
        (unsigned long long)atomic_load(&p->rx_empty), "tx_frames",
        (unsigned long long)atomic_load(&p->tx_frames), "tx_underruns",
        (unsigned long long)atomic_load(&p->tx_underruns), "rx_queued", ring_count(&p->rx),
        "tx_queued", ring_count(&p->tx));
}

static PyObject *FramePort_get_slot(FramePortObject *self, void *closure) { return PyLong_FromLong(self->slot); }
static PyObject *FramePort_get_spf(FramePortObject *self, void *closure) { return PyLong_FromUnsignedLong(self->spf); }
static PyObject *FramePort_get_rate(FramePortObject *self, void *closure) { return PyLong_FromUnsignedLong(self->clock_rate); }
static PyObject *FramePort_get_closed(FramePortObject *self, void *closure) { return PyBool_FromLong(self->port == NULL); }
static PyObject *FramePort_get_rx_available(FramePortObject *self, void *closure) {
    if (check_open(self)) return NULL;
    return PyLong_FromUnsignedLong(ring_count(&self->port->rx));
}
static PyObject *FramePort_get_tx_queued(FramePortObject *self, void *closure) {
    if (check_open(self)) return NULL;
    return PyLong_FromUnsignedLong(ring_count(&self->port->tx));
}
static PyObject *FramePort_get_capacity(FramePortObject *self, void *closure) {
    if (check_open(self)) return NULL;
    return PyLong_FromUnsignedLong(self->port->rx.capacity);
}
static PyObject *FramePort_get_tx_capacity(FramePortObject *self, void *closure) {
    if (check_open(self)) return NULL;
    return PyLong_FromUnsignedLong(self->port->tx.capacity);
}
static PyObject *FramePort_get_keep_newest(FramePortObject *self, void *closure) {
    if (check_open(self)) return NULL;
    return PyBool_FromLong(self->port->keep_newest);
}

static PyMethodDef FramePort_methods[] = {
    {"read_into", (PyCFunction)FramePort_read_into, METH_O, "Drain whole rx frames into a writable int16 buffer; returns samples written."},
    {"read", (PyCFunction)FramePort_read, METH_VARARGS, "Drain up to max_frames rx frames as bytes of int16."},
    {"write", (PyCFunction)FramePort_write, METH_O, "Queue int16 samples for the bridge; returns samples accepted."},
    {"clear_tx", (PyCFunction)FramePort_clear_tx, METH_NOARGS, "Drop queued outgoing audio at once (barge-in)."},
    {"clear_rx", (PyCFunction)FramePort_clear_rx, METH_NOARGS, "Drop received frames not yet read."},
    {"stats", (PyCFunction)FramePort_stats, METH_NOARGS, "Counters: frames, overruns, underruns, queue depths."},
    {"close", (PyCFunction)FramePort_close, METH_NOARGS, "Remove the port from the bridge and free it (UA thread)."},
    {NULL}};

static PyGetSetDef FramePort_getset[] = {
    {"slot", (getter)FramePort_get_slot, NULL, "Conference bridge slot, -1 when closed.", NULL},
    {"samples_per_frame", (getter)FramePort_get_spf, NULL, NULL, NULL},
    {"clock_rate", (getter)FramePort_get_rate, NULL, NULL, NULL},
    {"closed", (getter)FramePort_get_closed, NULL, NULL, NULL},
    {"rx_available", (getter)FramePort_get_rx_available, NULL, "Frames waiting to be read.", NULL},
    {"tx_queued", (getter)FramePort_get_tx_queued, NULL, "Frames waiting for the bridge.", NULL},
    {"capacity_frames", (getter)FramePort_get_capacity, NULL, "rx ring size in frames.", NULL},
    {"tx_capacity_frames", (getter)FramePort_get_tx_capacity, NULL, "tx ring size in frames.", NULL},
    {"keep_newest", (getter)FramePort_get_keep_newest, NULL, "A full rx ring drops its oldest frame (taps).", NULL},
    {NULL}};

PyTypeObject FramePortType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "_softswitch_native.FramePort",
    .tp_basicsize = sizeof(FramePortObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A conference-bridge port whose audio Python reads and writes in batches through lock-free rings.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)FramePort_init,
    .tp_dealloc = (destructor)FramePort_dealloc,
    .tp_methods = FramePort_methods,
    .tp_getset = FramePort_getset,
};
