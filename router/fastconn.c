/*
 * Compiled connection objects: the fast path's whole round trip without the interpreter.
 *
 * Included by fastpath.c. `ClientCore`, `BackendCore` and `Exchange` are base types whose fields
 * carry the same names as the attributes router/proxy.py uses, so the Python classes built on
 * them (`proxy.compiled_classes`) keep every method they had; only `data_received` is replaced.
 * On a plain request that arrived whole, a route found in the route table's cache, a free pooled
 * app connection and a whole Content-Length response, the C code below does what
 * `ClientConnection._connect` and `ClientConnection.fast_response` do, and records the request
 * the way `Recorder.record` does. At every other turn it calls the Python method that handles
 * it, so behaviour is defined by router/proxy.py alone; the tests run every proxy test on these
 * classes and on the plain Python ones.
 */
#include <structmember.h>

/* Set by setup() from router/proxy.py. */
static PyObject *forward_type;      /* router.routing.Forward */
static PyObject *request_info_type; /* router.headers.RequestInfo */
static PyObject *plan_keep_alive, *plan_close;
static PyObject *py_new_request_id;
static Py_ssize_t pool_limit = 256;
static double buckets[32];
static Py_ssize_t bucket_count, bucket_base, field_count;
static PyObject *this_module;

static PyObject *S_cache, *S_route, *S_app, *S_endpoints, *S_key, *S_aside_until, *S_outstanding,
    *S_write, *S_time, *S_stats, *S_lines, *S_max_lines, *S_general, *S_dispatch, *S_connect,
    *S_open_new, *S_arm, *S_close, *S_next, *S_detach, *S_fast_response, *S_first_byte_expired,
    *S_idle_expired, *S_record, *S_request, *S_response, *S_host, *S_content_length, *S_draining,
    *S_table, *S_balancer, *S_pool, *S_recorder, *S_via, *S_request_id, *S_empty, *S_dash;

static int intern_names(void)
{
#define NAME(var, s) if ((var = PyUnicode_InternFromString(s)) == NULL) return -1
    NAME(S_cache, "_cache"); NAME(S_route, "route"); NAME(S_app, "app"); NAME(S_endpoints, "endpoints");
    NAME(S_key, "key"); NAME(S_aside_until, "aside_until"); NAME(S_outstanding, "outstanding");
    NAME(S_write, "write"); NAME(S_time, "time"); NAME(S_stats, "stats"); NAME(S_lines, "lines");
    NAME(S_max_lines, "max_lines"); NAME(S_general, "_general_data_received"); NAME(S_dispatch, "_dispatch");
    NAME(S_connect, "_connect"); NAME(S_open_new, "_open_new"); NAME(S_arm, "_arm"); NAME(S_close, "_close");
    NAME(S_next, "_next"); NAME(S_detach, "detach"); NAME(S_fast_response, "fast_response");
    NAME(S_first_byte_expired, "_first_byte_expired"); NAME(S_idle_expired, "_idle_expired");
    NAME(S_record, "record"); NAME(S_request, "request"); NAME(S_response, "response"); NAME(S_host, "host");
    NAME(S_content_length, "content_length"); NAME(S_draining, "draining"); NAME(S_table, "table");
    NAME(S_balancer, "balancer"); NAME(S_pool, "pool"); NAME(S_recorder, "recorder"); NAME(S_via, "via");
    NAME(S_request_id, "request_id"); NAME(S_empty, ""); NAME(S_dash, "-");
#undef NAME
    return 0;
}

static double now_of(clockid_t clock)
{
    struct timespec t;
    clock_gettime(clock, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

#define IS_NONE(o) ((o) == NULL || (o) == Py_None)
#define SET(field, value) Py_XSETREF(field, value)

/* --- Exchange: one request and its response ------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    PyObject *app, *backend, *body, *connecting, *endpoint, *error_code, *head, *info, *method, *plan,
        *request_id, *target, *tried;
    PyObject *fast_host; /* a fast-path request's host: `info` is made from it when asked for */
    long long bytes_in, bytes_out, fast_length;
    Py_ssize_t attempts, buffered;
    double last_activity, start, start_wall;
    int status;
    char body_done, counted, head_request, http11, keep_alive, recorded, reused;
} Exchange;

static PyTypeObject ExchangeType;

static int exchange_traverse(Exchange *x, visitproc visit, void *arg)
{
    Py_VISIT(x->app); Py_VISIT(x->backend); Py_VISIT(x->body); Py_VISIT(x->connecting);
    Py_VISIT(x->endpoint); Py_VISIT(x->error_code); Py_VISIT(x->head); Py_VISIT(x->info);
    Py_VISIT(x->method); Py_VISIT(x->plan); Py_VISIT(x->request_id); Py_VISIT(x->target);
    Py_VISIT(x->tried); Py_VISIT(x->fast_host);
    return 0;
}

static int exchange_clear(Exchange *x)
{
    Py_CLEAR(x->app); Py_CLEAR(x->backend); Py_CLEAR(x->body); Py_CLEAR(x->connecting);
    Py_CLEAR(x->endpoint); Py_CLEAR(x->error_code); Py_CLEAR(x->head); Py_CLEAR(x->info);
    Py_CLEAR(x->method); Py_CLEAR(x->plan); Py_CLEAR(x->request_id); Py_CLEAR(x->target);
    Py_CLEAR(x->tried); Py_CLEAR(x->fast_host);
    return 0;
}

static void exchange_dealloc(Exchange *x)
{
    PyObject_GC_UnTrack(x);
    exchange_clear(x);
    Py_TYPE(x)->tp_free((PyObject *)x);
}

static Exchange *exchange_alloc(PyTypeObject *type)
{
    Exchange *x = (Exchange *)type->tp_alloc(type, 0);
    if (x == NULL) return NULL;
    x->error_code = Py_NewRef(S_empty);
    x->head = PyBytes_FromStringAndSize(NULL, 0);
    x->start = now_of(CLOCK_MONOTONIC);
    return x;
}

static PyObject *exchange_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    return (PyObject *)exchange_alloc(type);
}

