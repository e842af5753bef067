/*
 * The kernel's floor for stage 1's system calls (issue #18; `vm-tests bench-floor`).
 *
 * Used as the initrd's /init in place of stage 1, with the same kernel, command line, module
 * closure and disk. It makes the system calls stage 1 cannot do without, in stage 1's order,
 * and nothing else: no log lines, no config parsing, no device registry or by-* links, no
 * receipt. What it measures is what the kernel (and, under TCG, QEMU translating the
 * kernel's code) costs for that work; stage 1's `own` time cannot go below it.
 *
 *   special   mkdir + mount of /proc, /sys, /dev (devtmpfs), /run with stage 1's flags
 *             and data (common/src/mounts/special.rs)
 *   config    read /proc/cmdline (the boot's first procfs read) and the module list
 *             (/etc/floor/modules, written by the harness from stage 1's config; stage 1
 *             reads /etc/stagehand/stage1.cfg from the initramfs at the same point)
 *   modules   read the CPU's modalias when a module has `cpu:` aliases, skip an optional
 *             module none of whose aliases matches (fnmatch, as stage 1 and kmod do), then
 *             open + finit_module + close each; that last part is `finit` (excluded from
 *             `own`, as stage 1's receipt excludes it)
 *   wait      stat /dev/vda until it exists, 1 ms apart; only the sleeping counts (stage
 *             1's `device_wait` counts only its blocked time too)
 *   devices   open /dev/vda, its size, read its first 0x11000 bytes (stage 1's probe head)
 *   md_tail   read 4 KiB where an md v1.0 superblock would be (8 KiB before the end), as
 *             stage 1's md probe does: measured, but not part of the floor
 *   fsck      /bin/fsck.ext4 -a /dev/vda when the initrd has it, as stage 1 runs it (so
 *             the mount meets the same page cache); excluded from `own` as in stage 1
 *   mount     mount(2) /dev/vda on /mnt-root as ext4, flags 0, data "" (stage 1's root
 *             with no options)
 *   init      resolve init= inside /mnt-root with lstat + readlink, absolute link targets
 *             restarting at the new root, then stat the result (init_path.rs's walk)
 *
 * Times are CLOCK_MONOTONIC microseconds. One line goes to /dev/kmsg and /dev/console:
 *   FLOOR-RESULT start=… special=… config=… modules=… finit=… wait=… devices=… md_tail=…
 *                fsck=… fsck_status=… settle=… mount=… init=… total=… own=…
 * with own = total - finit - wait - fsck - settle - md_tail (settle: `floor.settle_ms=N` on
 * the command line makes it sleep N ms between fsck and the mount; 0 by default). Then, untimed by the floor, /mnt-root is
 * unmounted and the read of /proc/cmdline, the mount and the init= walk run a second time:
 *   FLOOR-AGAIN config=… mount=… init=…
 * (what they cost once QEMU has translated the kernel's code for them), /mnt-root is
 * unmounted again (the next boot of the image must not find a dirty journal) and the
 * machine powers off. Any failure prints `FLOOR-ERROR <what>: <why>` and powers off.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define ROOT_DEVICE "/dev/vda"
#define NEW_ROOT "/mnt-root"
#define MODULE_LIST "/etc/floor/modules"
#define CPU_MODALIAS "/sys/devices/system/cpu/modalias"
#define FSCK "/bin/fsck.ext4"
#define HEAD_LEN 0x11000
#define MAX_MODULES 64
#define MAX_SYMLINKS 40

static long long now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

/* Say it on the console and in the kernel log; both are open only after the timing. */
static void say(const char *line)
{
	int fd = open("/dev/kmsg", O_WRONLY | O_CLOEXEC);
	if (fd >= 0) {
		char buf[1200];
		int n = snprintf(buf, sizeof buf, "<6>floor: %s", line);
		if (n > 0 && write(fd, buf, (size_t)n) < 0) {
			/* Nothing else to tell it to. */
		}
		close(fd);
	}
	fd = open("/dev/console", O_WRONLY | O_NOCTTY | O_CLOEXEC);
	if (fd >= 0) {
		char buf[1200];
		int n = snprintf(buf, sizeof buf, "%s\n", line);
		if (n > 0 && write(fd, buf, (size_t)n) < 0) {
			/* As above. */
		}
		close(fd);
	}
}

static void power_off(void)
{
	sync();
	reboot(RB_POWER_OFF);
	/* PID 1 must not exit; wait for the harness to kill the VM. */
	for (;;)
		pause();
}

static void die(const char *fmt, ...)
{
	char msg[512], line[600];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	snprintf(line, sizeof line, "FLOOR-ERROR %s", msg);
	say(line);
	power_off();
}

