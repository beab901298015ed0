/* Test helper for the storm tests (tests/storms.rs): an app that timestamps the signals it gets, a signal
 * storm, and control-socket churn.
 *
 * usage: storm app FILE [--stay]
 *   Blocks every signal, writes FILE.ready once ready, then appends "SIGNO NANOSECONDS\n" to FILE for every
 *   signal (CLOCK_MONOTONIC when sigwaitinfo returned). Exits 0 on SIGTERM, unless --stay: then on SIGUSR2.
 * usage: storm signals PID RATE SIGNO...
 *   kill(PID, SIGNO) RATE times a second, round robin over the SIGNOs, until killed.
 * usage: storm churn SOCKET COUNTFILE
 *   connect(2) to the Unix socket and close at once, in a loop until killed; every 64 connections the number
 *   made so far is written to COUNTFILE (failed connects count too: a full backlog is churn as well). In
 *   bursts of 64 with a 1 ms sleep between: still far more connections than PID 1 takes (it rests its
 *   listener), but no busy loop. A busy loop on a 2-core machine delays every process's wakeups, the app's
 *   included, whatever the init does; the test measures what the churn does to PID 1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static int app(const char *file, int stay) {
    sigset_t all;
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, NULL);
    int out = open(file, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (out < 0) { perror(file); return 1; }
    char ready[4096], tmp[4200];
    snprintf(ready, sizeof ready, "%s.ready", file);
    snprintf(tmp, sizeof tmp, "%s.tmp", ready);
    FILE *r = fopen(tmp, "w");
    if (!r) { perror(tmp); return 1; }
    fprintf(r, "pid=%d\n", getpid());
    fclose(r);
    rename(tmp, ready);
    for (;;) {
        siginfo_t si;
        int s = sigwaitinfo(&all, &si);
        if (s < 0 || s == SIGCHLD) continue;
        char line[64];
        int n = snprintf(line, sizeof line, "%d %lld\n", s, now_ns());
        if (write(out, line, n) != n) return 1;
        if (s == (stay ? SIGUSR2 : SIGTERM)) return 0;
    }
}

static int storm(pid_t pid, long rate, int *sigs, int nsigs) {
    /* Paced in 1 ms ticks: rate/1000 signals per tick (at least one). */
    long per_tick = rate / 1000 > 0 ? rate / 1000 : 1;
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    for (long i = 0;;) {
        for (long k = 0; k < per_tick; k++, i++) {
            if (kill(pid, sigs[i % nsigs]) < 0 && errno == ESRCH) return 0;
        }
        next.tv_nsec += 1000000;
        if (next.tv_nsec >= 1000000000) { next.tv_nsec -= 1000000000; next.tv_sec++; }
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
    }
}

static int churn(const char *path, const char *countfile) {
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    strncpy(a.sun_path, path, sizeof a.sun_path - 1);
    int cf = open(countfile, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (cf < 0) { perror(countfile); return 1; }
    for (long n = 1;; n++) {
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
        if (fd < 0) return 1;
        connect(fd, (struct sockaddr *)&a, sizeof a);
        close(fd);
        if (n % 64 == 0) {
            char line[32];
            int len = snprintf(line, sizeof line, "%ld\n", n);
            if (pwrite(cf, line, len, 0) != len) return 1;
            struct timespec ms = {0, 1000000};
            nanosleep(&ms, NULL);
        }
    }
}

int main(int argc, char **argv) {
    if (argc >= 3 && !strcmp(argv[1], "app"))
        return app(argv[2], argc >= 4 && !strcmp(argv[3], "--stay"));
    if (argc >= 5 && !strcmp(argv[1], "signals")) {
        int n = argc - 4;
        int *sigs = calloc(n, sizeof *sigs);
        for (int i = 0; i < n; i++) sigs[i] = atoi(argv[4 + i]);
        return storm(atoi(argv[2]), atol(argv[3]), sigs, n);
    }
    if (argc == 4 && !strcmp(argv[1], "churn")) return churn(argv[2], argv[3]);
    fprintf(stderr, "usage: storm app FILE [--stay] | signals PID RATE SIGNO... | churn SOCKET COUNTFILE\n");
    return 2;
}
