/*
 * benchhelper: the measuring side of scripts/bench.sh (compiled with cc at bench time).
 *
 * Owns: timing with CLOCK_MONOTONIC (one clock for every process on the machine, PID namespaces included, so a
 * sender outside the namespace and an app inside it can compare stamps), spawning the init under test, the apps
 * the inits supervise, and a minimal HTTP/1.0 GET to poll a loopback Consul agent.
 * Does not own: choosing inits, rounds or statistics (bench.sh), nor installing anything.
 *
 * Modes (times are nanoseconds, one result per line on stdout):
 * CMDS is one or more commands separated by ":::"; run and fwd take N samples of each, interleaved one by one
 * (rotating the order), and print "K NS" per sample, K the command's index in CMDS.
 *   run N CMDS              wall time of spawning the command (stdio on /dev/null) until it exits; fail unless 0
 *   fwd N PIDDEPTH CMDS     spawn the command (whose app is `benchhelper sigapp`), wait for "ready", stamp,
 *                           kill(init, SIGTERM): receipt stamp - send stamp. The init is the spawned process
 *                           (PIDDEPTH 0) or its child (1: the command is `unshare --fork ...`)
 *   consul N PIDDEPTH ADDR NAME CMD...
 *                           N times with registration on (CMD's env carries MICROINIT_SERVICE_NAME=NAME-i):
 *                           print "ready_to_passing term_to_deregistered term_to_app rss_kib"
 *   sigapp                  the app: print "ready T", wait for SIGTERM, print "term T", exit 0
 *   orphans N               the app, as a child of the init under test (PID 1): N double forks, then wait
 *                           until PID 1 has no child but us; print "total_ns tail_ns zombies_left"
 *   pause                   the app for idle measurements: pause() until a signal ends it
 *   initpid PID PIDDEPTH    print the pid of the init (PID, or its only child), waiting for it to appear
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

/* The init under test while a measurement waits on it: SIGKILLed on the way out of a failed measurement, which
 * as PID 1 of its namespace takes the whole namespace with it, so nothing outlives the bench. */
static pid_t victim;
static pid_t first_child(pid_t pid);

static void die(const char *fmt, const char *arg)
{
    fprintf(stderr, "benchhelper: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n");
    if (victim > 0) {
        pid_t child = first_child(victim); /* the init, when victim is still `unshare` (it ignores SIGTERM) */
        kill(victim, SIGKILL);
        if (child > 0)
            kill(child, SIGKILL);
    }
    exit(1);
}

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void nap_us(long us)
{
    struct timespec ts = { us / 1000000, (us % 1000000) * 1000 };
    nanosleep(&ts, NULL);
}

/* Spawn argv with stdin on /dev/null, stdout on out_fd (or /dev/null when -1), stderr on /dev/null. */
static pid_t spawn(char **argv, int out_fd)
{
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    sigset_t none;
    pid_t pid;
    int rc;

    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    if (out_fd >= 0)
        posix_spawn_file_actions_adddup2(&fa, out_fd, 1);
    else
        posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    /* The init under test must start with an empty mask and default dispositions, as under docker. */
    posix_spawnattr_init(&attr);
    sigemptyset(&none);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK);
    rc = posix_spawnp(&pid, argv[0], &fa, &attr, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    if (rc != 0) {
        errno = rc;
        perror(argv[0]);
        exit(1);
    }
    return pid;
}

static int wait_status(pid_t pid)
{
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            die("waitpid failed for %s", "child");
    return st;
}

/* First child of pid (from /proc/PID/task/PID/children), or 0 when it has none yet. */
static pid_t first_child(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task/%d/children", (int)pid, (int)pid);
    FILE *f = fopen(path, "r");
    int child = 0;
    if (!f)
        return 0;
    if (fscanf(f, "%d", &child) != 1)
        child = 0;
    fclose(f);
    return child;
}

/* The init under test: pid itself, or its child when it was started through `unshare --fork`. */
static pid_t init_pid(pid_t pid, int depth)
{
    long long deadline = now_ns() + 5000000000LL;
    while (depth-- > 0) {
        pid_t c;
        while ((c = first_child(pid)) == 0) {
            if (now_ns() > deadline)
                die("%s: no init process appeared within 5 s", "initpid");
            nap_us(100);
        }
        pid = c;
    }
    return pid;
}

