/* Test helper: the hostile root process of issue 9 that runs `kill -STOP -1` in a container, aimed at the
 * moment between PID 1's fork and the app's exec.
 *
 * usage: stopper MARKER INIT_EXE
 *   Waits until its parent (a hook's shell) has exited (it is then PID 1's), then sends SIGSTOP to every process it may signal
 *   (kill(-1): all but PID 1 and itself) until that reaches one. It then writes to MARKER "before-exec"
 *   when the stopped process still runs INIT_EXE (PID 1's forked child, not yet exec'd) or "after-exec"
 *   otherwise, and exits, leaving the process stopped.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: stopper MARKER INIT_EXE\n"); return 2; }
    /* Orphans are reparented to PID 1 (the hook's shell may be gone before we even start). */
    while (getppid() != 1) usleep(200);
    /* kill(-1) fails with ESRCH while there is nobody to signal: spin until the app's fork appears. */
    while (kill(-1, SIGSTOP) != 0) {}
    const char *verdict = "after-exec";
    DIR *d = opendir("/proc");
    struct dirent *e;
    while (d && (e = readdir(d))) {
        int pid = atoi(e->d_name);
        if (pid <= 1 || pid == getpid()) continue;
        /* SIGSTOP takes effect on the way back to user space: a child inside execve(2) when it was sent
         * stops only after the exec, while /proc still shows the old program. Judge once it has stopped. */
        char stat_path[64], stat[512];
        snprintf(stat_path, sizeof stat_path, "/proc/%d/stat", pid);
        for (int tries = 0; tries < 10000; tries++) { /* at most ~1 s: a process forked after the kill */
            FILE *f = fopen(stat_path, "r");
            if (!f) break;
            size_t len = fread(stat, 1, sizeof stat - 1, f);
            fclose(f);
            stat[len] = 0;
            const char *state = strrchr(stat, ')');
            if (!state || state[1] != ' ' || state[2] == 'T' || state[2] == 't' || state[2] == 'Z') break;
            usleep(100);
        }
        char link[64], exe[4096];
        snprintf(link, sizeof link, "/proc/%d/exe", pid);
        ssize_t n = readlink(link, exe, sizeof exe - 1);
        if (n < 0) continue;
        exe[n] = 0;
        if (!strcmp(exe, argv[2])) verdict = "before-exec";
    }
    FILE *m = fopen(argv[1], "w");
    if (!m) { perror(argv[1]); return 1; }
    fprintf(m, "%s\n", verdict);
    fclose(m);
    return 0;
}
