/*
 * The router's compiled fast path: parse a whole, plain HTTP/1.x message from one read and
 * build the head the other side receives, in one call instead of one Python callback per
 * header.
 *
 * It takes only what it fully understands: a request or response that is complete in the bytes
 * given, with no body or a Content-Length body, strictly well-formed (CRLF line ends, token
 * header names, no obs-fold, no control characters), and no header whose handling needs the
 * general code (Transfer-Encoding, Upgrade, Proxy-Connection, Connection naming other fields,
 * repeated Host or Content-Length). For anything else it returns None and the caller feeds the
 * same bytes to the general path (httptools and router/headers.py), which also produces every
 * error answer. The heads built here must equal router/headers.py's byte for byte; a test
 * compares them.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>
#include <math.h>
#include <time.h>
#include <unistd.h>

#define MAX_FIELDS 256

enum kind {
    K_PASS,     /* forwarded as it is */
    K_DROP,     /* hop-by-hop or set by the router */
    K_HOST,
    K_LENGTH,
    K_CONNECTION,
    K_REQUEST_ID,
    K_FORWARDED_FOR,
    K_VIA,
    K_GENERAL,  /* the general path must handle this message */
};

struct field {
    const char *name;
    Py_ssize_t name_len;
    const char *value;
    Py_ssize_t value_len;
    int kind;
};

/* RFC 9110 section 5.6.2: tchar */
static unsigned char tchar[256];
/* field-value characters: VCHAR, obs-text, SP, HTAB */
static unsigned char vchar[256];

static void init_tables(void)
{
    const char *extra = "!#$%&'*+-.^_`|~";
    for (int c = '0'; c <= '9'; c++) tchar[c] = 1;
    for (int c = 'a'; c <= 'z'; c++) tchar[c] = 1;
    for (int c = 'A'; c <= 'Z'; c++) tchar[c] = 1;
    for (const char *e = extra; *e; e++) tchar[(unsigned char)*e] = 1;
    for (int c = 0x20; c < 0x7f; c++) vchar[c] = 1;
    for (int c = 0x80; c < 0x100; c++) vchar[c] = 1;
    vchar['\t'] = 1;
}

static int name_is(const char *name, Py_ssize_t len, const char *lower)
{
    Py_ssize_t n = (Py_ssize_t)strlen(lower);
    if (len != n) return 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        char c = name[i];
        if (c >= 'A' && c <= 'Z') c = (char)(c + 32);
        if (c != lower[i]) return 0;
    }
    return 1;
}

static int request_kind(const char *n, Py_ssize_t len)
{
    switch (len) {
    case 2: return name_is(n, len, "te") ? K_DROP : K_PASS;
    case 3: return name_is(n, len, "via") ? K_VIA : K_PASS;
    case 4: return name_is(n, len, "host") ? K_HOST : K_PASS;
    case 7:
        if (name_is(n, len, "trailer")) return K_DROP;
        return name_is(n, len, "upgrade") ? K_GENERAL : K_PASS;
    case 10:
        if (name_is(n, len, "connection")) return K_CONNECTION;
        return name_is(n, len, "keep-alive") ? K_DROP : K_PASS;
    case 12: return name_is(n, len, "x-request-id") ? K_REQUEST_ID : K_PASS;
    case 14: return name_is(n, len, "content-length") ? K_LENGTH : K_PASS;
    case 15:
        if (name_is(n, len, "x-forwarded-for")) return K_FORWARDED_FOR;
        return name_is(n, len, "x-request-start") ? K_DROP : K_PASS;
    case 16:
        if (name_is(n, len, "x-forwarded-port")) return K_DROP;
        return name_is(n, len, "proxy-connection") ? K_GENERAL : K_PASS;
    case 17:
        if (name_is(n, len, "x-forwarded-proto")) return K_DROP;
        return name_is(n, len, "transfer-encoding") ? K_GENERAL : K_PASS;
    case 18: return name_is(n, len, "proxy-authenticate") ? K_DROP : K_PASS;
    case 19: return name_is(n, len, "proxy-authorization") ? K_DROP : K_PASS;
    default: return K_PASS;
    }
}

static int response_kind(const char *n, Py_ssize_t len)
{
    switch (len) {
    case 2: return name_is(n, len, "te") ? K_DROP : K_PASS;
    case 3: return name_is(n, len, "via") ? K_VIA : K_PASS;
    case 7:
        if (name_is(n, len, "trailer")) return K_DROP;
        return name_is(n, len, "upgrade") ? K_GENERAL : K_PASS;
    case 10:
        if (name_is(n, len, "connection")) return K_CONNECTION;
        return name_is(n, len, "keep-alive") ? K_DROP : K_PASS;
    case 14: return name_is(n, len, "content-length") ? K_LENGTH : K_PASS;
    case 16: return name_is(n, len, "proxy-connection") ? K_GENERAL : K_PASS;
    case 17: return name_is(n, len, "transfer-encoding") ? K_GENERAL : K_PASS;
    case 18: return name_is(n, len, "proxy-authenticate") ? K_DROP : K_PASS;
    case 19: return name_is(n, len, "proxy-authorization") ? K_DROP : K_PASS;
    default: return K_PASS;
    }
}

