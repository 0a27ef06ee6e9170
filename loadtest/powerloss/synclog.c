/*
 * synclog: an LD_PRELOAD library that records what a process made durable, so a test can
 * emulate a power loss after killing it (see loadtest/src/powerloss.rs).
 *
 * After every successful fsync(2) or fdatasync(2) it appends one line to the file named by
 * $UPLINK_SYNCLOG:
 *   F <inode> <size>            a regular file: its first <size> bytes are durable
 *   D <dir> <name>:<inode> ...  a directory: these entries are durable
 * Lines are written with one write(2) on an O_APPEND descriptor, after the sync returned, so a
 * line never claims more than was synced. What was written but not synced is what a power loss
 * may take: the emulation drops all of it (the worst case POSIX allows).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int log_fd = -1;

static void open_log(void) {
    if (log_fd >= 0) return;
    const char *path = getenv("UPLINK_SYNCLOG");
    if (!path) return;
    log_fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
}

static void record(int fd) {
    open_log();
    if (log_fd < 0) return;
    struct stat st;
    if (fstat(fd, &st) != 0) return;
    if (S_ISREG(st.st_mode)) {
        char line[64];
        int n = snprintf(line, sizeof line, "F %llu %lld\n", (unsigned long long)st.st_ino,
                         (long long)st.st_size);
        if (n > 0) (void)!write(log_fd, line, (size_t)n);
        return;
    }
    if (!S_ISDIR(st.st_mode)) return;
    char link[64], dir[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t len = readlink(link, dir, sizeof dir - 1);
    if (len <= 0) return;
    dir[len] = 0;
    int dup_fd = openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dup_fd < 0) return;
    DIR *d = fdopendir(dup_fd);
    if (!d) {
        close(dup_fd);
        return;
    }
    size_t cap = 4096, used = 0;
    char *buf = malloc(cap);
    if (!buf) {
        closedir(d);
        return;
    }
    used += (size_t)snprintf(buf, cap, "D %s", dir);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        size_t need = strlen(e->d_name) + 32;
        if (used + need + 2 > cap) {
            cap = (cap + need) * 2;
            char *grown = realloc(buf, cap);
            if (!grown) break;
            buf = grown;
        }
        used += (size_t)snprintf(buf + used, cap - used, " %s:%llu", e->d_name,
                                 (unsigned long long)e->d_ino);
    }
    closedir(d);
    buf[used++] = '\n';
    (void)!write(log_fd, buf, used);
    free(buf);
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    int r = real(fd);
    if (r == 0) record(fd);
    return r;
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    int r = real(fd);
    if (r == 0) record(fd);
    return r;
}
