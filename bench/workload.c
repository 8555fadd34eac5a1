/*
 * The workload `cargo xtask bench` measures: tight loops of descriptor syscalls, timed from
 * inside, so that starting a tracer (or bpftrace, or strace) around it is not counted.
 *
 *   workload open    ITERATIONS RESULT   open("/dev/null") + close, ITERATIONS times
 *   workload socket  ITERATIONS RESULT   socket(AF_INET, SOCK_STREAM) + close
 *   workload connect ITERATIONS RESULT   loopback connect + accept4 + close of both ends
 *   workload rate    PAIRS_PER_S SECONDS PROCS RESULT
 *                                        open+close paced to PAIRS_PER_S (0: as fast as it
 *                                        can) for SECONDS, split over PROCS processes
 *   workload hold    COUNT PER_S RESULT  waits for SIGUSR1, opens COUNT descriptors of
 *                                        /dev/null at PER_S a second (0: unpaced; over
 *                                        several processes, one after the other, when one
 *                                        may not hold that many), writes RESULT, then
 *                                        waits for SIGTERM
 *   workload forks   COUNT RESULT        waits for SIGUSR1, forks COUNT short-lived
 *                                        children one after the other, each exiting with
 *                                        2 descriptors of /dev/null open (a server's
 *                                        workers), reaps each, writes RESULT, then waits
 *                                        for SIGTERM
 *
 * The loops first run a tenth of their iterations untimed (page faults, caches, the
 * tracer's first stacks), then the timed ones. RESULT receives one line of `key=value`
 * pairs; it is written to RESULT.tmp and renamed, so a reader never sees half of it.
 * Every descriptor opened is closed before exit (except in `hold` and by the children of
 * `forks`, which leave it to exit), so anything a tracer
 * still reports as open afterwards is a false leak.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what) {
    fprintf(stderr, "workload: %s: %s\n", what, strerror(errno));
    exit(1);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static long parse_count(const char *text, const char *what) {
    char *end;
    errno = 0;
    long value = strtol(text, &end, 10);
    if (errno != 0 || *end != '\0' || value < 0) {
        fprintf(stderr, "workload: %s `%s` is not a non-negative integer\n", what, text);
        exit(2);
    }
    return value;
}

static void write_result(const char *path, const char *line) {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *out = fopen(tmp, "w");
    if (!out) die(tmp);
    fprintf(out, "%s\n", line);
    if (fclose(out) != 0) die(tmp);
    if (rename(tmp, path) != 0) die("rename");
}

static void open_close(long n) {
    for (long i = 0; i < n; i++) {
        int fd = open("/dev/null", O_RDONLY);
        if (fd < 0) die("open /dev/null");
        close(fd);
    }
}

static void socket_close(long n) {
    for (long i = 0; i < n; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0) die("socket");
        close(fd);
    }
}

static int listener;
static struct sockaddr_in listen_addr;

static void listen_loopback(void) {
    listener = socket(AF_INET, SOCK_STREAM, 0);
    if (listener < 0) die("socket");
    memset(&listen_addr, 0, sizeof listen_addr);
    listen_addr.sin_family = AF_INET;
    listen_addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(listener, (struct sockaddr *)&listen_addr, sizeof listen_addr) != 0) die("bind");
    socklen_t len = sizeof listen_addr;
    if (getsockname(listener, (struct sockaddr *)&listen_addr, &len) != 0) die("getsockname");
    if (listen(listener, 128) != 0) die("listen");
}

/* The server side closes first, as an HTTP server does: the TIME_WAIT then sits on the
 * listening port, not on the client's ephemeral port, so ports never run out. */
static void connect_accept_close(long n) {
    for (long i = 0; i < n; i++) {
        int client = socket(AF_INET, SOCK_STREAM, 0);
        if (client < 0) die("socket");
        if (connect(client, (struct sockaddr *)&listen_addr, sizeof listen_addr) != 0)
            die("connect");
        int server = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
        if (server < 0) die("accept4");
        close(server);
        close(client);
    }
}