/* Exchange(method, target, info, http11, keep_alive, request_id=None, start_wall=None), as the
 * Python class takes them. */
static int exchange_init(Exchange *x, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"method", "target", "info", "http11", "keep_alive", "request_id", "start_wall", NULL};
    PyObject *method, *target, *info, *request_id = Py_None, *start_wall = Py_None;
    int http11, keep_alive;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOpp|OO", names, &method, &target, &info, &http11,
                                     &keep_alive, &request_id, &start_wall))
        return -1;
    SET(x->method, Py_NewRef(method));
    SET(x->target, Py_NewRef(target));
    SET(x->info, Py_NewRef(info));
    x->http11 = (char)http11;
    x->keep_alive = (char)keep_alive;
    x->head_request = PyBytes_Check(method) && PyBytes_GET_SIZE(method) == 4
                      && memcmp(PyBytes_AS_STRING(method), "HEAD", 4) == 0;
    int given = PyObject_IsTrue(request_id);
    if (given < 0) return -1;
    PyObject *id;
    if (given) {
        id = Py_NewRef(request_id);
    } else {
        id = PyObject_GetAttr(info, S_request_id);
        if (id == NULL) return -1;
        int known = PyObject_IsTrue(id);
        if (known <= 0) {
            Py_DECREF(id);
            if (known < 0) return -1;
            id = PyObject_CallNoArgs(py_new_request_id);
            if (id == NULL) return -1;
        }
    }
    SET(x->request_id, id);
    int wall_given = PyObject_IsTrue(start_wall);
    if (wall_given < 0) return -1;
    x->start_wall = wall_given ? PyFloat_AsDouble(start_wall) : now_of(CLOCK_REALTIME);
    if (x->start_wall == -1.0 && PyErr_Occurred()) return -1;
    x->start = now_of(CLOCK_MONOTONIC);
    return 0;
}

static PyObject *exchange_get_info(Exchange *x, void *closure)
{
    if (x->info == NULL) {
        if (request_info_type == NULL) {
            PyErr_SetString(PyExc_RuntimeError, "fastpath: setup() was not called");
            return NULL;
        }
        PyObject *kwargs = Py_BuildValue("{s:O,s:L}", "host", x->fast_host ? x->fast_host : Py_None,
                                         "content_length", x->fast_length);
        if (kwargs == NULL) return NULL;
        PyObject *empty = PyTuple_New(0);
        x->info = empty ? PyObject_Call(request_info_type, empty, kwargs) : NULL;
        Py_XDECREF(empty);
        Py_DECREF(kwargs);
        if (x->info == NULL) return NULL;
    }
    return Py_NewRef(x->info);
}

static int exchange_set_info(Exchange *x, PyObject *value, void *closure)
{
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "info cannot be deleted");
        return -1;
    }
    SET(x->info, Py_NewRef(value));
    return 0;
}

/* `body` and `tried` are made on first use: most requests never need them. */
static PyObject *exchange_get_body(Exchange *x, void *closure)
{
    if (x->body == NULL && (x->body = PyList_New(0)) == NULL) return NULL;
    return Py_NewRef(x->body);
}

static int exchange_set_body(Exchange *x, PyObject *value, void *closure)
{
    SET(x->body, Py_XNewRef(value));
    return 0;
}

static PyObject *exchange_get_tried(Exchange *x, void *closure)
{
    if (x->tried == NULL && (x->tried = PySet_New(NULL)) == NULL) return NULL;
    return Py_NewRef(x->tried);
}

static int exchange_set_tried(Exchange *x, PyObject *value, void *closure)
{
    SET(x->tried, Py_XNewRef(value));
    return 0;
}


static PyGetSetDef exchange_getset[] = {
    {"info", (getter)exchange_get_info, (setter)exchange_set_info, NULL, NULL},
    {"body", (getter)exchange_get_body, (setter)exchange_set_body, NULL, NULL},
    {"tried", (getter)exchange_get_tried, (setter)exchange_set_tried, NULL, NULL},
    {NULL},
};

#define OBJ(type, name) {#name, T_OBJECT, offsetof(type, name), 0, NULL}
#define MEM(type, name, kind) {#name, kind, offsetof(type, name), 0, NULL}

static PyMemberDef exchange_members[] = {
    OBJ(Exchange, app), OBJ(Exchange, backend), OBJ(Exchange, connecting), OBJ(Exchange, endpoint),
    OBJ(Exchange, error_code), OBJ(Exchange, head), OBJ(Exchange, method), OBJ(Exchange, plan),
    OBJ(Exchange, request_id), OBJ(Exchange, target),
    MEM(Exchange, bytes_in, T_LONGLONG), MEM(Exchange, bytes_out, T_LONGLONG),
    MEM(Exchange, attempts, T_PYSSIZET), MEM(Exchange, buffered, T_PYSSIZET),
    MEM(Exchange, last_activity, T_DOUBLE), MEM(Exchange, start, T_DOUBLE), MEM(Exchange, start_wall, T_DOUBLE),
    MEM(Exchange, status, T_INT),
    MEM(Exchange, body_done, T_BOOL), MEM(Exchange, counted, T_BOOL), MEM(Exchange, head_request, T_BOOL),
    MEM(Exchange, http11, T_BOOL), MEM(Exchange, keep_alive, T_BOOL), MEM(Exchange, recorded, T_BOOL),
    MEM(Exchange, reused, T_BOOL),
    {NULL},
};

