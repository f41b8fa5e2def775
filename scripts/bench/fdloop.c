/* fd-heavy microbenchmark: open/read/close of a file and
 * pipe/write/read/close, N iterations each (N from argv[1]). */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 100000;
    const char *path = argc > 2 ? argv[2] : "/etc/hostname";
    char buf[64];
    long total = 0;
    for (long i = 0; i < n; i++) {
        int fd = open(path, O_RDONLY);
        if (fd < 0) { perror("open"); return 1; }
        total += read(fd, buf, sizeof buf);
        close(fd);
        int p[2];
        if (pipe(p) < 0) { perror("pipe"); return 1; }
        write(p[1], "x", 1);
        total += read(p[0], buf, 1);
        close(p[0]);
        close(p[1]);
    }
    printf("%ld\n", total);
    return 0;
}
