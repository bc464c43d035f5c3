/* The echo load generator in C: same protocol, options and JSON output as net_load.py.
 *
 *   cc -O2 -o net_load benchmarks/net_load.c      (net.py builds it into results/.bin/)
 *   net_load --port P --server-pid PID --sizes 1024,10240 [--conns 10] [--warmup 0.25]
 *            [--duration 1.0] [--stall 3]
 *
 * Why C: the Python generator (net_load.py) costs a few microseconds of interpreter time
 * per message, about what the fastest servers spend per message in all, so against them
 * it used a whole core and set the pace itself. This one spends its time in the kernel
 * (send, recv, epoll_wait), which a client cannot avoid, and in one memcmp per echo.
 *
 * For each size in turn: `conns` TCP connections to 127.0.0.1:P (TCP_NODELAY), one
 * request in flight on each: send a message, wait for the whole echo, compare it with
 * what was sent (see echo_ok), send the next. Each connection alternates between two
 * messages that differ from each other and from every other connection's. Warm-up,
 * measured window, then no new requests: in-flight ones complete, connections close.
 * Over the window: messages, seconds, every round-trip time (p50/p99/max), the server's
 * CPU time (/proc/PID/task/x/schedstat summed over threads, ns; utime/stime from
 * /proc/PID/stat) and this process's CPU time (CLOCK_PROCESS_CPUTIME_ID).
 * One JSON line per size on stdout; {"size": N, "error": "..."} on a failure. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
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
    unsigned char *buf; /* the echo being received */
    size_t got;         /* bytes of it received */
    size_t sent;        /* bytes of the current message sent */
    int parity;         /* which of the two messages is in flight */
    int inflight;
    int out_armed; /* EPOLLOUT is in its epoll mask */
    unsigned seq;  /* echoes completed on this connection */
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
            if (!f) continue; /* a thread that just exited */
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

/* Up to 16 KiB every echo is compared in full. Above, in full every 8th echo of each
 * connection (its first included) and on the others the first and last 256 bytes, which
 * identify the message (each connection's two messages differ throughout): a full memcmp
 * of 100 KiB is ~15% of this client's time per message, and it must stay cheaper than
 * the fastest server. */
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

/* Send (the rest of) connection c's current message; arm EPOLLOUT if it did not all go. */
static int send_more(int ep, conn_t *c, const unsigned char *msg, size_t size) {
    while (c->sent < size) {
        ssize_t k = send(c->fd, msg + c->sent, size - c->sent, MSG_NOSIGNAL);
        if (k < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            if (errno == EINTR) continue;
            return fail("send: %s", strerror(errno));
        }
        c->sent += (size_t)k;
    }
    int want = c->sent < size;
    if (want != c->out_armed) { /* a syscall only when the mask changes */
        struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0)};
        ev.data.ptr = c;
        if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) < 0)
            return fail("epoll_ctl: %s", strerror(errno));
        c->out_armed = want;
    }
    return 0;
}

static int run_size(const opts_t *o, size_t size) {
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
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)o->port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (int i = 0; i < n; i++) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        cs[i].fd = fd;
        if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
            fail("connect: %s", strerror(errno));
            goto out;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        struct epoll_event ev = {.events = EPOLLIN};
        ev.data.ptr = &cs[i];
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
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
            if ((evs[e].events & EPOLLOUT) && c->inflight && c->sent < size)
                if (send_more(ep, c, msg, size) < 0) goto out;
            if (!(evs[e].events & (EPOLLIN | EPOLLERR | EPOLLHUP))) continue;
            while (c->got < size) {
                ssize_t k = recv(c->fd, c->buf + c->got, size - c->got, 0);
                if (k < 0) {
                    if (errno == EAGAIN || errno == EWOULDBLOCK) break;
                    if (errno == EINTR) continue;
                    fail("connection %d: %s", i, strerror(errno));
                    goto out;
                }
                if (k == 0) {
                    fail("connection %d: closed by the server mid-echo", i);
                    goto out;
                }
                c->got += (size_t)k;
            }
            if (!c->inflight && c->got) {
                fail("connection %d: %zu unexpected bytes", i, c->got);
                goto out;
            }
            if (c->got < size) continue;
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
           "\"total_messages\": %lld, \"client\": \"c\"}\n",
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
        fprintf(stderr, "usage: net_load --port P --server-pid PID --sizes S[,S...] [--conns N] "
                        "[--warmup S] [--duration S] [--stall S]\n");
        return 2;
    }
    char *list = strdup(sizes), *save = NULL;
    for (char *tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        size_t size = strtoul(tok, NULL, 10);
        if (size == 0) continue;
        if (run_size(&o, size) < 0) {
            printf("{\"size\": %zu, \"error\": \"%s\"}\n", size, err_msg);
            fflush(stdout);
        }
    }
    free(list);
    return 0;
}