/* The whole of a small file (procfs, sysfs, the initramfs) into buf, NUL-terminated. */
static size_t read_file(const char *path, char *buf, size_t cap)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		die("open %s: %s", path, strerror(errno));
	size_t len = 0;
	for (;;) {
		ssize_t n = read(fd, buf + len, cap - 1 - len);
		if (n < 0)
			die("read %s: %s", path, strerror(errno));
		if (n == 0 || len + (size_t)n >= cap - 1) {
			len += (size_t)(n > 0 ? n : 0);
			break;
		}
		len += (size_t)n;
	}
	close(fd);
	buf[len] = 0;
	return len;
}

struct special {
	const char *target, *type, *data;
	unsigned long flags;
};

/* common/src/mounts/special.rs, the `early` ones, parsed as stage 1 parses them. */
static const struct special SPECIAL[] = {
	{ "/proc", "proc", "", MS_NOSUID | MS_NOEXEC | MS_NODEV },
	{ "/sys", "sysfs", "", MS_NOSUID | MS_NOEXEC | MS_NODEV },
	{ "/dev", "devtmpfs", "mode=755,size=5%", MS_NOSUID | MS_STRICTATIME },
	{ "/run", "tmpfs", "mode=755,size=25%", MS_NOSUID | MS_NODEV | MS_STRICTATIME },
};

struct module {
	char *path, *params, *aliases;
	int optional;
};

/* Lines of `path<TAB>optional(0|1)<TAB>params<TAB>space-separated cpu: aliases`. */
static int parse_modules(char *text, struct module *mods)
{
	int n = 0;
	for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
		if (n == MAX_MODULES)
			die("%s: more than %d modules", MODULE_LIST, MAX_MODULES);
		char *f[4] = { line, NULL, NULL, NULL };
		for (int i = 1; i < 4; i++) {
			char *tab = strchr(f[i - 1], '\t');
			if (!tab)
				die("%s: line %d has fewer than 4 fields", MODULE_LIST, n + 1);
			*tab = 0;
			f[i] = tab + 1;
		}
		mods[n].path = f[0];
		mods[n].optional = f[1][0] == '1';
		mods[n].params = f[2];
		mods[n].aliases = f[3];
		n++;
	}
	return n;
}

/* A module without aliases suits every CPU; one with some needs one to match. */
static int suits(char *aliases, const char *modalias)
{
	if (!aliases[0])
		return 1;
	char copy[1024];
	snprintf(copy, sizeof copy, "%s", aliases);
	char *save = NULL;
	for (char *a = strtok_r(copy, " ", &save); a; a = strtok_r(NULL, " ", &save))
		if (fnmatch(a, modalias, 0) == 0)
			return 1;
	return 0;
}

/*
 * Canonicalise `path` as if `root` were `/` (stage1/src/init_path.rs): `..` stops at the
 * root, an absolute link target restarts there. Returns 0 or a negative errno.
 */
static int canon_in(const char *root, const char *path, char *done, int *links)
{
	char rest[2 * PATH_MAX], next[2 * PATH_MAX];
	snprintf(rest, sizeof rest, "%s", path);
	strcpy(done, "/");
	const char *p = rest;
	for (;;) {
		while (*p == '/')
			p++;
		if (!*p)
			return 0;
		size_t len = strcspn(p, "/");
		char part[NAME_MAX + 1];
		if (len > NAME_MAX)
			return -ENAMETOOLONG;
		memcpy(part, p, len);
		part[len] = 0;
		p += len;
		if (!strcmp(part, "."))
			continue;
		if (!strcmp(part, "..")) {
			char *slash = strrchr(done, '/');
			if (slash == done)
				done[1] = 0;
			else
				*slash = 0;
			continue;
		}
		char cand[PATH_MAX], host[2 * PATH_MAX];
		snprintf(cand, sizeof cand, "%s%s%s", done, strcmp(done, "/") ? "/" : "", part);
		snprintf(host, sizeof host, "%s%s", root, cand);
		struct stat st;
		if (lstat(host, &st) < 0)
			return -errno;
		if (S_ISLNK(st.st_mode)) {
			if (++*links > MAX_SYMLINKS)
				return -ELOOP;
			char target[PATH_MAX];
			ssize_t n = readlink(host, target, sizeof target - 1);
			if (n < 0)
				return -errno;
			target[n] = 0;
			if (target[0] == '/')
				strcpy(done, "/");
			snprintf(next, sizeof next, "%s/%s", target, p);
			memcpy(rest, next, sizeof rest);
			p = rest;
		} else {
			strcpy(done, cand);
		}
	}
}

