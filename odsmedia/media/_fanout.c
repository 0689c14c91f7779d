/* The packet forward path's per-subscriber loop in C (optional build).
 *
 * odsmedia.media.forwarder calls forward() once per incoming RTP packet with
 * the list of subscribers that are forwarding; for each one this writes the
 * rewritten 12-byte header, the subscriber's header extension block and the
 * payload into the subscriber's own buffer, SRTP-protects it in place with
 * libsrtp's srtp_protect (the function pylibsrtp already loaded, passed in as
 * an address: no second copy of libsrtp, no headers needed to build this),
 * and sendto()s it on a duplicate of the subscriber's socket.  The bytes on
 * the wire are the same as the pure-Python loop's (tests/test_native_forward.py
 * compares them); the Python loop stays the fallback when this module is not
 * built.
 *
 * A subscriber's state is one C struct kept in a bytearray (slot()), so the
 * hot loop reads no Python attributes and its counters are plain C integers:
 * nothing is allocated per copy.  Single-threaded use only (the event loop).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <netdb.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>

#define BUFFER 2048
#define EXT_MAX 64
#define TRAILER 144                                 /* the longest SRTP trailer (tag + MKI), with room */
#define MAX_PACKET (BUFFER - TRAILER)
#define MAGIC 0x6f64736661e0u

typedef int (*protect_fn)(void *ctx, void *rtp, int *len);

typedef struct {
    uint64_t magic;
    void *srtp;
    protect_fn protect;
    int fd;
    socklen_t addrlen;
    struct sockaddr_storage addr;
    uint32_t ssrc;
    uint32_t ts_off;
    uint16_t seq_off;
    uint8_t pt;
    uint8_t ext_len;
    uint8_t ext_level_len;
    int16_t level_at;                               /* the level byte's index in ext_level, -1: none */
    uint8_t ext[EXT_MAX];
    uint8_t ext_level[EXT_MAX];
    unsigned long long packets, octets, sent_bytes, errors;
    uint8_t buf[BUFFER];
} Slot;

static Slot *slot_of(PyObject *obj) {
    if (!PyByteArray_CheckExact(obj) || PyByteArray_GET_SIZE(obj) != (Py_ssize_t)sizeof(Slot)) {
        PyErr_SetString(PyExc_TypeError, "not a forwarding slot");
        return NULL;
    }
    Slot *s = (Slot *)PyByteArray_AS_STRING(obj);
    if (s->magic != MAGIC) {
        PyErr_SetString(PyExc_TypeError, "not a forwarding slot");
        return NULL;
    }
    return s;
}

/* slot(srtp, protect, fd, host, port, ssrc, pt, ext, ext_level, level_at) -> bytearray */
static PyObject *make_slot(PyObject *self, PyObject *args) {
    unsigned long long srtp, protect;
    int fd, port, level_at;
    const char *host;
    unsigned long ssrc;
    int pt;
    Py_buffer ext, ext_level;
    if (!PyArg_ParseTuple(args, "KKisikiy*y*i", &srtp, &protect, &fd, &host, &port, &ssrc, &pt, &ext, &ext_level,
                          &level_at))
        return NULL;
    PyObject *result = NULL;
    if (ext.len > EXT_MAX || ext_level.len > EXT_MAX || level_at >= ext_level.len || pt < 0 || pt > 127 ||
        !srtp || !protect) {
        PyErr_SetString(PyExc_ValueError, "forwarding slot parameters out of range");
        goto done;
    }
    struct addrinfo hints, *info = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_socktype = SOCK_DGRAM;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
    char service[16];
    snprintf(service, sizeof service, "%d", port);
    if (getaddrinfo(host, service, &hints, &info) != 0 || info == NULL) {
        PyErr_SetString(PyExc_ValueError, "not a numeric address");
        goto done;
    }
    result = PyByteArray_FromStringAndSize(NULL, sizeof(Slot));
    if (result == NULL) {
        freeaddrinfo(info);
        goto done;
    }
    Slot *s = (Slot *)PyByteArray_AS_STRING(result);
    memset(s, 0, sizeof(Slot));
    s->magic = MAGIC;
    s->srtp = (void *)(uintptr_t)srtp;
    s->protect = (protect_fn)(uintptr_t)protect;
    s->fd = fd;
    memcpy(&s->addr, info->ai_addr, info->ai_addrlen);
    s->addrlen = info->ai_addrlen;
    freeaddrinfo(info);
    s->ssrc = (uint32_t)ssrc;
    s->pt = (uint8_t)pt;
    s->ext_len = (uint8_t)ext.len;
    memcpy(s->ext, ext.buf, ext.len);
    s->ext_level_len = (uint8_t)ext_level.len;
    memcpy(s->ext_level, ext_level.buf, ext_level.len);
    s->level_at = (int16_t)level_at;
done:
    PyBuffer_Release(&ext);
    PyBuffer_Release(&ext_level);
    return result;
}

