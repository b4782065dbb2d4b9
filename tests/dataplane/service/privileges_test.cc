// privileges_test.cc — the drop mailseald makes after binding (issue #18; REQUIREMENTS.md §8
// CARD image): each case runs in a child process, since what it changes cannot be undone.
#include "dataplane/service/privileges.h"

#include <errno.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <sys/capability.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <condition_variable>
#include <fstream>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

namespace mailseal::service {
namespace {

// InChild runs `body` in a forked child; what it returns (empty: all held) comes back here.
std::string InChild(const std::function<std::string()>& body) {
  int p[2];
  if (pipe(p) != 0) return "pipe failed";
  pid_t pid = fork();
  if (pid == 0) {
    close(p[0]);
    std::string r = body();
    if (!r.empty() && write(p[1], r.data(), r.size()) < 0) _exit(3);
    _exit(r.empty() ? 0 : 1);
  }
  close(p[1]);
  std::string out;
  char buf[512];
  for (ssize_t n; (n = read(p[0], buf, sizeof buf)) > 0;) out.append(buf, static_cast<size_t>(n));
  close(p[0]);
  int st = 0;
  waitpid(pid, &st, 0);
  if (!WIFEXITED(st)) return "child died: signal " + std::to_string(WTERMSIG(st));
  if (WEXITSTATUS(st) != 0 && out.empty()) return "child exit " + std::to_string(WEXITSTATUS(st));
  return out;
}

// Field: a line of /proc/<self or task>/status, its value only.
std::string Field(const std::string& name, const std::string& path = "/proc/self/status") {
  std::ifstream f(path);
  for (std::string line; std::getline(f, line);)
    if (line.rfind(name + ":", 0) == 0) return line.substr(line.find_first_not_of(" \t", name.size() + 1));
  return "?";
}

std::string Expect(bool ok, const std::string& what) { return ok ? "" : what + "; "; }

// What the filter must still allow: the calls a gateway makes all day.
std::string EverydayCallsWork() {
  std::string r;
  std::thread t([] {});   // clone3 refused, the C library falls back to clone
  t.join();
  char path[] = "/tmp/mailseal-priv-XXXXXX";
  int fd = mkstemp(path);
  r += Expect(fd >= 0 && write(fd, "x", 1) == 1 && fsync(fd) == 0, "file write/fsync");
  std::string moved = std::string(path) + ".moved";
  r += Expect(rename(path, moved.c_str()) == 0 && unlink(moved.c_str()) == 0, "rename/unlink");
  if (fd >= 0) close(fd);
  return r;
}

TEST(SyscallFilter, RefusesWhatAGatewayNeverDoesAndKeepsTheRest) {
  std::string out = InChild([] {
    std::string r;
    if (Status st = InstallSyscallFilter(); !st.ok()) return "install: " + st.message();
    r += Expect(Field("NoNewPrivs") == "1", "no_new_privs set");
    r += Expect(Field("Seccomp") == "2", "seccomp in filter mode");
    char* argv[] = {const_cast<char*>("/nonexistent/true"), nullptr};   // ENOENT unfiltered
    r += Expect(execve("/nonexistent/true", argv, environ) == -1 && errno == EPERM, "execve refused with EPERM");
    r += Expect(unshare(CLONE_NEWNS) == -1 && errno == EPERM, "unshare refused");
    r += Expect(mount("none", "/mnt", "tmpfs", 0, nullptr) == -1 && errno == EPERM, "mount refused");
    r += Expect(syscall(SYS_ptrace, 0, 0, 0, 0) == -1 && errno == EPERM, "ptrace refused");
    r += Expect(syscall(SYS_clone3, nullptr, 0) == -1 && errno == ENOSYS, "clone3 answers ENOSYS");
    r += Expect(setuid(0) == -1 && errno == EPERM, "no change of user after the filter");
    r += EverydayCallsWork();
    return r;
  });
  EXPECT_EQ(out, "");
}

TEST(SyscallFilter, ReachesThreadsStartedBefore) {
  std::string out = InChild([] {
    std::mutex mu;
    std::condition_variable cv;
    bool installed = false;
    int err = 0;
    std::thread early([&] {
      std::unique_lock<std::mutex> l(mu);
      cv.wait(l, [&] { return installed; });
      char* argv[] = {const_cast<char*>("/nonexistent/true"), nullptr};   // ENOENT unfiltered
      if (execve("/nonexistent/true", argv, environ) == -1) err = errno;
    });
    Status st = InstallSyscallFilter();
    {
      std::lock_guard<std::mutex> l(mu);
      installed = true;
    }
    cv.notify_all();
    early.join();
    if (!st.ok()) return "install: " + st.message();
    return Expect(err == EPERM, "execve from a thread started before the filter refused");
  });
  EXPECT_EQ(out, "");
}

TEST(DropPrivileges, RootBecomesTheUserWithNothingLeft) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root (the test command runs as root)";
  uid_t uid = 0;
  gid_t gid = 0;
  ASSERT_TRUE(UserIds("nobody", &uid, &gid).ok());
  std::string out = InChild([uid] {
    std::string r;
    std::mutex mu;
    std::condition_variable cv;
    bool dropped = false, checked = false;
    std::string early_status;
    std::thread early([&] {   // a thread of the token's library or DPDK, started before the drop
      std::unique_lock<std::mutex> l(mu);
      cv.wait(l, [&] { return dropped; });
      early_status = "/proc/self/task/" + std::to_string(gettid()) + "/status";
      r += Expect(Field("Uid", early_status).rfind(std::to_string(uid) + "\t", 0) == 0, "early thread's uid changed");
      r += Expect(Field("CapPrm", early_status) == "0000000000000000", "early thread holds no capability");
      checked = true;
      cv.notify_all();
      cv.wait(l, [&] { return !dropped; });
    });
    Status st = DropPrivileges("nobody");
    {
      std::unique_lock<std::mutex> l(mu);
      dropped = true;
      cv.notify_all();
      cv.wait(l, [&] { return checked; });
      dropped = false;
      cv.notify_all();
    }
    early.join();
    if (!st.ok()) return "drop: " + st.message();
    r += Expect(getuid() == uid && geteuid() == uid, "uid is nobody's");
    for (const char* set : {"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"})
      r += Expect(Field(set) == "0000000000000000", std::string(set) + " empty: " + Field(set));
    r += Expect(Field("NoNewPrivs") == "1", "no_new_privs");
    r += Expect(Field("Seccomp") == "2", "seccomp filter");
    r += Expect(setuid(0) == -1 && seteuid(0) == -1, "root cannot be regained");
    r += Expect(open("/etc/shadow", O_RDONLY) == -1 && errno == EACCES, "root's files are out of reach");
    r += EverydayCallsWork();
    return r;
  });
  EXPECT_EQ(out, "");
}

TEST(DropPrivileges, RefusesRootAndUnknownUsers) {
  std::string out = InChild([] {
    std::string r;
    Status root = DropPrivileges("root");
    r += Expect(!root.ok() && root.message().find("is root") != std::string::npos, "root refused: " + root.message());
    Status none = DropPrivileges("no-such-user-mailseal");
    r += Expect(none.code() == StatusCode::kNotFound, "unknown user: NotFound");
    return r;
  });
  EXPECT_EQ(out, "");
}

TEST(DropPrivileges, AStartAsTheUserLosesTheCapabilitiesItWasGiven) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to set up the start systemd makes";
  std::string out = InChild([] {
    // What systemd's User=nobody + AmbientCapabilities=CAP_NET_BIND_SERVICE leaves: uid nobody,
    // CAP_NET_BIND_SERVICE permitted and effective.
    uid_t uid = 0;
    gid_t gid = 0;
    if (!UserIds("nobody", &uid, &gid).ok()) return std::string("no nobody");
    if (prctl(PR_SET_KEEPCAPS, 1) != 0 || setresgid(gid, gid, gid) != 0 || setresuid(uid, uid, uid) != 0)
      return std::string("set-up failed");
    cap_t c = cap_from_text("cap_net_bind_service=ep");
    if (!c || cap_set_proc(c) != 0) return std::string("cap set-up failed");
    cap_free(c);
    std::string r = Expect(Field("CapEff") != "0000000000000000", "set-up: a capability to lose");
    if (Status st = DropPrivileges("nobody"); !st.ok()) return "drop: " + st.message();
    r += Expect(Field("CapEff") == "0000000000000000" && Field("CapPrm") == "0000000000000000", "capabilities gone");
    r += Expect(Field("NoNewPrivs") == "1" && Field("Seccomp") == "2", "no_new_privs and the filter");
    return r;
  });
  EXPECT_EQ(out, "");
}

}  // namespace
}  // namespace mailseal::service
