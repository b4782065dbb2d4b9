// privileges.cc — see privileges.h.
#include "dataplane/service/privileges.h"

#include <dirent.h>
#include <errno.h>
#include <grp.h>
#include <linux/sched.h>
#include <pwd.h>
#include <sched.h>
#include <seccomp.h>
#include <sys/capability.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <string>
#include <memory>
#include <vector>

namespace mailseal::service {
namespace {

mailseal::Status Sys(const char* what) { return InternalError(StrCat(what, ": ", std::strerror(errno))); }

int OtherThreads() {
  int n = -1;   // this one
  if (DIR* d = opendir("/proc/self/task")) {
    while (dirent* e = readdir(d))
      if (e->d_name[0] != '.') ++n;
    closedir(d);
  }
  return n;
}

// CapsInOtherThreads: whether a thread other than this one has a permitted capability left
// (capabilities dropped without a change of user are per thread).
bool CapsInOtherThreads() {
  std::string self = std::to_string(gettid());
  bool any = false;
  if (DIR* d = opendir("/proc/self/task")) {
    while (dirent* e = readdir(d)) {
      if (e->d_name[0] == '.' || self == e->d_name) continue;
      std::ifstream status(StrCat("/proc/self/task/", e->d_name, "/status"));
      for (std::string line; std::getline(status, line);)
        if (line.rfind("CapPrm:", 0) == 0 && line.find_first_not_of("0", line.find_first_not_of(" \t", 7)) != std::string::npos)
          any = true;
    }
    closedir(d);
  }
  return any;
}

// Calls no part of mailseald makes once it runs: new programs, other processes' memory, the
// kernel's own state (modules, mounts, clock, keyrings, BPF, perf), new namespaces, and any
// change of identity or capability after the drop.
constexpr const char* kRefused[] = {
    "execve", "execveat", "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp",
    "mount", "umount2", "pivot_root", "chroot", "fsopen", "fsmount", "fsconfig", "fspick", "move_mount",
    "open_tree", "mount_setattr", "swapon", "swapoff", "reboot", "kexec_load", "kexec_file_load",
    "init_module", "finit_module", "delete_module", "bpf", "perf_event_open", "userfaultfd",
    "keyctl", "add_key", "request_key", "unshare", "setns", "open_by_handle_at", "name_to_handle_at",
    "iopl", "ioperm", "acct", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
    "sethostname", "setdomainname", "quotactl", "syslog", "vhangup", "uselib", "lookup_dcookie",
    "fanotify_init", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setfsuid", "setfsgid",
    "setgroups", "capset"};

constexpr uint64_t kNamespaceFlags[] = {CLONE_NEWNS,  CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER,
                                        CLONE_NEWPID, CLONE_NEWNET, CLONE_NEWCGROUP};

}  // namespace

mailseal::Status UserIds(const std::string& user, uid_t* uid, gid_t* gid) {
  std::vector<char> buf(16384);
  passwd pw{};
  passwd* found = nullptr;
  int rc = getpwnam_r(user.c_str(), &pw, buf.data(), buf.size(), &found);
  if (rc != 0 || !found) return NotFoundError(StrCat("no user '", user, "' on this system"));
  *uid = found->pw_uid;
  *gid = found->pw_gid;
  return OkStatus();
}

mailseal::Status InstallSyscallFilter() {
  std::unique_ptr<void, void (*)(scmp_filter_ctx)> ctx(seccomp_init(SCMP_ACT_ALLOW), seccomp_release);
  if (!ctx) return InternalError("seccomp_init failed");
  for (const char* name : kRefused) {
    int nr = seccomp_syscall_resolve_name(name);
    if (nr == __NR_SCMP_ERROR) continue;   // not on this architecture
    if (int rc = seccomp_rule_add(ctx.get(), SCMP_ACT_ERRNO(EPERM), nr, 0); rc < 0)
      return InternalError(StrCat("seccomp rule for ", name, ": ", std::strerror(-rc)));
  }
  for (uint64_t flag : kNamespaceFlags) {
    for (const char* name : {"clone"}) {
      int nr = seccomp_syscall_resolve_name(name);
      if (int rc = seccomp_rule_add(ctx.get(), SCMP_ACT_ERRNO(EPERM), nr, 1, SCMP_A0(SCMP_CMP_MASKED_EQ, flag, flag)); rc < 0)
        return InternalError(StrCat("seccomp rule for clone: ", std::strerror(-rc)));
    }
  }
  // clone3 passes its flags in memory the filter cannot read: refused as unknown, and the C
  // library then uses clone (above).
  if (int nr = seccomp_syscall_resolve_name("clone3"); nr != __NR_SCMP_ERROR)
    if (int rc = seccomp_rule_add(ctx.get(), SCMP_ACT_ERRNO(ENOSYS), nr, 0); rc < 0)
      return InternalError(StrCat("seccomp rule for clone3: ", std::strerror(-rc)));
  // Every thread (those of the token's library and DPDK's included), and no_new_privs with it.
  if (int rc = seccomp_attr_set(ctx.get(), SCMP_FLTATR_CTL_TSYNC, 1); rc < 0)
    return InternalError(StrCat("seccomp thread synchronisation: ", std::strerror(-rc)));
  if (int rc = seccomp_attr_set(ctx.get(), SCMP_FLTATR_CTL_NNP, 1); rc < 0)
    return InternalError(StrCat("seccomp no_new_privs: ", std::strerror(-rc)));
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return Sys("prctl(PR_SET_NO_NEW_PRIVS)");
  if (int rc = seccomp_load(ctx.get()); rc < 0) return InternalError(StrCat("seccomp_load: ", std::strerror(-rc)));
  return OkStatus();
}

mailseal::Status DropPrivileges(const std::string& user) {
  if (!user.empty()) {
    uid_t uid = 0;
    gid_t gid = 0;
    if (mailseal::Status st = UserIds(user, &uid, &gid); !st.ok()) return st;
    if (uid == 0) return InvalidArgumentError(StrCat("user '", user, "' is root: nothing would be given up"));
    if (geteuid() == 0) {
      // The bounding set first (that needs CAP_SETPCAP, gone after the change of user): nothing
      // this thread or a thread it starts could ever regain.
      for (int cap = 0; cap <= CAP_LAST_CAP; ++cap)
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && errno != EINVAL) return Sys("prctl(PR_CAPBSET_DROP)");
      if (prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0) != 0) return Sys("prctl(PR_SET_KEEPCAPS)");
      // Groups, then the group, then the user (glibc applies each to every thread).
      if (initgroups(user.c_str(), gid) != 0) return Sys("initgroups");
      if (setresgid(gid, gid, gid) != 0) return Sys("setresgid");
      if (setresuid(uid, uid, uid) != 0) return Sys("setresuid");
    } else if (geteuid() != uid || getuid() != uid) {
      return FailedPreconditionError(StrCat("started as uid ", geteuid(), ", neither root nor '", user, "' (uid ", uid, ")"));
    }
    // No way back: the checks OpenSSH makes after its own drop.
    if (setuid(0) == 0 || seteuid(0) == 0 || getuid() != uid || geteuid() != uid || getgid() != gid || getegid() != gid)
      return InternalError("the change of user did not hold (root could be regained)");
  }
  // Whatever capabilities an unprivileged start was given (systemd's AmbientCapabilities=
  // CAP_NET_BIND_SERVICE for port 25): none after binding. Root without `user` keeps them.
  if (geteuid() != 0) {
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL) return Sys("prctl(PR_CAP_AMBIENT)");
    cap_t none = cap_init();
    if (!none) return Sys("cap_init");
    int rc = cap_set_proc(none);
    cap_free(none);
    if (rc != 0) return Sys("cap_set_proc");
  }
  if (geteuid() != 0 && OtherThreads() > 0 && CapsInOtherThreads())
    return FailedPreconditionError("a thread started before the drop still holds capabilities");
  return InstallSyscallFilter();
}

}  // namespace mailseal::service