static PyTypeObject ExchangeType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "_fastpath.Exchange",
    .tp_basicsize = sizeof(Exchange),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "One request and its response (router.proxy.Exchange, compiled).",
    .tp_traverse = (traverseproc)exchange_traverse,
    .tp_clear = (inquiry)exchange_clear,
    .tp_dealloc = (destructor)exchange_dealloc,
    .tp_members = exchange_members,
    .tp_getset = exchange_getset,
    .tp_init = (initproc)exchange_init,
    .tp_new = exchange_new,
};

/* --- the connection cores ------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    PyObject *worker, *transport, *current, *fast, *fast_ctx, *loop, *on_deadline, *pending, *client_ip, *proto;
    PyObject *loop_time, *on_first_byte, *on_idle; /* bound methods, made on first use */
    PyObject *write_for, *write_fn;                 /* transport.write, and whose */
    double deadline, timer_at, first_byte_timeout, idle_timeout;
    char closing, closed, in_message;
} ClientCore;

typedef struct {
    PyObject_HEAD
    PyObject *worker, *endpoint, *transport, *client, *exchange, *fast;
    PyObject *write_for, *write_fn;
    Py_ssize_t remaining;
    char idle, closed, upgraded, reading_paused, in_message;
} BackendCore;

static PyTypeObject ClientCoreType, BackendCoreType;

static int client_traverse(ClientCore *c, visitproc visit, void *arg)
{
    Py_VISIT(c->worker); Py_VISIT(c->transport); Py_VISIT(c->current); Py_VISIT(c->fast);
    Py_VISIT(c->fast_ctx); Py_VISIT(c->loop); Py_VISIT(c->on_deadline); Py_VISIT(c->pending);
    Py_VISIT(c->client_ip); Py_VISIT(c->proto); Py_VISIT(c->loop_time); Py_VISIT(c->on_first_byte);
    Py_VISIT(c->on_idle); Py_VISIT(c->write_for); Py_VISIT(c->write_fn);
    return 0;
}

static int client_clear(ClientCore *c)
{
    Py_CLEAR(c->worker); Py_CLEAR(c->transport); Py_CLEAR(c->current); Py_CLEAR(c->fast);
    Py_CLEAR(c->fast_ctx); Py_CLEAR(c->loop); Py_CLEAR(c->on_deadline); Py_CLEAR(c->pending);
    Py_CLEAR(c->client_ip); Py_CLEAR(c->proto); Py_CLEAR(c->loop_time); Py_CLEAR(c->on_first_byte);
    Py_CLEAR(c->on_idle); Py_CLEAR(c->write_for); Py_CLEAR(c->write_fn);
    return 0;
}

static void client_dealloc(ClientCore *c)
{
    PyObject_GC_UnTrack(c);
    client_clear(c);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

static PyObject *client_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    ClientCore *c = (ClientCore *)type->tp_alloc(type, 0);
    if (c != NULL) c->timer_at = HUGE_VAL;
    return (PyObject *)c;
}

static int backend_traverse(BackendCore *b, visitproc visit, void *arg)
{
    Py_VISIT(b->worker); Py_VISIT(b->endpoint); Py_VISIT(b->transport); Py_VISIT(b->client);
    Py_VISIT(b->exchange); Py_VISIT(b->fast); Py_VISIT(b->write_for); Py_VISIT(b->write_fn);
    return 0;
}

static int backend_clear(BackendCore *b)
{
    Py_CLEAR(b->worker); Py_CLEAR(b->endpoint); Py_CLEAR(b->transport); Py_CLEAR(b->client);
    Py_CLEAR(b->exchange); Py_CLEAR(b->fast); Py_CLEAR(b->write_for); Py_CLEAR(b->write_fn);
    return 0;
}

static void backend_dealloc(BackendCore *b)
{
    PyObject_GC_UnTrack(b);
    backend_clear(b);
    Py_TYPE(b)->tp_free((PyObject *)b);
}

/* -1 error, else 0/1 */
static int attr_true(PyObject *o, PyObject *name)
{
    PyObject *v = PyObject_GetAttr(o, name);
    if (v == NULL) return -1;
    int r = PyObject_IsTrue(v);
    Py_DECREF(v);
    return r;
}

static PyObject *call_method0(PyObject *o, PyObject *name)
{
    return PyObject_CallMethodNoArgs(o, name);
}

/* Drop a result we only wanted to know succeeded. */
static int done(PyObject *result)
{
    if (result == NULL) return -1;
    Py_DECREF(result);
    return 0;
}

/* transport.write(data), the bound method kept while the transport stays the same */
static int write_to(PyObject *transport, PyObject **write_for, PyObject **write_fn, PyObject *data)
{
    if (*write_for != transport) {
        PyObject *fn = PyObject_GetAttr(transport, S_write);
        if (fn == NULL) return -1;
        SET(*write_fn, fn);
        SET(*write_for, Py_NewRef(transport));
    }
    return done(PyObject_CallOneArg(*write_fn, data));
}