/* The value of `key=` on the command line, copied into out (empty when absent). */
static void cmdline_value(const char *cmdline, const char *key, char *out, size_t cap)
{
	size_t klen = strlen(key);
	out[0] = 0;
	for (const char *p = cmdline; *p;) {
		while (*p == ' ' || *p == '\n')
			p++;
		size_t len = strcspn(p, " \n");
		if (len > klen && !strncmp(p, key, klen) && p[klen] == '=') {
			size_t vlen = len - klen - 1;
			if (vlen >= cap)
				vlen = cap - 1;
			memcpy(out, p + klen + 1, vlen);
			out[vlen] = 0;
		}
		p += len;
	}
}

/* init_path.rs's resolve_init: canonical directory, last component kept, must be executable. */
static void resolve_init(const char *init, char *result, size_t cap)
{
	char dir[PATH_MAX], cdir[PATH_MAX], target[PATH_MAX];
	if (init[0] != '/')
		die("no absolute init= on the command line");
	snprintf(dir, sizeof dir, "%s", init);
	char *slash = strrchr(dir, '/');
	const char *name = init + (slash - dir) + 1;
	slash[slash == dir ? 1 : 0] = 0;
	int links = 0, r = canon_in(NEW_ROOT, dir, cdir, &links);
	if (r < 0)
		die("resolving %s: %s", dir, strerror(-r));
	snprintf(result, cap, "%s%s%s", cdir, strcmp(cdir, "/") ? "/" : "", name);
	r = canon_in(NEW_ROOT, result, target, &links);
	if (r < 0)
		die("resolving %s: %s", result, strerror(-r));
	char host[2 * PATH_MAX];
	snprintf(host, sizeof host, "%s%s", NEW_ROOT, target);
	struct stat st;
	if (stat(host, &st) < 0 || !S_ISREG(st.st_mode) || !(st.st_mode & 0111))
		die("%s (%s) is not an executable file", init, target);
}

