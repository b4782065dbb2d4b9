/* fault_inject.cc — an LD_PRELOAD fault injector for the faults tests (issue #13): a disk that
 * fails fsync/fdatasync with EIO on demand, the one fault a real disk cannot be asked for.
 *
 * While the file named by MAILSEAL_FAULT_TRIGGER exists, fsync() and fdatasync() on any
 * descriptor whose path starts with MAILSEAL_FAULT_PREFIX fail with EIO (nothing else
 * changes). Test code only; never shipped.
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
#include <unistd.h>

namespace {

using SyncFn = int (*)(int);

// Next: the libc function this library stands in front of (dlsym's object pointer, copied
// into a function pointer the portable way).
SyncFn Next(const char* name) {
  void* sym = dlsym(RTLD_NEXT, name);
  SyncFn fn = nullptr;
  memcpy(&fn, &sym, sizeof fn);
  return fn;
}

int faulty(int fd) {
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
  static SyncFn real = Next("fsync");
  if (faulty(fd)) {
    errno = EIO;
    return -1;
  }
  return real(fd);
}

int fdatasync(int fd) {
  static SyncFn real = Next("fdatasync");
  if (faulty(fd)) {
    errno = EIO;
    return -1;
  }
  return real(fd);
}

}  // extern "C"