/* Connection tokens: set *close / *keep_alive; return -1 for any other token (upgrade, or a
 * field named hop-by-hop), which the general path handles. */
static int connection_tokens(const char *v, Py_ssize_t len, int *close, int *keep_alive)
{
    Py_ssize_t i = 0;
    while (i < len) {
        while (i < len && (v[i] == ' ' || v[i] == '\t' || v[i] == ',')) i++;
        Py_ssize_t start = i;
        while (i < len && v[i] != ',') i++;
        Py_ssize_t stop = i;
        while (stop > start && (v[stop - 1] == ' ' || v[stop - 1] == '\t')) stop--;
        if (stop == start) continue;
        if (name_is(v + start, stop - start, "close")) *close = 1;
        else if (name_is(v + start, stop - start, "keep-alive")) *keep_alive = 1;
        else return -1;
    }
    return 0;
}

/* Parse header lines from p up to and including the empty line. Returns the position after
 * the head, or NULL when the head is incomplete, malformed or over the limits. */
static const char *parse_fields(const char *p, const char *end, struct field *fields, int *count,
                                Py_ssize_t max_fields, Py_ssize_t max_bytes, int response)
{
    Py_ssize_t total = 0;
    int n = 0;
    for (;;) {
        if (end - p < 2) return NULL;
        if (p[0] == '\r') {
            if (p[1] != '\n') return NULL;
            *count = n;
            return p + 2;
        }
        const char *name = p;
        while (p < end && tchar[(unsigned char)*p]) p++;
        if (p == end || *p != ':' || p == name) return NULL;
        Py_ssize_t name_len = p - name;
        p++;
        while (p < end && (*p == ' ' || *p == '\t')) p++;
        const char *value = p;
        while (p < end && vchar[(unsigned char)*p]) p++;
        if (end - p < 2 || p[0] != '\r' || p[1] != '\n') return NULL;
        Py_ssize_t value_len = p - value;
        if (value_len && (value[value_len - 1] == ' ' || value[value_len - 1] == '\t')) return NULL;
        p += 2;
        if (n >= max_fields || n >= MAX_FIELDS) return NULL;
        total += name_len + value_len + 4;
        if (total > max_bytes) return NULL;
        fields[n].name = name;
        fields[n].name_len = name_len;
        fields[n].value = value;
        fields[n].value_len = value_len;
        fields[n].kind = response ? response_kind(name, name_len) : request_kind(name, name_len);
        n++;
    }
}

static int parse_length(const char *v, Py_ssize_t len, long long *out)
{
    if (len == 0 || len > 15) return -1;
    long long value = 0;
    for (Py_ssize_t i = 0; i < len; i++) {
        if (v[i] < '0' || v[i] > '9') return -1;
        value = value * 10 + (v[i] - '0');
    }
    *out = value;
    return 0;
}

