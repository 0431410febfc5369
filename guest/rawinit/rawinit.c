/* rawinit: minimal /init for uvm's raw boot baseline benchmark.
 *
 * Mounts devtmpfs and sysfs (if not mounted yet), finds the virtio-serial port
 * whose /sys/class/virtio-ports/<vportNpM>/name equals the kernel cmdline
 * value uvm.raw_port=NAME (default "uvm.raw"), writes one byte '!' to it
 * ("first guest byte"), then, if uvm.raw_bytes=N is given, writes N more
 * bytes in 64 KiB chunks (throughput baseline), and powers off. With
 * uvm.raw_source=zero each chunk is first read from /dev/zero, exactly what
 * `dd if=/dev/zero bs=64k` does (the producer the uvm side runs), so the two
 * differ only in the channel. After the N
 * bytes it first waits (at most 30 s) for the host to send a byte or hang up,
 * so that data still queued in QEMU is not lost to the power-off.
 * Run as an ordinary process (`rawinit write N`), it writes N bytes from the
 * same static 64 KiB buffer to its stdout and exits: the benchmark's own
 * stdout measurement runs that as its workload.
 * Works with the tuned kernel (microvm, virtio-mmio) and the stock kernel (q35,
 * virtio-pci) as long as virtio_console is loaded: with a stock kernel, the
 * modules listed in /lib/modules/uvm-load-order are loaded first.
 * Build: gcc -static -Os -o rawinit rawinit.c */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/syscall.h>
#include <unistd.h>

static char cmdline[4096];

static void say(const char *msg) {
    int fd = open("/dev/console", O_WRONLY | O_NOCTTY);
    if (fd >= 0) { (void)!write(fd, msg, strlen(msg)); close(fd); }
}

static _Noreturn void die(const char *msg) {
    say("rawinit: "); say(msg); say("\n");
    sync();
    reboot(RB_POWER_OFF);
    for (;;) pause();
}

/* Value of key=VALUE on the kernel cmdline, or NULL. */
static const char *param(const char *key, char *buf, size_t len) {
    size_t klen = strlen(key);
    for (char *p = cmdline; (p = strstr(p, key)) != NULL; p += klen) {
        if ((p == cmdline || p[-1] == ' ') && p[klen] == '=') {
            size_t n = strcspn(p + klen + 1, " \n");
            if (n >= len) n = len - 1;
            memcpy(buf, p + klen + 1, n);
            buf[n] = 0;
            return buf;
        }
    }
    return NULL;
}

/* Stock kernels: finit_module every path in /lib/modules/uvm-load-order. */
static void load_modules(void) {
    FILE *f = fopen("/lib/modules/uvm-load-order", "r");
    char path[512];
    if (!f) return;
    while (fgets(path, sizeof path, f)) {
        path[strcspn(path, "\n")] = 0;
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) continue;
        syscall(SYS_finit_module, fd, "", 0); /* EEXIST etc. are fine */
        close(fd);
    }
    fclose(f);
}

/* Finds /dev/<vportNpM> for the port called want; retries while drivers probe. */
static int open_port(const char *want) {
    char path[512], name[256], dev[300];
    for (int tries = 0; tries < 10000; tries++) {
        DIR *d = opendir("/sys/class/virtio-ports");
        struct dirent *e;
        while (d && (e = readdir(d)) != NULL) {
            if (e->d_name[0] == '.') continue;
            snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", e->d_name);
            int fd = open(path, O_RDONLY);
            if (fd < 0) continue;
            ssize_t n = read(fd, name, sizeof name - 1);
            close(fd);
            if (n <= 0) continue;
            name[n] = 0;
            name[strcspn(name, "\n")] = 0;
            if (strcmp(name, want) != 0) continue;
            snprintf(dev, sizeof dev, "/dev/%s", e->d_name);
            closedir(d);
            if ((fd = open(dev, O_RDWR | O_NOCTTY)) >= 0) return fd;
            d = NULL;
            break;
        }
        if (d) closedir(d);
        usleep(1000);
    }
    return -1;
}

/* Writes `left` bytes in 64 KiB chunks to `out`; each chunk is first read
 * from `zero` when that is an open /dev/zero. Returns 0, or -1 on a failure. */
static int write_payload(int out, unsigned long long left, int zero) {
    static char chunk[65536];
    memset(chunk, 'x', sizeof chunk);
    while (left > 0) {
        size_t len = left < sizeof chunk ? (size_t)left : sizeof chunk;
        if (zero >= 0 && read(zero, chunk, len) != (ssize_t)len) return -1;
        for (size_t off = 0; off < len;) {
            ssize_t n = write(out, chunk + off, len - off);
            if (n <= 0) return -1;
            off += (size_t)n;
        }
        left -= len;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (getpid() != 1) {
        if (argc != 3 || strcmp(argv[1], "write") != 0) {
            fprintf(stderr, "usage: rawinit write BYTES   (as PID 1: the raw baseline's /init)\n");
            return 2;
        }
        return write_payload(1, strtoull(argv[2], NULL, 10), -1) == 0 ? 0 : 1;
    }
    char port[128] = "uvm.raw", bytes[32], source[16] = "static";
    mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);   /* EBUSY if automounted */
    mount("sysfs", "/sys", "sysfs", 0, NULL);
    mount("proc", "/proc", "proc", 0, NULL);
    int fd = open("/proc/cmdline", O_RDONLY);
    if (fd >= 0) { (void)!read(fd, cmdline, sizeof cmdline - 1); close(fd); }
    param("uvm.raw_port", port, sizeof port);
    param("uvm.raw_source", source, sizeof source);
    load_modules();
    int out = open_port(port);
    if (out < 0) die("virtio-serial port not found");
    if (write(out, "!", 1) != 1) die("write failed");
    if (param("uvm.raw_bytes", bytes, sizeof bytes)) {
        int zero = strcmp(source, "zero") == 0 ? open("/dev/zero", O_RDONLY) : -1;
        if (strcmp(source, "zero") == 0 && zero < 0) die("cannot open /dev/zero");
        if (write_payload(out, strtoull(bytes, NULL, 10), zero) != 0) die("payload write failed");
        struct pollfd pfd = {.fd = out, .events = POLLIN};
        poll(&pfd, 1, 30000);
    }
    close(out);
    sync();
    reboot(RB_POWER_OFF);
    return 0;
}
