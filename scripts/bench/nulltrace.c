/*
 * The floor of a fork-following ptrace supervisor, for scripts/bench-run.sh:
 * traces PROG and every process it starts with the ptrace options
 * `handles run` sets (fork, vfork, clone and exec events; no exit events,
 * which only a leak check asks for), and does nothing at any stop but
 * resume the tracee. What a row under it costs over native is what the
 * stops alone cost (each a round trip through the kernel and, on a VM, a
 * wake-up of another vCPU); whatever `handles run` costs above this floor
 * is its own work.
 *
 * Usage: nulltrace PROG [ARG...]; exits with PROG's status.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <sys/ptrace.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: nulltrace PROG [ARG...]\n");
        return 2;
    }
    pid_t root = fork();
    if (root < 0) {
        perror("nulltrace: fork");
        return 2;
    }
    if (root == 0) {
        raise(SIGSTOP);
        execvp(argv[1], argv + 1);
        perror("nulltrace: exec");
        _exit(127);
    }
    int status;
    if (waitpid(root, &status, WSTOPPED) != root) {
        perror("nulltrace: waitpid");
        return 2;
    }
    long opts = PTRACE_O_TRACESYSGOOD | PTRACE_O_TRACEFORK | PTRACE_O_TRACEVFORK |
                PTRACE_O_TRACECLONE | PTRACE_O_TRACEEXEC | PTRACE_O_EXITKILL;
    if (ptrace(PTRACE_SEIZE, root, 0, opts) != 0) {
        perror("nulltrace: PTRACE_SEIZE");
        return 2;
    }
    kill(root, SIGCONT);
    int rc = 0;
    for (;;) {
        pid_t p = waitpid(-1, &status, __WALL);
        if (p < 0)
            break;
        if (WIFEXITED(status) || WIFSIGNALED(status)) {
            if (p == root)
                rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
            continue;
        }
        int sig = WSTOPSIG(status);
        /* Event stops (fork, exec, a new child's first stop) and the
         * root's own SIGSTOP resume with no signal; any other signal is
         * delivered. */
        if ((status >> 16) != 0 || sig == SIGSTOP || sig == (SIGTRAP | 0x80))
            sig = 0;
        ptrace(PTRACE_CONT, p, 0, sig);
    }
    return rc;
}