static int request_id_ok(const char *v, Py_ssize_t len)
{
    if (len < 8 || len > 200) return 0;
    for (Py_ssize_t i = 0; i < len; i++) {
        char c = v[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' ||
              c == '/' || c == '=' || c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

static char *put_u64(char *o, unsigned long long v);

/* Request ids: the prefix and counter router/headers.py hands over (see _RequestIds). */
static char id_prefix[64];
static Py_ssize_t id_prefix_len;
static unsigned long long id_counter;

static PyObject *seed_request_ids(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t len;
    const char *prefix;
    if (nargs != 2 || !PyUnicode_Check(args[0]) || !PyLong_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "seed_request_ids(prefix: str, start: int)");
        return NULL;
    }
    prefix = PyUnicode_AsUTF8AndSize(args[0], &len);
    if (prefix == NULL) return NULL;
    if (len <= 0 || len >= (Py_ssize_t)sizeof id_prefix) {
        PyErr_SetString(PyExc_ValueError, "seed_request_ids: the prefix must be 1 to 63 bytes");
        return NULL;
    }
    unsigned long long start = PyLong_AsUnsignedLongLongMask(args[1]);
    if (PyErr_Occurred()) return NULL;
    memcpy(id_prefix, prefix, (size_t)len);
    id_prefix_len = len;
    id_counter = start;
    Py_RETURN_NONE;
}

static PyObject *make_request_id(void)
{
    char id[64 + 12];
    memcpy(id, id_prefix, (size_t)id_prefix_len);
    static const char hex[] = "0123456789abcdef";
    unsigned long long counter = id_counter++ & 0xFFFFFFFFFFFFULL;
    for (int i = 11; i >= 0; i--) {  /* "%012llx", without printf's cost */
        id[id_prefix_len + i] = hex[counter & 0xF];
        counter >>= 4;
    }
    return PyUnicode_DecodeASCII(id, id_prefix_len + 12, NULL);
}

static PyObject *new_request_id(PyObject *self, PyObject *unused)
{
    if (id_prefix_len == 0) {
        PyErr_SetString(PyExc_RuntimeError, "new_request_id: seed_request_ids was not called");
        return NULL;
    }
    return make_request_id();
}

/* A tuple of these new references (stolen); NULL, and all released, if any of them is NULL. */
static PyObject *new_tuple(PyObject **items, Py_ssize_t n)
{
    PyObject *tuple = NULL;
    for (Py_ssize_t i = 0; i < n; i++)
        if (items[i] == NULL) goto fail;
    tuple = PyTuple_New(n);
    if (tuple == NULL) goto fail;
    for (Py_ssize_t i = 0; i < n; i++) PyTuple_SET_ITEM(tuple, i, items[i]);
    return tuple;
fail:
    for (Py_ssize_t i = 0; i < n; i++) Py_XDECREF(items[i]);
    return NULL;
}

static const char *METHODS[] = {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", NULL};

static char *put(char *out, const char *s, Py_ssize_t len)
{
    memcpy(out, s, (size_t)len);
    return out + len;
}

#define PUTS(out, lit) put((out), (lit), (Py_ssize_t)(sizeof(lit) - 1))

/* Joined values of repeated fields (X-Forwarded-For, Via) with the router's own added last. */
static Py_ssize_t joined_len(struct field *fields, int count, int kind, Py_ssize_t own)
{
    Py_ssize_t len = 0;
    for (int i = 0; i < count; i++)
        if (fields[i].kind == kind) len += fields[i].value_len + 2;
    return len + own;
}

static char *put_joined(char *out, struct field *fields, int count, int kind, const char *own, Py_ssize_t own_len)
{
    for (int i = 0; i < count; i++) {
        if (fields[i].kind == kind) {
            out = put(out, fields[i].value, fields[i].value_len);
            out = PUTS(out, ", ");
        }
    }
    return put(out, own, own_len);
}

/* request(data, ctx) -> None, or (method, target, host, request_id, keep_alive, http11, out,
 *                                 body_length, start_wall)
 * ctx: (client_ip, proto, port, via, max_url_bytes, max_header_bytes, max_headers)
 * `out` is the head the app receives followed by the body. */
static PyObject *fast_request(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyBytes_Check(args[0]) || !PyTuple_Check(args[1]) || PyTuple_GET_SIZE(args[1]) != 7) {
        PyErr_SetString(PyExc_TypeError, "request(data: bytes, ctx: tuple of 7)");
        return NULL;
    }
    PyObject *ctx = args[1];
    PyObject *ip = PyTuple_GET_ITEM(ctx, 0), *proto = PyTuple_GET_ITEM(ctx, 1);
    PyObject *port = PyTuple_GET_ITEM(ctx, 2), *via = PyTuple_GET_ITEM(ctx, 3);
    if (!PyBytes_Check(ip) || !PyBytes_Check(proto) || !PyBytes_Check(port) || !PyBytes_Check(via)) {
        PyErr_SetString(PyExc_TypeError, "request: ctx holds bytes first");
        return NULL;
    }
    Py_ssize_t max_url = PyLong_AsSsize_t(PyTuple_GET_ITEM(ctx, 4));
    Py_ssize_t max_bytes = PyLong_AsSsize_t(PyTuple_GET_ITEM(ctx, 5));
    Py_ssize_t max_fields = PyLong_AsSsize_t(PyTuple_GET_ITEM(ctx, 6));
    if (PyErr_Occurred()) return NULL;

    const char *data = PyBytes_AS_STRING(args[0]);
    const char *end = data + PyBytes_GET_SIZE(args[0]);
    const char *p = data;

    while (p < end && *p >= 'A' && *p <= 'Z') p++;
    if (p == end || *p != ' ') Py_RETURN_NONE;
    Py_ssize_t method_len = p - data;
    int known = 0;
    for (const char **m = METHODS; *m; m++)
        if ((Py_ssize_t)strlen(*m) == method_len && memcmp(*m, data, (size_t)method_len) == 0) known = 1;
    if (!known) Py_RETURN_NONE;
    const char *target = ++p;
    while (p < end && *p > 0x20 && *p < 0x7f) p++;
    if (p == end || *p != ' ') Py_RETURN_NONE;
    Py_ssize_t target_len = p - target;
    if (target_len == 0 || target_len > max_url) Py_RETURN_NONE;
    if (target[0] != '/' && !(target_len == 1 && target[0] == '*')) Py_RETURN_NONE;
    p++;
    if (end - p < 10 || memcmp(p, "HTTP/1.", 7) != 0 || (p[7] != '0' && p[7] != '1') || p[8] != '\r' || p[9] != '\n')
        Py_RETURN_NONE;
    int http11 = p[7] == '1';
    p += 10;

    struct field fields[MAX_FIELDS];
    int count = 0;
    const char *body = parse_fields(p, end, fields, &count, max_fields, max_bytes, 0);
    if (body == NULL) Py_RETURN_NONE;

    int hosts = 0, lengths = 0, close = 0, keep_alive = 0;
    long long length = 0;
    struct field *host = NULL, *request_id = NULL;
    for (int i = 0; i < count; i++) {
        struct field *f = &fields[i];
        switch (f->kind) {
        case K_GENERAL: Py_RETURN_NONE;
        case K_HOST: hosts++; host = f; break;
        case K_LENGTH:
            if (lengths++ || parse_length(f->value, f->value_len, &length) < 0) Py_RETURN_NONE;
            break;
        case K_CONNECTION:
            if (connection_tokens(f->value, f->value_len, &close, &keep_alive) < 0) Py_RETURN_NONE;
            break;
        case K_REQUEST_ID:
            if (request_id_ok(f->value, f->value_len)) request_id = f;
            break;
        default: break;
        }
    }
    if (hosts != 1 || end - body != length) Py_RETURN_NONE;
    if (request_id == NULL && id_prefix_len == 0) Py_RETURN_NONE;  /* ids not handed over yet */

    PyObject *id = NULL;
    const char *id_s;
    Py_ssize_t id_len;
    if (request_id != NULL) {
        id = PyUnicode_DecodeASCII(request_id->value, request_id->value_len, NULL);
    } else {
        id = make_request_id();
    }
    if (id == NULL) return NULL;
    id_s = PyUnicode_AsUTF8AndSize(id, &id_len);
    if (id_s == NULL) { Py_DECREF(id); return NULL; }

    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    double wall = (double)now.tv_sec + (double)now.tv_nsec / 1e9;
    char start_ms[32];
    Py_ssize_t start_len = put_u64(start_ms, (unsigned long long)(wall * 1000.0)) - start_ms;

    Py_ssize_t ip_len = PyBytes_GET_SIZE(ip), via_len = PyBytes_GET_SIZE(via);
    Py_ssize_t size = method_len + 1 + target_len + 11;
    for (int i = 0; i < count; i++) {
        int k = fields[i].kind;
        if (k == K_PASS || k == K_HOST || k == K_LENGTH) size += fields[i].name_len + fields[i].value_len + 4;
    }
    size += 17 + joined_len(fields, count, K_FORWARDED_FOR, ip_len) + 2;
    size += 19 + PyBytes_GET_SIZE(proto) + 2;
    size += 18 + PyBytes_GET_SIZE(port) + 2;
    size += 14 + id_len + 2;
    size += 17 + start_len + 2;
    size += 5 + joined_len(fields, count, K_VIA, via_len) + 2;
    size += 2 + length;

    PyObject *out = PyBytes_FromStringAndSize(NULL, size);
    if (out == NULL) { Py_DECREF(id); return NULL; }
    char *o = PyBytes_AS_STRING(out);
    o = put(o, data, method_len);
    *o++ = ' ';
    o = put(o, target, target_len);
    o = PUTS(o, " HTTP/1.1\r\n");
    for (int i = 0; i < count; i++) {
        struct field *f = &fields[i];
        if (f->kind == K_PASS || f->kind == K_HOST || f->kind == K_LENGTH) {
            o = put(o, f->name, f->name_len);
            o = PUTS(o, ": ");
            o = put(o, f->value, f->value_len);
            o = PUTS(o, "\r\n");
        }
    }
    o = PUTS(o, "X-Forwarded-For: ");
    o = put_joined(o, fields, count, K_FORWARDED_FOR, PyBytes_AS_STRING(ip), ip_len);
    o = PUTS(o, "\r\nX-Forwarded-Proto: ");
    o = put(o, PyBytes_AS_STRING(proto), PyBytes_GET_SIZE(proto));
    o = PUTS(o, "\r\nX-Forwarded-Port: ");
    o = put(o, PyBytes_AS_STRING(port), PyBytes_GET_SIZE(port));
    o = PUTS(o, "\r\nX-Request-Id: ");
    o = put(o, id_s, id_len);
    o = PUTS(o, "\r\nX-Request-Start: ");
    o = put(o, start_ms, start_len);
    o = PUTS(o, "\r\nVia: ");
    o = put_joined(o, fields, count, K_VIA, PyBytes_AS_STRING(via), via_len);
    o = PUTS(o, "\r\n\r\n");
    o = put(o, body, (Py_ssize_t)length);
    if (o != PyBytes_AS_STRING(out) + size) {
        Py_DECREF(out);
        Py_DECREF(id);
        PyErr_SetString(PyExc_SystemError, "fastpath: request head size mismatch");
        return NULL;
    }
    int http11_keep = http11 ? !close : keep_alive;
    PyObject *host_s = PyUnicode_DecodeLatin1(host->value, host->value_len, NULL);
    if (host_s == NULL) { Py_DECREF(out); Py_DECREF(id); return NULL; }
    PyObject *items[9] = {
        PyBytes_FromStringAndSize(data, method_len), PyBytes_FromStringAndSize(target, target_len), host_s, id,
        Py_NewRef(http11_keep ? Py_True : Py_False), Py_NewRef(http11 ? Py_True : Py_False), out,
        PyLong_FromLongLong(length), PyFloat_FromDouble(wall),
    };
    return new_tuple(items, 9);
}

/* response(data, via, client_keep_alive) -> None, or (status, out, body_in_out, remaining,
 *                                                   app_keep_alive)
 * `out` is the head the client receives followed by the part of the body in `data`. */
static PyObject *fast_response(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyBytes_Check(args[0]) || !PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "response(data: bytes, via: bytes, client_keep_alive: bool)");
        return NULL;
    }
    int client_keep_alive = PyObject_IsTrue(args[2]);
    if (client_keep_alive < 0) return NULL;
    const char *data = PyBytes_AS_STRING(args[0]);
    const char *end = data + PyBytes_GET_SIZE(args[0]);
    const char *p = data;
    if (end - p < 14 || memcmp(p, "HTTP/1.1 ", 9) != 0) Py_RETURN_NONE;
    p += 9;
    int status = 0;
    const char *digits = p;
    for (int i = 0; i < 3; i++) {
        if (p[i] < '0' || p[i] > '9') Py_RETURN_NONE;
        status = status * 10 + (p[i] - '0');
    }
    p += 3;
    const char *reason = p;
    Py_ssize_t reason_len = 0;
    if (*p == ' ') {
        reason = ++p;
        while (p < end && vchar[(unsigned char)*p]) p++;
        reason_len = p - reason;
        if (reason_len && (reason[reason_len - 1] == ' ' || reason[reason_len - 1] == '\t')) Py_RETURN_NONE;
    }
    if (end - p < 2 || p[0] != '\r' || p[1] != '\n') Py_RETURN_NONE;
    p += 2;
    if (status < 200 || status == 204 || status == 304) Py_RETURN_NONE;

    struct field fields[MAX_FIELDS];
    int count = 0;
    const char *body = parse_fields(p, end, fields, &count, MAX_FIELDS, 1 << 20, 1);
    if (body == NULL) Py_RETURN_NONE;
    int lengths = 0, close = 0, keep_alive = 0;
    long long length = 0;
    struct field *length_field = NULL;
    for (int i = 0; i < count; i++) {
        struct field *f = &fields[i];
        switch (f->kind) {
        case K_GENERAL: Py_RETURN_NONE;
        case K_LENGTH:
            if (lengths++ || parse_length(f->value, f->value_len, &length) < 0) Py_RETURN_NONE;
            length_field = f;
            break;
        case K_CONNECTION:
            if (connection_tokens(f->value, f->value_len, &close, &keep_alive) < 0) Py_RETURN_NONE;
            break;
        default: break;
        }
    }
    Py_ssize_t rest = end - body;
    if (length_field == NULL || rest > length) Py_RETURN_NONE;

    const char *via = PyBytes_AS_STRING(args[1]);
    Py_ssize_t via_len = PyBytes_GET_SIZE(args[1]);
    Py_ssize_t size = 13 + (reason_len ? reason_len : 1) + 2;
    for (int i = 0; i < count; i++)
        if (fields[i].kind == K_PASS) size += fields[i].name_len + fields[i].value_len + 4;
    size += 5 + joined_len(fields, count, K_VIA, via_len) + 2;
    size += length_field->name_len + 2 + length_field->value_len + 2;
    size += client_keep_alive ? 26 : 21;
    size += rest;

    PyObject *out = PyBytes_FromStringAndSize(NULL, size);
    if (out == NULL) return NULL;
    char *o = PyBytes_AS_STRING(out);
    o = PUTS(o, "HTTP/1.1 ");
    o = put(o, digits, 3);
    *o++ = ' ';
    o = reason_len ? put(o, reason, reason_len) : PUTS(o, "-");
    o = PUTS(o, "\r\n");
    for (int i = 0; i < count; i++) {
        struct field *f = &fields[i];
        if (f->kind == K_PASS) {
            o = put(o, f->name, f->name_len);
            o = PUTS(o, ": ");
            o = put(o, f->value, f->value_len);
            o = PUTS(o, "\r\n");
        }
    }
    o = PUTS(o, "Via: ");
    o = put_joined(o, fields, count, K_VIA, via, via_len);
    o = PUTS(o, "\r\n");
    o = put(o, length_field->name, length_field->name_len);
    o = PUTS(o, ": ");
    o = put(o, length_field->value, length_field->value_len);
    o = PUTS(o, "\r\n");
    o = client_keep_alive ? PUTS(o, "Connection: keep-alive\r\n\r\n") : PUTS(o, "Connection: close\r\n\r\n");
    o = put(o, body, rest);
    if (o != PyBytes_AS_STRING(out) + size) {
        Py_DECREF(out);
        PyErr_SetString(PyExc_SystemError, "fastpath: response head size mismatch");
        return NULL;
    }
    PyObject *items[5] = {
        PyLong_FromLong(status), out, PyLong_FromSsize_t(rest), PyLong_FromLongLong(length - (long long)rest),
        Py_NewRef(close ? Py_False : Py_True),
    };
    return new_tuple(items, 5);
}

