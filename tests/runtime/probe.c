/* A hostile app for the isolation tests: tries each named operation, prints "name errno". */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static long try(const char *op) {
    char buf[16] = {0};
    if (!strcmp(op, "mount_tmpfs")) return mount("none", "/tmp", "tmpfs", 0, NULL);
    if (!strcmp(op, "mount_proc")) return mount("proc", "/tmp", "proc", 0, NULL);
    if (!strcmp(op, "remount_root")) return mount(NULL, "/", NULL, MS_REMOUNT | MS_BIND, NULL);
    if (!strcmp(op, "remount_proc")) return mount(NULL, "/proc", NULL, MS_REMOUNT, NULL);
    if (!strcmp(op, "umount_proc")) return umount2("/proc", MNT_DETACH);
    if (!strcmp(op, "unshare_user")) return unshare(CLONE_NEWUSER);
    if (!strcmp(op, "clone_newuser")) {
        long r = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
        if (r == 0) _exit(0);
        if (r > 0) waitpid((pid_t)r, NULL, 0);
        return r < 0 ? -1 : 0;
    }
    if (!strcmp(op, "setns")) return setns(open("/proc/self/ns/net", O_RDONLY), 0);
    if (!strcmp(op, "pivot_root")) return syscall(SYS_pivot_root, "/tmp", "/tmp");
    if (!strcmp(op, "chroot")) return chroot("/tmp");
    if (!strcmp(op, "ptrace")) {
        pid_t child = fork();
        if (child == 0) { pause(); _exit(0); }
        long r = ptrace(PTRACE_ATTACH, child, 0, 0);
        int e = errno;
        kill(child, SIGKILL);
        waitpid(child, NULL, 0);
        errno = e;
        return r;
    }
    if (!strcmp(op, "bpf")) return syscall(SYS_bpf, 0, buf, sizeof buf);
    if (!strcmp(op, "keyctl")) return syscall(SYS_keyctl, 0 /*GET_KEYRING_ID*/, -3 /*session*/, 0);
    if (!strcmp(op, "kexec_load")) return syscall(SYS_kexec_load, 0, 0, 0, 0);
    if (!strcmp(op, "init_module")) return syscall(SYS_init_module, buf, sizeof buf, "");
    if (!strcmp(op, "finit_module")) return syscall(SYS_finit_module, 0, "", 0);
    if (!strcmp(op, "open_by_handle_at")) return syscall(SYS_open_by_handle_at, AT_FDCWD, buf, 0);
    if (!strcmp(op, "userfaultfd")) return syscall(SYS_userfaultfd, 0);
    if (!strcmp(op, "perf_event_open")) return syscall(SYS_perf_event_open, buf, 0, -1, -1, 0);
    if (!strcmp(op, "forkbomb")) {
        int forked = 0, refused = 0;
        for (int i = 0; i < 1000; i++) {
            pid_t p = fork();
            if (p == 0) { pause(); _exit(0); }
            if (p > 0) forked++;
            else if (errno == EAGAIN) refused++;
        }
        printf("forked=%d refused=%d\n", forked, refused);
        fflush(stdout);
        sleep(60);
        return 0;
    }
    if (!strcmp(op, "getpid")) return syscall(SYS_getpid) > 0 ? 0 : -1;
    errno = EINVAL;
    return -2;
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        errno = 0;
        long r = try(argv[i]);
        printf("%s %d\n", argv[i], r < 0 ? errno : 0);
    }
    return 0;
}
