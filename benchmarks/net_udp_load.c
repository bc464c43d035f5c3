/* The UDP echo load generator (benchmarks/net_dgram.py builds and runs it).
 *
 *   net_udp_load --port P --server-pid PID --sizes 64,1400 [--socks 4] [--window 8]
 *                [--warmup 0.5] [--duration 2] [--loss-timeout 0.2] [--stall 3]
 *
 * For each size in turn: `socks` UDP sockets, each connect()ed to 127.0.0.1:P (so the
 * server sees that many peers), each keeping `window` datagrams in flight (a bounded
 * window: a slot is refilled when its echo comes back, or when it is declared lost after
 * `loss-timeout` without one). A datagram carries its slot and sequence number and a
 * pattern derived from them, so every echo is checked byte for byte and a late or
 * duplicated one is told apart. Warm-up, measured window, then no new datagrams.
 * Over the window: echoes, losses, round-trip times (p50/p99/max), the server's CPU time
 * (/proc/PID/task/x/schedstat summed over threads) and this process's CPU time.
 * One JSON line per size on stdout (net_load.c's keys, plus "lost" and "late");
 * {"size": N, "error": "..."} on a failure. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define HDR 8 /* slot (u32) + sequence number (u32) */
#define MAX_DGRAM 65507

typedef struct {
    uint32_t seq;
    int inflight;
    int64_t t_sent;
} slot_t;

typedef struct {
    int port, spid, socks, window;
    double warmup, duration, loss_timeout, stall;
} opts_t;

typedef struct {
    int64_t t, done, srv_ns, cli_ns;
} snap_t;

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