/* Append a str field; only 1-byte (Latin-1) strings, as every field the proxy records is. */
static int add_str(PyObject *s, char **o, char *limit)
{
    if (s == Py_None) {
        if (limit - *o < 4) return -2;
        *o = PUTS(*o, "None");
        return 0;
    }
    if (!PyUnicode_Check(s) || PyUnicode_READY(s) < 0 || PyUnicode_KIND(s) != PyUnicode_1BYTE_KIND) return -1;
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    if (limit - *o < n) return -2;
    const Py_UCS1 *d = PyUnicode_1BYTE_DATA(s);
    for (Py_ssize_t i = 0; i < n; i++) *(*o)++ = d[i] == '\n' ? ' ' : (char)d[i];
    return 0;
}

static int add_bytes(PyObject *b, char **o, char *limit)
{
    if (!PyBytes_Check(b)) return -1;
    Py_ssize_t n = PyBytes_GET_SIZE(b);
    if (limit - *o < n) return -2;
    const char *d = PyBytes_AS_STRING(b);
    for (Py_ssize_t i = 0; i < n; i++) *(*o)++ = d[i] == '\n' ? ' ' : d[i];
    return 0;
}

static int add_lit(const char *lit, char **o, char *limit)
{
    Py_ssize_t n = (Py_ssize_t)strlen(lit);
    if (limit - *o < n) return -2;
    *o = put(*o, lit, n);
    return 0;
}

