/*
 * paas-init: the container's setup program and its tiny init (PID 1).
 *
 * The runtime daemon compiles this file once with gcc (static) and spawns it per container;
 * the daemon stays the only Python process. Two modes:
 *
 *   paas-init run  [options] -- command args...   create namespaces, build the root, be PID 1
 *   paas-init exec [options] -- command args...   enter a running container and run a command
 *
 * run: the outer process unshares the mount, UTS, IPC, network and PID namespaces, forks the
 * init, moves it into the container's cgroups (while the init builds the root; the init then
 * unshares its cgroup namespace), writes the init's pid ("pid N\n") to the sync socket (fd 3),
 * plugs in the network if asked to (see read_net_line) and exits; the daemon is a child subreaper, so the init becomes its child. The
 * init mounts the overlay root, /proc, /sys, /dev, pivots into it, masks /proc paths, then waits
 * for a "go" byte on the sync socket (the daemon plugs in networking meanwhile; `--wait none`
 * skips this for a container without networking), forks the app
 * and answers "ok\n" once the app has exec'd or "error <message>\n". The app runs as an
 * unprivileged user with a cut bounding set, no_new_privs, every fd above 2 closed and a seccomp
 * filter. The init then reaps zombies, forwards signals to the app's process group, writes the
 * app's stdout/stderr as timestamped lines to container.log (rotated to container.log.1) and, when
 * the app exits, the exit status to the file "exit" in the state directory, and exits with it.
 *
 * The environment of paas-init is the app's environment (the daemon builds it).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <arpa/inet.h>
#include <linux/if_link.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/veth.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SYNC_FD 3
#define MAX_LIST 64

static struct {
    const char *root, *upper, *work, *hostname, *cwd, *state;
    const char *lowers[MAX_LIST];
    int nlowers;
    const char *cgroups[MAX_LIST];
    int ncgroups;
    const char *mounts[MAX_LIST]; /* "ro|rw:source:target", checked by the daemon */
    int nmounts;
    uid_t uid;
    gid_t gid;
    long log_max;
    int wait_go;
    const char *bridge, *veth, *addr, *gateway; /* networking done by the setup process */
    int prefixlen;
    pid_t target;
    char **argv;
} opt = {.uid = 1000, .gid = 1000, .cwd = "/", .log_max = 10L * 1024 * 1024, .wait_go = 1};

static int sync_fd = -1;

static void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));

static void die(const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (sync_fd >= 0) dprintf(sync_fd, "error %s\n", msg);
    dprintf(2, "paas-init: %s\n", msg);
    _exit(125);
}

/* How the app's stdio is wired (--stdio): into its log (the default); to a pty whose master the
 * init sends to the daemon with "ok" (tty: the app gets a controlling terminal); stdin from a
 * pipe whose write end goes the same way (stdin). exec --stdio tty makes the terminal the daemon
 * gave as fds 0-2 the command's controlling terminal. exec --session FD: the daemon's end of a
 * socket; when it closes (its client went away) the command's session is hung up. */
enum { STDIO_LOG, STDIO_TTY, STDIO_STDIN, STDIO_PIPE };
static struct { int mode, session; unsigned short rows, cols; } io = {STDIO_LOG, -1, 24, 80};

static int parse_stdio(const char *v) {
    if (strcmp(v, "log") == 0) return STDIO_LOG;
    if (strcmp(v, "tty") == 0) return STDIO_TTY;
    if (strcmp(v, "stdin") == 0) return STDIO_STDIN;
    if (strcmp(v, "pipe") == 0) return STDIO_PIPE;
    die("unknown --stdio %s", v);
}

static void parse(int argc, char **argv) {
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--") == 0) {
            opt.argv = &argv[i + 1];
            break;
        }
        if (i + 1 >= argc) die("option %s needs a value", a);
        const char *v = argv[++i];
        if (strcmp(a, "--root") == 0) opt.root = v;
        else if (strcmp(a, "--upper") == 0) opt.upper = v;
        else if (strcmp(a, "--work") == 0) opt.work = v;
        else if (strcmp(a, "--hostname") == 0) opt.hostname = v;
        else if (strcmp(a, "--cwd") == 0) opt.cwd = v;
        else if (strcmp(a, "--state") == 0) opt.state = v;
        else if (strcmp(a, "--uid") == 0) opt.uid = (uid_t)strtoul(v, NULL, 10);
        else if (strcmp(a, "--gid") == 0) opt.gid = (gid_t)strtoul(v, NULL, 10);
        else if (strcmp(a, "--log-max") == 0) opt.log_max = strtol(v, NULL, 10);
        else if (strcmp(a, "--wait") == 0) opt.wait_go = strcmp(v, "go") == 0;
        else if (strcmp(a, "--net-bridge") == 0) opt.bridge = v;
        else if (strcmp(a, "--net-veth") == 0) opt.veth = v;
        else if (strcmp(a, "--net-gateway") == 0) opt.gateway = v;
        else if (strcmp(a, "--net-addr") == 0) {
            static char addr[64];
            snprintf(addr, sizeof addr, "%s", v);
            char *slash = strchr(addr, '/');
            if (!slash) die("--net-addr wants address/prefixlen");
            *slash = 0;
            opt.addr = addr;
            opt.prefixlen = atoi(slash + 1);
        }
        else if (strcmp(a, "--pid") == 0) opt.target = (pid_t)strtol(v, NULL, 10);
        else if (strcmp(a, "--stdio") == 0) io.mode = parse_stdio(v);
        else if (strcmp(a, "--session") == 0) io.session = atoi(v);
        else if (strcmp(a, "--rows") == 0) io.rows = (unsigned short)atoi(v);
        else if (strcmp(a, "--cols") == 0) io.cols = (unsigned short)atoi(v);
        else if (strcmp(a, "--lower") == 0 && opt.nlowers < MAX_LIST) opt.lowers[opt.nlowers++] = v;
        else if (strcmp(a, "--cgroup") == 0 && opt.ncgroups < MAX_LIST) opt.cgroups[opt.ncgroups++] = v;
        else if (strcmp(a, "--mount") == 0 && opt.nmounts < MAX_LIST) opt.mounts[opt.nmounts++] = v;
        else die("unknown option %s", a);
    }
    if (!opt.argv || !opt.argv[0]) die("no command given");
    if (opt.uid == 0) die("refusing to run the app as root");
}