static PyObject *call_request(PyObject *fast, PyObject *data, PyObject *ctx)
{
    if (fast == this_module) {
        PyObject *args[2] = {data, ctx};
        return fast_request(NULL, args, 2);
    }
    return PyObject_CallMethodObjArgs(fast, S_request, data, ctx, NULL);  /* a stand-in (tests) */
}

static PyObject *call_response(PyObject *fast, PyObject *data, PyObject *via, int keep_alive)
{
    PyObject *keep = keep_alive ? Py_True : Py_False;
    if (fast == this_module) {
        PyObject *args[3] = {data, via, keep};
        return fast_response(NULL, args, 3);
    }
    return PyObject_CallMethodObjArgs(fast, S_response, data, via, keep, NULL);
}

/* ClientConnection._arm: the deadline moves; the timer handle only when it would fire late. */
static int client_arm(ClientCore *c, double seconds, PyObject **cached, PyObject *name)
{
    if (*cached == NULL && (*cached = PyObject_GetAttr((PyObject *)c, name)) == NULL) return -1;
    if (c->loop_time == NULL && (c->loop_time = PyObject_GetAttr(c->loop, S_time)) == NULL) return -1;
    PyObject *t = PyObject_CallNoArgs(c->loop_time);
    if (t == NULL) return -1;
    double deadline = PyFloat_AsDouble(t) + seconds;
    Py_DECREF(t);
    if (PyErr_Occurred()) return -1;
    if (c->timer_at > deadline) {
        PyObject *s = PyFloat_FromDouble(seconds);
        if (s == NULL) return -1;
        int rc = done(PyObject_CallMethodObjArgs((PyObject *)c, S_arm, s, *cached, NULL));
        Py_DECREF(s);
        return rc;
    }
    c->deadline = deadline;
    SET(c->on_deadline, Py_NewRef(*cached));
    return 0;
}

/* Balancer.finished, inline. */
static int uncount(ClientCore *c, Exchange *ex)
{
    if (!ex->counted || IS_NONE(ex->endpoint)) return 0;
    ex->counted = 0;
    PyObject *balancer = PyObject_GetAttr(c->worker, S_balancer);
    if (balancer == NULL) return -1;
    PyObject *outstanding = PyObject_GetAttr(balancer, S_outstanding);
    Py_DECREF(balancer);
    if (outstanding == NULL) return -1;
    PyObject *key = PyObject_GetAttr(ex->endpoint, S_key);
    int rc = -1;
    if (key == NULL) goto out;
    PyObject *count = PyDict_GetItemWithError(outstanding, key);
    if (count == NULL && PyErr_Occurred()) goto out;
    long left = (count ? PyLong_AsLong(count) : 0) - 1;
    if (left == -2 && PyErr_Occurred()) goto out;
    if (left > 0) {
        PyObject *n = PyLong_FromLong(left);
        rc = n ? PyDict_SetItem(outstanding, key, n) : -1;
        Py_XDECREF(n);
    } else {
        rc = 0;
        if (count != NULL) rc = PyDict_DelItem(outstanding, key);
    }
out:
    Py_XDECREF(key);
    Py_DECREF(outstanding);
    return rc;
}

static long outstanding_of(PyObject *outstanding, PyObject *endpoint)
{
    PyObject *key = PyObject_GetAttr(endpoint, S_key);
    if (key == NULL) return -1;
    PyObject *count = PyDict_GetItemWithError(outstanding, key);
    Py_DECREF(key);
    if (count == NULL) return PyErr_Occurred() ? -1 : 0;
    return PyLong_AsLong(count);
}

static unsigned long long rng_state;

static unsigned long long next_random(void)
{
    /* xorshift64*: only to pick two endpoints at random */
    if (rng_state == 0) {
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        rng_state = ((unsigned long long)t.tv_nsec << 20) ^ (unsigned long long)t.tv_sec ^ (unsigned long long)getpid()
                    ^ 0x9E3779B97F4A7C15ULL;
    }
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1DULL;
}

/* ClientConnection._connect for a new request with no body: pick (power of two choices), count,
 * take a pooled app connection and send the head. Anything else goes to the Python methods. */