#define TRY(call) do { int rc_ = (call); if (rc_ < 0) return rc_; } while (0)

static char *put_u64(char *o, unsigned long long v)
{
    char digits[24];
    int n = 0;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n) *o++ = digits[--n];
    return o;
}

/* x with `decimals` (0 or 6) places, as Python's format(x, ".6f") writes it: the exact binary
 * value rounded half to even. printf does the same but costs more than the rest of a log line;
 * this covers 0 <= x < 2**53 and leaves the rest to snprintf. */
static int add_fixed(char **o, char *limit, double x, int decimals)
{
    if (limit - *o < 40) return -2;
    if (!(x >= 0.0 && x < 9007199254740992.0)) {
        int n = snprintf(*o, (size_t)(limit - *o), "%.*f", decimals, x);
        if (n < 0) return -1;
        if (n >= limit - *o) return -2;
        *o += n;
        return 0;
    }
    int exponent;
    double fraction = frexp(x, &exponent);
    unsigned long long mantissa = (unsigned long long)ldexp(fraction, 53);
    exponent -= 53; /* x == mantissa * 2**exponent exactly */
    unsigned long long scale = decimals ? 1000000ULL : 1ULL;
    unsigned __int128 scaled = (unsigned __int128)mantissa * scale;
    unsigned __int128 q;
    if (exponent >= 0) {
        q = scaled << exponent;
    } else if (-exponent >= 100) {
        q = 0; /* below 2**-27 before scaling: rounds to zero */
    } else {
        int shift = -exponent;
        q = scaled >> shift;
        unsigned __int128 rest = scaled - (q << shift);
        unsigned __int128 half = (unsigned __int128)1 << (shift - 1);
        if (rest > half || (rest == half && (q & 1))) q++;
    }
    *o = put_u64(*o, (unsigned long long)(q / scale));
    if (decimals) {
        unsigned long long frac = (unsigned long long)(q % scale);
        *(*o)++ = '.';
        for (int i = 5; i >= 0; i--) {
            (*o)[i] = (char)('0' + frac % 10);
            frac /= 10;
        }
        *o += 6;
    }
    return 0;
}

