/* fdloop.c's loop run at the bottom of a call chain DEPTH frames deep
 * (argv[2], default 30): what a whole stack costs per creation and close
 * when there are many frames to unwind (fdloop's own stacks are 4 frames:
 * main, libc's start, _start). Usage: deep_fdloop N [DEPTH] */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static volatile long sink;

__attribute__((noinline)) static long loop(long n)
{
    char buf[64];
    long total = 0;
    for (long i = 0; i < n; i++) {
        int fd = open("/etc/hostname", O_RDONLY);
        if (fd < 0) { perror("open"); exit(1); }
        total += read(fd, buf, sizeof buf);
        close(fd);
        int p[2];
        if (pipe(p) < 0) { perror("pipe"); exit(1); }
        total += write(p[1], "x", 1);
        total += read(p[0], buf, 1);
        close(p[0]);
        close(p[1]);
    }
    return total;
}

__attribute__((noinline)) static long descend(int depth, long n)
{
    if (depth == 0)
        return loop(n);
    long r = descend(depth - 1, n);
    sink += depth; /* no tail call */
    return r;
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 100000;
    int depth = argc > 2 ? atoi(argv[2]) : 30;
    printf("%ld\n", descend(depth, n));
    return 0;
}
