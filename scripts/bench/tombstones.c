/* The kernel's share of the shim's quarantine, with none of the shim's
 * code: the fdloop.c workload in which every close is what the shim
 * issues in its place, dup3() of a tombstone source onto the fd, and once
 * more than 64 numbers are held the oldest ones down to 32 are released,
 * sorted, with one close_range() per run of consecutive numbers (as
 * shim/src/quarantine.rs does). Set beside fdloop natively, it is the
 * floor of any quarantine by tombstones on this kernel: what the shim
 * alone costs beyond it is the shim's own code.
 * Usage: tombstones N [PATH] */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define CAP 64
static int ring[256];
static unsigned long head, tail;
static int tomb_src;

static int cmp(const void *a, const void *b) {
    return *(const int *)a - *(const int *)b;
}

static void release(void) {
    int batch[CAP];
    int n = 0;
    while (tail - head > CAP / 2)
        batch[n++] = ring[head++ % 256];
    qsort(batch, n, sizeof batch[0], cmp);
    for (int i = 0; i < n;) {
        int j = i + 1;
        while (j < n && batch[j] == batch[j - 1] + 1)
            j++;
        if (j - i == 1)
            close(batch[i]);
        else
            syscall(SYS_close_range, batch[i], batch[j - 1], 0);
        i = j;
    }
}

static void quarantine_close(int fd) {
    if (dup3(tomb_src, fd, O_CLOEXEC) != fd) {
        perror("dup3");
        exit(1);
    }
    ring[tail++ % 256] = fd;
    if (tail - head > CAP)
        release();
}

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 100000;
    const char *path = argc > 2 ? argv[2] : "/etc/hostname";
    int m = memfd_create("tombstone", MFD_CLOEXEC);
    tomb_src = fcntl(m, F_DUPFD_CLOEXEC, 1024);
    close(m);
    if (tomb_src < 0) { perror("tombstone source"); return 1; }
    char buf[64];
    long total = 0;
    for (long i = 0; i < n; i++) {
        int fd = open(path, O_RDONLY);
        if (fd < 0) { perror("open"); return 1; }
        total += read(fd, buf, sizeof buf);
        quarantine_close(fd);
        int p[2];
        if (pipe(p) < 0) { perror("pipe"); return 1; }
        write(p[1], "x", 1);
        total += read(p[0], buf, 1);
        quarantine_close(p[0]);
        quarantine_close(p[1]);
    }
    printf("%ld\n", total);
    return 0;
}