static int client_connect(ClientCore *c, Exchange *ex, PyObject *route)
{
    PyObject *self = (PyObject *)c;
    PyObject *balancer = NULL, *aside = NULL, *outstanding = NULL, *endpoints = NULL, *seq = NULL;
    PyObject *key = NULL, *pool = NULL, *conn = NULL;
    int rc = -1;
    if ((balancer = PyObject_GetAttr(c->worker, S_balancer)) == NULL) goto out;
    if ((aside = PyObject_GetAttr(balancer, S_aside_until)) == NULL) goto out;
    if ((endpoints = PyObject_GetAttr(route, S_endpoints)) == NULL) goto out;
    if ((seq = PySequence_Fast(endpoints, "endpoints")) == NULL) goto out;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (!PyDict_Check(aside) || PyDict_GET_SIZE(aside) != 0 || n == 0) {
        rc = done(PyObject_CallMethodObjArgs(self, S_connect, (PyObject *)ex, route, NULL));
        goto out;
    }
    if ((outstanding = PyObject_GetAttr(balancer, S_outstanding)) == NULL) goto out;
    PyObject *endpoint = PySequence_Fast_GET_ITEM(seq, 0);
    if (n > 1) {
        Py_ssize_t i = (Py_ssize_t)(next_random() % (unsigned long long)n);
        Py_ssize_t j = (Py_ssize_t)(next_random() % (unsigned long long)(n - 1));
        if (j >= i) j++;
        PyObject *a = PySequence_Fast_GET_ITEM(seq, i), *b = PySequence_Fast_GET_ITEM(seq, j);
        long out_a = outstanding_of(outstanding, a), out_b = outstanding_of(outstanding, b);
        if ((out_a == -1 || out_b == -1) && PyErr_Occurred()) goto out;
        endpoint = out_a <= out_b ? a : b;
    }
    if ((key = PyObject_GetAttr(endpoint, S_key)) == NULL) goto out;
    SET(ex->endpoint, Py_NewRef(endpoint));
    ex->attempts++;
    PyObject *count = PyDict_GetItemWithError(outstanding, key);
    if (count == NULL && PyErr_Occurred()) goto out;
    long now_out = count ? PyLong_AsLong(count) : 0;
    if (now_out == -1 && PyErr_Occurred()) goto out;
    PyObject *number = PyLong_FromLong(now_out + 1);
    if (number == NULL || PyDict_SetItem(outstanding, key, number) < 0) { Py_XDECREF(number); goto out; }
    Py_DECREF(number);
    ex->counted = 1;
    if ((pool = PyObject_GetAttr(c->worker, S_pool)) == NULL) goto out;
    PyObject *conns = PyDict_GetItemWithError(pool, key);
    if (conns == NULL && PyErr_Occurred()) goto out;
    while (conns != NULL && PyList_Check(conns) && PyList_GET_SIZE(conns) > 0) {
        Py_ssize_t last = PyList_GET_SIZE(conns) - 1;
        conn = Py_NewRef(PyList_GET_ITEM(conns, last));
        if (PyList_SetSlice(conns, last, last + 1, NULL) < 0) goto out;
        if (PyObject_TypeCheck(conn, &BackendCoreType) && !((BackendCore *)conn)->closed) break;
        Py_CLEAR(conn);
    }
    if (conn == NULL) {
        rc = done(PyObject_CallMethodObjArgs(self, S_open_new, (PyObject *)ex, route, endpoint, NULL));
        goto out;
    }
    BackendCore *b = (BackendCore *)conn;
    SET(ex->backend, Py_NewRef(conn));
    ex->reused = 1;
    SET(b->client, Py_NewRef(self));
    SET(b->exchange, Py_NewRef((PyObject *)ex));
    b->idle = 0;
    if (IS_NONE(b->transport)) {
        PyErr_SetString(PyExc_RuntimeError, "fastpath: a pooled app connection has no transport");
        goto out;
    }
    if (write_to(b->transport, &b->write_for, &b->write_fn, ex->head) < 0) goto out;
    rc = client_arm(c, c->first_byte_timeout, &c->on_first_byte, S_first_byte_expired);
out:
    Py_XDECREF(balancer); Py_XDECREF(aside); Py_XDECREF(outstanding); Py_XDECREF(endpoints);
    Py_XDECREF(seq); Py_XDECREF(key); Py_XDECREF(pool); Py_XDECREF(conn);
    return rc;
}

/* A request fast_request() parsed: (method, target, host, id, keep_alive, http11, head, length,
 * start_wall). ClientConnection._fast_request and the common case of _connect. */
static int client_take_request(ClientCore *c, PyObject *parts)
{
    Exchange *ex = exchange_alloc(&ExchangeType);
    if (ex == NULL) return -1;
    PyObject **item = &PyTuple_GET_ITEM(parts, 0);
    ex->method = Py_NewRef(item[0]);
    ex->target = Py_NewRef(item[1]);
    ex->fast_host = Py_NewRef(item[2]);
    ex->request_id = Py_NewRef(item[3]);
    ex->keep_alive = item[4] == Py_True;
    ex->http11 = item[5] == Py_True;
    SET(ex->head, Py_NewRef(item[6]));
    ex->fast_length = ex->bytes_in = PyLong_AsLongLong(item[7]);
    ex->start_wall = PyFloat_AsDouble(item[8]);
    ex->head_request = PyBytes_GET_SIZE(item[0]) == 4 && memcmp(PyBytes_AS_STRING(item[0]), "HEAD", 4) == 0;
    ex->body_done = 1;
    if (PyErr_Occurred()) { Py_DECREF(ex); return -1; }
    SET(c->current, Py_NewRef((PyObject *)ex));
    Py_CLEAR(c->on_deadline);

    int rc = -1;
    PyObject *table = NULL, *cache = NULL, *route = NULL;
    if ((table = PyObject_GetAttr(c->worker, S_table)) == NULL) goto out;
    if ((cache = PyObject_GetAttr(table, S_cache)) == NULL) goto out;
    PyObject *decision = PyDict_Check(cache) ? PyDict_GetItemWithError(cache, ex->fast_host) : NULL;
    if (decision == NULL && PyErr_Occurred()) goto out;
    if (decision != NULL && (PyObject *)Py_TYPE(decision) == forward_type) {
        if ((route = PyObject_GetAttr(decision, S_route)) == NULL) goto out;
        PyObject *app = PyObject_GetAttr(route, S_app);
        if (app == NULL) goto out;
        SET(ex->app, app);
        rc = client_connect(c, ex, route);
    } else {
        rc = done(PyObject_CallMethodOneArg((PyObject *)c, S_dispatch, (PyObject *)ex));
    }
out:
    Py_XDECREF(table); Py_XDECREF(cache); Py_XDECREF(route);
    Py_DECREF(ex);
    return rc;
}