static int timed_loop(const char *mode, long iterations, const char *result) {
    void (*loop)(long);
    if (strcmp(mode, "open") == 0) {
        loop = open_close;
    } else if (strcmp(mode, "socket") == 0) {
        loop = socket_close;
    } else if (strcmp(mode, "connect") == 0) {
        listen_loopback();
        loop = connect_accept_close;
    } else {
        fprintf(stderr, "workload: unknown mode `%s`\n", mode);
        return 2;
    }
    loop(iterations / 10);
    double start = now_s();
    loop(iterations);
    double elapsed = now_s() - start;
    char line[256];
    snprintf(line, sizeof line, "ns_per_iter=%.1f iterations=%ld elapsed_s=%.6f",
             elapsed * 1e9 / (double)iterations, iterations, elapsed);
    write_result(result, line);
    if (strcmp(mode, "connect") == 0) close(listener);
    return 0;
}

/* open+close in batches of 64, sleeping until each batch's slot when ahead of schedule. */
static long paced(double pairs_per_s, double seconds) {
    double start = now_s(), deadline = start + seconds;
    long pairs = 0;
    for (;;) {
        open_close(64);
        pairs += 64;
        double now = now_s();
        if (now >= deadline) break;
        if (pairs_per_s > 0) {
            double due = start + (double)pairs / pairs_per_s;
            if (due > now) {
                double wait = due - now;
                struct timespec ts = {(time_t)wait, (long)((wait - (double)(time_t)wait) * 1e9)};
                nanosleep(&ts, NULL);
            }
        }
    }
    return pairs;
}

static int rate(double pairs_per_s, double seconds, long procs, const char *result) {
    if (procs < 1) procs = 1;
    int pipes[2];
    if (pipe(pipes) != 0) die("pipe");
    double start = now_s();
    for (long p = 0; p < procs; p++) {
        pid_t pid = fork();
        if (pid < 0) die("fork");
        if (pid == 0) {
            close(pipes[0]);
            long pairs = paced(pairs_per_s / (double)procs, seconds);
            if (write(pipes[1], &pairs, sizeof pairs) != sizeof pairs) die("write");
            close(pipes[1]);
            _exit(0);
        }
    }
    close(pipes[1]);
    long total = 0, pairs;
    while (read(pipes[0], &pairs, sizeof pairs) == sizeof pairs) total += pairs;
    close(pipes[0]);
    while (wait(NULL) > 0) {
    }
    double elapsed = now_s() - start;
    char line[256];
    snprintf(line, sizeof line, "pairs=%ld elapsed_s=%.6f pairs_per_s=%.1f", total, elapsed,
             (double)total / elapsed);
    write_result(result, line);
    return 0;
}

/* Opens `count` descriptors of /dev/null; the caller keeps them. */
static void open_many(long count, double per_s) {
    double start = now_s();
    for (long i = 0; i < count; i++) {
        if (open("/dev/null", O_RDONLY) < 0) die("open /dev/null");
        /* Paced in batches of 256, like `rate`. */
        if (per_s > 0 && i % 256 == 255) {
            double wait = start + (double)(i + 1) / per_s - now_s();
            if (wait > 0) {
                struct timespec ts = {(time_t)wait,
                                      (long)((wait - (double)(time_t)wait) * 1e9)};
                nanosleep(&ts, NULL);
            }
        }
    }
}

/* Blocks SIGUSR1 (go) and SIGTERM (stop) and waits for one: both are taken with sigwait, so
 * none can slip in between a check and a wait. Fills the set for later waits; false on stop. */
static int wait_for_go(sigset_t *signals, int *sig) {
    sigemptyset(signals);
    sigaddset(signals, SIGUSR1);
    sigaddset(signals, SIGTERM);
    sigprocmask(SIG_BLOCK, signals, NULL);
    if (sigwait(signals, sig) != 0) die("sigwait");
    return *sig != SIGTERM;
}

/* A process may hold no more descriptors than its hard RLIMIT_NOFILE, which only
 * CAP_SYS_RESOURCE may raise (containers often lack it). The count is then spread over as
 * many child processes as needed, forked after SIGUSR1 so that a tracer attached to this
 * process follows them from birth. */