/* rebase(slot, seq_off, ts_off) */
static PyObject *rebase(PyObject *self, PyObject *args) {
    PyObject *obj;
    unsigned long seq_off, ts_off;
    if (!PyArg_ParseTuple(args, "Okk", &obj, &seq_off, &ts_off))
        return NULL;
    Slot *s = slot_of(obj);
    if (s == NULL)
        return NULL;
    s->seq_off = (uint16_t)seq_off;
    s->ts_off = (uint32_t)ts_off;
    Py_RETURN_NONE;
}

/* counts(slot) -> (packets, payload octets, bytes sent, errors) */
static PyObject *counts(PyObject *self, PyObject *obj) {
    Slot *s = slot_of(obj);
    if (s == NULL)
        return NULL;
    return Py_BuildValue("KKKK", s->packets, s->octets, s->sent_bytes, s->errors);
}

static inline void put16(uint8_t *p, uint32_t v) { p[0] = v >> 8; p[1] = v; }
static inline void put32(uint8_t *p, uint32_t v) { p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v; }

/* forward(slots, payload, seq, ts, marker, level) -> bytes sent (SRTP included) */
static PyObject *forward(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 6 || !PyList_CheckExact(args[0]) || !PyBytes_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "forward(slots: list, payload: bytes, seq, ts, marker, level)");
        return NULL;
    }
    PyObject *slots = args[0];
    const uint8_t *payload = (const uint8_t *)PyBytes_AS_STRING(args[1]);
    Py_ssize_t n = PyBytes_GET_SIZE(args[1]);
    unsigned long seq = PyLong_AsUnsignedLong(args[2]);
    unsigned long ts = PyLong_AsUnsignedLong(args[3]);
    long marker = PyLong_AsLong(args[4]);
    long level = PyLong_AsLong(args[5]);
    if (PyErr_Occurred())
        return NULL;
    uint8_t mbit = marker ? 0x80 : 0;
    unsigned long long total = 0;
    Py_ssize_t count = PyList_GET_SIZE(slots);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PyList_GET_ITEM(slots, i);
        if (!PyByteArray_CheckExact(item) || PyByteArray_GET_SIZE(item) != (Py_ssize_t)sizeof(Slot))
            continue;
        Slot *s = (Slot *)PyByteArray_AS_STRING(item);
        if (s->magic != MAGIC)
            continue;
        const uint8_t *ext = s->ext;
        Py_ssize_t ext_len = s->ext_len;
        if (level >= 0) {
            ext = s->ext_level;
            ext_len = s->ext_level_len;
        }
        Py_ssize_t len = 12 + ext_len + n;
        if (len > MAX_PACKET) {
            s->errors++;
            continue;
        }
        uint8_t *b = s->buf;
        b[0] = ext_len ? 0x90 : 0x80;
        b[1] = mbit | s->pt;
        put16(b + 2, (uint32_t)((seq + s->seq_off) & 0xFFFF));
        put32(b + 4, (uint32_t)((ts + s->ts_off) & 0xFFFFFFFFu));
        put32(b + 8, s->ssrc);
        memcpy(b + 12, ext, ext_len);
        if (level >= 0 && s->level_at >= 0)
            b[12 + s->level_at] = (uint8_t)level;
        memcpy(b + 12 + ext_len, payload, n);
        int out = (int)len;
        if (s->protect(s->srtp, b, &out) != 0) {
            s->errors++;
            continue;
        }
        ssize_t r;
        do {
            r = sendto(s->fd, b, out, MSG_DONTWAIT, (struct sockaddr *)&s->addr, s->addrlen);
        } while (r < 0 && errno == EINTR);
        /* Counted as the Python loop counts: a copy handed to the socket, even when the
         * kernel refuses it (a full buffer drops it as the network would). */
        s->packets++;
        s->octets += n;
        if (r < 0) {
            s->errors++;
            continue;
        }
        s->sent_bytes += out;
        total += out;
    }
    return PyLong_FromUnsignedLongLong(total);
}

static PyMethodDef methods[] = {
    {"slot", make_slot, METH_VARARGS, "A subscriber's forwarding state (a bytearray holding a C struct)."},
    {"rebase", rebase, METH_VARARGS, "Set a slot's sequence and timestamp offsets."},
    {"counts", counts, METH_O, "(packets, payload octets, bytes sent, errors) of a slot."},
    {"forward", (PyCFunction)(void (*)(void))forward, METH_FASTCALL,
     "Rewrite, protect and send one packet to every slot in the list; returns the bytes sent."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fanout", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fanout(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "MAX_PACKET", MAX_PACKET) < 0 || PyModule_AddIntConstant(m, "EXT_MAX", EXT_MAX) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