/* Open the cgroup.procs files while the host's mounts are in view: the setup process shares its
 * mount namespace with the init, which pivots away from them. */
static int cgroup_fds[MAX_LIST];

static void open_cgroups(void) {
    for (int i = 0; i < opt.ncgroups; i++) {
        cgroup_fds[i] = open(opt.cgroups[i], O_WRONLY | O_CLOEXEC);
        if (cgroup_fds[i] < 0) die("cannot open cgroup %s: %m", opt.cgroups[i]);
    }
}

static void join_cgroups(pid_t pid) {
    char buf[32];
    int n = snprintf(buf, sizeof buf, "%d\n", pid);
    for (int i = 0; i < opt.ncgroups; i++) {
        if (write(cgroup_fds[i], buf, (size_t)n) != n) die("cannot join cgroup %s: %m", opt.cgroups[i]);
        close(cgroup_fds[i]);
    }
}

/* --- the app's confinement ------------------------------------------------------------------ */

/* What an app may keep in its bounding set: Docker's default set minus NET_RAW, MKNOD and
 * AUDIT_WRITE. The app runs as a non-root user, so these only bound what it could ever regain;
 * no_new_privs already stops setuid binaries and file capabilities. */
static const int keep_caps[] = {0 /*CHOWN*/,  1 /*DAC_OVERRIDE*/, 3 /*FOWNER*/, 4 /*FSETID*/,
                                5 /*KILL*/,   6 /*SETGID*/,       7 /*SETUID*/, 8 /*SETPCAP*/,
                                10 /*NET_BIND_SERVICE*/};

static void drop_bounding_set(void) {
    for (int cap = 0; cap <= 63; cap++) {
        int keep = 0;
        for (size_t k = 0; k < sizeof keep_caps / sizeof keep_caps[0]; k++) keep |= keep_caps[k] == cap;
        if (keep) continue;
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno != EINVAL) die("PR_CAPBSET_DROP %d: %m", cap);
    }
}

/* Syscalls Docker's default seccomp profile denies to a container without extra capabilities
 * (moby profiles/seccomp/default.json), answered with EPERM. */
static const long denied[] = {
#ifdef SYS_acct
    SYS_acct,
#endif
    SYS_add_key, SYS_bpf, SYS_clock_adjtime, SYS_clock_settime, SYS_delete_module,
    SYS_finit_module, SYS_init_module, SYS_ioperm, SYS_iopl, SYS_kcmp, SYS_kexec_load,
#ifdef SYS_kexec_file_load
    SYS_kexec_file_load,
#endif
    SYS_keyctl, SYS_lookup_dcookie, SYS_mbind, SYS_mount, SYS_move_pages, SYS_name_to_handle_at,
    SYS_open_by_handle_at, SYS_perf_event_open, SYS_pivot_root, SYS_process_vm_readv,
    SYS_process_vm_writev, SYS_ptrace, SYS_quotactl, SYS_reboot, SYS_request_key,
    SYS_set_mempolicy, SYS_get_mempolicy, SYS_setns, SYS_settimeofday, SYS_swapon, SYS_swapoff,
    SYS_sysfs, SYS_umount2, SYS_unshare, SYS_uselib, SYS_userfaultfd, SYS_ustat, SYS_vhangup,
    SYS_chroot, SYS_syslog, SYS_personality, SYS_create_module, SYS_get_kernel_syms,
    SYS_query_module, SYS_nfsservctl, SYS__sysctl,
#ifdef SYS_fsopen
    SYS_fsopen, SYS_fsconfig, SYS_fsmount, SYS_fspick, SYS_move_mount, SYS_open_tree,
#endif
#ifdef SYS_mount_setattr
    SYS_mount_setattr,
#endif
#ifdef SYS_quotactl_fd
    SYS_quotactl_fd,
#endif
};

#define NS_FLAGS (CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | \
                  CLONE_NEWNET | CLONE_NEWCGROUP | CLONE_NEWTIME)