/* Read one line from fd (unbuffered: the pipe is shared with nothing else); give up after 10 s. */
static int read_line(int fd, char *buf, size_t len)
{
    size_t n = 0;
    long long deadline = now_ns() + 10000000000LL;
    while (n + 1 < len) {
        struct pollfd pfd = { .fd = fd, .events = POLLIN };
        int left_ms = (int)((deadline - now_ns()) / 1000000);
        if (left_ms <= 0 || (poll(&pfd, 1, left_ms) < 0 && errno != EINTR))
            break;
        if (!(pfd.revents & (POLLIN | POLLHUP)))
            continue;
        ssize_t r = read(fd, buf + n, 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        if (buf[n] == '\n')
            break;
        n++;
    }
    buf[n] = 0;
    return (int)n;
}

static long long expect_stamp(int fd, const char *word)
{
    char line[128];
    size_t wl = strlen(word);
    if (read_line(fd, line, sizeof line) <= 0 || strncmp(line, word, wl) != 0 || line[wl] != ' ')
        die("the app did not report '%s' within 10 s (did the init start it and forward SIGTERM?)", word);
    return atoll(line + wl + 1);
}

static long rss_kib(pid_t pid)
{
    char path[64], line[256];
    long kib = -1;
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld", &kib) == 1)
            break;
    fclose(f);
    return kib;
}

/* Split argv at ":::" into up to MAX_GROUPS NULL-terminated commands (argv is modified in place). */
#define MAX_GROUPS 16
static int split_groups(char **argv, char **groups[MAX_GROUPS])
{
    int g = 0;
    groups[g++] = argv;
    for (char **a = argv; *a; a++)
        if (!strcmp(*a, ":::")) {
            if (g == MAX_GROUPS)
                die("more than %s commands", "16");
            *a = NULL;
            groups[g++] = a + 1;
        }
    for (int k = 0; k < g; k++)
        if (!groups[k][0])
            die("%s: empty command between ':::'", "benchhelper");
    return g;
}

/* One sample of command cmd: its wall time (run) or its SIGTERM forwarding latency (fwd). */
static long long sample_run(char **cmd, int depth)
{
    (void)depth;
    long long t0 = now_ns();
    int st = wait_status(spawn(cmd, -1));
    long long t1 = now_ns();
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        die("%s did not exit 0", cmd[0]);
    return t1 - t0;
}

static long long sample_fwd(char **cmd, int depth)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0)
        die("%s", "pipe failed");
    pid_t top = victim = spawn(cmd, p[1]);
    close(p[1]);
    expect_stamp(p[0], "ready");
    pid_t init = victim = init_pid(top, depth);
    long long sent = now_ns();
    kill(init, SIGTERM);
    long long got = expect_stamp(p[0], "term");
    close(p[0]);
    wait_status(top);
    victim = 0;
    return got - sent;
}

/* N samples of every command, interleaved one by one (rotating the order each time, so a noisy moment hits all
 * commands alike); prints "K NS" per sample, K the command's index. */
static int interleave(int n, int depth, char **argv, long long (*sample)(char **, int))
{
    char **groups[MAX_GROUPS];
    int g = split_groups(argv, groups);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < g; j++) {
            int k = (i + j) % g;
            printf("%d %lld\n", k, sample(groups[k], depth));
        }
    return 0;
}

/* ---- Consul: one HTTP/1.0 GET; returns 1 when the JSON body is an empty array, 0 when not, -1 on error. */
static int body_is_empty(const char *addr, const char *path)
{
    char host[64], req[512], buf[65536];
    const char *colon = strrchr(addr, ':');
    struct sockaddr_in sa = { .sin_family = AF_INET };
    size_t n = 0;
    if (!colon || (size_t)(colon - addr) >= sizeof host)
        die("bad consul address %s (want IP:PORT)", addr);
    memcpy(host, addr, colon - addr);
    host[colon - addr] = 0;
    sa.sin_port = htons(atoi(colon + 1));
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1)
        die("bad consul address %s (want IP:PORT)", addr);
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0 || connect(s, (struct sockaddr *)&sa, sizeof sa) < 0) {
        if (s >= 0)
            close(s);
        return -1;
    }
    int len = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n", path, addr);
    if (write(s, req, len) != len) {
        close(s);
        return -1;
    }
    for (;;) {
        ssize_t r = read(s, buf + n, sizeof buf - 1 - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0 || (n += r) >= sizeof buf - 1)
            break;
    }
    close(s);
    buf[n] = 0;
    char *body = strstr(buf, "\r\n\r\n");
    if (strncmp(buf, "HTTP/1.", 7) != 0 || strncmp(buf + 8, " 200", 4) != 0 || !body)
        return -1;
    body += 4;
    while (isspace((unsigned char)*body))
        body++;
    if (*body != '[')
        return -1;
    body++;
    while (isspace((unsigned char)*body))
        body++;
    return *body == ']';
}

/* Poll path every 0.2 ms until its body is (want_empty ? empty : non-empty); the stamp of that answer. */
static long long poll_until(const char *addr, const char *path, int want_empty)
{
    long long deadline = now_ns() + 10000000000LL;
    while (now_ns() < deadline) {
        int e = body_is_empty(addr, path);
        if (e >= 0 && e == want_empty)
            return now_ns();
        nap_us(200);
    }
    die("consul never showed the expected state for %s within 10 s", path);
    return 0;
}

