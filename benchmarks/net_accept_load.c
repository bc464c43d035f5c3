/* The accept-rate load generator: new connections, one round trip each.
 *
 *   cc -O2 -o net_accept_load benchmarks/net_accept_load.c   (net_proc.py builds it)
 *   net_accept_load --port P --server-pid PID [--conns 10] [--size 64] [--warmup 0.25]
 *                   [--duration 1.0] [--stall 3]
 *
 * `conns` slots, each in a cycle: a non-blocking connect to 127.0.0.1:P (TCP_NODELAY),
 * send a `size`-byte message, wait for its whole echo and compare it, close, and start
 * over. The server therefore accepts a connection, makes its protocol and transport,
 * echoes once, sees EOF and closes, per cycle. Over a measured window after a warm-up:
 * connections completed, their times (connect to echo received: p50/p99), the server's
 * CPU time (/proc/PID/task/x/schedstat summed over threads, ns) and this process's. One
 * JSON line on stdout, {"error": "..."} on a failure. Closing first leaves TIME_WAIT on
 * this side, which Linux reuses for loopback connections (tcp_tw_reuse=2, the default). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
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
    int connecting;  /* waiting for the connect to complete */
    size_t sent, got;
    int64_t t_start;
} slot_t;

static int64_t ts_ns(clockid_t clk) {
    struct timespec ts;
    clock_gettime(clk, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int64_t proc_ns(int pid) {
    char path[320];
    int64_t ns = 0;
    snprintf(path, sizeof path, "/proc/%d/task", pid);
    DIR *d = opendir(path);
    if (!d) return 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        snprintf(path, sizeof path, "/proc/%d/task/%s/schedstat", pid, e->d_name);
        FILE *f = fopen(path, "r");
        if (!f) continue;
        long long v;
        if (fscanf(f, "%lld", &v) == 1) ns += v;
        fclose(f);
    }
    closedir(d);
    return ns;
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static char err_msg[256];
static struct sockaddr_in server;
static unsigned char *msg;
static size_t size;

static int start(int ep, slot_t *s) {
    s->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s->fd < 0) {
        snprintf(err_msg, sizeof err_msg, "socket: %s", strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    s->t_start = ts_ns(CLOCK_MONOTONIC);
    s->sent = s->got = 0;
    s->connecting = 1;
    if (connect(s->fd, (struct sockaddr *)&server, sizeof server) < 0 && errno != EINPROGRESS) {
        snprintf(err_msg, sizeof err_msg, "connect: %s", strerror(errno));
        return -1;
    }
    struct epoll_event ev = {.events = EPOLLOUT};
    ev.data.ptr = s;
    return epoll_ctl(ep, EPOLL_CTL_ADD, s->fd, &ev);
}

int main(int argc, char **argv) {
    int port = 0, spid = 0, conns = 10;
    double warmup = 0.25, duration = 1.0, stall = 3.0;
    size = 64;
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--port")) port = atoi(v);
        else if (!strcmp(k, "--server-pid")) spid = atoi(v);
        else if (!strcmp(k, "--conns")) conns = atoi(v);
        else if (!strcmp(k, "--size")) size = strtoul(v, NULL, 10);
        else if (!strcmp(k, "--warmup")) warmup = atof(v);
        else if (!strcmp(k, "--duration")) duration = atof(v);
        else if (!strcmp(k, "--stall")) stall = atof(v);
        else {
            fprintf(stderr, "unknown option %s\n", k);
            return 2;
        }
    }
    if (!port || !spid || conns < 1 || size < 1) {
        fprintf(stderr, "usage: net_accept_load --port P --server-pid PID [--conns N] "
                        "[--size B] [--warmup S] [--duration S] [--stall S]\n");
        return 2;
    }
    server.sin_family = AF_INET;
    server.sin_port = htons((uint16_t)port);
    server.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    msg = malloc(size);
    unsigned char *buf = malloc(size);
    slot_t *slots = calloc((size_t)conns, sizeof *slots);
    size_t lat_cap = 1 << 16, lat_n = 0;
    int64_t *lat = malloc(lat_cap * sizeof *lat);
    if (!msg || !buf || !slots || !lat) {
        printf("{\"error\": \"out of memory\"}\n");
        return 1;
    }
    for (size_t j = 0; j < size; j++) msg[j] = (unsigned char)(j * 7 + 3);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    for (int i = 0; i < conns; i++)
        if (start(ep, &slots[i]) < 0) goto fail;

    int64_t t0 = ts_ns(CLOCK_MONOTONIC);
    int64_t t_w = t0 + (int64_t)(warmup * 1e9), t_e = t_w + (int64_t)(duration * 1e9);
    int64_t last = t0, done = 0, d0 = 0, d1 = 0, w0 = 0, w1 = 0, s0 = 0, s1 = 0, c0 = 0, c1 = 0;
    int phase = 0, live = conns;
    struct epoll_event evs[64];
    while (live > 0) {
        int ne = epoll_wait(ep, evs, 64, 50);
        if (ne < 0 && errno != EINTR) {
            snprintf(err_msg, sizeof err_msg, "epoll_wait: %s", strerror(errno));
            goto fail;
        }
        int64_t now = ts_ns(CLOCK_MONOTONIC);
        if (phase == 0 && now >= t_w) {
            phase = 1;
            d0 = done, w0 = now, s0 = proc_ns(spid), c0 = ts_ns(CLOCK_PROCESS_CPUTIME_ID);
        } else if (phase == 1 && now >= t_e) {
            phase = 2;
            d1 = done, w1 = now, s1 = proc_ns(spid), c1 = ts_ns(CLOCK_PROCESS_CPUTIME_ID);
        }
        for (int e = 0; e < ne; e++) {
            slot_t *s = evs[e].data.ptr;
            if (s->connecting) {
                int err = 0;
                socklen_t len = sizeof err;
                getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len);
                if (err) {
                    snprintf(err_msg, sizeof err_msg, "connect: %s", strerror(err));
                    goto fail;
                }
                s->connecting = 0;
                if (send(s->fd, msg, size, MSG_NOSIGNAL) != (ssize_t)size) {
                    snprintf(err_msg, sizeof err_msg, "send: %s", strerror(errno));
                    goto fail;
                }
                struct epoll_event ev = {.events = EPOLLIN};
                ev.data.ptr = s;
                epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &ev);
                continue;
            }
            ssize_t k = recv(s->fd, buf + s->got, size - s->got, 0);
            if (k < 0 && (errno == EAGAIN || errno == EINTR)) continue;
            if (k <= 0) {
                snprintf(err_msg, sizeof err_msg, "connection ended before the echo: %s",
                         k < 0 ? strerror(errno) : "EOF");
                goto fail;
            }
            s->got += (size_t)k;
            if (s->got < size) continue;
            if (memcmp(buf, msg, size) != 0) {
                snprintf(err_msg, sizeof err_msg, "the echo differs from the message");
                goto fail;
            }
            close(s->fd);  /* epoll forgets it */
            done++;
            last = now;
            if (phase == 1) {
                if (lat_n == lat_cap) {
                    lat_cap *= 2;
                    int64_t *p = realloc(lat, lat_cap * sizeof *lat);
                    if (!p) goto fail;
                    lat = p;
                }
                lat[lat_n++] = now - s->t_start;
            }
            if (phase < 2) {
                if (start(ep, s) < 0) goto fail;
            } else {
                s->fd = -1;
                live--;
            }
        }
        if (now - last > (int64_t)(stall * 1e9)) {
            snprintf(err_msg, sizeof err_msg, "no connection completed for %g s (%lld done)",
                     stall, (long long)done);
            goto fail;
        }
    }
    if (lat_n == 0) {
        snprintf(err_msg, sizeof err_msg, "no connection completed in the measured window");
        goto fail;
    }
    qsort(lat, lat_n, sizeof *lat, cmp_i64);
    double wall = (double)(w1 - w0) / 1e9, srv = (double)(s1 - s0) / 1e9;
    double cli = (double)(c1 - c0) / 1e9;
    int64_t count = d1 - d0;
    printf("{\"connections\": %lld, \"seconds\": %.6f, \"rate\": %.3f, \"p50_us\": %.3f, "
           "\"p99_us\": %.3f, \"server_cpu_s\": %.6f, \"server_cpu_per_conn_us\": %.4f, "
           "\"server_util\": %.4f, \"client_cpu_s\": %.6f, \"client_util\": %.4f}\n",
           (long long)count, wall, (double)count / wall, lat[(lat_n - 1) / 2] / 1e3,
           lat[(size_t)(0.99 * (double)(lat_n - 1))] / 1e3, srv,
           count ? srv * 1e6 / (double)count : 0.0, srv / wall, cli, cli / wall);
    return 0;
fail:
    printf("{\"error\": \"%s\"}\n", err_msg);
    return 1;
}