static void install_seccomp(void) {
    size_t n = sizeof denied / sizeof denied[0];
    struct sock_filter f[8 + 2 * (sizeof denied / sizeof denied[0]) + 8];
    size_t i = 0;
    f[i++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch));
    f[i++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0);
    f[i++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS);
    f[i++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
    /* x32 syscalls carry bit 30; refuse them all rather than keep a second table. */
    f[i++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, 0x40000000, 0, 1);
    f[i++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM);
    for (size_t k = 0; k < n; k++) {
        f[i++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)denied[k], 0, 1);
        f[i++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM);
    }
    /* clone3 passes its flags in memory the filter cannot read: ENOSYS makes libc fall back to
     * clone, whose flags (arg 0) we can check for new namespaces. */
    f[i++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_clone3, 0, 1);
    f[i++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS);
    f[i++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_clone, 0, 3);
    f[i++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0]));
    f[i++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, NS_FLAGS, 0, 1);
    f[i++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM);
    f[i++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    struct sock_fprog prog = {.len = (unsigned short)i, .filter = f};
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) < 0) die("seccomp: %m");
}

/* Become the app: called in a freshly forked child, ends in exec or _exit. `errfd` is a
 * close-on-exec pipe to the parent that carries an error message if exec fails. */
static void become_app(int errfd) {
    sigset_t all;
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);
    for (int s = 1; s < NSIG; s++) signal(s, SIG_DFL);
    umask(022);
    if (setgroups(0, NULL) < 0 || setresgid(opt.gid, opt.gid, opt.gid) < 0) {
        dprintf(errfd, "cannot set group %u: %m", opt.gid);
        _exit(126);
    }
    drop_bounding_set();
    if (setresuid(opt.uid, opt.uid, opt.uid) < 0) {
        dprintf(errfd, "cannot set user %u: %m", opt.uid);
        _exit(126);
    }
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
        dprintf(errfd, "no_new_privs: %m");
        _exit(126);
    }
    if (chdir(opt.cwd) < 0) {
        dprintf(errfd, "cannot change to the working directory %s: %m", opt.cwd);
        _exit(126);
    }
    /* A working directory outside the root (a leaked host directory fd, CVE-2024-21626) shows
     * as "(unreachable)" in getcwd; refuse to exec from there. */
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof cwd) || cwd[0] != '/') {
        dprintf(errfd, "the working directory is outside the container's root");
        _exit(126);
    }
    /* Every descriptor above 2 closed, except the exec-error pipe (close-on-exec). */
    if (errfd > 3) syscall(SYS_close_range, 3, errfd - 1, 0);
    syscall(SYS_close_range, errfd + 1, ~0U, 0);
    install_seccomp();
    execvp(opt.argv[0], opt.argv);
    int e = errno;
    dprintf(errfd, "cannot run %s: %s", opt.argv[0], strerror(e));
    dprintf(2, "paas-init: cannot run %s: %s\n", opt.argv[0], strerror(e));
    _exit(e == ENOENT ? 127 : 126);
}

/* --- the root filesystem -------------------------------------------------------------------- */

static void mnt(const char *src, const char *dst, const char *type, unsigned long flags, const char *data) {
    if (mount(src, dst, type, flags, data) < 0) die("mount %s on %s: %m", type ? type : (src ? src : "(remount)"), dst);
}

static void mkdir_p(const char *path, mode_t mode) {
    if (mkdir(path, mode) < 0 && errno != EEXIST) die("mkdir %s: %m", path);
}

static void make_dev(void) {
    static const struct { const char *name; unsigned maj, min; } devs[] = {
        {"null", 1, 3}, {"zero", 1, 5}, {"full", 1, 7}, {"random", 1, 8}, {"urandom", 1, 9}, {"tty", 5, 0},
    };
    mkdir_p("dev", 0755);
    mnt("tmpfs", "dev", "tmpfs", MS_NOSUID | MS_NOEXEC | MS_STRICTATIME, "mode=755,size=65536k");
    for (size_t i = 0; i < sizeof devs / sizeof devs[0]; i++) {
        char p[64];
        snprintf(p, sizeof p, "dev/%s", devs[i].name);
        if (mknod(p, S_IFCHR | 0666, makedev(devs[i].maj, devs[i].min)) < 0) die("mknod %s: %m", p);
        if (chmod(p, 0666) < 0) die("chmod %s: %m", p);
    }
    mkdir_p("dev/pts", 0755);
    mnt("devpts", "dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620");
    mkdir_p("dev/shm", 01777);
    mnt("shm", "dev/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=1777,size=65536k");
    mkdir_p("dev/mqueue", 0755);
    static const char *links[][2] = {
        {"pts/ptmx", "dev/ptmx"}, {"/proc/self/fd", "dev/fd"}, {"/proc/self/fd/0", "dev/stdin"},
        {"/proc/self/fd/1", "dev/stdout"}, {"/proc/self/fd/2", "dev/stderr"},
    };
    for (size_t i = 0; i < sizeof links / sizeof links[0]; i++)
        if (symlink(links[i][0], links[i][1]) < 0) die("symlink %s: %m", links[i][1]);
}

static const char *masked[] = {
    "/proc/asound", "/proc/acpi", "/proc/interrupts", "/proc/kcore", "/proc/keys",
    "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug",
    "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap",
};
static const char *readonly[] = {"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"};