/* One access-log line, as router.proxy.format_access_line writes it, after "<when>\t".
 * -1: the entry is not what the proxy records; -2: the buffer is too small. */
static int add_line(PyObject *entry, char **o, char *limit)
{
    if (!PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) != 2) return -1;
    PyObject *when = PyTuple_GET_ITEM(entry, 0), *f = PyTuple_GET_ITEM(entry, 1);
    if (!PyFloat_Check(when) || !PyTuple_Check(f) || PyTuple_GET_SIZE(f) != 11) return -1;
    PyObject *code = PyTuple_GET_ITEM(f, 0), *elapsed = PyTuple_GET_ITEM(f, 7);
    PyObject *status = PyTuple_GET_ITEM(f, 8), *size = PyTuple_GET_ITEM(f, 9);
    if (!PyUnicode_Check(code) || !PyFloat_Check(elapsed) || !PyLong_CheckExact(status) || !PyLong_CheckExact(size))
        return -1;
    long long status_v = PyLong_AsLongLong(status), size_v = PyLong_AsLongLong(size);
    if (PyErr_Occurred()) { PyErr_Clear(); return -1; }
    if (status_v < 0 || size_v < 0) return -1;
    TRY(add_fixed(o, limit, PyFloat_AS_DOUBLE(when), 6));
    TRY(add_lit("\t", o, limit));
    if (PyUnicode_GET_LENGTH(code)) {
        TRY(add_lit("at=error code=", o, limit));
        TRY(add_str(code, o, limit));
    } else {
        TRY(add_lit("at=info", o, limit));
    }
    TRY(add_lit(" method=", o, limit));
    TRY(add_bytes(PyTuple_GET_ITEM(f, 1), o, limit));
    TRY(add_lit(" path=\"", o, limit));
    TRY(add_bytes(PyTuple_GET_ITEM(f, 2), o, limit));
    TRY(add_lit("\" host=", o, limit));
    TRY(add_str(PyTuple_GET_ITEM(f, 3), o, limit));
    TRY(add_lit(" request_id=", o, limit));
    TRY(add_str(PyTuple_GET_ITEM(f, 4), o, limit));
    TRY(add_lit(" fwd=\"", o, limit));
    TRY(add_str(PyTuple_GET_ITEM(f, 5), o, limit));
    TRY(add_lit("\" endpoint=", o, limit));
    TRY(add_str(PyTuple_GET_ITEM(f, 6), o, limit));
    TRY(add_lit(" service=", o, limit));
    TRY(add_fixed(o, limit, PyFloat_AS_DOUBLE(elapsed), 0));
    TRY(add_lit("ms status=", o, limit));
    if (limit - *o < 48) return -2;
    *o = put_u64(*o, (unsigned long long)status_v);
    *o = PUTS(*o, " bytes=");
    *o = put_u64(*o, (unsigned long long)size_v);
    TRY(add_lit(" protocol=", o, limit));
    TRY(add_bytes(PyTuple_GET_ITEM(f, 10), o, limit));
    return 0;
}