static PyObject *client_data_received(ClientCore *c, PyObject *data)
{
    if (IS_NONE(c->current) && !IS_NONE(c->fast) && !c->in_message && !c->closing && PyBytes_Check(data)
        && c->fast_ctx != NULL) {
        PyObject *parts = call_request(c->fast, data, c->fast_ctx);
        if (parts == NULL) return NULL;
        if (parts != Py_None) {
            int draining = attr_true(c->worker, S_draining);
            if (draining < 0) { Py_DECREF(parts); return NULL; }
            if (!draining) {
                int rc = PyTuple_Check(parts) && PyTuple_GET_SIZE(parts) == 9 ? client_take_request(c, parts) : -1;
                if (rc < 0 && !PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "request() returned a bad tuple");
                Py_DECREF(parts);
                if (rc < 0) return NULL;
                Py_RETURN_NONE;
            }
        }
        Py_DECREF(parts);
    }
    return PyObject_CallMethodOneArg((PyObject *)c, S_general, data);
}

/* counts[i] += v */
static int add_at(PyObject *counts, Py_ssize_t i, long long v)
{
    PyObject *old = PyList_GET_ITEM(counts, i);
    long long now = PyLong_AsLongLong(old);
    if (now == -1 && PyErr_Occurred()) return -1;
    PyObject *n = PyLong_FromLongLong(now + v);
    if (n == NULL) return -1;
    PyList_SET_ITEM(counts, i, n);
    Py_DECREF(old);
    return 0;
}

static const int status_index[10] = {5, 1, 2, 3, 4, 5, 5, 5, 5, 5};

/* ClientConnection._record and Recorder.record, inline. */
static int client_record(ClientCore *c, Exchange *ex)
{
    if (IS_NONE(ex->app) || ex->recorded) return 0;
    ex->recorded = 1;
    double elapsed = (now_of(CLOCK_MONOTONIC) - ex->start) * 1000.0;
    double when = ex->start_wall + elapsed / 1000.0;
    PyObject *host = NULL, *key = NULL, *line = NULL, *recorder = NULL, *stats = NULL, *lines = NULL;
    PyObject *max_lines = NULL;
    int rc = -1;
    host = ex->info != NULL ? PyObject_GetAttr(ex->info, S_host) : Py_NewRef(ex->fast_host ? ex->fast_host : Py_None);
    if (host == NULL) goto out;
    key = IS_NONE(ex->endpoint) ? Py_NewRef(S_dash) : PyObject_GetAttr(ex->endpoint, S_key);
    if (key == NULL) goto out;
    PyObject *fields[11] = {
        Py_NewRef(ex->error_code ? ex->error_code : S_empty), Py_NewRef(ex->method ? ex->method : Py_None),
        Py_NewRef(ex->target ? ex->target : Py_None), Py_NewRef(host),
        Py_NewRef(ex->request_id ? ex->request_id : Py_None), Py_NewRef(c->client_ip ? c->client_ip : S_dash),
        Py_NewRef(key), PyFloat_FromDouble(elapsed), PyLong_FromLong(ex->status), PyLong_FromLongLong(ex->bytes_out),
        Py_NewRef(c->proto ? c->proto : Py_None),
    };
    if ((line = new_tuple(fields, 11)) == NULL) goto out;
    if ((recorder = PyObject_GetAttr(c->worker, S_recorder)) == NULL) goto out;
    if ((stats = PyObject_GetAttr(recorder, S_stats)) == NULL) goto out;
    if ((lines = PyObject_GetAttr(recorder, S_lines)) == NULL) goto out;
    if ((max_lines = PyObject_GetAttr(recorder, S_max_lines)) == NULL) goto out;
    PyObject *counts = PyDict_Check(stats) ? PyDict_GetItemWithError(stats, ex->app) : NULL;
    if (counts == NULL && PyErr_Occurred()) goto out;
    Py_ssize_t limit = PyLong_AsSsize_t(max_lines);
    if (limit == -1 && PyErr_Occurred()) goto out;
    if (counts == NULL || !PyList_CheckExact(counts) || PyList_GET_SIZE(counts) != field_count
        || !PyList_CheckExact(lines) || PyList_GET_SIZE(lines) >= limit || bucket_count == 0) {
        /* a new app in this flush, or lines to drop: Recorder.record knows */
        PyObject *result = PyObject_CallMethod(recorder, "record", "OidLLOd", ex->app, ex->status, elapsed,
                                               ex->bytes_in, ex->bytes_out, line, when);
        rc = done(result);
        goto out;
    }
    int status = ex->status;
    Py_ssize_t bucket = 0;
    while (bucket < bucket_count && buckets[bucket] < elapsed) bucket++;
    if (add_at(counts, 0, 1) < 0
        || add_at(counts, status >= 0 && status < 1000 ? status_index[status / 100] : 5, 1) < 0
        || add_at(counts, 6, ex->bytes_in) < 0 || add_at(counts, 7, ex->bytes_out) < 0
        || add_at(counts, 8, (long long)elapsed) < 0 || add_at(counts, bucket_base + bucket, 1) < 0)
        goto out;
    PyObject *items[3] = {Py_NewRef(ex->app), PyFloat_FromDouble(when), Py_NewRef(line)};
    PyObject *entry = new_tuple(items, 3);
    if (entry == NULL) goto out;
    rc = PyList_Append(lines, entry);
    Py_DECREF(entry);
out:
    Py_XDECREF(host); Py_XDECREF(key); Py_XDECREF(line); Py_XDECREF(recorder); Py_XDECREF(stats);
    Py_XDECREF(lines); Py_XDECREF(max_lines);
    return rc;
}

