// privileges.h — what mailseald gives up once its privileged set-up is done (issue #18).
//
// Started as root, mailseald binds its listeners, opens the token, the spool and the audit
// trail, then becomes `user` (its primary group and the groups it is a member of) with no
// capability left in any set, no way back (PR_SET_NO_NEW_PRIVS, an empty bounding set) and a
// seccomp filter that refuses the system calls a mail gateway never makes. Started as `user`
// already (systemd's User=, with CAP_NET_BIND_SERVICE for port 25), it drops the capabilities
// and installs the same filter. See README "Privileges" for what each part can still reach.
#pragma once

#include <string>

#include "dataplane/base/status.h"

namespace mailseal::service {

// DropPrivileges: as described above. `user` empty: the identity stays (a process started as
// root keeps root — the caller warns), but no_new_privs and the filter still apply. Must be
// called before threads that handle outside input start: identity changes reach every thread
// (glibc's set*id broadcast) and the filter is synchronised to all threads, but capabilities
// dropped without a change of user are per thread, so threads started earlier keep theirs —
// the returned status says how many other threads there were when that matters.
mailseal::Status DropPrivileges(const std::string& user);

// InstallSyscallFilter: the seccomp filter alone (also sets no_new_privs), on every thread of
// the process. Refused calls fail with EPERM (clone3 with ENOSYS, so that the C library falls
// back to clone, whose namespace flags the filter can inspect).
mailseal::Status InstallSyscallFilter();

// UserIds: the user's uid and primary gid; NotFound when there is no such user.
mailseal::Status UserIds(const std::string& user, uid_t* uid, gid_t* gid);

}  // namespace mailseal::service