/* access_lines(entries) -> str or None: "<when>\t<line>" for each (when, fields) entry, joined
 * by newlines, as router.metrics.Recorder.take sends them; None when an entry holds anything
 * unexpected, and the caller formats them in Python. */
static PyObject *access_lines(PyObject *self, PyObject *entries)
{
    if (!PyList_Check(entries)) {
        PyErr_SetString(PyExc_TypeError, "access_lines(entries: list)");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(entries);
    Py_ssize_t capacity = 256 * (n + 1);
    for (;;) {
        char *buffer = PyMem_Malloc((size_t)capacity);
        if (buffer == NULL) return PyErr_NoMemory();
        char *o = buffer, *limit = buffer + capacity;
        int overflow = 0, unexpected = 0;
        for (Py_ssize_t i = 0; i < n; i++) {
            if (i) {
                if (o == limit) { overflow = 1; break; }
                *o++ = '\n';
            }
            int rc = add_line(PyList_GET_ITEM(entries, i), &o, limit);
            if (rc == -2) { overflow = 1; break; }
            if (rc < 0) { unexpected = 1; break; }
        }
        if (!overflow && !unexpected) {
            PyObject *text = PyUnicode_DecodeLatin1(buffer, o - buffer, NULL);
            PyMem_Free(buffer);
            return text;
        }
        PyMem_Free(buffer);
        if (unexpected || capacity > ((Py_ssize_t)1 << 30)) Py_RETURN_NONE;
        capacity *= 4;
    }
}

/* Append a RESP bulk string holding s[0:n] with bytes 0x80-0xFF written as UTF-8 (the text is
 * Latin-1, and redis-py sent it as UTF-8). The caller made room for 2 * n + 32 bytes. */
static char *put_bulk_utf8(char *o, const char *s, Py_ssize_t n)
{
    Py_ssize_t high = 0;
    for (Py_ssize_t i = 0; i < n; i++) high += (unsigned char)s[i] >> 7;
    *o++ = '$';
    o = put_u64(o, (unsigned long long)(n + high));
    o = PUTS(o, "\r\n");
    if (high == 0) {
        o = put(o, s, n);
    } else {
        for (Py_ssize_t i = 0; i < n; i++) {
            unsigned char c = (unsigned char)s[i];
            if (c < 0x80) {
                *o++ = (char)c;
            } else {
                *o++ = (char)(0xC0 | (c >> 6));
                *o++ = (char)(0x80 | (c & 0x3F));
            }
        }
    }
    return PUTS(o, "\r\n");
}

static char *put_bulk(char *o, const char *s, Py_ssize_t n)
{
    *o++ = '$';
    o = put_u64(o, (unsigned long long)n);
    o = PUTS(o, "\r\n");
    o = put(o, s, n);
    return PUTS(o, "\r\n");
}

/* xadd_batch(key, entries, maxlen) -> bytes or None: one RESP `XADD <key> * time <when> tag
 * router line <line>` per (when, fields) entry, in order, then one `XTRIM <key> MAXLEN ~
 * <maxlen>`; the text is what access_lines writes. None when an entry holds anything
 * unexpected, and the caller builds the commands in Python. */
static PyObject *xadd_batch(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyBytes_Check(args[0]) || !PyList_Check(args[1]) || !PyLong_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "xadd_batch(key: bytes, entries: list, maxlen: int)");
        return NULL;
    }
    long long maxlen = PyLong_AsLongLong(args[2]);
    if (maxlen == -1 && PyErr_Occurred()) return NULL;
    if (maxlen < 0) {
        PyErr_SetString(PyExc_ValueError, "xadd_batch: maxlen must not be negative");
        return NULL;
    }
    const char *key = PyBytes_AS_STRING(args[0]);
    Py_ssize_t key_len = PyBytes_GET_SIZE(args[0]);
    PyObject *entries = args[1];
    Py_ssize_t n = PyList_GET_SIZE(entries);
    Py_ssize_t scratch_size = 4096, out_size = (key_len + 600) * (n + 1);
    char *scratch = PyMem_Malloc((size_t)scratch_size);
    char *out = PyMem_Malloc((size_t)out_size);
    PyObject *result = NULL;
    if (scratch == NULL || out == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    char *o = out;
    for (Py_ssize_t i = 0; i < n; i++) {
        char *s = scratch;
        int rc;
        while ((rc = add_line(PyList_GET_ITEM(entries, i), &s, scratch + scratch_size)) == -2) {
            if (scratch_size > ((Py_ssize_t)1 << 28)) goto unusual;
            scratch_size *= 4;
            char *bigger = PyMem_Realloc(scratch, (size_t)scratch_size);
            if (bigger == NULL) { PyErr_NoMemory(); goto done; }
            scratch = bigger;
            s = scratch;
        }
        if (rc < 0) goto unusual;
        Py_ssize_t len = s - scratch;
        const char *tab = memchr(scratch, '\t', (size_t)len);
        if (tab == NULL) goto unusual;
        Py_ssize_t need = 2 * len + key_len + 128;
        if (out + out_size - o < need) {
            Py_ssize_t used = o - out;
            out_size = 2 * out_size + need;
            char *bigger = PyMem_Realloc(out, (size_t)out_size);
            if (bigger == NULL) { PyErr_NoMemory(); goto done; }
            out = bigger;
            o = out + used;
        }
        o = PUTS(o, "*9\r\n$4\r\nXADD\r\n");
        o = put_bulk(o, key, key_len);
        o = PUTS(o, "$1\r\n*\r\n$4\r\ntime\r\n");
        o = put_bulk_utf8(o, scratch, tab - scratch);
        o = PUTS(o, "$3\r\ntag\r\n$6\r\nrouter\r\n$4\r\nline\r\n");
        o = put_bulk_utf8(o, tab + 1, len - (tab + 1 - scratch));
    }
    if (out + out_size - o < key_len + 128) {
        Py_ssize_t used = o - out;
        out_size = used + key_len + 128;
        char *bigger = PyMem_Realloc(out, (size_t)out_size);
        if (bigger == NULL) { PyErr_NoMemory(); goto done; }
        out = bigger;
        o = out + used;
    }
    o = PUTS(o, "*5\r\n$5\r\nXTRIM\r\n");
    o = put_bulk(o, key, key_len);
    o = PUTS(o, "$6\r\nMAXLEN\r\n$1\r\n~\r\n");
    {
        char digits[24];
        char *d = put_u64(digits, (unsigned long long)maxlen);
        o = put_bulk(o, digits, d - digits);
    }
    result = PyBytes_FromStringAndSize(out, o - out);
    goto done;
unusual:
    result = Py_NewRef(Py_None);
done:
    PyMem_Free(scratch);
    PyMem_Free(out);
    return result;
}

