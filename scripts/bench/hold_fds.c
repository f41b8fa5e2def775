/*
 * hold_fds: a process that holds N file descriptors for scripts/bench-inspect.sh.
 *
 *   hold_fds N DIR
 *
 * Opens exactly N descriptors above stdio, interleaved one third each:
 * pipes (both ends), AF_UNIX stream socketpairs (both ends) and regular
 * files (one new file per fd, created in DIR, so every file fd has an inode
 * of its own). Then prints one line "PID N PIPE_FDS SOCKET_FDS FILE_FDS"
 * on stdout, in one write (the caller points stdout at a file and waits for
 * the line; nothing new is opened for it, so N may fill the limit to the
 * last slot), and sleeps until killed. It dies with its parent
 * (PR_SET_PDEATHSIG) so a killed benchmark leaves nothing behind.
 *
 * The soft RLIMIT_NOFILE is raised to the hard one; descriptors inherited
 * above 2 are closed first so fd numbers run densely from 3 to N+2.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

static void die(const char *what)
{
    fprintf(stderr, "hold_fds: %s: %s\n", what, strerror(errno));
    exit(1);
}

static long file_no;

static void open_file(const char *dir)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/f%ld", dir, file_no++);
    if (open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600) < 0)
        die(path);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: hold_fds N DIR\n");
        return 2;
    }
    char *end;
    long n = strtol(argv[1], &end, 10);
    if (*end || n < 0) {
        fprintf(stderr, "hold_fds: N must be a non-negative number, not '%s'\n", argv[1]);
        return 2;
    }
    const char *dir = argv[2];

    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() == 1)
        return 1; /* the parent is already gone */

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        die("getrlimit");
    rl.rlim_cur = rl.rlim_max;
    (void)setrlimit(RLIMIT_NOFILE, &rl); /* best effort: the check below decides */
    getrlimit(RLIMIT_NOFILE, &rl);

#ifdef SYS_close_range
    if (syscall(SYS_close_range, 3U, ~0U, 0) < 0)
#endif
        for (long fd = 3; fd < (long)rl.rlim_cur && fd < 1L << 20; fd++)
            close((int)fd);

    if ((rlim_t)n + 3 > rl.rlim_cur) {
        fprintf(stderr,
                "hold_fds: %ld fds do not fit under RLIMIT_NOFILE %llu (3 are stdio)\n",
                n, (unsigned long long)rl.rlim_cur);
        return 1;
    }

    long held = 0, pipes = 0, socks = 0, files = 0;
    while (held < n) {
        if (n - held >= 6) {
            int p[2], s[2];
            if (pipe2(p, O_CLOEXEC) < 0)
                die("pipe2");
            if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s) < 0)
                die("socketpair");
            open_file(dir);
            open_file(dir);
            held += 6, pipes += 2, socks += 2, files += 2;
        } else {
            open_file(dir);
            held++, files++;
        }
    }

    char line[128];
    int len = snprintf(line, sizeof line, "%ld %ld %ld %ld %ld\n", (long)getpid(), held, pipes,
                       socks, files);
    if (write(1, line, (size_t)len) != len)
        die("write to stdout");

    for (;;)
        pause();
}