static int mode_consul(int n, int depth, const char *addr, const char *name, char **argv)
{
    for (int i = 0; i < n; i++) {
        char svc[200], passing[300], any[300];
        int p[2];
        snprintf(svc, sizeof svc, "%s-%d-%d", name, (int)getpid(), i);
        snprintf(passing, sizeof passing, "/v1/health/service/%s?passing", svc);
        snprintf(any, sizeof any, "/v1/health/service/%s", svc);
        setenv("MICROINIT_SERVICE_NAME", svc, 1);
        setenv("MICROINIT_SERVICE_ID", svc, 1);
        if (pipe2(p, O_CLOEXEC) < 0)
            die("%s", "pipe failed");
        pid_t top = victim = spawn(argv, p[1]);
        close(p[1]);
        long long ready = expect_stamp(p[0], "ready");
        pid_t init = victim = init_pid(top, depth);
        long long passed = poll_until(addr, passing, 0);
        long rss = rss_kib(init);
        long long sent = now_ns();
        kill(init, SIGTERM);
        long long gone = poll_until(addr, any, 1);
        long long got = expect_stamp(p[0], "term");
        close(p[0]);
        wait_status(top);
        victim = 0;
        printf("%lld %lld %lld %ld\n", passed - ready, gone - sent, got - sent, rss);
        fflush(stdout);
    }
    return 0;
}

static int mode_sigapp(void)
{
    sigset_t set;
    siginfo_t info;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigprocmask(SIG_BLOCK, &set, NULL);
    printf("ready %lld\n", now_ns());
    fflush(stdout);
    while (sigwaitinfo(&set, &info) < 0)
        ;
    printf("term %lld\n", now_ns());
    fflush(stdout);
    return 0;
}

/* Pids of PID 1's children (all its threads: orphans go to the thread group), other than self. */
static int others_under_init(void)
{
    DIR *d = opendir("/proc/1/task");
    struct dirent *e;
    int others = 0;
    pid_t self = getpid();
    if (!d)
        die("%s: cannot read /proc/1/task (run inside unshare --mount-proc)", "orphans");
    while ((e = readdir(d))) {
        char path[300];
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "/proc/1/task/%s/children", e->d_name);
        FILE *f = fopen(path, "r");
        int c;
        if (!f)
            continue;
        while (fscanf(f, "%d", &c) == 1)
            if (c != self)
                others++;
        fclose(f);
    }
    closedir(d);
    return others;
}

static int zombies_in_namespace(void)
{
    DIR *d = opendir("/proc");
    struct dirent *e;
    int z = 0;
    while (d && (e = readdir(d))) {
        char path[300], buf[512];
        if (!isdigit((unsigned char)e->d_name[0]))
            continue;
        snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
        int fd = open(path, O_RDONLY);
        if (fd < 0)
            continue;
        ssize_t r = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (r <= 0)
            continue;
        buf[r] = 0;
        char *rp = strrchr(buf, ')'); /* comm may contain spaces and parentheses */
        if (rp && rp[1] == ' ' && rp[2] == 'Z')
            z++;
    }
    if (d)
        closedir(d);
    return z;
}

static int mode_orphans(int n)
{
    if (getppid() != 1)
        die("%s: must run as the app of an init that is PID 1", "orphans");
    long long t0 = now_ns();
    for (int i = 0; i < n; i++) {
        pid_t c = fork();
        if (c < 0)
            die("%s: fork failed", "orphans");
        if (c == 0) {
            if (fork() < 0)
                _exit(1);
            _exit(0); /* the grandchild (and this child) exit at once: the grandchild is PID 1's orphan */
        }
        wait_status(c);
    }
    long long forked = now_ns();
    long long deadline = forked + 10000000000LL;
    while (others_under_init() > 0 && now_ns() < deadline)
        nap_us(100);
    long long done = now_ns();
    printf("%lld %lld %d\n", done - t0, done - forked, zombies_in_namespace());
    return 0;
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "";
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (!strcmp(mode, "run") && argc > 3)
        return interleave(atoi(argv[2]), 0, argv + 3, sample_run);
    if (!strcmp(mode, "fwd") && argc > 4)
        return interleave(atoi(argv[2]), atoi(argv[3]), argv + 4, sample_fwd);
    if (!strcmp(mode, "consul") && argc > 6)
        return mode_consul(atoi(argv[2]), atoi(argv[3]), argv[4], argv[5], argv + 6);
    if (!strcmp(mode, "sigapp"))
        return mode_sigapp();
    if (!strcmp(mode, "orphans") && argc > 2)
        return mode_orphans(atoi(argv[2]));
    if (!strcmp(mode, "pause")) {
        pause();
        return 0;
    }
    if (!strcmp(mode, "initpid") && argc > 3) {
        printf("%d\n", (int)init_pid(atoi(argv[2]), atoi(argv[3])));
        return 0;
    }
    fprintf(stderr, "usage: benchhelper run|fwd|consul|sigapp|orphans|pause|initpid ... (see the source)\n");
    return 2;
}