static void mask_paths(void) {
    /* Mask with the container's own /dev/null, after checking it is the real device: a
     * symlink or a different node there would turn the mask into an attack (CVE-2025-31133). */
    int nullfd = open("/dev/null", O_PATH | O_NOFOLLOW | O_CLOEXEC);
    struct stat st;
    if (nullfd < 0 || fstat(nullfd, &st) < 0) die("open /dev/null: %m");
    if (!S_ISCHR(st.st_mode) || st.st_rdev != makedev(1, 3)) die("/dev/null is not the null device");
    char nullpath[64];
    snprintf(nullpath, sizeof nullpath, "/proc/self/fd/%d", nullfd);
    for (size_t i = 0; i < sizeof masked / sizeof masked[0]; i++) {
        if (lstat(masked[i], &st) < 0) continue;
        if (S_ISDIR(st.st_mode)) mnt("tmpfs", masked[i], "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=0");
        else mnt(nullpath, masked[i], NULL, MS_BIND, NULL);
    }
    close(nullfd);
    for (size_t i = 0; i < sizeof readonly / sizeof readonly[0]; i++) {
        if (lstat(readonly[i], &st) < 0) continue;
        mnt(readonly[i], readonly[i], NULL, MS_BIND | MS_REC, NULL);
        mnt(NULL, readonly[i], NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    }
}

/* Bind the host directories asked for into the new root (cwd), before pivot_root. The target
 * is walked one component at a time below the root with O_NOFOLLOW, creating what is missing,
 * so a symlink in an image layer can never point a mount outside the container's root
 * (CVE-2021-30465 was a race on such a path). Nothing runs in the container yet, so the walked
 * path is still what the textual path names when mount(2) gets it. */
static void bind_mounts(void) {
    for (int i = 0; i < opt.nmounts; i++) {
        char spec[PATH_MAX * 2 + 8];
        snprintf(spec, sizeof spec, "%s", opt.mounts[i]);
        char *src = strchr(spec, ':');
        char *dst = src ? strchr(src + 1, ':') : NULL;
        if (!src || !dst || dst[1] != '/') die("bad --mount %s", opt.mounts[i]);
        *src++ = 0;
        *dst++ = 0;
        int ro = strcmp(spec, "ro") == 0;
        if (!ro && strcmp(spec, "rw") != 0) die("bad --mount mode %s", spec);
        int sfd = open(src, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (sfd < 0) die("mount source %s: %m", src);
        int fd = open(".", O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0) die("open the root: %m");
        char rel[PATH_MAX] = ".";
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s", dst + 1);
        for (char *save = NULL, *part = strtok_r(path, "/", &save); part; part = strtok_r(NULL, "/", &save)) {
            if (strcmp(part, ".") == 0 || strcmp(part, "..") == 0) die("mount target %s is not clean", dst);
            if (mkdirat(fd, part, 0755) < 0 && errno != EEXIST) die("mkdir mount target %s: %m", dst);
            int next = openat(fd, part, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (next < 0) die("mount target %s: %s is not a directory in the container: %m", dst, part);
            close(fd);
            fd = next;
            size_t len = strlen(rel);
            if (len + 1 + strlen(part) >= sizeof rel) die("mount target %s is too long", dst);
            snprintf(rel + len, sizeof rel - len, "/%s", part);
        }
        close(fd);
        char from[64];
        snprintf(from, sizeof from, "/proc/self/fd/%d", sfd);
        mnt(from, rel, NULL, MS_BIND | MS_REC, NULL);
        /* Bind flags come from a remount (mount(2)): nosuid and nodev always, ro if asked. */
        mnt(NULL, rel, NULL, MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV | (ro ? MS_RDONLY : 0), NULL);
        close(sfd);
    }
}

static void build_root(void) {
    umask(0);
    mnt(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL);
    /* overlayfs wants the top layer first; the daemon gives them bottom first. */
    char data[8192];
    size_t off = (size_t)snprintf(data, sizeof data, "lowerdir=");
    for (int i = opt.nlowers - 1; i >= 0; i--) {
        off += (size_t)snprintf(data + off, sizeof data - off, "%s%s", opt.lowers[i], i ? ":" : "");
        if (off >= sizeof data) die("too many or too long layer paths");
    }
    off += (size_t)snprintf(data + off, sizeof data - off, ",upperdir=%s,workdir=%s", opt.upper, opt.work);
    if (off >= sizeof data) die("too many or too long layer paths");
    mnt("overlay", opt.root, "overlay", MS_NOSUID | MS_NODEV, data);
    if (chdir(opt.root) < 0) die("chdir %s: %m", opt.root);
    mkdir_p("proc", 0555);
    mnt("proc", "proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    mkdir_p("sys", 0555);
    mnt("sysfs", "sys", "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    make_dev();
    mkdir_p("tmp", 01777);
    bind_mounts();
    /* pivot_root(".", ".") stacks the old root under the new one; detach it (pivot_root(2)). */
    if (syscall(SYS_pivot_root, ".", ".") < 0) die("pivot_root: %m");
    if (umount2(".", MNT_DETACH) < 0) die("umount old root: %m");
    if (chdir("/") < 0) die("chdir /: %m");
    mask_paths();
    if (opt.hostname && sethostname(opt.hostname, strlen(opt.hostname)) < 0) die("sethostname: %m");
}

/* The new network namespace starts with loopback down; bring it up (netdevice(7)). */
static void loopback_up(void) {
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strcpy(ifr.ifr_name, "lo");
    if (s < 0 || ioctl(s, SIOCGIFFLAGS, &ifr) < 0) die("loopback: %m");
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0) die("loopback up: %m");
    close(s);
}

/* --- networking: one rtnetlink message and a few ioctls ---------------------------------------- */

static void nl_attr(struct nlmsghdr *n, size_t cap, unsigned short type, const void *data, size_t len) {
    size_t off = NLMSG_ALIGN(n->nlmsg_len);
    if (off + RTA_LENGTH(len) > cap) die("netlink message too long");
    struct rtattr *rta = (struct rtattr *)((char *)n + off);
    rta->rta_type = type;
    rta->rta_len = (unsigned short)RTA_LENGTH(len);
    if (len) memcpy(RTA_DATA(rta), data, len);
    n->nlmsg_len = (unsigned)(off + RTA_ALIGN(rta->rta_len));
}

static struct rtattr *nl_nest(struct nlmsghdr *n, size_t cap, unsigned short type) {
    struct rtattr *r = (struct rtattr *)((char *)n + NLMSG_ALIGN(n->nlmsg_len));
    nl_attr(n, cap, type, NULL, 0);
    return r;
}

static void nl_end(struct nlmsghdr *n, struct rtattr *r) {
    r->rta_len = (unsigned short)((char *)n + n->nlmsg_len - (char *)r);
}

/* Create the veth pair in one RTM_NEWLINK (rtnetlink(7), veth(4)): the host end `opt.veth`,
 * up and enslaved to the bridge, in the host's namespace (`host_nl` was opened there); the peer,
 * named eth0, straight in the namespace `netns_fd`. */
static void veth_create(int host_nl, int netns_fd, unsigned master) {
    char buf[1024] __attribute__((aligned(NLMSG_ALIGNTO)));
    memset(buf, 0, sizeof buf);
    struct nlmsghdr *n = (struct nlmsghdr *)buf;
    n->nlmsg_len = NLMSG_LENGTH(sizeof(struct ifinfomsg));
    n->nlmsg_type = RTM_NEWLINK;
    n->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
    struct ifinfomsg *ifi = NLMSG_DATA(n);
    ifi->ifi_family = AF_UNSPEC;
    ifi->ifi_flags = ifi->ifi_change = IFF_UP;
    nl_attr(n, sizeof buf, IFLA_IFNAME, opt.veth, strlen(opt.veth) + 1);
    nl_attr(n, sizeof buf, IFLA_MASTER, &master, sizeof master);
    struct rtattr *info = nl_nest(n, sizeof buf, IFLA_LINKINFO);
    nl_attr(n, sizeof buf, IFLA_INFO_KIND, "veth", 4);
    struct rtattr *data = nl_nest(n, sizeof buf, IFLA_INFO_DATA);
    struct rtattr *peer = nl_nest(n, sizeof buf, VETH_INFO_PEER);
    n->nlmsg_len += (unsigned)NLMSG_ALIGN(sizeof(struct ifinfomsg)); /* the peer's, zeroed */
    nl_attr(n, sizeof buf, IFLA_IFNAME, "eth0", 5);
    unsigned nsfd = (unsigned)netns_fd;
    nl_attr(n, sizeof buf, IFLA_NET_NS_FD, &nsfd, sizeof nsfd);
    nl_end(n, peer);
    nl_end(n, data);
    nl_end(n, info);
    if (send(host_nl, n, n->nlmsg_len, 0) < 0) die("netlink send: %m");
    char reply[4096];
    ssize_t r = recv(host_nl, reply, sizeof reply, 0);
    struct nlmsghdr *h = (struct nlmsghdr *)reply;
    if (r < (ssize_t)NLMSG_LENGTH(sizeof(struct nlmsgerr)) || h->nlmsg_type != NLMSG_ERROR) die("netlink: no answer");
    int err = ((struct nlmsgerr *)NLMSG_DATA(h))->error;
    if (err) {
        errno = -err;
        die("create veth %s on %s: %m", opt.veth, opt.bridge);
    }
}

static void set_inaddr(struct sockaddr *sa, const char *ip) {
    struct sockaddr_in *in = (struct sockaddr_in *)sa;
    memset(in, 0, sizeof *in);
    in->sin_family = AF_INET;
    if (inet_pton(AF_INET, ip, &in->sin_addr) != 1) die("bad address %s", ip);
}

/* Address eth0, bring it up and route through the gateway (netdevice(7), route ioctls). */
static void eth0_configure(void) {
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strcpy(ifr.ifr_name, "eth0");
    set_inaddr(&ifr.ifr_addr, opt.addr);
    if (s < 0 || ioctl(s, SIOCSIFADDR, &ifr) < 0) die("eth0 address: %m");
    char mask[16];
    uint32_t m = opt.prefixlen ? htonl((uint32_t)(0xffffffffUL << (32 - opt.prefixlen))) : 0;
    inet_ntop(AF_INET, &m, mask, sizeof mask);
    set_inaddr(&ifr.ifr_netmask, mask);
    if (ioctl(s, SIOCSIFNETMASK, &ifr) < 0) die("eth0 netmask: %m");
    if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0) die("eth0 flags: %m");
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0) die("eth0 up: %m");
    struct rtentry rt;
    memset(&rt, 0, sizeof rt);
    set_inaddr(&rt.rt_dst, "0.0.0.0");
    set_inaddr(&rt.rt_genmask, "0.0.0.0");
    set_inaddr(&rt.rt_gateway, opt.gateway);
    rt.rt_flags = RTF_UP | RTF_GATEWAY;
    rt.rt_dev = (char *)"eth0";
    if (ioctl(s, SIOCADDRT, &rt) < 0) die("default route via %s: %m", opt.gateway);
    close(s);
}

/* Read "net <addr>/<prefixlen> <gateway>\n" byte by byte: what follows on the socket is the
 * init's. */
static void read_net_line(void) {
    static char line[128];
    size_t n = 0;
    while (n < sizeof line - 1) {
        if (read(sync_fd, &line[n], 1) != 1) _exit(125); /* the daemon gave up */
        if (line[n] == '\n') break;
        n++;
    }
    line[n] = 0;
    static char addr[64], gateway[64];
    if (sscanf(line, "net %63[0-9.]/%d %63[0-9.]", addr, &opt.prefixlen, gateway) != 3)
        die("malformed network line from the daemon");
    opt.addr = addr;
    opt.gateway = gateway;
}

/* --- terminals and attached stdio ------------------------------------------------------------ */

/* Open a new pty of the devpts instance `ptmx` belongs to, sized, unlocked, its terminal owned by
 * the app's user; return the master and put the terminal in *slave. */
static int open_pty(const char *ptmx, int *slave) {
    int m = open(ptmx, O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (m < 0) die("open %s: %m", ptmx);
    int unlock = 0;
    struct winsize ws = {.ws_row = io.rows, .ws_col = io.cols};
    if (ioctl(m, TIOCSPTLCK, &unlock) < 0 || ioctl(m, TIOCSWINSZ, &ws) < 0) die("set up the pty: %m");
    *slave = ioctl(m, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (*slave < 0) die("open the pty's terminal: %m");
    if (fchown(*slave, opt.uid, opt.gid) < 0 || fchmod(*slave, 0620) < 0) die("hand the pty to the app: %m");
    return m;
}

/* In the app's child, already a session leader: the terminal as fds 0-2 and its controlling
 * terminal (tty), or the attached pipe as stdin. */
static void attach_stdio(int term, int in) {
    if (term >= 0 && (dup2(term, 0) < 0 || dup2(term, 1) < 0 || dup2(term, 2) < 0)) _exit(126);
    if (in >= 0 && dup2(in, 0) < 0) _exit(126);
    if (io.mode == STDIO_TTY && ioctl(0, TIOCSCTTY, 0) < 0) {
        dprintf(2, "paas-init: cannot take the terminal: %s\n", strerror(errno));
        _exit(126);
    }
}

/* Write `line` on the socket, with `fd` attached (SCM_RIGHTS) unless it is negative. */
static void send_line_fd(int sock, const char *line, int fd) {
    struct iovec iov = {.iov_base = (void *)line, .iov_len = strlen(line)};
    union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } u;
    memset(&u, 0, sizeof u);
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
    if (fd >= 0) {
        m.msg_control = u.buf;
        m.msg_controllen = sizeof u.buf;
        struct cmsghdr *c = CMSG_FIRSTHDR(&m);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof fd);
    }
    if (sendmsg(sock, &m, MSG_NOSIGNAL) < 0) _exit(125); /* the daemon gave up on us */
}

/* exec --session: wait for the command; should the daemon's end close first (its client went
 * away), hang the command's session up: SIGHUP to its process group, SIGKILL two seconds later. */
static void watch_session(pid_t child) {
    int nul = open("/dev/null", O_RDWR | O_CLOEXEC);
    for (int fd = 0; fd < 3; fd++) nul >= 0 ? dup2(nul, fd) : close(fd); /* hold no stdio open */
    int pfd = (int)syscall(SYS_pidfd_open, child, 0);
    if (pfd < 0) return;
    struct pollfd pf[2] = {{pfd, POLLIN, 0}, {io.session, POLLIN, 0}};
    for (;;) {
        if (poll(pf, 2, -1) < 0) {
            if (errno == EINTR) continue;
            break;
        }
        if (pf[0].revents) break;
        if (pf[1].revents) {
            char b[64];
            if (read(io.session, b, sizeof b) > 0) continue;
            kill(-child, SIGHUP);
            kill(child, SIGHUP);
            if (poll(pf, 1, 2000) == 0) {
                kill(-child, SIGKILL);
                kill(child, SIGKILL);
            }
            break;
        }
    }
    close(pfd);
}

/* --- PID 1 ---------------------------------------------------------------------------------- */

struct stream { int fd; const char *name; char buf[16384]; size_t len; };
static int state_fd = -1, log_fd = -1;
static long log_size;

static void log_open(void) {
    log_fd = openat(state_fd, "container.log", O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    struct stat st;
    log_size = (log_fd >= 0 && fstat(log_fd, &st) == 0) ? st.st_size : 0;
}

static void log_line(const char *stream, const char *line, size_t n) {
    if (log_fd < 0) return;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char head[64];
    int h = snprintf(head, sizeof head, "%04d-%02d-%02dT%02d:%02d:%02d.%06ldZ %s ", tm.tm_year + 1900,
                     tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000, stream);
    char out[sizeof head + 16384 + 1];
    memcpy(out, head, (size_t)h);
    memcpy(out + h, line, n);
    out[(size_t)h + n] = '\n';
    ssize_t w = write(log_fd, out, (size_t)h + n + 1);
    if (w > 0) log_size += w;
    if (opt.log_max > 0 && log_size >= opt.log_max) {
        close(log_fd);
        renameat(state_fd, "container.log", state_fd, "container.log.1");
        log_open();
    }
}

/* Read what is there; write whole lines; a line longer than the buffer is written in pieces. */
static int pump(struct stream *s, int final) {
    ssize_t r = read(s->fd, s->buf + s->len, sizeof s->buf - s->len);
    if (r <= 0 && !(r < 0 && (errno == EINTR || errno == EAGAIN))) {
        if (s->len) log_line(s->name, s->buf, s->len);
        s->len = 0;
        return -1;
    }
    if (r > 0) s->len += (size_t)r;
    size_t start = 0;
    for (size_t i = 0; i < s->len; i++) {
        if (s->buf[i] == '\n') {
            log_line(s->name, s->buf + start, i - start);
            start = i + 1;
        }
    }
    memmove(s->buf, s->buf + start, s->len - start);
    s->len -= start;
    if (s->len == sizeof s->buf || (final && s->len)) {
        log_line(s->name, s->buf, s->len);
        s->len = 0;
    }
    return 0;
}

static void record_exit(int status) {
    char buf[64];
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    int sig = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
    int n = snprintf(buf, sizeof buf, "%d %d\n", code, sig);
    int fd = openat(state_fd, "exit.tmp", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    if (fd >= 0) {
        if (write(fd, buf, (size_t)n) == n) renameat(state_fd, "exit.tmp", state_fd, "exit");
        close(fd);
    }
}

static void init_main(int joined_fd) {
    loopback_up();
    build_root();
    /* The setup process moves us into the container's cgroups while we build the root (a v1
     * migration waits for an RCU grace period); the app must not start before that. */
    char joined;
    if (read(joined_fd, &joined, 1) != 1) _exit(125);
    close(joined_fd);
    if (unshare(CLONE_NEWCGROUP) < 0) die("unshare cgroup namespace: %m");
    char go;
    if (opt.wait_go && read(sync_fd, &go, 1) != 1) _exit(125); /* the daemon gave up on us */
    int out[2], err[2], ep[2];
    if (pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0 || pipe2(ep, O_CLOEXEC) < 0) die("pipe: %m");
    int term = -1, slave = -1, in[2] = {-1, -1};
    if (io.mode == STDIO_TTY) term = open_pty("/dev/pts/ptmx", &slave);
    if (io.mode == STDIO_STDIN && pipe2(in, O_CLOEXEC) < 0) die("pipe: %m");
    sigset_t set;
    sigfillset(&set);
    sigprocmask(SIG_BLOCK, &set, NULL);
    int sfd = signalfd(-1, &set, SFD_CLOEXEC);
    if (sfd < 0) die("signalfd: %m");
    pid_t app = fork();
    if (app < 0) die("fork: %m");
    if (app == 0) {
        setsid();
        int nul = open("/dev/null", O_RDONLY);
        if (nul < 0 || dup2(nul, 0) < 0 || dup2(out[1], 1) < 0 || dup2(err[1], 2) < 0) _exit(126);
        attach_stdio(slave, in[0]);
        become_app(ep[1]);
    }
    close(out[1]);
    close(err[1]);
    close(ep[1]);
    if (slave >= 0) close(slave);
    if (in[0] >= 0) close(in[0]);
    char msg[512];
    ssize_t n = read(ep[0], msg, sizeof msg - 1);
    close(ep[0]);
    if (n > 0) {
        msg[n] = 0;
        dprintf(sync_fd, "error %s\n", msg);
    } else {
        char ok[32];
        snprintf(ok, sizeof ok, "ok %d\n", app);
        send_line_fd(sync_fd, ok, term >= 0 ? term : in[1]); /* the client's end, through the daemon */
    }
    if (term >= 0) close(term);
    if (in[1] >= 0) close(in[1]);
    close(sync_fd);
    sync_fd = -1;
    /* The init itself keeps the capabilities it needs to signal the app; no_new_privs and the
     * same seccomp filter apply to it, so a compromised init cannot mount or ptrace either. */
    drop_bounding_set();
    prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    /* Not dumpable: /proc/1/{fd,cwd,environ,root} stay closed to the app even if it found a
     * way to the init's uid, so the state directory fd never leaks (proc(5)). */
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    install_seccomp();

    struct stream so = {.fd = out[0], .name = "stdout"}, se = {.fd = err[0], .name = "stderr"};
    struct pollfd pf[3] = {{sfd, POLLIN, 0}, {so.fd, POLLIN, 0}, {se.fd, POLLIN, 0}};
    int app_status = -1;
    for (;;) {
        if (poll(pf, 3, -1) < 0 && errno != EINTR) break;
        if (pf[1].revents && pump(&so, 0) < 0) pf[1].fd = -1;
        if (pf[2].revents && pump(&se, 0) < 0) pf[2].fd = -1;
        if (pf[0].revents & POLLIN) {
            struct signalfd_siginfo si;
            if (read(sfd, &si, sizeof si) != sizeof si) continue;
            if (si.ssi_signo == SIGCHLD) {
                int st;
                pid_t p;
                while ((p = waitpid(-1, &st, WNOHANG)) > 0)
                    if (p == app) app_status = st;
            } else if (kill(-app, (int)si.ssi_signo) < 0) {
                kill(app, (int)si.ssi_signo);
            }
        }
        if (app_status >= 0) break;
    }
    /* Drain what the app wrote last without waiting on descendants that keep the pipes open. */
    fcntl(so.fd, F_SETFL, O_NONBLOCK);
    fcntl(se.fd, F_SETFL, O_NONBLOCK);
    for (int i = 0; i < 64 && pump(&so, 1) == 0; i++) {}
    for (int i = 0; i < 64 && pump(&se, 1) == 0; i++) {}
    record_exit(app_status);
    _exit(WIFEXITED(app_status) ? WEXITSTATUS(app_status) : 128 + WTERMSIG(app_status));
}

static int run_main(void) {
    if (!opt.root || !opt.upper || !opt.work || !opt.state || opt.nlowers == 0)
        die("run needs --root, --upper, --work, --state and at least one --lower");
    state_fd = open(opt.state, O_DIRECTORY | O_PATH | O_CLOEXEC);
    if (state_fd < 0) die("open state directory %s: %m", opt.state);
    open_cgroups();
    int joined[2];
    if (pipe2(joined, O_CLOEXEC) < 0) die("pipe: %m");
    int host_nl = -1;
    unsigned bridge_index = 0;
    if (opt.veth) {
        if (!opt.bridge) die("networking needs --net-bridge");
        host_nl = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
        if (host_nl < 0) die("netlink: %m");
        bridge_index = if_nametoindex(opt.bridge); /* in the host's namespace, so before unshare */
        if (!bridge_index) die("bridge %s: %m", opt.bridge);
    }
    if (unshare(CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET | CLONE_NEWPID) < 0)
        die("unshare: %m");
    /* Opened now: the init, which shares our mount namespace, is about to pivot away from /proc. */
    int netns = opt.veth ? open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC) : -1;
    if (opt.veth && netns < 0) die("open own netns: %m");
    pid_t init = fork();
    if (init < 0) die("fork: %m");
    if (init == 0) {
        close(joined[1]);
        if (host_nl >= 0) close(host_nl);
        if (netns >= 0) close(netns);
        log_open();
        if (log_fd < 0) die("open container.log: %m");
        init_main(joined[0]);
    }
    close(joined[0]);
    /* "pid" first: the init answers on the same socket as soon as it may go on. */
    dprintf(sync_fd, "pid %d\n", init);
    if (opt.veth) {
        /* The init builds its root meanwhile; without --net-addr the daemon sends the address
         * once its allocator has one ("net <addr>/<prefixlen> <gateway>"). */
        if (!opt.addr) read_net_line();
        veth_create(host_nl, netns, bridge_index);
        close(netns);
        close(host_nl);
        eth0_configure();
    }
    join_cgroups(init);
    if (write(joined[1], "j", 1) != 1) die("tell the init: %m");
    close(joined[1]);
    return 0;
}

/* --- exec into a running container ----------------------------------------------------------- */

static int exec_main(void) {
    if (opt.target <= 0) die("exec needs --pid");
    static const char *kinds[] = {"ipc", "uts", "net", "pid", "cgroup", "mnt"};
    int fds[6];
    char p[64];
    snprintf(p, sizeof p, "/proc/%d/root", opt.target);
    int rootfd = open(p, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (rootfd < 0) die("container process %d is gone: %m", opt.target);
    for (int i = 0; i < 6; i++) {
        snprintf(p, sizeof p, "/proc/%d/ns/%s", opt.target, kinds[i]);
        fds[i] = open(p, O_RDONLY | O_CLOEXEC);
        if (fds[i] < 0) die("open %s: %m", p);
    }
    open_cgroups();
    join_cgroups(getpid());
    for (int i = 0; i < 6; i++)
        if (setns(fds[i], 0) < 0) die("setns %s: %m", kinds[i]);
    if (fchdir(rootfd) < 0 || chroot(".") < 0 || chdir("/") < 0) die("enter the container's root: %m");
    int ep[2];
    if (pipe2(ep, O_CLOEXEC) < 0) die("pipe: %m");
    pid_t child = fork();
    if (child < 0) die("fork: %m");
    if (child == 0) {
        close(ep[0]);
        if (io.session >= 0 || io.mode == STDIO_TTY) {
            setsid(); /* a session of its own: its terminal, its process group to hang up */
            attach_stdio(-1, -1);
        }
        become_app(ep[1]);
    }
    close(ep[1]);
    char msg[512];
    ssize_t n = read(ep[0], msg, sizeof msg - 1);
    if (n > 0 && strncmp(msg, "cannot run ", 11) != 0) { /* that one the command said itself */
        msg[n] = 0;
        dprintf(2, "paas-init: %s\n", msg);
    }
    if (io.session >= 0) watch_session(child);
    int st;
    while (waitpid(child, &st, 0) < 0 && errno == EINTR) {}
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        dprintf(2, "usage: paas-init run|exec [options] -- command [args...]\n");
        return 2;
    }
    parse(argc, argv);
    if (strcmp(argv[1], "run") == 0) {
        sync_fd = SYNC_FD;
        return run_main();
    }
    if (strcmp(argv[1], "exec") == 0) return exec_main();
    die("unknown mode %s", argv[1]);
}
