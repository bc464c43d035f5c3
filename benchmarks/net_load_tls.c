/* The TLS echo load generator: net_load.c's protocol, options and JSON output, over TLS.
 *
 *   cc -O2 -o net_load_tls benchmarks/net_load_tls.c -lssl -lcrypto   (net_tls.py builds it)
 *   net_load_tls --port P --server-pid PID --sizes 1024,102400 [--conns 10] [--warmup 0.25]
 *                [--duration 1.0] [--stall 3]
 *
 * Every connection speaks TLS 1.3 with one cipher suite only (TLS_AES_128_GCM_SHA256,
 * X25519), so every server negotiates the same and does the same cryptographic work; the
 * server's certificate is not verified (it is the benchmark's own). The handshakes happen
 * before the measured window. Then as net_load.c: `conns` connections, one request in
 * flight on each (send a message, wait for the whole echo, compare it, send the next),
 * warm-up, measured window, drain; the server's CPU time per message over the window. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    int fd;
    SSL *ssl;
    unsigned char *buf;
    size_t got, sent;
    int parity, inflight, out_armed;
    unsigned seq;
    int64_t t_sent;
} conn_t;

static char err_msg[256];

static int fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err_msg, sizeof err_msg, fmt, ap);
    va_end(ap);
    return -1;
}

static int64_t ts_ns(clockid_t clk) {
    struct timespec ts;
    clock_gettime(clk, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* The server's CPU time: schedstat of every thread (ns), utime/stime (ticks). */
static void proc_cpu(int pid, int64_t *ns, long *ut, long *st) {
    char path[320], buf[1024];
    *ns = 0;
    *ut = *st = 0;
    snprintf(path, sizeof path, "/proc/%d/task", pid);
    DIR *d = opendir(path);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (e->d_name[0] == '.') continue;
            snprintf(path, sizeof path, "/proc/%d/task/%s/schedstat", pid, e->d_name);
            FILE *f = fopen(path, "r");
            if (!f) continue;
            long long v;
            if (fscanf(f, "%lld", &v) == 1) *ns += v;
            fclose(f);
        }
        closedir(d);
    }
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (p) sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %ld %ld", ut, st);
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* As net_load.c: in full up to 16 KiB; above, every 8th echo in full, the others by their
 * first and last 256 bytes (which tell the connection's two messages apart). */
#define FULL_CHECK_MAX (16 * 1024)
static int echo_ok(const unsigned char *got, const unsigned char *msg, size_t size, unsigned seq) {
    if (size <= FULL_CHECK_MAX || seq % 8 == 0) return memcmp(got, msg, size) == 0;
    return memcmp(got, msg, 256) == 0 && memcmp(got + size - 256, msg + size - 256, 256) == 0;
}

typedef struct {
    int port, spid, conns;
    double warmup, duration, stall;
} opts_t;

typedef struct {
    int64_t t, done, srv_ns, cli_ns;
    long srv_ut, srv_st;
} snap_t;

static void take(snap_t *s, int64_t now, int64_t done, int spid) {
    s->t = now;
    s->done = done;
    proc_cpu(spid, &s->srv_ns, &s->srv_ut, &s->srv_st);
    s->cli_ns = ts_ns(CLOCK_PROCESS_CPUTIME_ID);
}

static const char *ssl_err(void) {
    unsigned long e = ERR_get_error();
    return e ? ERR_reason_error_string(e) : "no OpenSSL error";
}

static int set_out(int ep, conn_t *c, int want) {
    if (want == c->out_armed) return 0;
    struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0)};
    ev.data.ptr = c;
    if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) < 0) return fail("epoll_ctl: %s", strerror(errno));
    c->out_armed = want;
    return 0;
}

/* SSL_write (the rest of) the current message; EPOLLOUT armed while it waits. */
static int send_more(int ep, conn_t *c, const unsigned char *msg, size_t size) {
    int want = 0;
    while (c->sent < size) {
        int k = SSL_write(c->ssl, msg + c->sent, (int)(size - c->sent));
        if (k > 0) {
            c->sent += (size_t)k;
            continue;
        }
        int e = SSL_get_error(c->ssl, k);
        if (e == SSL_ERROR_WANT_WRITE) want = 1;
        else if (e != SSL_ERROR_WANT_READ) return fail("SSL_write: %s", ssl_err());
        break;
    }
    return set_out(ep, c, want);
}