static int hold(long count, double per_s, const char *result) {
    struct rlimit limit = {(rlim_t)count + 64, (rlim_t)count + 64};
    if (setrlimit(RLIMIT_NOFILE, &limit) != 0) {
        if (getrlimit(RLIMIT_NOFILE, &limit) != 0) die("getrlimit RLIMIT_NOFILE");
        limit.rlim_cur = limit.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &limit) != 0) die("setrlimit RLIMIT_NOFILE");
    }
    long per_proc = (long)limit.rlim_cur - 64;
    if (per_proc < 1) {
        fprintf(stderr, "workload: RLIMIT_NOFILE is too low to hold descriptors\n");
        return 1;
    }
    long procs = (count + per_proc - 1) / per_proc;
    sigset_t signals;
    int sig;
    if (!wait_for_go(&signals, &sig)) return 0;
    double start = now_s();
    pid_t *children = calloc((size_t)procs, sizeof *children);
    if (!children) die("calloc");
    int done[2];
    if (procs > 1 && pipe(done) != 0) die("pipe");
    if (procs == 1) {
        open_many(count, per_s);
    } else {
        for (long p = 0; p < procs; p++) {
            long share = p == procs - 1 ? count - per_proc * (procs - 1) : per_proc;
            pid_t pid = fork();
            if (pid < 0) die("fork");
            if (pid == 0) {
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                close(done[0]);
                open_many(share, per_s);
                char byte = 1;
                if (write(done[1], &byte, 1) != 1) die("write");
                do {
                    if (sigwait(&signals, &sig) != 0) die("sigwait");
                } while (sig != SIGTERM);
                _exit(0);
            }
            children[p] = pid;
            /* One child at a time, so the pace holds for the whole count. */
            char byte;
            if (read(done[0], &byte, 1) != 1) die("a holding child died");
        }
        close(done[1]);
        close(done[0]);
    }
    char line[256];
    snprintf(line, sizeof line, "held=%ld processes=%ld elapsed_s=%.6f", count, procs,
             now_s() - start);
    write_result(result, line);
    do {
        if (sigwait(&signals, &sig) != 0) die("sigwait");
    } while (sig != SIGTERM);
    if (procs > 1) {
        for (long p = 0; p < procs; p++) kill(children[p], SIGTERM);
        while (wait(NULL) > 0) {
        }
    }
    return 0;
}

/* Opened by each child of `forks`; read at run time so the loop keeps one call site. */
static volatile int child_opens = 2;

static __attribute__((noinline)) void child_open(void) {
    if (open("/dev/null", O_RDONLY) < 0) _exit(1);
}

static int forks(long count, const char *result) {
    sigset_t signals;
    int sig;
    if (!wait_for_go(&signals, &sig)) return 0;
    double start = now_s();
    for (long i = 0; i < count; i++) {
        pid_t pid = fork();
        if (pid < 0) die("fork");
        if (pid == 0) {
            for (int j = 0; j < child_opens; j++) child_open();
            _exit(0);
        }
        if (waitpid(pid, NULL, 0) != pid) die("waitpid");
    }
    char line[256];
    snprintf(line, sizeof line, "children=%ld elapsed_s=%.6f", count, now_s() - start);
    write_result(result, line);
    do {
        if (sigwait(&signals, &sig) != 0) die("sigwait");
    } while (sig != SIGTERM);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 4 && strcmp(argv[1], "forks") == 0)
        return forks(parse_count(argv[2], "COUNT"), argv[3]);
    if (argc == 5 && strcmp(argv[1], "hold") == 0)
        return hold(parse_count(argv[2], "COUNT"), (double)parse_count(argv[3], "PER_S"),
                    argv[4]);
    if (argc == 6 && strcmp(argv[1], "rate") == 0)
        return rate((double)parse_count(argv[2], "PAIRS_PER_S"),
                    (double)parse_count(argv[3], "SECONDS"), parse_count(argv[4], "PROCS"),
                    argv[5]);
    if (argc == 4) {
        long iterations = parse_count(argv[2], "ITERATIONS");
        if (iterations == 0) {
            fprintf(stderr, "workload: ITERATIONS must be at least 1\n");
            return 2;
        }
        return timed_loop(argv[1], iterations, argv[3]);
    }
    fprintf(stderr,
            "usage: workload open|socket|connect ITERATIONS RESULT\n"
            "       workload rate PAIRS_PER_S SECONDS PROCS RESULT\n"
            "       workload hold COUNT PER_S RESULT\n"
            "       workload forks COUNT RESULT\n");
    return 2;
}
