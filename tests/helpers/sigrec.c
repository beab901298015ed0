/* Test helper: records every signal it receives, one decimal number per line, in FILE.
 *
 * usage: sigrec FILE [--ignore-term] [--orphans N]
 *   Blocks every signal, writes FILE.ready (holding its pid and whether it owns the terminal's foreground)
 *   once it is ready, then records signals with sigwaitinfo. Exits 0 on SIGTERM unless --ignore-term.
 *   --orphans N first double-forks N grandchildren that exit at once (orphans for PID 1 to reap).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: sigrec FILE [--ignore-term] [--orphans N]\n"); return 2; }
    const char *file = argv[1];
    int ignore_term = 0, orphans = 0;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--ignore-term")) ignore_term = 1;
        else if (!strcmp(argv[i], "--orphans") && i + 1 < argc) orphans = atoi(argv[++i]);
    }
    sigset_t all;
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, NULL);
    for (int i = 0; i < orphans; i++) {
        pid_t p = fork();
        if (p == 0) {
            if (fork() == 0) _exit(0); /* grandchild: orphaned as soon as its parent exits */
            _exit(0);
        }
        if (p > 0) waitpid(p, NULL, 0);
    }
    int out = open(file, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (out < 0) { perror(file); return 1; }
    char ready[4096];
    snprintf(ready, sizeof ready, "%s.ready", file);
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", ready);
    FILE *r = fopen(tmp, "w");
    if (!r) { perror(tmp); return 1; }
    int fg = isatty(0) && tcgetpgrp(0) == getpgrp();
    fprintf(r, "pid=%d pgid=%d fg=%d\n", getpid(), getpgrp(), fg);
    fclose(r);
    rename(tmp, ready);
    for (;;) {
        siginfo_t si;
        int s = sigwaitinfo(&all, &si);
        if (s < 0) continue;
        if (s == SIGCHLD) continue;
        char line[16];
        int n = snprintf(line, sizeof line, "%d\n", s);
        if (write(out, line, n) != n) return 1;
        if (s == SIGTERM && !ignore_term) return 0;
    }
}
