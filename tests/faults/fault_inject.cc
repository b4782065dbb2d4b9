/* fault_inject.cc — an LD_PRELOAD fault injector for the faults tests (issue #13): a disk that
 * fails fsync/fdatasync with EIO on demand, the one fault a real disk cannot be asked for.
 *
 * While the file named by MAILSEAL_FAULT_TRIGGER exists, fsync(), fdatasync() and syncfs() on any
 * descriptor whose path starts with MAILSEAL_FAULT_PREFIX fail with EIO; with
 * MAILSEAL_FAULT_OPS=sync,write write(), pwrite() and writev() on them fail with EIO too,
 * writing nothing (a dead disk); with MAILSEAL_FAULT_OPS=syncfs only syncfs() fails. Nothing else changes. Test code only; never shipped.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

namespace {

using SyncFn = int (*)(int);
using WriteFn = ssize_t (*)(int, const void*, size_t);
using PwriteFn = ssize_t (*)(int, const void*, size_t, off_t);
using WritevFn = ssize_t (*)(int, const struct iovec*, int);

// Next: the libc function this library stands in front of (dlsym's object pointer, copied
// into a function pointer the portable way).
template <typename Fn>
Fn Next(const char* name) {
  void* sym = dlsym(RTLD_NEXT, name);
  Fn fn = nullptr;
  memcpy(&fn, &sym, sizeof fn);
  return fn;
}

// Active: whether `op` fails. MAILSEAL_FAULT_OPS is a comma list of "sync" (fsync, fdatasync
// and syncfs), "syncfs" (syncfs alone: the group commit of crypto-stage copies) and "write";
// unset, it means "sync".
bool Active(const char* op) {
  const char* ops = getenv("MAILSEAL_FAULT_OPS");
  if (!ops) ops = "sync";
  bool syncfs = strcmp(op, "syncfs") == 0;
  for (const char* p = ops; *p;) {
    const char* end = strchr(p, ',');
    size_t n = end ? static_cast<size_t>(end - p) : strlen(p);
    if ((strlen(op) == n && strncmp(p, op, n) == 0) || (syncfs && n == 4 && strncmp(p, "sync", 4) == 0)) return true;
    p += n + (end ? 1 : 0);
  }
  return false;
}

int faulty(int fd, const char* op = "sync") {
  if (!Active(op)) return 0;
  const char* trigger = getenv("MAILSEAL_FAULT_TRIGGER");
  const char* prefix = getenv("MAILSEAL_FAULT_PREFIX");
  struct stat st;
  if (!trigger || !prefix || stat(trigger, &st) != 0) return 0;
  char link[64], path[4096];
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  ssize_t n = readlink(link, path, sizeof path - 1);
  if (n <= 0) return 0;
  path[n] = '\0';
  return strncmp(path, prefix, strlen(prefix)) == 0;
}

}  // namespace

extern "C" {

int fsync(int fd) {
  static SyncFn real = Next<SyncFn>("fsync");
  if (faulty(fd)) {
    errno = EIO;
    return -1;
  }
  return real(fd);
}

int fdatasync(int fd) {
  static SyncFn real = Next<SyncFn>("fdatasync");
  if (faulty(fd)) {
    errno = EIO;
    return -1;
  }
  return real(fd);
}

int syncfs(int fd) {
  static SyncFn real = Next<SyncFn>("syncfs");
  if (faulty(fd, "syncfs")) {
    errno = EIO;
    return -1;
  }
  return real(fd);
}

ssize_t write(int fd, const void* buf, size_t n) {
  static WriteFn real = Next<WriteFn>("write");
  if (faulty(fd, "write")) {
    errno = EIO;
    return -1;
  }
  return real(fd, buf, n);
}

ssize_t pwrite(int fd, const void* buf, size_t n, off_t at) {
  static PwriteFn real = Next<PwriteFn>("pwrite");
  if (faulty(fd, "write")) {
    errno = EIO;
    return -1;
  }
  return real(fd, buf, n, at);
}

ssize_t writev(int fd, const struct iovec* iov, int n) {
  static WritevFn real = Next<WritevFn>("writev");
  if (faulty(fd, "write")) {
    errno = EIO;
    return -1;
  }
  return real(fd, iov, n);
}

}  // extern "C"