static int64_t server_cpu_ns(int pid) {
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

static void take(snap_t *s, int64_t now, int64_t done, int spid) {
    s->t = now;
    s->done = done;
    s->srv_ns = server_cpu_ns(spid);
    s->cli_ns = ts_ns(CLOCK_PROCESS_CPUTIME_ID);
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static unsigned char pat(uint32_t slot, uint32_t seq, size_t i) {
    return (unsigned char)(seq * 31u + slot * 7u + (uint32_t)i);
}

static void fill(unsigned char *m, size_t size, uint32_t slot, uint32_t seq) {
    memcpy(m, &slot, 4);
    memcpy(m + 4, &seq, 4);
    for (size_t i = HDR; i < size; i++) m[i] = pat(slot, seq, i);
}

/* Sends slot `k` of socket `s` anew; EAGAIN (a full socket buffer) counts as a loss
 * later, as a datagram the network dropped would. */
static int send_slot(int fd, slot_t *sl, uint32_t k, uint32_t *next_seq, unsigned char *m,
                     size_t size) {
    sl->seq = (*next_seq)++;
    sl->inflight = 1;
    sl->t_sent = ts_ns(CLOCK_MONOTONIC);
    fill(m, size, k, sl->seq);
    if (send(fd, m, size, 0) < 0 && errno != EAGAIN && errno != ECONNREFUSED && errno != EINTR)
        return fail("send: %s", strerror(errno));
    return 0;
}

static int run_size(const opts_t *o, size_t size) {
    int ns = o->socks, w = o->window, ep = -1, rc = -1;
    int *fds = calloc((size_t)ns, sizeof *fds);
    slot_t *slots = calloc((size_t)ns * (size_t)w, sizeof *slots);
    uint32_t *next_seq = calloc((size_t)ns, sizeof *next_seq);
    unsigned char *m = malloc(MAX_DGRAM), *buf = malloc(MAX_DGRAM);
    size_t lat_cap = 1 << 16, lat_n = 0;
    int64_t *lat = malloc(lat_cap * sizeof *lat);
    if (!fds || !slots || !next_seq || !m || !buf || !lat) return fail("out of memory");
    for (int i = 0; i < ns; i++) fds[i] = -1;
    ep = epoll_create1(EPOLL_CLOEXEC);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)o->port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (int i = 0; i < ns; i++) {
        int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        fds[i] = fd;
        if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
            fail("connect: %s", strerror(errno));
            goto out;
        }
        int big = 4 << 20;
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
        struct epoll_event ev = {.events = EPOLLIN};
        ev.data.u32 = (uint32_t)i;
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    }
    int64_t t_begin = ts_ns(CLOCK_MONOTONIC);
    int64_t t_w = t_begin + (int64_t)(o->warmup * 1e9), t_e = t_w + (int64_t)(o->duration * 1e9);
    int64_t loss_ns = (int64_t)(o->loss_timeout * 1e9), stall_ns = (int64_t)(o->stall * 1e9);
    int64_t done = 0, lost = 0, late = 0, last_progress = t_begin, last_scan = t_begin;
    int64_t lost0 = 0, late0 = 0;
    int phase = 0, inflight = 0;
    snap_t s0 = {0}, s1 = {0};
    for (int i = 0; i < ns; i++)
        for (int k = 0; k < w; k++) {
            if (send_slot(fds[i], &slots[i * w + k], (uint32_t)k, &next_seq[i], m, size) < 0)
                goto out;
            inflight++;
        }
    struct epoll_event evs[64];
    for (;;) {
        int ne = epoll_wait(ep, evs, 64, 10);
        if (ne < 0) {
            if (errno == EINTR) continue;
            fail("epoll_wait: %s", strerror(errno));
            goto out;
        }
        int64_t now = ts_ns(CLOCK_MONOTONIC);
        if (phase == 0 && now >= t_w) {
            phase = 1;
            take(&s0, now, done, o->spid);
            lost0 = lost;
            late0 = late;
        } else if (phase == 1 && now >= t_e) {
            phase = 2;
            take(&s1, now, done, o->spid);
            lost -= lost0;
            late -= late0;
        }
        for (int e = 0; e < ne; e++) {
            int i = (int)evs[e].data.u32;
            for (;;) {
                ssize_t k = recv(fds[i], buf, MAX_DGRAM, MSG_DONTWAIT);
                if (k < 0) {
                    if (errno == EAGAIN || errno == EWOULDBLOCK) break;
                    if (errno == EINTR || errno == ECONNREFUSED) continue;
                    fail("recv: %s", strerror(errno));
                    goto out;
                }
                uint32_t ks, seq;
                if ((size_t)k != size) {
                    fail("an echo of %zd bytes for a %zu-byte datagram", k, size);
                    goto out;
                }
                memcpy(&ks, buf, 4);
                memcpy(&seq, buf + 4, 4);
                slot_t *sl = ks < (uint32_t)w ? &slots[i * w + (int)ks] : NULL;
                if (!sl || !sl->inflight || sl->seq != seq) {
                    late++; /* after it was declared lost, or a duplicate */
                    continue;
                }
                for (size_t j = HDR; j < size; j++)
                    if (buf[j] != pat(ks, seq, j)) {
                        fail("echo differs from the datagram sent");
                        goto out;
                    }
                int64_t t = ts_ns(CLOCK_MONOTONIC);
                sl->inflight = 0;
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
                    lat[lat_n++] = t - sl->t_sent;
                }
                if (phase < 2) {
                    if (send_slot(fds[i], sl, ks, &next_seq[i], m, size) < 0) goto out;
                    inflight++;
                }
            }
        }
        if (now - last_scan > loss_ns / 4) { /* slots whose echo never came */
            last_scan = now;
            for (int j = 0; j < ns * w; j++) {
                slot_t *sl = &slots[j];
                if (!sl->inflight || now - sl->t_sent < loss_ns) continue;
                sl->inflight = 0;
                inflight--;
                lost++;
                if (phase < 2) {
                    if (send_slot(fds[j / w], sl, (uint32_t)(j % w), &next_seq[j / w], m, size) < 0)
                        goto out;
                    inflight++;
                }
            }
        }
        if (phase == 2 && inflight == 0) break;
        if (now - last_progress > stall_ns) {
            fail("no echo for %g s (%lld done, %lld lost)", o->stall, (long long)done,
                 (long long)lost);
            goto out;
        }
    }
    if (lat_n == 0) {
        fail("no echo in the measured window");
        goto out;
    }
    qsort(lat, lat_n, sizeof *lat, cmp_i64);
    double wall = (double)(s1.t - s0.t) / 1e9;
    int64_t count = s1.done - s0.done;
    double srv = (double)(s1.srv_ns - s0.srv_ns) / 1e9, cli = (double)(s1.cli_ns - s0.cli_ns) / 1e9;
    printf("{\"size\": %zu, \"messages\": %lld, \"seconds\": %.6f, \"rate\": %.3f, "
           "\"p50_us\": %.3f, \"p99_us\": %.3f, \"max_us\": %.3f, \"server_cpu_s\": %.6f, "
           "\"server_cpu_per_msg_us\": %.4f, \"server_util\": %.4f, \"client_cpu_s\": %.6f, "
           "\"client_util\": %.4f, \"lost\": %lld, \"late\": %lld, \"in_flight\": %d, "
           "\"client\": \"c\"}\n",
           size, (long long)count, wall, (double)count / wall, lat[(lat_n - 1) / 2] / 1e3,
           lat[(size_t)(0.99 * (double)(lat_n - 1))] / 1e3, lat[lat_n - 1] / 1e3, srv,
           count ? srv * 1e6 / (double)count : 0.0, srv / wall, cli, cli / wall,
           (long long)lost, (long long)late, ns * w);
    fflush(stdout);
    rc = 0;