int main(void)
{
	long long start = now_us();

	for (size_t i = 0; i < sizeof SPECIAL / sizeof SPECIAL[0]; i++) {
		const struct special *s = &SPECIAL[i];
		if (mkdir(s->target, 0755) < 0 && errno != EEXIST)
			die("mkdir %s: %s", s->target, strerror(errno));
		if (mount(s->type, s->target, s->type, s->flags, s->data) < 0 && errno != EBUSY)
			die("mount %s: %s", s->target, strerror(errno));
	}
	long long t_special = now_us();

	static char cmdline[4096], list[16384];
	read_file("/proc/cmdline", cmdline, sizeof cmdline);
	read_file(MODULE_LIST, list, sizeof list);
	static struct module mods[MAX_MODULES];
	int nmods = parse_modules(list, mods);
	long long t_config = now_us();

	int any_aliases = 0;
	for (int i = 0; i < nmods; i++)
		any_aliases |= mods[i].aliases[0] != 0;
	static char modalias[8192];
	if (any_aliases) {
		size_t len = read_file(CPU_MODALIAS, modalias, sizeof modalias);
		while (len && modalias[len - 1] == '\n')
			modalias[--len] = 0;
	}
	long long finit = 0;
	for (int i = 0; i < nmods; i++) {
		if (any_aliases && mods[i].optional && !suits(mods[i].aliases, modalias))
			continue;
		long long m = now_us();
		int fd = open(mods[i].path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			die("open %s: %s", mods[i].path, strerror(errno));
		long r = syscall(SYS_finit_module, fd, mods[i].params, 0);
		int err = errno;
		close(fd);
		finit += now_us() - m;
		if (r < 0 && err != EEXIST && !mods[i].optional)
			die("finit_module %s: %s", mods[i].path, strerror(err));
	}
	long long t_modules = now_us();

	if (mkdir(NEW_ROOT, 0755) < 0 && errno != EEXIST)
		die("mkdir %s: %s", NEW_ROOT, strerror(errno));
	long long waited = 0;
	struct stat st;
	while (stat(ROOT_DEVICE, &st) < 0) {
		long long w = now_us();
		if (w - t_modules > 10000000)
			die("%s did not appear within 10 s", ROOT_DEVICE);
		struct timespec ms = { 0, 1000000 };
		nanosleep(&ms, NULL);
		waited += now_us() - w;
	}
	long long t_devices_start = now_us();
	int disk = open(ROOT_DEVICE, O_RDONLY | O_CLOEXEC);
	if (disk < 0)
		die("open %s: %s", ROOT_DEVICE, strerror(errno));
	off_t size = lseek(disk, 0, SEEK_END);
	if (size < 0)
		die("size of %s: %s", ROOT_DEVICE, strerror(errno));
	static char head[HEAD_LEN];
	size_t want = size < HEAD_LEN ? (size_t)size : HEAD_LEN;
	for (size_t got = 0; got < want;) {
		ssize_t n = pread(disk, head + got, want - got, (off_t)got);
		if (n <= 0)
			die("read %s: %s", ROOT_DEVICE, n < 0 ? strerror(errno) : "short read");
		got += (size_t)n;
	}
	long long t_devices = now_us();
	static char tail[4096];
	off_t sectors = size / 512;
	if (sectors >= 24) {
		off_t at = ((sectors - 16) & ~(off_t)7) * 512;
		if (pread(disk, tail, sizeof tail, at) != (ssize_t)sizeof tail)
			die("read the end of %s: %s", ROOT_DEVICE, strerror(errno));
	}
	close(disk);
	long long t_md_tail = now_us();

	int fsck_status = -1;
	if (access(FSCK, X_OK) == 0) {
		pid_t pid = fork();
		if (pid < 0)
			die("fork: %s", strerror(errno));
		if (pid == 0) {
			int null = open("/dev/null", O_RDWR);
			if (null >= 0) {
				dup2(null, 0);
				dup2(null, 1);
				dup2(null, 2);
			}
			char *argv[] = { FSCK, "-a", ROOT_DEVICE, NULL };
			char *envp[] = { "PATH=/bin:/sbin", NULL };
			execve(FSCK, argv, envp);
			_exit(127);
		}
		int status;
		if (waitpid(pid, &status, 0) < 0)
			die("waitpid: %s", strerror(errno));
		fsck_status = WIFEXITED(status) ? WEXITSTATUS(status) : 128;
		if (fsck_status > 1)
			die("%s -a %s exited with %d", FSCK, ROOT_DEVICE, fsck_status);
	}
	/*
	 * `floor.settle_ms=N`: sleep before the mount, to see whether what the checker's exit
	 * left the kernel to do (freeing its memory, deferred work) is timed as the mount's.
	 * Stage 1 writes fsck's output to the console at this point instead.
	 */
	char settle_text[16];
	cmdline_value(cmdline, "floor.settle_ms", settle_text, sizeof settle_text);
	long long settle_ms = atoll(settle_text), t_settle = now_us();
	if (settle_ms > 0) {
		struct timespec pause = { settle_ms / 1000, (settle_ms % 1000) * 1000000 };
		nanosleep(&pause, NULL);
	}
	long long t_fsck = now_us(), settle = t_fsck - t_settle;

	if (mount(ROOT_DEVICE, NEW_ROOT, "ext4", 0, "") < 0)
		die("mount %s: %s", ROOT_DEVICE, strerror(errno));
	long long t_mount = now_us();

	char init[PATH_MAX], result[2 * PATH_MAX];
	cmdline_value(cmdline, "init", init, sizeof init);
	resolve_init(init, result, sizeof result);
	long long end = now_us();

	long long total = end - start, fsck = t_settle - t_md_tail, md_tail = t_md_tail - t_devices;
	char line[1024];
	snprintf(line, sizeof line,
		 "FLOOR-RESULT start=%lld special=%lld config=%lld modules=%lld finit=%lld "
		 "wait=%lld devices=%lld md_tail=%lld fsck=%lld fsck_status=%d settle=%lld mount=%lld "
		 "init=%lld total=%lld own=%lld resolved=%.300s",
		 start, t_special - start, t_config - t_special, t_modules - t_config, finit,
		 waited, t_devices - t_devices_start, md_tail, fsck, fsck_status, settle,
		 t_mount - t_fsck, end - t_mount, total,
		 total - finit - waited - fsck - settle - md_tail, result);
	say(line);

	/*
	 * The same steps once more, the kernel's code now translated by QEMU and its caches
	 * warm: how much of each first time was first-execution cost. Not part of the floor.
	 */
	if (umount(NEW_ROOT) < 0)
		die("umount %s: %s", NEW_ROOT, strerror(errno));
	long long w0 = now_us();
	read_file("/proc/cmdline", cmdline, sizeof cmdline);
	long long w1 = now_us();
	if (mount(ROOT_DEVICE, NEW_ROOT, "ext4", 0, "") < 0)
		die("mount %s again: %s", ROOT_DEVICE, strerror(errno));
	long long w2 = now_us();
	resolve_init(init, result, sizeof result);
	long long w3 = now_us();
	snprintf(line, sizeof line, "FLOOR-AGAIN config=%lld mount=%lld init=%lld", w1 - w0,
		 w2 - w1, w3 - w2);
	say(line);
	if (umount(NEW_ROOT) < 0)
		die("umount %s: %s", NEW_ROOT, strerror(errno));
	power_off();
	return 0;
}