#include "fastconn.c"

static PyMethodDef methods[] = {
    {"seed_request_ids", (PyCFunction)(void (*)(void))seed_request_ids, METH_FASTCALL,
     "Take over request ids: this prefix, then a counter from `start`."},
    {"new_request_id", (PyCFunction)new_request_id, METH_NOARGS, "The next request id."},
    {"access_lines", (PyCFunction)access_lines, METH_O,
     "Format access-log entries (when, fields) as the Redis script expects them; None if unusual."},
    {"xadd_batch", (PyCFunction)(void (*)(void))xadd_batch, METH_FASTCALL,
     "Access-log entries as RESP XADD commands and one XTRIM; None if unusual."},
    {"request", (PyCFunction)(void (*)(void))fast_request, METH_FASTCALL,
     "Parse one complete plain request; None when the general path must handle it."},
    {"response", (PyCFunction)(void (*)(void))fast_response, METH_FASTCALL,
     "Parse one plain Content-Length response head; None when the general path must handle it."},
    {"setup", (PyCFunction)(void (*)(void))setup, METH_FASTCALL,
     "Hand over what the connection types need from router/proxy.py."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastpath", "The router's compiled fast path.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastpath(void)
{
    init_tables();
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && add_connection_types(m) < 0) Py_CLEAR(m);
    return m;
}