/* Reads what is there of the echo; 1 once it is whole, 0 if not yet, -1 on a failure. */
static int recv_more(conn_t *c, size_t size, int i) {
    while (c->got < size) {
        int k = SSL_read(c->ssl, c->buf + c->got, (int)(size - c->got));
        if (k > 0) {
            c->got += (size_t)k;
            continue;
        }
        int e = SSL_get_error(c->ssl, k);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return 0;
        if (e == SSL_ERROR_ZERO_RETURN) return fail("connection %d: closed by the server", i);
        return fail("connection %d: SSL_read: %s", i, ssl_err());
    }
    return 1;
}

static int connect_tls(SSL_CTX *ctx, conn_t *c, int port) {
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0 || connect(c->fd, (struct sockaddr *)&sa, sizeof sa) < 0)
        return fail("connect: %s", strerror(errno));
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->ssl = SSL_new(ctx);
    if (!c->ssl || !SSL_set_fd(c->ssl, c->fd)) return fail("SSL_new: %s", ssl_err());
    if (SSL_connect(c->ssl) != 1) return fail("TLS handshake: %s", ssl_err()); /* blocking */
    fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
    return 0;
}

static int run_size(SSL_CTX *ctx, const opts_t *o, size_t size) {
    int n = o->conns, rc = -1, ep = -1;
    conn_t *cs = calloc((size_t)n, sizeof *cs);
    unsigned char **msgs = calloc((size_t)n * 2, sizeof *msgs);
    size_t lat_cap = 1 << 16, lat_n = 0;
    int64_t *lat = malloc(lat_cap * sizeof *lat);
    if (!cs || !msgs || !lat) return fail("out of memory");
    for (int i = 0; i < n; i++) cs[i].fd = -1;
    for (int i = 0; i < n; i++) {
        for (int k = 0; k < 2; k++) {
            unsigned char *m = malloc(size);
            if (!m) { fail("out of memory"); goto out; }
            unsigned start = (unsigned)(i * 2 + k) * 7 + 1, step = (unsigned)(2 * i + k + 1);
            for (size_t j = 0; j < size; j++) m[j] = (unsigned char)(start + (j % 256) * step);
            msgs[2 * i + k] = m;
        }
        cs[i].buf = malloc(size);
        if (!cs[i].buf) { fail("out of memory"); goto out; }
    }
    ep = epoll_create1(EPOLL_CLOEXEC);
    for (int i = 0; i < n; i++) {
        if (connect_tls(ctx, &cs[i], o->port) < 0) goto out;
        struct epoll_event ev = {.events = EPOLLIN};
        ev.data.ptr = &cs[i];
        epoll_ctl(ep, EPOLL_CTL_ADD, cs[i].fd, &ev);
    }

    int64_t t_begin = ts_ns(CLOCK_MONOTONIC);
    int64_t t_w = t_begin + (int64_t)(o->warmup * 1e9), t_e = t_w + (int64_t)(o->duration * 1e9);
    int64_t stall_ns = (int64_t)(o->stall * 1e9), last_progress = t_begin, done = 0;
    int phase = 0, inflight = 0;
    snap_t s0 = {0}, s1 = {0};
    for (int i = 0; i < n; i++) {
        cs[i].t_sent = ts_ns(CLOCK_MONOTONIC);
        cs[i].inflight = 1;
        inflight++;
        if (send_more(ep, &cs[i], msgs[2 * i], size) < 0) goto out;
    }
    struct epoll_event evs[64];
    for (;;) {
        int ne = epoll_wait(ep, evs, 64, 50);
        if (ne < 0) {
            if (errno == EINTR) continue;
            fail("epoll_wait: %s", strerror(errno));
            goto out;
        }
        int64_t now = ts_ns(CLOCK_MONOTONIC);
        if (phase == 0 && now >= t_w) {
            phase = 1;
            take(&s0, now, done, o->spid);
        } else if (phase == 1 && now >= t_e) {
            phase = 2;
            take(&s1, now, done, o->spid);
        }
        for (int e = 0; e < ne; e++) {
            conn_t *c = evs[e].data.ptr;
            int i = (int)(c - cs);
            const unsigned char *msg = msgs[2 * i + c->parity];
            if (c->inflight && c->sent < size)
                if (send_more(ep, c, msg, size) < 0) goto out;
            if (!c->inflight) continue;
            int r = recv_more(c, size, i);
            if (r < 0) goto out;
            if (r == 0) continue;
            int64_t t = ts_ns(CLOCK_MONOTONIC);
            if (!echo_ok(c->buf, msg, size, c->seq++)) {
                fail("connection %d: echo differs from the message sent", i);
                goto out;
            }
            c->got = 0;
            c->inflight = 0;
            inflight--;
            done++;
            last_progress = t;
            if (phase == 1) {
                if (lat_n == lat_cap) {
                    lat_cap *= 2;
                    int64_t *p = realloc(lat, lat_cap * sizeof *lat);
                    if (!p) { fail("out of memory"); goto out; }
                    lat = p;
                }
                lat[lat_n++] = t - c->t_sent;
            }
            if (phase < 2) {
                c->parity ^= 1;
                c->sent = 0;
                c->inflight = 1;
                inflight++;
                c->t_sent = ts_ns(CLOCK_MONOTONIC);
                if (send_more(ep, c, msgs[2 * i + c->parity], size) < 0) goto out;
            }
        }
        if (phase == 2 && inflight == 0) break;
        if (now - last_progress > stall_ns) {
            fail("no echo completed for %g s (%s, %lld done)", o->stall,
                 phase == 2 ? "draining" : "running", (long long)done);
            goto out;
        }
    }
    if (lat_n == 0) {
        fail("no message completed in the measured window");
        goto out;
    }
    qsort(lat, lat_n, sizeof *lat, cmp_i64);
    double wall = (double)(s1.t - s0.t) / 1e9, tck = (double)sysconf(_SC_CLK_TCK);
    int64_t count = s1.done - s0.done;
    double srv = (double)(s1.srv_ns - s0.srv_ns) / 1e9, cli = (double)(s1.cli_ns - s0.cli_ns) / 1e9;
    printf("{\"size\": %zu, \"messages\": %lld, \"seconds\": %.6f, \"rate\": %.3f, "
           "\"p50_us\": %.3f, \"p99_us\": %.3f, \"max_us\": %.3f, \"server_cpu_s\": %.6f, "
           "\"server_user_s\": %.2f, \"server_sys_s\": %.2f, \"server_cpu_per_msg_us\": %.4f, "
           "\"server_util\": %.4f, \"client_cpu_s\": %.6f, \"client_util\": %.4f, "
           "\"total_messages\": %lld, \"client\": \"c-tls\"}\n",
           size, (long long)count, wall, (double)count / wall, lat[(lat_n - 1) / 2] / 1e3,
           lat[(size_t)(0.99 * (double)(lat_n - 1))] / 1e3, lat[lat_n - 1] / 1e3, srv,
           (double)(s1.srv_ut - s0.srv_ut) / tck, (double)(s1.srv_st - s0.srv_st) / tck,
           count ? srv * 1e6 / (double)count : 0.0, srv / wall, cli, cli / wall,
           (long long)done);
    fflush(stdout);
    rc = 0;
out:
    if (ep >= 0) close(ep);
    for (int i = 0; i < n; i++) {
        if (cs[i].ssl) SSL_free(cs[i].ssl); /* no close_notify: the server sees a reset */
        if (cs[i].fd >= 0) close(cs[i].fd);
        free(cs[i].buf);
        free(msgs[2 * i]);
        free(msgs[2 * i + 1]);
    }
    free(cs);
    free(msgs);
    free(lat);
    return rc;
}