out:
    if (ep >= 0) close(ep);
    for (int i = 0; i < ns; i++)
        if (fds[i] >= 0) close(fds[i]);
    free(fds);
    free(slots);
    free(next_seq);
    free(m);
    free(buf);
    free(lat);
    return rc;
}

int main(int argc, char **argv) {
    opts_t o = {.socks = 4, .window = 8, .warmup = 0.5, .duration = 2.0, .loss_timeout = 0.2,
                .stall = 3.0};
    const char *sizes = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--port")) o.port = atoi(v);
        else if (!strcmp(k, "--server-pid")) o.spid = atoi(v);
        else if (!strcmp(k, "--sizes")) sizes = v;
        else if (!strcmp(k, "--socks")) o.socks = atoi(v);
        else if (!strcmp(k, "--window")) o.window = atoi(v);
        else if (!strcmp(k, "--warmup")) o.warmup = atof(v);
        else if (!strcmp(k, "--duration")) o.duration = atof(v);
        else if (!strcmp(k, "--loss-timeout")) o.loss_timeout = atof(v);
        else if (!strcmp(k, "--stall")) o.stall = atof(v);
        else {
            fprintf(stderr, "unknown option %s\n", k);
            return 2;
        }
    }
    if (!o.port || !o.spid || !sizes || o.socks < 1 || o.window < 1) {
        fprintf(stderr, "usage: net_udp_load --port P --server-pid PID --sizes S[,S...] "
                        "[--socks N] [--window N] [--warmup S] [--duration S] "
                        "[--loss-timeout S] [--stall S]\n");
        return 2;
    }
    char *list = strdup(sizes), *save = NULL;
    for (char *tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        size_t size = strtoul(tok, NULL, 10);
        if (size < HDR || size > MAX_DGRAM) {
            printf("{\"size\": %zu, \"error\": \"sizes are %d to %d bytes\"}\n", size, HDR,
                   MAX_DGRAM);
            continue;
        }
        if (run_size(&o, size) < 0) {
            printf("{\"size\": %zu, \"error\": \"%s\"}\n", size, err_msg);
            fflush(stdout);
        }
    }
    free(list);
    return 0;
}