/* Worker.give_back, inline. */
static int give_back(PyObject *worker, BackendCore *b, int draining)
{
    PyObject *pool = PyObject_GetAttr(worker, S_pool);
    if (pool == NULL) return -1;
    PyObject *key = PyObject_GetAttr(b->endpoint, S_key);
    int rc = -1;
    if (key == NULL) goto out;
    PyObject *conns = PyDict_SetDefault(pool, key, Py_None);  /* borrowed */
    if (conns == NULL) goto out;
    if (conns == Py_None) {
        PyObject *fresh = PyList_New(0);
        if (fresh == NULL || PyDict_SetItem(pool, key, fresh) < 0) { Py_XDECREF(fresh); goto out; }
        Py_DECREF(fresh);
        conns = fresh;
    }
    if (draining || !PyList_Check(conns) || PyList_GET_SIZE(conns) >= pool_limit) {
        rc = done(PyObject_CallMethod((PyObject *)b, "close", NULL));
    } else {
        b->idle = 1;
        rc = PyList_Append(conns, (PyObject *)b);
    }
out:
    Py_XDECREF(key);
    Py_DECREF(pool);
    return rc;
}

/* ClientConnection.fast_response for a response that is all there. */
static int client_finish_fast(ClientCore *c, BackendCore *b, Exchange *ex, PyObject *parts, int draining)
{
    PyObject *self = (PyObject *)c;
    int status = (int)PyLong_AsLong(PyTuple_GET_ITEM(parts, 0));
    PyObject *out = PyTuple_GET_ITEM(parts, 1);
    long long body_bytes = PyLong_AsLongLong(PyTuple_GET_ITEM(parts, 2));
    int app_keep_alive = PyTuple_GET_ITEM(parts, 4) == Py_True;
    if (PyErr_Occurred()) return -1;
    Py_CLEAR(c->on_deadline);
    int keep_alive = ex->keep_alive && ex->body_done && !c->closing && !draining;
    SET(ex->plan, Py_NewRef(keep_alive ? plan_keep_alive : plan_close));
    ex->status = status;
    ex->bytes_out = body_bytes;
    if (write_to(c->transport, &c->write_for, &c->write_fn, out) < 0) return -1;
    Py_CLEAR(ex->backend);
    if (uncount(c, ex) < 0) return -1;
    if (b->reading_paused) {
        if (done(call_method0((PyObject *)b, S_detach)) < 0) return -1;
    } else {
        Py_CLEAR(b->client);
        Py_CLEAR(b->exchange);
    }
    if (app_keep_alive && ex->body_done && !b->closed) {
        if (give_back(c->worker, b, draining) < 0) return -1;
    } else if (done(PyObject_CallMethod((PyObject *)b, "close", NULL)) < 0) {
        return -1;
    }
    if (client_record(c, ex) < 0) return -1;
    SET(c->current, Py_NewRef(Py_None));
    if (!keep_alive || c->closing) return done(call_method0(self, S_close));
    int pending = c->pending != NULL ? PyObject_IsTrue(c->pending) : 0;
    if (pending < 0) return -1;
    if (pending || draining) return done(call_method0(self, S_next));
    return client_arm(c, c->idle_timeout, &c->on_idle, S_idle_expired);
}

static PyObject *backend_data_received(BackendCore *b, PyObject *data)
{
    PyObject *self = (PyObject *)b;
    PyObject *client = b->client, *exchange = b->exchange;
    if (IS_NONE(client) || b->upgraded || b->remaining || IS_NONE(b->fast) || b->in_message || !PyBytes_Check(data)
        || exchange == NULL || Py_TYPE(exchange) != &ExchangeType || ((Exchange *)exchange)->head_request
        || !PyObject_TypeCheck(client, &ClientCoreType))
        return PyObject_CallMethodOneArg(self, S_general, data);
    Py_INCREF(client);
    Py_INCREF(exchange);
    ClientCore *c = (ClientCore *)client;
    Exchange *ex = (Exchange *)exchange;
    PyObject *result = NULL, *via = NULL, *parts = NULL;
    int draining = attr_true(c->worker, S_draining);
    if (draining < 0) goto out;
    if ((via = PyObject_GetAttr(c->worker, S_via)) == NULL) goto out;
    parts = call_response(b->fast, data, via, ex->keep_alive && ex->body_done && !c->closing && !draining);
    if (parts == NULL) goto out;
    if (parts == Py_None) {
        result = PyObject_CallMethodOneArg(self, S_general, data);
        goto out;
    }
    if (!PyTuple_Check(parts) || PyTuple_GET_SIZE(parts) != 5) {
        PyErr_SetString(PyExc_TypeError, "response() returned a bad tuple");
        goto out;
    }
    int rest = PyObject_IsTrue(PyTuple_GET_ITEM(parts, 3));
    if (rest < 0) goto out;
    if (rest || c->current != exchange || ex->backend != self || IS_NONE(c->transport)) {
        result = PyObject_CallMethodObjArgs(client, S_fast_response, self, parts, NULL);
        goto out;
    }
    if (client_finish_fast(c, b, ex, parts, draining) < 0) goto out;
    result = Py_NewRef(Py_None);
out:
    Py_XDECREF(via);
    Py_XDECREF(parts);
    Py_DECREF(client);
    Py_DECREF(exchange);
    return result;
}