int main(int argc, char **argv) {
    opts_t o = {.port = 0, .spid = 0, .conns = 10, .warmup = 0.25, .duration = 1.0, .stall = 3.0};
    const char *sizes = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--port")) o.port = atoi(v);
        else if (!strcmp(k, "--server-pid")) o.spid = atoi(v);
        else if (!strcmp(k, "--sizes")) sizes = v;
        else if (!strcmp(k, "--conns")) o.conns = atoi(v);
        else if (!strcmp(k, "--warmup")) o.warmup = atof(v);
        else if (!strcmp(k, "--duration")) o.duration = atof(v);
        else if (!strcmp(k, "--stall")) o.stall = atof(v);
        else {
            fprintf(stderr, "unknown option %s\n", k);
            return 2;
        }
    }
    if (!o.port || !o.spid || !sizes || o.conns < 1) {
        fprintf(stderr, "usage: net_load_tls --port P --server-pid PID --sizes S[,S...] "
                        "[--conns N] [--warmup S] [--duration S] [--stall S]\n");
        return 2;
    }
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx || !SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) ||
        !SSL_CTX_set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256") ||
        !SSL_CTX_set1_groups_list(ctx, "X25519")) {
        fprintf(stderr, "TLS client context: %s\n", ssl_err());
        return 1;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    /* Sessions are not resumed: every connection makes a full handshake. */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    char *list = strdup(sizes), *save = NULL;
    for (char *tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        size_t size = strtoul(tok, NULL, 10);
        if (size == 0) continue;
        if (run_size(ctx, &o, size) < 0) {
            printf("{\"size\": %zu, \"error\": \"%s\"}\n", size, err_msg);
            fflush(stdout);
        }
    }
    free(list);
    SSL_CTX_free(ctx);
    return 0;
}
