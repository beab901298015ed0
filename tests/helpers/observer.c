/* Test helper for tests/dialects.rs: what a child of an init sees and receives.
 *
 * usage: observer DIR ROLE [ARG]
 *   First writes DIR/ROLE.info: cwd, the SigBlk/SigIgn lines it started with, whether it leads its process
 *   group and session, whether it owns the terminal's foreground. Then, by ROLE:
 *     exit N      exit with status N
 *     die SIG     die by signal SIG
 *     cat         copy stdin to DIR/cat.out, exit 0
 *     rec SIG     record every signal (one number per line in DIR/rec.sigs) until SIG, then drain what is
 *                 pending and exit 0; writes DIR/rec.ready once recording
 *     left        start a leftover in its process group (records into DIR/leftover.sigs, never exits on
 *                 its own, writes DIR/leftover.pid), then exit 3
 *     orphans N   double-fork N processes that exit at once (zombies for the init), wait 50 ms, exit 0
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *dir;

static void path(char *out, size_t n, const char *name) { snprintf(out, n, "%s/%s", dir, name); }

static void put(const char *name, const char *text) {
    char p[4096], tmp[4200];
    path(p, sizeof p, name);
    snprintf(tmp, sizeof tmp, "%s.tmp%d", p, getpid());
    FILE *f = fopen(tmp, "w");
    if (!f) _exit(90);
    fputs(text, f);
    fclose(f);
    rename(tmp, p);
}

static void info(const char *role) {
    char buf[8192], cwd[2048], line[512];
    if (!getcwd(cwd, sizeof cwd)) strcpy(cwd, "?");
    int n = snprintf(buf, sizeof buf, "cwd=%s\n", cwd);
    FILE *st = fopen("/proc/self/status", "r");
    while (st && fgets(line, sizeof line, st))
        if (!strncmp(line, "SigBlk:", 7) || !strncmp(line, "SigIgn:", 7)) n += snprintf(buf + n, sizeof buf - n, "%s", line);
    if (st) fclose(st);
    int fg = isatty(0) && tcgetpgrp(0) == getpgrp();
    snprintf(buf + n, sizeof buf - n, "pgrp_leader=%d session_leader=%d fg=%d\n", getpgrp() == getpid(),
             getsid(0) == getpid(), fg);
    char name[64];
    snprintf(name, sizeof name, "%s.info", role);
    put(name, buf);
}

static void record(const char *file, int until) {
    sigset_t all;
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, NULL);
    char p[4096];
    path(p, sizeof p, file);
    int out = open(p, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (out < 0) _exit(91);
    if (until) put("rec.ready", "1\n");
    for (;;) {
        siginfo_t si;
        struct timespec zero = {0, 0};
        int s = sigwaitinfo(&all, &si);
        if (s < 0 || s == SIGCHLD) continue;
        char l[16];
        int k = snprintf(l, sizeof l, "%d\n", s);
        if (write(out, l, k) != k) _exit(92);
        if (s == until) {
            /* Record what is still pending (a lower-numbered signal is dequeued first). */
            while ((s = sigtimedwait(&all, &si, &zero)) > 0) {
                if (s == SIGCHLD) continue;
                k = snprintf(l, sizeof l, "%d\n", s);
                if (write(out, l, k) != k) _exit(92);
            }
            _exit(0);
        }
    }
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: observer DIR ROLE [ARG]\n"); return 2; }
    dir = argv[1];
    const char *role = argv[2];
    int arg = argc > 3 ? atoi(argv[3]) : 0;
    /* The init's stdout/stderr are pipes the harness reads to EOF: a leftover must not hold them open. */
    int null = open("/dev/null", O_WRONLY);
    dup2(null, 1);
    dup2(null, 2);
    char pid[32], name[64];
    snprintf(pid, sizeof pid, "%d\n", getpid());
    snprintf(name, sizeof name, "%s.pid", role);
    put(name, pid);
    info(role);
    if (!strcmp(role, "exit")) return arg;
    if (!strcmp(role, "die")) {
        signal(arg, SIG_DFL);
        sigset_t s;
        sigemptyset(&s);
        sigaddset(&s, arg);
        sigprocmask(SIG_UNBLOCK, &s, NULL);
        raise(arg);
        return 99;
    }
    if (!strcmp(role, "cat")) {
        char p[4096], b[4096];
        path(p, sizeof p, "cat.out");
        int out = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        ssize_t n;
        while ((n = read(0, b, sizeof b)) > 0) if (write(out, b, n) != n) return 93;
        return 0;
    }
    if (!strcmp(role, "rec")) record("rec.sigs", arg);
    if (!strcmp(role, "left")) {
        sigset_t all;
        sigfillset(&all);
        sigprocmask(SIG_BLOCK, &all, NULL); /* so no signal is lost before the leftover records */
        pid_t p = fork();
        if (p == 0) {
            char pid[32];
            snprintf(pid, sizeof pid, "%d\n", getpid());
            put("leftover.pid", pid);
            record("leftover.sigs", 0);
        }
        char f[4096];
        path(f, sizeof f, "leftover.pid");
        while (access(f, F_OK) != 0) usleep(1000);
        return 3;
    }
    if (!strcmp(role, "orphans")) {
        for (int i = 0; i < arg; i++) {
            pid_t p = fork();
            if (p == 0) {
                if (fork() == 0) _exit(0);
                _exit(0);
            }
            if (p > 0) waitpid(p, NULL, 0);
        }
        usleep(50000);
        return 0;
    }
    fprintf(stderr, "observer: unknown role %s\n", role);
    return 2;
}