static PyMethodDef client_methods[] = {
    {"data_received", (PyCFunction)client_data_received, METH_O,
     "Take a plain request whole; hand anything else to _general_data_received."},
    {NULL},
};

static PyMethodDef backend_methods[] = {
    {"data_received", (PyCFunction)backend_data_received, METH_O,
     "Relay a plain response whole; hand anything else to _general_data_received."},
    {NULL},
};

static PyMemberDef client_members[] = {
    OBJ(ClientCore, worker), OBJ(ClientCore, transport), OBJ(ClientCore, current), OBJ(ClientCore, fast),
    OBJ(ClientCore, fast_ctx), OBJ(ClientCore, loop), OBJ(ClientCore, on_deadline), OBJ(ClientCore, pending),
    OBJ(ClientCore, client_ip), OBJ(ClientCore, proto),
    MEM(ClientCore, deadline, T_DOUBLE), MEM(ClientCore, timer_at, T_DOUBLE),
    MEM(ClientCore, first_byte_timeout, T_DOUBLE), MEM(ClientCore, idle_timeout, T_DOUBLE),
    MEM(ClientCore, closing, T_BOOL), MEM(ClientCore, closed, T_BOOL), MEM(ClientCore, in_message, T_BOOL),
    {NULL},
};

static PyMemberDef backend_members[] = {
    OBJ(BackendCore, worker), OBJ(BackendCore, endpoint), OBJ(BackendCore, transport), OBJ(BackendCore, client),
    OBJ(BackendCore, exchange), OBJ(BackendCore, fast),
    MEM(BackendCore, remaining, T_PYSSIZET),
    MEM(BackendCore, idle, T_BOOL), MEM(BackendCore, closed, T_BOOL), MEM(BackendCore, upgraded, T_BOOL),
    MEM(BackendCore, reading_paused, T_BOOL), MEM(BackendCore, in_message, T_BOOL),
    {NULL},
};

static PyTypeObject ClientCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "_fastpath.ClientCore",
    .tp_basicsize = sizeof(ClientCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    .tp_doc = "The compiled part of router.proxy.ClientConnection.",
    .tp_traverse = (traverseproc)client_traverse,
    .tp_clear = (inquiry)client_clear,
    .tp_dealloc = (destructor)client_dealloc,
    .tp_methods = client_methods,
    .tp_members = client_members,
    .tp_new = client_new,
};

static PyTypeObject BackendCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "_fastpath.BackendCore",
    .tp_basicsize = sizeof(BackendCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    .tp_doc = "The compiled part of router.proxy.BackendConnection.",
    .tp_traverse = (traverseproc)backend_traverse,
    .tp_clear = (inquiry)backend_clear,
    .tp_dealloc = (destructor)backend_dealloc,
    .tp_methods = backend_methods,
    .tp_members = backend_members,
    .tp_new = PyType_GenericNew,
};

/* setup(forward_type, request_info_type, plan_keep_alive, plan_close, new_request_id, pool_limit,
 *       buckets, bucket_base, field_count) */
static PyObject *setup(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 9 || !PyType_Check(args[0]) || !PyType_Check(args[1]) || !PyTuple_Check(args[6])
        || PyTuple_GET_SIZE(args[6]) > 32) {
        PyErr_SetString(PyExc_TypeError, "setup(Forward, RequestInfo, keep_alive_plan, close_plan, "
                                         "new_request_id, pool_limit, buckets, bucket_base, field_count)");
        return NULL;
    }
    Py_ssize_t limit = PyLong_AsSsize_t(args[5]);
    Py_ssize_t base = PyLong_AsSsize_t(args[7]);
    Py_ssize_t fields = PyLong_AsSsize_t(args[8]);
    Py_ssize_t n = PyTuple_GET_SIZE(args[6]);
    double values[32];
    for (Py_ssize_t i = 0; i < n; i++) values[i] = PyFloat_AsDouble(PyTuple_GET_ITEM(args[6], i));
    if (PyErr_Occurred()) return NULL;
    if (base < 9 || base + n + 1 != fields) {
        PyErr_SetString(PyExc_ValueError, "setup: the counter layout is not Recorder's");
        return NULL;
    }
    SET(forward_type, Py_NewRef(args[0]));
    SET(request_info_type, Py_NewRef(args[1]));
    SET(plan_keep_alive, Py_NewRef(args[2]));
    SET(plan_close, Py_NewRef(args[3]));
    SET(py_new_request_id, Py_NewRef(args[4]));
    pool_limit = limit;
    memcpy(buckets, values, sizeof(double) * (size_t)n);
    bucket_count = n;
    bucket_base = base;
    field_count = fields;
    Py_RETURN_NONE;
}

static int add_connection_types(PyObject *m)
{
    if (intern_names() < 0) return -1;
    this_module = m;  /* borrowed: the module outlives every connection */
    if (PyType_Ready(&ExchangeType) < 0 || PyType_Ready(&ClientCoreType) < 0 || PyType_Ready(&BackendCoreType) < 0)
        return -1;
    if (PyModule_AddObjectRef(m, "Exchange", (PyObject *)&ExchangeType) < 0
        || PyModule_AddObjectRef(m, "ClientCore", (PyObject *)&ClientCoreType) < 0
        || PyModule_AddObjectRef(m, "BackendCore", (PyObject *)&BackendCoreType) < 0)
        return -1;
    return 0;
}
