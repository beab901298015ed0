/* Bench helper for service discovery (issue #11): how long from a Consul change to the app's signal.
 *
 *   watchbench app FIFO                     the app: blocks SIGHUP, writes FIFO.ready, then for every SIGHUP
 *                                           writes its CLOCK_MONOTONIC time (8 bytes) into FIFO.
 *   watchbench drive PORT SERVICE N FIFO    registers instance i of SERVICE (passing) on the agent at
 *                                           127.0.0.1:PORT, waits for the app's SIGHUP, prints "ns" (change
 *                                           sent → signal received), deregisters it, waits for that SIGHUP too
 *                                           (not printed); N times.
 * Both ends read the same monotonic clock, so the difference is the whole path: agent, blocking query,
 * microinit's worker thread, debounce, PID 1's loop, kill(2), the app's wakeup.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static int app(const char *fifo) {
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGHUP);
    sigaddset(&s, SIGTERM);
    sigprocmask(SIG_BLOCK, &s, NULL);
    char ready[4096];
    snprintf(ready, sizeof ready, "%s.ready", fifo);
    int r = open(ready, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (r < 0) { perror(ready); return 1; }
    close(r);
    int fd = -1;
    for (;;) {
        siginfo_t si;
        if (sigwaitinfo(&s, &si) < 0) continue;
        if (si.si_signo == SIGTERM) return 0;
        uint64_t t = now_ns();
        if (fd < 0) fd = open(fifo, O_WRONLY);
        if (fd < 0 || write(fd, &t, sizeof t) != sizeof t) { perror(fifo); return 1; }
    }
}

/* One HTTP/1.0 PUT to the agent; 0 on a 200. */
static int put(int port, const char *path, const char *body) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof a) < 0) { perror("connect"); return -1; }
    char req[2048];
    int n = snprintf(req, sizeof req, "PUT %s HTTP/1.0\r\nContent-Length: %zu\r\n\r\n%s", path, strlen(body), body);
    if (write(s, req, n) != n) { close(s); return -1; }
    char resp[512] = {0};
    ssize_t got = read(s, resp, sizeof resp - 1);
    close(s);
    return (got > 12 && strncmp(resp + 9, "200", 3) == 0) ? 0 : -1;
}

/* The next timestamp from the app, or 0 after 10 s. */
static uint64_t next_signal(int fd) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    uint64_t t;
    if (poll(&p, 1, 10000) != 1 || read(fd, &t, sizeof t) != sizeof t) return 0;
    return t;
}

static int drive(int port, const char *svc, int n, const char *fifo) {
    int fd = open(fifo, O_RDWR); /* RDWR: does not wait for the writer, never sees EOF */
    if (fd < 0) { perror(fifo); return 1; }
    for (int i = 0; i < n; i++) {
        char body[512], path[256];
        snprintf(body, sizeof body,
                 "{\"Name\":\"%s\",\"ID\":\"%s-%d\",\"Address\":\"127.0.0.1\",\"Port\":%d,"
                 "\"Check\":{\"CheckID\":\"%s-%d-ttl\",\"TTL\":\"1h\",\"Status\":\"passing\"}}",
                 svc, svc, i, 10000 + i, svc, i);
        uint64_t t0 = now_ns();
        if (put(port, "/v1/agent/service/register", body) < 0) { fprintf(stderr, "register %d failed\n", i); return 1; }
        uint64_t t1 = next_signal(fd);
        if (!t1) { fprintf(stderr, "no signal within 10 s after registering instance %d\n", i); return 1; }
        printf("%llu\n", (unsigned long long)(t1 - t0));
        fflush(stdout);
        snprintf(path, sizeof path, "/v1/agent/service/deregister/%s-%d", svc, i);
        if (put(port, path, "") < 0) { fprintf(stderr, "deregister %d failed\n", i); return 1; }
        if (!next_signal(fd)) { fprintf(stderr, "no signal within 10 s after deregistering instance %d\n", i); return 1; }
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "app")) return app(argv[2]);
    if (argc == 6 && !strcmp(argv[1], "drive")) return drive(atoi(argv[2]), argv[3], atoi(argv[4]), argv[5]);
    fprintf(stderr, "usage: watchbench app FIFO | watchbench drive PORT SERVICE N FIFO\n");
    return 2;
}
